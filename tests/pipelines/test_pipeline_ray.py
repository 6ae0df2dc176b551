"""`pipeline run` through Ray Data (the `ray_session` fixture): same files as the in-process path."""

from __future__ import annotations

import json

import pytest

from hybrid.cli.config import load_config
from pipelines.repos import add_repo
from pipelines.run import run_pipeline
from tests.repo_builder import build_sample_repo


@pytest.mark.slow
def test_ray_data_run_matches_the_local_run_and_resumes(ray_session, tmp_path):
    build_sample_repo(tmp_path / "src")
    local = load_config([f"pipeline.data_dir={tmp_path / 'local'}"])
    on_ray = load_config(
        [f"pipeline.data_dir={tmp_path / 'ray'}", "pipeline.commits_per_task=3", "pipeline.num_workers=2"]
    )
    for cfg in (local, on_ray):
        add_repo(str(tmp_path / "src"), "sample", cfg.pipeline)
    expected = run_pipeline(["sample"], local.pipeline, local.llm, local=True, progress=False)
    # a partial earlier run: commits 0-2 are done, so Ray gets ranges [3..4] and [5..7]
    for n in range(3):
        d = tmp_path / "ray" / "ast_dataset" / "sample" / f"commit_{n}"
        d.mkdir(parents=True)
        for name in ("commit_data.json", "ast.jsonl", "diff_ast.jsonl", "fim_dataset.json"):
            (d / name).write_bytes((tmp_path / "local" / "ast_dataset" / "sample" / f"commit_{n}" / name).read_bytes())
    got = run_pipeline(["sample"], on_ray.pipeline, on_ray.llm, progress=False)
    assert got.stages["generate-ast"]["counts"]["skipped_done"] == 3
    assert got.stages["generate-ast"]["counts"]["commits"] == 5
    done_samples = sum(
        len(
            json.loads((tmp_path / "local" / "ast_dataset" / "sample" / f"commit_{n}" / "fim_dataset.json").read_text())
        )
        for n in range(3)
    )
    assert (
        got.stages["generate-fim"]["counts"]["samples"] + done_samples
        == expected.stages["generate-fim"]["counts"]["samples"]
    )
    for n in range(8):
        for name in ("commit_data.json", "ast.jsonl", "diff_ast.jsonl", "fim_dataset.json"):
            assert (tmp_path / "ray" / "ast_dataset" / "sample" / f"commit_{n}" / name).read_bytes() == (
                tmp_path / "local" / "ast_dataset" / "sample" / f"commit_{n}" / name
            ).read_bytes(), (n, name)


def _register_three(tmp_path, *overrides):
    """Three real histories of different lengths registered under tmp_path/data."""
    from pipelines.synthetic import build_synthetic_rust_repo

    build_sample_repo(tmp_path / "sample")
    build_synthetic_rust_repo(tmp_path / "syn_a", 40, seed=1)
    build_synthetic_rust_repo(tmp_path / "syn_b", 90, seed=2)
    cfg = load_config([f"pipeline.data_dir={tmp_path / 'data'}", *overrides])
    for name in ("sample", "syn_a", "syn_b"):
        add_repo(str(tmp_path / name), name, cfg.pipeline)
    return cfg


def test_several_repositories_form_one_queue_longest_ranges_first(tmp_path):
    from pipelines.repos import get_repo
    from pipelines.run import plan_rows

    cfg = _register_three(tmp_path, "pipeline.num_workers=2", "pipeline.commits_per_task=30")
    repos = [get_repo(n, cfg.pipeline) for n in ("sample", "syn_a", "syn_b")]
    rows, _ = plan_rows(repos, cfg.pipeline, ["ast", "ast-diffs"], force=False)
    sizes = [len(r["numbers"]) for r in rows]
    assert sizes == sorted(sizes, reverse=True)
    # 90 commits over 2 workers, at most 30 a range -> 4 ranges (a multiple of the workers); 40 -> 2; 8 -> 2
    assert sizes == [23, 23, 22, 22, 20, 20, 4, 4]
    assert [r["repo"] for r in rows] == ["syn_b"] * 4 + ["syn_a"] * 2 + ["sample"] * 2
    assert [r["numbers"][0] for r in rows[:4]] == [67, 44, 22, 0]  # the later commits first
    assert {r["repo"] for r in rows} == {"sample", "syn_a", "syn_b"}
    for name, total in (("sample", 8), ("syn_a", 40), ("syn_b", 90)):  # every commit once, ranges contiguous
        numbers = sorted(n for r in rows if r["repo"] == name for n in r["numbers"])
        assert numbers == list(range(total))
        assert all(
            r["numbers"] == list(range(r["numbers"][0], r["numbers"][-1] + 1)) for r in rows if r["repo"] == name
        )


@pytest.mark.slow
def test_several_repositories_run_together_over_all_workers(ray_session, tmp_path):
    stages = ["generate-ast", "generate-ast-diffs"]
    cfg = _register_three(tmp_path / "ray", "pipeline.num_workers=2")
    local = _register_three(tmp_path / "local")
    expected = run_pipeline(None, local.pipeline, local.llm, local=True, progress=False, stages=stages)
    got = run_pipeline(None, cfg.pipeline, cfg.llm, progress=False, stages=stages)
    assert got.stages == expected.stages
    assert len({pid for pids in got.processes.values() for pid in pids}) == 2  # both workers took ranges
    assert len(got.processes["syn_b"]) == 2  # the longest repository was spread over both
    for name in ("sample", "syn_a", "syn_b"):
        for path in sorted((tmp_path / "local" / "data" / "ast_dataset" / name).rglob("*.json*")):
            if path.name != "stats.json":
                twin = (
                    tmp_path
                    / "ray"
                    / "data"
                    / "ast_dataset"
                    / name
                    / path.relative_to(tmp_path / "local" / "data" / "ast_dataset" / name)
                )
                assert twin.read_bytes() == path.read_bytes(), twin


def test_num_workers_0_is_one_task_per_cpu_of_the_cluster(ray_session):
    """`pipeline.num_workers=0` (the default): as many ranges at once as the Ray cluster has CPUs, or this machine
    with --local; a number is kept."""
    import os

    from hybrid.core.ray_utils import task_slots

    assert task_slots(3, local=False) == 3 and task_slots(0, local=True) == (os.cpu_count() or 1)
    assert task_slots(0, local=False) == int(ray_session.cluster_resources()["CPU"])
    assert load_config([]).pipeline.num_workers == 0
