"""Helpers of the reliability suite (docs/reliability.md): run a command the way a user does and check what a
failure must look like — a non-zero exit code, one line naming the problem, no traceback, no secret."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.commands import run_process

ROOT = Path(__file__).resolve().parents[2]
SECRET = "sk-rel-Q7w9E2r4T6y8-never-print"


def cli(
    *args: str, env: dict | None = None, cwd: str | os.PathLike | None = None, timeout: float = 240, preexec_fn=None
) -> subprocess.CompletedProcess:
    """`python -m hybrid ARGS` in a fresh process (what a user runs)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    for k, v in list(full_env.items()):
        if v is None:
            del full_env[k]
    return run_process(
        [sys.executable, "-m", "hybrid", *args], env=full_env, cwd=cwd or ROOT, timeout=timeout, preexec_fn=preexec_fn
    )


def assert_one_line_error(
    rc: int, err: str, *names: str, out: str = "", secrets: tuple[str, ...] = (SECRET,), code: int | None = 2
) -> str:
    """The failure contract: exit code `code` (any non-zero when None), no traceback, the last line of stderr an
    `error: …` line that names each of `names`, and no secret anywhere in the output. Returns that line."""
    assert rc != 0, f"exit 0 for a failure\nstdout: {out}\nstderr: {err}"
    if code is not None:
        assert rc == code, f"exit {rc}, expected {code}\nstderr: {err}"
    assert "Traceback" not in err and "Traceback" not in out, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines, "no message on stderr"
    last = lines[-1]
    assert "error:" in last, f"last line is not an error line: {last!r}\n{err}"
    for name in names:
        assert name in last, f"{name!r} not named in {last!r}"
    for s in secrets:
        assert s not in err and s not in out, "a secret was printed"
    return last


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    """`hybrid ARGS` in this process (cheaper); argparse's usage errors come back as exit code 2."""
    from hybrid.main import main

    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` with its bytes (to show that nothing changed)."""
    return (
        {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
        if path.exists()
        else {}
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A trained tiny model (a few steps, in this process) and its IO pairs: (checkpoint dir, data file)."""
    import json
    import random

    from hybrid.cli.config import load_config
    from hybrid.training.train import train

    d = tmp_path_factory.mktemp("tiny")
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    data = d / "pairs.jsonl"
    with open(data, "w") as f:
        for _ in range(24):
            a = [rng.choice(words) for _ in range(rng.randint(3, 12))]
            f.write(json.dumps({"input": " ".join(a), "output": " ".join(reversed(a[:3]))}) + "\n")
    cfg = load_config(
        [
            "model=tiny_llama_hybrid",
            "train=tiny",
            "data.max_length=40",
            f"data.train={data}",
            f"data.validation={data}",
            f"train.output_dir={d / 'run'}",
            "train.max_iters=4",
            "train.eval_every=2",
        ]
    )
    result = train(cfg.recipe(), quiet=True)
    return result.best_checkpoint, data


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def file_size_limit(nbytes: int):
    """A `preexec_fn` for `cli`: `ulimit -f` — writes past `nbytes` fail with EFBIG (SIGXFSZ ignored), how a full disk
    looks to a writer, without mounting a small file system (not possible here)."""

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return apply
