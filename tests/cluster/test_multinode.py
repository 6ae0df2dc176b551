"""Two Ray nodes on this machine — a head and a node that joins it with `ray start --address`, each with its own
ports and workers — as a cluster of two machines looks to Ray: the memory service puts its two shards on different
nodes (and `hybrid memory stats` says which), and the pipeline's tasks run on both nodes (the State API says where
each ran). Both nodes share this machine's disk, so this test says nothing yet about running without a shared
folder."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from pipelines.synthetic import build_synthetic_rust_repo
from tests.commands import run_process
from tests.conftest import RayHead, other_worker_ports, start_ray_node, stop_process_group

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def two_nodes():
    """A head (1 CPU, dashboard on for the State API) and a second node (1 CPU) joined to it; stopped through their
    process groups (the node first), never `ray stop`."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rn", dir="/tmp"))  # short: socket paths have a length limit
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    procs = []
    try:
        head, ports = start_ray_node(temp_dir, env, num_cpus=1, dashboard=True, worker_ports=other_worker_ports(0))
        procs.append(head)
        cluster = RayHead(f"127.0.0.1:{ports['gcs']}", f"http://127.0.0.1:{ports['dashboard']}", str(temp_dir))
        wait_for(lambda: cluster.get("/api/v0/nodes?limit=10")["data"]["result"]["result"], head, temp_dir, "head")
        node, _ = start_ray_node(
            temp_dir, env, num_cpus=1, worker_ports=other_worker_ports(1), address=cluster.address, log_name="node.log"
        )
        procs.append(node)
        wait_for(lambda: len(alive_nodes(cluster)) == 2, node, temp_dir, "node")
        yield cluster
    finally:
        for proc in reversed(procs):
            stop_process_group(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def wait_for(ready, proc, temp_dir: Path, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            if ready():
                return
        except Exception:
            pass
        if proc.poll() is not None or time.time() > deadline:
            logs = "".join(p.read_text()[-1500:] for p in temp_dir.glob("*.log"))
            raise RuntimeError(f"the test's Ray {what} did not start: {logs}")
        time.sleep(1)


def alive_nodes(cluster: RayHead) -> list[str]:
    nodes = cluster.get("/api/v0/nodes?limit=10")["data"]["result"]["result"]
    return sorted(n["node_id"] for n in nodes if n["state"] == "ALIVE")


@pytest.mark.slow
def test_shards_and_pipeline_tasks_use_both_nodes(two_nodes, tmp_path):
    env = {**two_nodes.env, "PYTHONPATH": str(ROOT)}
    nodes = alive_nodes(two_nodes)

    # the memory service: shard i on the i-th node
    service = f"mn-{uuid.uuid4().hex[:8]}"
    started = run_process(
        [sys.executable, "-c", f"from hybrid.memory.ray_store import connect_shards; connect_shards({service!r}, 2)"],
        cwd=ROOT,
        env=env,
        timeout=180,
    )
    assert started.returncode == 0, started.stderr[-3000:]
    stats = tmp_path / "stats.json"
    cmd = [sys.executable, "-m", "hybrid", "memory", "stats", "memory.num_shards=2", f"memory.service={service}"]
    shown = run_process([*cmd, "--json", str(stats)], cwd=ROOT, env=env, timeout=180)
    assert shown.returncode == 0, shown.stderr[-3000:]
    shard_nodes = [s["node"].split()[1] for s in json.loads(stats.read_text())["shards"]]
    assert len(set(shard_nodes)) == 2, shard_nodes  # one shard per node
    assert sorted(shard_nodes) == sorted(n[:8] for n in nodes)
    assert all(n in shown.stdout for n in shard_nodes)  # the table names them

    # the pipeline's range tasks run on both nodes
    build_synthetic_rust_repo(tmp_path / "sample", 240)
    data = f"pipeline.data_dir={tmp_path / 'data'}"
    for args in (
        ["repos", "add", str(tmp_path / "sample"), data],
        ["pipeline", "run", "sample", data, "pipeline.commits_per_task=20", "--no-progress"],
    ):
        ran = run_process([sys.executable, "-m", "hybrid", *args], cwd=ROOT, env=env, timeout=300)
        assert ran.returncode == 0, ran.stderr[-3000:]
    tasks = two_nodes.get("/api/v0/tasks?limit=10000&detail=1")["data"]["result"]["result"]
    ranges = Counter(t["node_id"] for t in tasks if "process_row" in t["name"] and t["state"] == "FINISHED")
    assert set(ranges) == set(nodes), (ranges, sorted({t["name"] for t in tasks}))
    print(f"range tasks per node: {dict(ranges)}; shards on {shard_nodes}")  # shown with -s
