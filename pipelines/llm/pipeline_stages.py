"""generate-tasks and generate-reasoning as stages of `hybrid pipeline run` (pipelines/run.py `STAGES`).

A stage there is `run(repos, cfg, force) -> {"counts": {...}, "drops": {...}}`. Light on import: run.py imports
this module; openai and ray load only when a stage runs. Without an LLM, generate-tasks uses the cleaned commit
messages and generate-reasoning is skipped with a one-line message (not an error)."""

from __future__ import annotations

import sys
from pathlib import Path

_COUNT_KEYS = ("commits", "already_done", "ok", "partial", "failed", "written", "requests", "cached_answers",
               "retries", "rate_limited", "server_errors", "timeouts", "invalid_answers")


def _present(repos, cfg) -> list[str]:
    root = Path(cfg.pipeline.data_dir) / "ast_dataset"
    return [r.name for r in repos if (root / r.name).is_dir()]


def _settings():
    from pipelines.llm.commands import _settings as load

    return load()


def _counts(summary: dict) -> dict:
    return {k: int(summary[k]) for k in _COUNT_KEYS if summary.get(k)}


def run_generate_tasks(repos, cfg, force: bool = False) -> dict:
    names = _present(repos, cfg)
    if not names:
        return {"counts": {}, "drops": {}}
    settings = _settings()
    if not settings.configured:
        from pipelines.llm.commands import tasks_from_messages

        summary = tasks_from_messages(cfg.pipeline.data_dir, names, force, cfg.llm.max_tasks_per_commit)
        print("generate-tasks: no LLM configured, tasks from cleaned commit messages (source: commit_message)",
              file=sys.stderr)
        return {"counts": {**_counts(summary), "from_commit_message": int(summary["commits"])},
                "drops": dict(summary.get("drops", {}))}
    from pipelines.llm.runner import run_llm_stage

    summary = run_llm_stage("generate-tasks", cfg.llm, settings, cfg.pipeline.data_dir, names, force).as_dict()
    return {"counts": _counts(summary),
            "drops": {**summary["drops"], **{f"failed:{k}": v for k, v in summary["failures_by_reason"].items()}}}


def run_generate_reasoning(repos, cfg, force: bool = False) -> dict:
    from pipelines.llm.settings import NO_LLM_MESSAGE

    names = _present(repos, cfg)
    if not names:
        return {"counts": {}, "drops": {}}
    settings = _settings()
    if not settings.configured:
        print(f"generate-reasoning: skipped, it needs an LLM: {NO_LLM_MESSAGE}", file=sys.stderr)
        return {"counts": {"skipped_no_llm": 1}, "drops": {}}
    from pipelines.llm.runner import run_llm_stage

    summary = run_llm_stage("generate-reasoning", cfg.llm, settings, cfg.pipeline.data_dir, names, force).as_dict()
    return {"counts": _counts(summary),
            "drops": {**summary["drops"], **{f"failed:{k}": v for k, v in summary["failures_by_reason"].items()}}}
