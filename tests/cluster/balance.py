"""Per-node range-task counts and busy time of `hybrid pipeline run` on a two-node Ray cluster on this machine.

usage: PYTHONPATH=. .venv/bin/python tests/cluster/balance.py REPO_PATH [key=value ...]   (NODE_CPUS=1 per node)

Starts its own two nodes (as tests/cluster/test_multinode.py does), runs `repos add` and `pipeline run --stages
generate-ast,generate-ast-diffs` with a local data folder, and reads the range tasks' start and end times from the
State API. Numbers are recorded in pipelines/run.py (`plan_ranges`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from tests.cluster.test_multinode import alive_nodes, wait_for
from tests.conftest import RayHead, other_worker_ports, start_ray_node, stop_process_group


def main() -> None:
    repo, extra = sys.argv[1], sys.argv[2:]
    cpus = int(os.environ.get("NODE_CPUS", "1"))
    temp_dir = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    procs = []
    try:
        head, ports = start_ray_node(
            temp_dir,
            {**env, "HYBRID_CACHE_DIR": str(temp_dir / "c0")},
            num_cpus=cpus,
            dashboard=True,
            worker_ports=other_worker_ports(0),
        )
        procs.append(head)
        cluster = RayHead(f"127.0.0.1:{ports['gcs']}", f"http://127.0.0.1:{ports['dashboard']}", str(temp_dir))
        wait_for(lambda: cluster.get("/api/v0/nodes?limit=10")["data"]["result"]["result"], head, temp_dir, "head")
        node, _ = start_ray_node(
            temp_dir,
            {**env, "HYBRID_CACHE_DIR": str(temp_dir / "c1")},
            num_cpus=cpus,
            worker_ports=other_worker_ports(1),
            address=cluster.address,
            log_name="node.log",
        )
        procs.append(node)
        wait_for(lambda: len(alive_nodes(cluster)) == 2, node, temp_dir, "node")
        cenv = {**cluster.env, "PYTHONPATH": os.getcwd(), "HYBRID_CACHE_DIR": str(temp_dir / "driver")}
        data = f"pipeline.data_dir={temp_dir / 'data'}"
        hyb = [sys.executable, "-m", "hybrid"]
        subprocess.run([*hyb, "repos", "add", repo, "--name", "self", data], env=cenv, check=True, capture_output=True)
        started = time.time()
        subprocess.run(
            [*hyb, "pipeline", "run", "--stages=generate-ast,generate-ast-diffs", "--no-progress", data, *extra],
            env=cenv,
            check=True,
            capture_output=True,
        )
        wall = time.time() - started
        tasks = cluster.get("/api/v0/tasks?limit=10000&detail=1")["data"]["result"]["result"]
        ranges = [t for t in tasks if "process_row" in t["name"] and t["state"] == "FINISHED"]
        per_node = defaultdict(list)
        for t in ranges:
            per_node[t["node_id"][:8]].append((t["start_time_ms"] / 1e3, t["end_time_ms"] / 1e3))
        first = min(s for spans in per_node.values() for s, _ in spans)
        last = max(e for spans in per_node.values() for _, e in spans)
        print(
            f"pipeline run {wall:.1f} s wall; range tasks {first - first:.0f}..{last - first:.1f} s; "
            f"load average {os.getloadavg()}"
        )
        for n, spans in sorted(per_node.items()):
            busy = sum(e - s for s, e in spans)
            print(
                f"node {n}: {len(spans)} tasks, busy {busy:.1f} s of {last - first:.1f} s "
                f"({busy / (last - first):.0%}), last task ended at {max(e for _, e in spans) - first:.1f} s; "
                f"task seconds {sorted(round(e - s, 1) for s, e in spans)}"
            )
    finally:
        for proc in reversed(procs):
            stop_process_group(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
