"""Two Ray nodes on this machine — a head and a node that joins it with `ray start --address`, each with its own
ports, workers and cache folder (HYBRID_CACHE_DIR, set in its `ray start`'s environment) — as a cluster of two
machines with object storage and no shared folder looks to Ray. Every command's data and outputs are on the tests'
S3 server: `repos add`, `pipeline run`, `pipeline export`, a two-worker training with the Ray memory service and a
two-trial sweep, one of whose trials fails (the suite's test of a failing trial). The State API says where each
range task, Train worker (the training's and the trials') and memory shard ran: on both nodes. The exported files
equal a one-node run's (in this process, `--local`) byte for byte, and the training's losses equal an in-process
run's (rel. 1e-4, as in tests/hybrid/training/test_ddp.py).

Cost (back to back, 2 shared cores, load average 7-10): this file took 48 s before it ran the product on object
storage and 124 s after (pipeline run 12 s, the training 38 s, the sweep 51 s, the rest in-process)."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from io import StringIO
from pathlib import Path

import pytest

from hybrid.cli.config import load_config
from hybrid.core import storage
from hybrid.main import main
from hybrid.training.train import train
from pipelines.synthetic import build_synthetic_rust_repo
from tests.commands import finish_process
from tests.conftest import RayHead, other_worker_ports, start_ray_node, stop_process_group
from tests.hybrid.tuning.test_tune import DIVERGED

ROOT = Path(__file__).resolve().parents[2]
STAGES = "--stages=generate-ast,generate-ast-diffs,dedup,generate-fim"
VOLATILE = "stats.json"  # each stage's finish time and the worker processes' ids
TINY = ["model=tiny_llama_hybrid", "train=tiny", "data.max_length=32", "train.log_every=1", "train.eval_every=2"]
TRAIN = [*TINY, "train.max_iters=2", "train.warmup_iters=1", "train.learning_rate=3e-3"]


class TwoNodes(RayHead):
    caches: tuple[Path, Path]  # the head's and the second node's HYBRID_CACHE_DIR


@pytest.fixture(scope="module")
def two_nodes(s3_server):
    """A head (1 CPU, dashboard on for the State API) and a second node (1 CPU) joined to it, each with a cache folder
    of its own and the S3 server's credentials (as a cloud cluster's nodes hold theirs); stopped through their process
    groups (the node first), never `ray stop`."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rn", dir="/tmp"))  # short: socket paths have a length limit
    env = {**os.environ, **s3_server.env, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    caches = (temp_dir / "cache-head", temp_dir / "cache-node")
    procs = []
    try:
        head_env = {**env, "HYBRID_CACHE_DIR": str(caches[0])}
        head, ports = start_ray_node(temp_dir, head_env, num_cpus=1, dashboard=True, worker_ports=other_worker_ports(0))
        procs.append(head)
        cluster = TwoNodes(f"127.0.0.1:{ports['gcs']}", f"http://127.0.0.1:{ports['dashboard']}", str(temp_dir))
        cluster.caches = caches
        wait_for(lambda: cluster.get("/api/v0/nodes?limit=10")["data"]["result"]["result"], head, temp_dir, "head")
        node, _ = start_ray_node(
            temp_dir,
            {**env, "HYBRID_CACHE_DIR": str(caches[1])},
            num_cpus=1,
            worker_ports=other_worker_ports(1),
            address=cluster.address,
            log_name="node.log",
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


def actors(cluster: RayHead) -> list[dict]:
    return cluster.get("/api/v0/actors?limit=10000&detail=1")["data"]["result"]["result"]


def start(cluster: TwoNodes, driver_cache: Path, *args: str) -> tuple[subprocess.Popen, float]:
    """A command started from this machine (a driver of its own, with its own cache) against the two-node cluster;
    the test does its one-node work while it runs."""
    env = {**cluster.env, "PYTHONPATH": str(ROOT), "HYBRID_CACHE_DIR": str(driver_cache)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hybrid", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    return proc, time.time()


def finish(started: tuple[subprocess.Popen, float]) -> tuple[str, str]:
    proc, since = started
    out, err = finish_process(proc, timeout=300)
    print(f"{' '.join(proc.args[3:5])}: {time.time() - since:.1f} s")  # shown with -s
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    return out, err


def store_files(root: str) -> dict[str, bytes]:
    where = storage.at(root)
    return {rel: where.open_input(where.join(root, rel)).read() for rel in where.relative_files(root)}


def local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def without_volatile(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if not k.endswith(VOLATILE)}


def losses(output_dir) -> list[tuple[int, float]]:
    text = storage.read_text(storage.join(str(output_dir), "metrics.jsonl"))
    return [(r["step"], r["loss"]) for r in map(json.loads, text.splitlines()) if "loss" in r]


@pytest.mark.slow
def test_the_product_on_two_nodes_with_object_storage_only(two_nodes, s3_server, tmp_path, monkeypatch):
    """One test, one cluster: every Ray command costs a driver start here, so the commands serve several checks."""
    nodes = alive_nodes(two_nodes)
    driver = tmp_path / "driver-cache"
    bucket = s3_server.bucket()
    data, io = f"s3://{bucket}/data", f"s3://{bucket}/io"

    # the pipeline: 60 commits in ranges of 5 -> 12 range tasks over the two nodes, each of which unpacks the clone
    # archive into its own cache; outputs only in the bucket. `repos add` and `export` use no Ray: they run in this
    # process (the driver's machine, a cache of its own), which saves two interpreter starts
    build_synthetic_rust_repo(tmp_path / "src", 60)
    monkeypatch.setenv("HYBRID_CACHE_DIR", str(driver))
    assert main(["repos", "add", str(tmp_path / "src"), "--name", "sample", f"pipeline.data_dir={data}"]) == 0
    run = ["pipeline", "run", STAGES, "--no-progress", f"pipeline.data_dir={data}", "pipeline.commits_per_task=5"]
    running = start(two_nodes, driver, *run)

    # meanwhile, the same commands on one node, in this process (a cache of its own)
    monkeypatch.setenv("HYBRID_CACHE_DIR", str(tmp_path / "one-node-cache"))
    local = f"pipeline.data_dir={tmp_path / 'data'}"
    assert main(["repos", "add", str(tmp_path / "src"), "--name", "sample", local]) == 0
    assert main(["pipeline", "run", STAGES, "--local", "--no-progress", local]) == 0
    assert main(["pipeline", "export", local, "--output-dir", str(tmp_path / "io")]) == 0
    finish(running)
    monkeypatch.setenv("HYBRID_CACHE_DIR", str(driver))
    assert main(["pipeline", "export", f"pipeline.data_dir={data}", "--output-dir", io]) == 0
    tasks = two_nodes.get("/api/v0/tasks?limit=10000&detail=1")["data"]["result"]["result"]
    ranges = Counter(t["node_id"] for t in tasks if "process_row" in t["name"] and t["state"] == "FINISHED")
    assert set(ranges) == set(nodes), (ranges, sorted({t["name"] for t in tasks}))
    for cache in two_nodes.caches:  # each node fetched the clone itself: nothing was shared but the bucket
        assert len([p for p in (cache / "clones").iterdir() if p.is_dir()]) == 1, cache  # (and its .lock)

    # the same dataset and export as on one node, byte for byte
    assert without_volatile(store_files(f"{data}/ast_dataset")) == without_volatile(
        local_files(tmp_path / "data" / "ast_dataset")
    )
    exported = store_files(io)
    assert exported["train.jsonl"] and without_volatile(exported) == without_volatile(local_files(tmp_path / "io"))

    # a two-worker training (1 CPU each: one per node) on the exported pairs with the Ray memory service (two shards,
    # one per node), its output in the bucket; its losses equal an in-process run's with the same global batch
    service = f"mn-{uuid.uuid4().hex[:8]}"
    pairs = [f"data.train={io}/train.jsonl", f"data.validation={io}/validation.jsonl"]
    two = ["train.num_workers=2", "train.batch_size=2", "memory.backend=ray", "memory.num_shards=2"]
    running = start(
        two_nodes, driver, "train", *TRAIN, *pairs, *two, f"memory.service={service}", f"train.output_dir={data}/run"
    )
    one = [*TRAIN, *pairs, "train.num_workers=0", "train.batch_size=4", "memory.backend=torch"]
    reference = train(load_config([*one, f"train.output_dir={tmp_path / 'run'}"]).recipe(), quiet=True)
    finish(running)
    workers = {a["actor_id"]: a["node_id"] for a in actors(two_nodes) if a["class_name"] == "RayTrainWorker"}
    assert sorted(workers.values()) == nodes, workers  # one Train worker per node
    expected, got = losses(reference.output_dir), losses(f"{data}/run")
    assert [s for s, _ in got] == [s for s, _ in expected] == [1, 2]
    assert all(math.isclose(x, y, rel_tol=1e-4) for (_, x), (_, y) in zip(expected, got)), (expected, got)

    # the service's shards sit on different nodes (read from the State API: `hybrid memory stats` costs a driver)
    shards = {a["name"]: a["node_id"] for a in actors(two_nodes) if a.get("name", "").startswith(f"{service}-shard")}
    assert sorted(shards) == [f"{service}-shard0", f"{service}-shard1"] and sorted(shards.values()) == nodes, shards

    # a sweep of two trials at once, each a one-worker training that reserves 0.6 CPU, so the second worker cannot
    # join the first on its node; its output in the bucket. One trial fails in training (a learning rate of 1e30
    # passes the space check; its second step's loss is not finite): it is recorded with its error in one line and
    # the sweep goes on (the single-node tune tests cover every trial failing)
    sweep = [*TINY, *pairs, "tune=small", "tune.scheduler=fifo", "tune.max_iters=2", "tune.max_concurrent_trials=2"]
    sweep += [
        "tune.space={train.learning_rate: [1.0e-3, 1.0e+30]}",
        "train.cpus_per_worker=0.6",
        "data.cpus_per_task=0",
    ]
    out, err = finish(
        start(
            two_nodes,
            driver,
            "tune",
            *sweep,
            "data.read_tasks=1",
            f"tune.output_dir={data}/sweep",
            "--json",
            str(tmp_path / "sweep.json"),
        )
    )
    later = [a for a in actors(two_nodes) if a["actor_id"] not in workers]
    trial_workers = [a["node_id"] for a in later if a["class_name"] == "RayTrainWorker"]
    assert sorted(trial_workers) == nodes, trial_workers
    trials = [a["node_id"] for a in later if a["class_name"] == "ImplicitFunc"]  # Tune's trial actors (0.1 CPU:
    assert len(trials) == 2, trials  # where Ray puts them, often both on the head; their Train workers do the work)
    result = json.loads((tmp_path / "sweep.json").read_text())
    by_lr = {t["config"]["train.learning_rate"]: t for t in result["trials"]}
    good, bad = by_lr[1e-3], by_lr[1e30]
    assert (bad["status"], bad["steps"], bad["val_loss"], bad["checkpoint"]) == ("failed", 0, None, None)
    assert re.fullmatch(DIVERGED.format(lr=r"1e\+30") + r"[^\n]*", bad["error"]), bad["error"]
    assert (good["status"], good["steps"], good["error"]) == ("done", 2, None) and math.isfinite(good["val_loss"])
    assert result["best"]["trial_id"] == good["trial_id"] and storage.exists(f"{good['checkpoint']}/model.safetensors")
    assert load_config(base=f"{data}/sweep/best.yaml").train.learning_rate == 1e-3
    rows = {r["trial_id"]: r for r in csv.DictReader(StringIO(storage.read_text(f"{data}/sweep/results.csv")))}
    assert len(rows) == 2 and (rows[bad["trial_id"]]["status"], rows[bad["trial_id"]]["error"]) == (
        "failed",
        bad["error"],
    )
    assert rows[bad["trial_id"]]["val_loss"] == "" and rows[good["trial_id"]]["status"] == "done"
    # the progress line names the error; the traceback stays in Tune's error.txt (in the bucket), not on the terminal
    assert f"{bad['trial_id']} failed: {bad['error']} | " in out and "Traceback" not in out + err
    assert "training diverged" in storage.read_text(f"{data}/sweep/tune/{bad['trial_id']}/error.txt")
    print(f"range tasks per node: {dict(ranges)}; trials on {trials}; trial workers on {trial_workers}")
