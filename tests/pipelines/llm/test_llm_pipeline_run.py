"""generate-tasks and generate-reasoning inside `hybrid pipeline run` (between generate-ast-diffs and
generate-fim) over a real git history, with and without an LLM."""

from __future__ import annotations

import json

import pytest

from hybrid.cli.config import load_config
from hybrid.main import main
from pipelines import run as pipeline_run
from pipelines.repos import add_repo
from tests.repo_builder import build_sample_repo


@pytest.fixture
def stages():
    """pipeline run's stage list, with the LLM stages at their place (pipelines/run.py STAGES)."""
    names = pipeline_run.stage_names()
    # the dedup stage (pipelines/dedup.py) sits between them, so no LLM call is spent on a duplicate
    assert names.index("generate-ast-diffs") + 1 == names.index("dedup")
    assert names.index("dedup") + 1 == names.index("generate-tasks")
    assert names.index("generate-tasks") + 1 == names.index("generate-reasoning")
    assert names.index("generate-reasoning") + 1 == names.index("generate-fim")
    return pipeline_run


def _setup(tmp_path):
    build_sample_repo(tmp_path / "src")
    cfg = load_config(
        [
            f"pipeline.data_dir={tmp_path / 'data'}",
            "llm.runner=local",
            "llm.requests_per_minute=6000",
            "llm.tokens_per_minute=100000000",
        ]
    )
    add_repo(str(tmp_path / "src"), "sample", cfg.pipeline)
    return cfg, tmp_path / "data" / "ast_dataset" / "sample"


def test_pipeline_run_with_an_llm(stages, llm_env, tmp_path):
    cfg, repo = _setup(tmp_path)
    summary = stages.run_pipeline(["sample"], cfg.pipeline, cfg.llm, local=True, progress=False)
    names = list(summary.stages)
    assert (
        names.index("generate-ast-diffs")
        < names.index("generate-tasks")
        < names.index("generate-reasoning")
        < names.index("generate-fim")
    )
    assert summary.stages["generate-reasoning"]["counts"]["ok"] >= 3
    commits = sorted(repo.glob("commit_*"), key=lambda p: int(p.name.split("_")[1]))
    filtered = {json.loads(line)["commit"] for line in (repo / "filtered_commits.jsonl").read_text().splitlines()}
    assert filtered == {6}  # the sample's merge: no task asked for it
    assert not (repo / "commit_6" / "task.json").exists()
    commits = [c for c in commits if int(c.name.split("_")[1]) not in filtered]
    assert all(json.loads((c / "task.json").read_text())["source"] == "llm" for c in commits)
    with_reasoning = [c for c in commits if (c / "reasoning.json").exists()]
    assert with_reasoning
    for c in with_reasoning:
        reasoning = {e["function_id"]: e["reasoning"] for e in json.loads((c / "reasoning.json").read_text())}
        fim = json.loads((c / "fim_dataset.json").read_text()) if (c / "fim_dataset.json").exists() else []
        tasks = json.loads((c / "task.json").read_text())["tasks"]
        for sample in fim:  # generate-fim ran after and attached the texts
            assert sample["reasoning"] == reasoning.get(sample["function_id"])
            relevant = [
                t["description"] for t in tasks if not t["function_ids"] or sample["function_id"] in t["function_ids"]
            ]
            assert sample["task"] == ("\n".join(relevant) or None)
        assert any(s["task"] and s["reasoning"] for s in fim) or not fim
    assert (
        len(llm_env.chat_requests())
        == summary.stages["generate-tasks"]["counts"]["requests"]
        + summary.stages["generate-reasoning"]["counts"]["requests"]
    )


def test_pipeline_run_without_an_llm(stages, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg, repo = _setup(tmp_path)
    rc = main(
        [
            "pipeline",
            "run",
            "sample",
            f"pipeline.data_dir={tmp_path / 'data'}",
            "--local",
            "--no-progress",
            "--json",
            str(tmp_path / "summary.json"),
        ]
    )
    assert rc == 0
    assert "generate-reasoning: skipped, it needs an LLM" in capsys.readouterr().err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stages"]["generate-reasoning"]["counts"] == {"skipped_no_llm": 1}
    assert summary["stages"]["generate-tasks"]["counts"]["from_commit_message"] >= 1
    assert json.loads((repo / "commit_0" / "task.json").read_text())["source"] == "commit_message"
    assert not list(repo.glob("commit_*/reasoning.json"))
