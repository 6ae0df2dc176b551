"""Concurrency: commands run at once lose nothing and never mix their outputs (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.reliability.conftest import ROOT, assert_one_line_error, cli
from tests.repo_builder import RepoBuilder


def test_six_repos_added_at_once_are_all_registered(tmp_path):
    data = tmp_path / "data"
    sources = []
    for i in range(6):
        rb = RepoBuilder(tmp_path / f"src{i}")
        rb.write("a.py", f"def f():\n    return {i}\n")
        rb.commit("one")
        sources.append(rb.path)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda s: cli("repos", "add", str(s), f"pipeline.data_dir={data}"), sources))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    names = sorted(e["name"] for e in json.loads((data / "repos" / "registry.json").read_text()))
    assert names == [f"src{i}" for i in range(6)]


def test_concurrent_add_and_remove_keep_the_other_entries(tmp_path):
    from hybrid.cli.config import load_config
    from pipelines.repos import add_repo, list_repos, remove_repo

    data = tmp_path / "data"
    cfg = load_config([f"pipeline.data_dir={data}"]).pipeline
    srcs = []
    for i in range(4):
        rb = RepoBuilder(tmp_path / f"r{i}")
        rb.write("a.py", "x = 1\n")
        rb.commit("one")
        srcs.append(rb.path)
    add_repo(str(srcs[0]), None, cfg)
    add_repo(str(srcs[1]), None, cfg)
    with ThreadPoolExecutor(3) as pool:  # threads share nothing but the registry file (and its lock)
        futures = [
            pool.submit(remove_repo, "r0", cfg),
            pool.submit(add_repo, str(srcs[2]), None, cfg),
            pool.submit(add_repo, str(srcs[3]), None, cfg),
        ]
        for f in futures:
            f.result()
    assert sorted(e.name for e in list_repos(cfg)) == ["r1", "r2", "r3"]


def _hold_lock(path, seconds: float = 60) -> subprocess.Popen:
    code = (
        f"import sys, time; sys.path.insert(0, {str(ROOT)!r})\n"
        f"from hybrid.core.io import exclusive_lock\n"
        f"with exclusive_lock({str(path)!r}, 'x'):\n"
        f"    print('held', flush=True); time.sleep({seconds})\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_training_into_the_same_output_dir_is_refused(tmp_path):
    run = tmp_path / "run"
    holder = _hold_lock(run / ".train.lock")  # another training holds the folder
    try:
        data = tmp_path / "pairs.jsonl"
        data.write_text("".join(json.dumps({"input": f"a b {i}", "output": "b a"}) + "\n" for i in range(8)))
        r = cli(
            "train",
            "model=tiny_llama_hybrid",
            "train=tiny",
            f"data.train={data}",
            f"train.output_dir={run}",
            timeout=120,
        )
        assert_one_line_error(
            r.returncode, r.stderr, f"train.output_dir {run}", "in use", f"pid {holder.pid}", out=r.stdout
        )
        assert not list(run.glob("checkpoint_step_*")) and not (run / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()


def test_best_link_temp_names_are_unique(tmp_path):
    """Two writers of `best` at once never share a temp name (it was a fixed `.tmp-best`)."""
    from hybrid.training.checkpoints import best_checkpoint, set_best

    for step in (1, 2):
        (tmp_path / f"checkpoint_step_{step:06d}").mkdir()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: set_best(tmp_path, tmp_path / f"checkpoint_step_{1 + i % 2:06d}"), range(64)))
    assert best_checkpoint(tmp_path).name.startswith("checkpoint_step_")
    assert not list(tmp_path.glob(".tmp-*"))


def test_checkpoint_temp_folders_are_unique_per_run():
    from hybrid.training.checkpoints import temp_checkpoint_dir

    assert temp_checkpoint_dir("/o", 5, "run-a") != temp_checkpoint_dir("/o", 5, "run-b")


@pytest.mark.slow
def test_memory_service_read_with_another_shard_count_is_an_error(ray_session):
    from hybrid.core.errors import HybridError
    from hybrid.memory.ray_store import RayShardedStore, connect_shards

    service = f"rel-shards-{os.getpid()}-{int(time.time())}"
    store = RayShardedStore(capacity=8, chunk_size=2, num_shards=2, service=service)
    try:
        with pytest.raises(HybridError, match=r"memory.num_shards=2.*asks for 3"):
            RayShardedStore(capacity=8, chunk_size=2, num_shards=3, service=service)
        with pytest.raises(HybridError, match=r"memory.num_shards=2.*asks for 1"):
            connect_shards(service, 1, create=False)
        assert len(connect_shards(service, 2, create=False)) == 2  # the right count still works
    finally:
        for i in range(3):
            try:
                ray_session.kill(ray_session.get_actor(f"{service}-shard{i}", namespace="hybrid-memory"))
            except ValueError:
                pass
        del store
