"""The synthetic Rust history and `hybrid bench datagen` (single-process path: no Ray start-up)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from hybrid.cli.config import load_config
from hybrid.main import main
from pipelines.dataset_tools import ast_coverage
from pipelines.repos import add_repo
from pipelines.run import run_pipeline
from pipelines.synthetic import build_synthetic_rust_repo


def test_synthetic_rust_repo_is_a_real_history_that_parses(tmp_path):
    repo = build_synthetic_rust_repo(tmp_path / "syn", 120, seed=3)
    log = subprocess.run(
        ["git", "-C", str(repo), "log", "--first-parent", "--format=%H %P"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert len(log) == 120
    assert any(len(line.split()) == 3 for line in log), "expected a merge commit"
    cfg = load_config([f"pipeline.data_dir={tmp_path / 'data'}"])
    add_repo(str(repo), "syn", cfg.pipeline)
    s = run_pipeline(
        ["syn"], cfg.pipeline, cfg.llm, local=True, progress=False, stages=["generate-ast", "generate-ast-diffs"]
    )
    cov = ast_coverage(cfg.pipeline)["syn"]
    assert cov["rust"]["parsed"] > 120 and cov["rust"].get("parse_error", 0) == 0
    diffs = s.stages["generate-ast-diffs"]["counts"]
    assert diffs["added"] > 0 and diffs["modified"] > 0 and diffs["deleted"] > 0
    assert s.stages["generate-ast"]["drops"]["lock_file"] > 0  # Cargo.lock changes now and then
    renamed = [
        f
        for p in (tmp_path / "data/ast_dataset/syn").glob("commit_*/commit_data.json")
        for f in json.loads(p.read_text())["files"]
        if f["status"] == "renamed"
    ]
    assert renamed


def test_incremental_parsing_matches_fresh_parsing(tmp_path):
    from pipelines.range_worker import RangeWorker

    repo = build_synthetic_rust_repo(tmp_path / "syn", 150, seed=5)
    cfg = load_config([f"pipeline.data_dir={tmp_path / 'data'}"])
    add_repo(str(repo), "syn", cfg.pipeline)
    # every incremental update is compared with a fresh parse; a difference raises IncrementalMismatch
    RangeWorker.verify_incremental = True
    try:
        s = run_pipeline(
            ["syn"], cfg.pipeline, cfg.llm, local=True, progress=False, stages=["generate-ast", "generate-ast-diffs"]
        )
    finally:
        RangeWorker.verify_incremental = False
    assert s.worker["incremental_parses"] > 100


def test_an_edit_in_a_decorator_or_a_typedef_name_keeps_the_declaration(tmp_path):
    """The record's code starts at the decorator (or the typedef) above the node the query finds: an
    incremental update there must re-read the whole definition, not lose it."""
    import pipelines.range_worker as rw
    from tests.repo_builder import RepoBuilder

    rb = RepoBuilder(tmp_path / "src")
    py = (
        "import functools\n\n\n@functools.lru_cache(\n    maxsize=1,\n    typed=False,\n)\ndef cached(n):\n"
        "    return n\n\n\ndef plain():\n    pass\n"
    )
    c = "typedef struct {\n    int x;\n} Point;\n\nint area(int w) {\n    return w;\n}\n"
    rb.write("cache.py", py)
    rb.write("geo.c", c)
    rb.commit("one")
    rb.write("cache.py", py.replace("maxsize=1", "maxsize=2"))
    rb.write("geo.c", c.replace("} Point;", "} Vec2;"))
    rb.commit("two")
    cfg = load_config([f"pipeline.data_dir={tmp_path / 'data'}"])
    add_repo(str(tmp_path / "src"), "wrap", cfg.pipeline)
    rw.RangeWorker.verify_incremental = True
    try:
        s = run_pipeline(
            ["wrap"], cfg.pipeline, cfg.llm, local=True, progress=False, stages=["generate-ast", "generate-ast-diffs"]
        )
    finally:
        rw.RangeWorker.verify_incremental = False
    assert s.worker["incremental_parses"] == 2
    diffs = (tmp_path / "data/ast_dataset/wrap/commit_1/diff_ast.jsonl").read_text().splitlines()
    assert [(r["id"], r["status"]) for r in map(json.loads, diffs)] == [
        ("cache.py::function::cached", "modified"),
        ("geo.c::struct::Vec2", "added"),
        ("geo.c::struct::Point", "deleted"),
    ]


def test_the_incremental_check_can_fail(tmp_path, monkeypatch):
    """The check above is real: an incremental update that drops a declaration is caught (under -O too)."""
    import pipelines.range_worker as rw

    real = rw.update_declarations

    def lossy(*args, **kwargs):
        parsed = real(*args, **kwargs)
        parsed.declarations = parsed.declarations[1:]
        return parsed

    repo = build_synthetic_rust_repo(tmp_path / "syn", 20, seed=5)
    cfg = load_config([f"pipeline.data_dir={tmp_path / 'data'}"])
    add_repo(str(repo), "syn", cfg.pipeline)
    monkeypatch.setattr(rw, "update_declarations", lossy)
    monkeypatch.setattr(rw.RangeWorker, "verify_incremental", True)
    rw._WORKERS.clear()  # no worker (and parse cache) left from an earlier test
    with pytest.raises(rw.IncrementalMismatch):
        run_pipeline(
            ["syn"], cfg.pipeline, cfg.llm, local=True, progress=False, stages=["generate-ast", "generate-ast-diffs"]
        )


def test_bench_datagen_reports_rates_and_ratio(tmp_path, capsys):
    repo = build_synthetic_rust_repo(tmp_path / "syn", 60)
    out = tmp_path / "bench.json"
    assert main(["bench", "datagen", str(repo), "--no-ray", "--repeat", "1", "--json", str(out)]) == 0
    [r] = json.loads(out.read_text())["results"]
    assert r["commits"] == 60 and r["declarations"] > 0 and r["diff_records"] > 0
    assert r["ratio"] > 0 and r["commits_per_s"] > 0 and r["git_cpu_s"] > 0
    assert "ratio" in capsys.readouterr().out
    assert main(["bench", "datagen", str(tmp_path / "nope"), "--no-ray"]) == 2


def test_bench_datagen_times_several_repositories_alone_and_together(tmp_path, capsys):
    repos = [
        build_synthetic_rust_repo(tmp_path / name, n, seed=i)
        for i, (name, n) in enumerate((("a", 30), ("b", 50), ("c", 20)))
    ]
    out = tmp_path / "bench.json"
    load_before = os.getloadavg()[0]
    assert (
        main(
            [
                "bench",
                "datagen",
                *map(str, repos),
                "--no-ray",
                "--repeat",
                "1",
                "--ours-repeat",
                "2",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    loads = (load_before, os.getloadavg()[0])
    assert json.loads(out.read_text())["command"].endswith("--no-ray --repeat 1 --ours-repeat 2")
    results = json.loads(out.read_text())["results"]
    assert [r["name"] for r in results] == ["a", "b", "c", "3 together"]
    together = results[-1]
    assert together["commits"] == 100
    assert together["declarations"] == sum(r["declarations"] for r in results[:3])
    assert together["diff_records"] == sum(r["diff_records"] for r in results[:3])
    assert together["git_log_p_s"] == pytest.approx(sum(r["git_log_p_s"] for r in results[:3]), abs=0.01)
    # the machine's 1-minute load while it ran (it moves by well under 1 in the bench's few seconds)
    assert together["commits_per_s"] > 0 and min(loads) - 1 <= together["load_average"] <= max(loads) + 1
    assert "together" in capsys.readouterr().out


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_gives_the_same_files(tmp_path):
    """A real kill (SIGKILL of the CLI process part-way), then a second run: nothing duplicated or corrupt."""
    import os
    import signal
    import sys
    import time

    repo = build_synthetic_rust_repo(tmp_path / "syn", 400, seed=1)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    for data in (killed, clean):
        assert main(["repos", "add", str(repo), "--name", "syn", f"pipeline.data_dir={data}"]) == 0
    cmd = [
        sys.executable,
        "-m",
        "hybrid",
        "pipeline",
        "run",
        "--local",
        "--no-progress",
        "--stages",
        "generate-ast,generate-ast-diffs",
        f"pipeline.data_dir={killed}",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = killed / "ast_dataset/syn/commit_30/diff_ast.jsonl"
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    last = killed / "ast_dataset/syn/commit_399/diff_ast.jsonl"
    assert not last.exists(), "the run finished before the kill: nothing was interrupted"
    assert (
        main(
            [
                "pipeline",
                "run",
                "--local",
                "--no-progress",
                "--stages",
                "generate-ast,generate-ast-diffs",
                f"pipeline.data_dir={killed}",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "pipeline",
                "run",
                "--local",
                "--no-progress",
                "--stages",
                "generate-ast,generate-ast-diffs",
                f"pipeline.data_dir={clean}",
            ]
        )
        == 0
    )
    for n in range(400):
        for name in ("commit_data.json", "ast.jsonl", "diff_ast.jsonl"):
            a = (killed / f"ast_dataset/syn/commit_{n}/{name}").read_bytes()
            assert a == (clean / f"ast_dataset/syn/commit_{n}/{name}").read_bytes(), (n, name)
    leftovers = [p.name for p in (killed / "ast_dataset/syn").glob("commit_*/.*.tmp")]
    assert not leftovers, leftovers  # the file being written at the kill: its commit was redone, its temp removed
