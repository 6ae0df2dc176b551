"""`hybrid memory build` over a real git repository at a commit, `hybrid memory stats`, and evaluating against the
built memory through `SharedMemoryView` (a real local Ray, a tiny model trained for one step)."""

from __future__ import annotations

import argparse
import json
import subprocess
import uuid

import pytest
import torch

from hybrid.cli import run_command
from hybrid.cli.memory import register
from hybrid.core.errors import HybridError


def cli(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return run_command(args.func, args)


def _git_repo(path):
    path.mkdir()
    run = lambda *a: subprocess.run(["git", "-C", str(path), *a], check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    run("config", "user.email", "t@example.com")
    run("config", "user.name", "t")
    (path / "a.py").write_text("def alpha(beta):\n    return beta * 2\n" * 20)
    (path / "b.txt").write_text("gamma delta epsilon\n" * 30)
    run("add", ".")
    run("commit", "-q", "-m", "one")
    (path / "a.py").write_text("changed after the commit\n")  # the build reads the commit, not the worktree
    run("commit", "-qam", "two")
    return path


@pytest.mark.slow
def test_build_stats_and_read_only_evaluation(ray_session, tmp_path, capsys):
    from hybrid.cli.config import load_config
    from hybrid.memory.ray_store import RayShardedStore, SharedMemoryView
    from hybrid.memory.store import MemoryStore
    from hybrid.training.evaluate import load
    from hybrid.training.train import train
    from tests.hybrid.conftest import make_pairs
    from tests.hybrid.training.conftest import TINY

    data = make_pairs(tmp_path / "train.jsonl", 8, 0)
    run = train(
        load_config(
            [
                *TINY,
                f"data.train={data}",
                "train.max_iters=1",
                "train.eval_every=1",
                "train.num_workers=0",
                f"train.output_dir={tmp_path / 'run'}",
            ]
        ).recipe(),
        quiet=True,
    )
    repo = _git_repo(tmp_path / "repo")
    service = f"test-build-{uuid.uuid4().hex[:8]}"
    conf = [f"memory.service={service}", "memory.num_shards=2", "memory.shard_cpus=0"]
    out = tmp_path / "build.json"
    assert (
        cli(
            [
                "memory",
                "build",
                *conf,
                "--checkpoint",
                str(run.output_dir),
                "--namespace",
                "repo",
                "--repo",
                str(repo),
                "--commit",
                "HEAD~1",
                "--capacity-tokens",
                "4096",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    built = json.loads(out.read_text())
    assert built["texts"] == 2 and built["tokens_written"] > 0 and built["vectors"] > 0
    assert "'repo'" in capsys.readouterr().out
    stats_json = tmp_path / "stats.json"
    assert cli(["memory", "stats", *conf, "--namespaces", "--json", str(stats_json)]) == 0
    shown = capsys.readouterr().out
    assert f"{service}-shard0..1" in shown and "repo/layer1" in shown
    shards = json.loads(stats_json.read_text())["shards"]
    assert sum(s["vectors"] for s in shards) == built["vectors"]
    node = f"{ray_session.util.get_node_ip_address()} {ray_session.get_runtime_context().get_node_id()[:8]}"
    assert [s["node"] for s in shards] == [node, node] and node in shown  # where each shard runs

    ck = load(run.output_dir, device="cpu")
    store = RayShardedStore(
        ck.model.config.chunks_capacity, ck.model.config.chunk_size, num_shards=2, service=service, shard_cpus=0
    )
    with pytest.raises(HybridError, match="unknown namespace 'nope'"):
        SharedMemoryView(store, "nope")
    view = SharedMemoryView(store, "repo")
    assert isinstance(view, MemoryStore)
    D, Hkv = ck.model.config.head_size, ck.model.config.kv_heads
    res = view.search(["anything/layer1", "other/layer1"], torch.randn(2, Hkv, 3, D), k=2)
    assert res.mask.all()  # every row reads the shared memory
    ids = torch.tensor([ck.tokenizer.encode("alpha beta gamma delta " * 6)[:48]])
    with torch.no_grad():
        ck.model(ids, memory_store=view, namespaces=["repo"])
    assert store.namespace_info("repo")["vectors"] == built["vectors"]  # evaluation never writes
    assert (
        cli(
            [
                "memory",
                "build",
                *conf,
                "--checkpoint",
                str(run.output_dir),
                "--namespace",
                "x",
                "--repo",
                str(repo),
                "--commit",
                "nosuchrev",
            ]
        )
        == 2
    )
    assert "--commit: 'nosuchrev' is not a commit of" in capsys.readouterr().err
    store.shutdown()
