"""`hybrid memory build|stats` keep the memory service in detached actors, which must live in a lasting cluster:
the one RAY_ADDRESS names, or the one `ray start` started on this machine — never whatever Ray Ray's `auto` lookup
finds (another command's temporary local Ray ends with that command, and the shards with it)
(docs/reliability.md, "Round two: secrets, Unicode, misc")."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import other_worker_ports, start_ray_node, stop_process_group
from tests.reliability.conftest import assert_one_line_error, cli

pytestmark = pytest.mark.ray  # one test starts a Ray head of its own

NO_CLUSTER = ("RAY_ADDRESS=", "ray start --head")  # what to do, with the form of the value


def test_memory_commands_without_a_cluster(tmp_path, tiny_checkpoint):
    """No RAY_ADDRESS and no `ray start` address (a private RAY_TMPDIR): one line saying how, nothing started."""
    ckpt, pairs = tiny_checkpoint
    env = {"RAY_ADDRESS": None, "RAY_TMPDIR": str(tmp_path)}
    r = cli("memory", "stats", env=env, timeout=120)
    assert_one_line_error(r.returncode, r.stderr, *NO_CLUSTER, out=r.stdout)
    r = cli(
        "memory",
        "build",
        "--checkpoint",
        str(ckpt),
        "--namespace",
        "n",
        "--demonstrations",
        str(pairs),
        env=env,
        timeout=120,
    )
    assert_one_line_error(r.returncode, r.stderr, *NO_CLUSTER, out=r.stdout)
    assert list(tmp_path.iterdir()) == []  # no Ray session was started


@pytest.fixture
def other_ray(tmp_path_factory):
    """A Ray head of this test's own, standing for a Ray some other command runs on the machine: `ray start
    --head --block` with every port set and a private temp dir `<root>/ray` (so RAY_TMPDIR=<root> makes it the
    machine's `ray start` cluster, and any other RAY_TMPDIR does not), stopped through its process group — never
    `ray stop`, which stops every Ray on the machine. Yields (root, temp dir)."""
    root = Path(tempfile.mkdtemp(prefix="ro", dir="/tmp"))  # short: socket paths have a length limit
    temp_dir = root / "ray"
    temp_dir.mkdir()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    proc, _ = start_ray_node(temp_dir, env, num_cpus=1, worker_ports=other_worker_ports(0))
    try:
        deadline = time.time() + 120
        while not (temp_dir / "ray_current_cluster").exists():  # `ray start` writes it once the head is up
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the test's Ray head did not start: {(temp_dir / 'head.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield root, temp_dir
    finally:
        stop_process_group(proc)
        shutil.rmtree(root, ignore_errors=True)


def drivers(temp_dir: Path) -> list[str]:
    """The drivers that joined the head (each leaves its core-worker log in the head's session)."""
    return sorted({p.name for p in temp_dir.glob("session_*/logs/python-core-driver-*")})  # session_latest links


@pytest.mark.slow
def test_memory_stats_never_joins_a_ray_it_was_not_given(tmp_path, other_ray):
    root, temp_dir = other_ray
    before = drivers(temp_dir)
    # another Ray runs here, but nobody named it: RAY_ADDRESS unset, and it is not this RAY_TMPDIR's `ray start`
    r = cli("memory", "stats", env={"RAY_ADDRESS": None, "RAY_TMPDIR": str(tmp_path)}, timeout=120)
    assert_one_line_error(r.returncode, r.stderr, *NO_CLUSTER, out=r.stdout)
    assert drivers(temp_dir) == before, "joined a Ray nobody named"
    # the cluster `ray start` started (its address where Ray keeps it) is joined without RAY_ADDRESS
    r = cli(
        "memory",
        "stats",
        "memory.service=nothing-here",
        env={"RAY_ADDRESS": None, "RAY_TMPDIR": str(root)},
        timeout=120,
    )
    assert_one_line_error(r.returncode, r.stderr, "no shard actor 'nothing-here-shard0'", out=r.stdout)
    assert len(drivers(temp_dir)) == len(before) + 1
