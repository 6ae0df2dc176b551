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
    on_ray = load_config([f"pipeline.data_dir={tmp_path / 'ray'}", "pipeline.commits_per_task=3",
                          "pipeline.num_workers=2"])
    for cfg in (local, on_ray):
        add_repo(str(tmp_path / "src"), "sample", cfg.pipeline)
    expected = run_pipeline(["sample"], local.pipeline, local.llm, local=True, progress=False)
    # a partial earlier run: commits 0-2 are done, so Ray gets ranges [3..5] and [6..7]
    for n in range(3):
        d = tmp_path / "ray" / "ast_dataset" / "sample" / f"commit_{n}"
        d.mkdir(parents=True)
        for name in ("commit_data.json", "ast.jsonl", "diff_ast.jsonl", "fim_dataset.json"):
            (d / name).write_bytes((tmp_path / "local" / "ast_dataset" / "sample" / f"commit_{n}" / name).read_bytes())
    got = run_pipeline(["sample"], on_ray.pipeline, on_ray.llm, progress=False)
    assert got.stages["generate-ast"]["counts"]["skipped_done"] == 3
    assert got.stages["generate-ast"]["counts"]["commits"] == 5
    done_samples = sum(len(json.loads((tmp_path / "local" / "ast_dataset" / "sample" / f"commit_{n}" /
                                       "fim_dataset.json").read_text())) for n in range(3))
    assert got.stages["generate-fim"]["counts"]["samples"] + done_samples == \
        expected.stages["generate-fim"]["counts"]["samples"]
    for n in range(8):
        for name in ("commit_data.json", "ast.jsonl", "diff_ast.jsonl", "fim_dataset.json"):
            assert (tmp_path / "ray" / "ast_dataset" / "sample" / f"commit_{n}" / name).read_bytes() == \
                (tmp_path / "local" / "ast_dataset" / "sample" / f"commit_{n}" / name).read_bytes(), (n, name)
