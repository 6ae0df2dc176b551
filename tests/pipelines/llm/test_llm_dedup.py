"""No LLM call is spent on a duplicate: the fork pair (tests/pipelines/test_pipeline_dedup.py) through `pipeline
run` against the loopback chat-completions server, with dedup on and off."""

from __future__ import annotations

from hybrid.cli.config import load_config
from pipelines.repos import add_repo
from pipelines.run import run_pipeline
from tests.pipelines.test_pipeline_dedup import _fork_pair

FAST = ["llm.requests_per_minute=6000", "llm.tokens_per_minute=100000000"]


def _run(tmp_path, *overrides: str):
    up, fork = _fork_pair(tmp_path)
    cfg = load_config([f"pipeline.data_dir={tmp_path / 'data'}", "llm.runner=local", *FAST, *overrides])
    add_repo(str(up), "upstream", cfg.pipeline)
    add_repo(str(fork), "fork", cfg.pipeline)
    return run_pipeline(["upstream", "fork"], cfg.pipeline, cfg.llm, local=True, progress=False)


def test_duplicates_and_filtered_commits_reach_no_llm(llm_env, tmp_path):
    summary = _run(tmp_path / "on")
    # kept: upstream's 3 changes (commits 0-2) and the fork's own 2 (commits 4, 5); one task request per commit
    # with a kept change and one reasoning request per kept change
    assert summary.stages["generate-tasks"]["counts"]["requests"] == 5
    assert summary.stages["generate-reasoning"]["counts"]["requests"] == 5
    assert len(llm_env.chat_requests()) == 10
    fork = tmp_path / "on/data/ast_dataset/fork"
    for n in (0, 1, 2, 3):  # the upstream's commits (duplicates) and the lock-file commit: nothing asked
        assert not (fork / f"commit_{n}/task.json").exists() and not (fork / f"commit_{n}/reasoning.json").exists()
    assert (fork / "commit_5/reasoning.json").exists()

    before = len(llm_env.chat_requests())
    off = _run(tmp_path / "off", "pipeline.dedup=false", "pipeline.commit_filters=[]")
    reasoning_off = off.stages["generate-reasoning"]["counts"]["requests"]
    assert reasoning_off == 8  # every change of both histories (answers cached per prompt: the copies ask again)
    assert len(llm_env.chat_requests()) - before > 10
