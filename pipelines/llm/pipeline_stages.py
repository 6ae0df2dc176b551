"""generate-tasks and generate-reasoning as stages of `hybrid pipeline run` (pipelines/run.py `STAGES`) and of
their own commands.

A repository stage is `run(repo_names, data_dir, llm_cfg, force) -> {"counts": {...}, "drops": {...}}`. Light on
import: run.py imports this module; openai and ray load only when a stage runs. Without an LLM, generate-tasks
uses the cleaned commit messages and generate-reasoning is skipped with a one-line message (not an error)."""

from __future__ import annotations

import functools
import sys
from collections import Counter
from pathlib import Path

from hybrid.config.llm import LLMConfig
from hybrid.core import storage
from hybrid.core.layout import TASKS, DatasetLayout, current_run
from pipelines.llm import stages as st
from pipelines.llm.runner import run_llm_stage
from pipelines.llm.settings import NO_LLM_MESSAGE, load_settings


def _present(repo_names: list[str], data_dir: str | Path) -> list[str]:
    layout = DatasetLayout(data_dir)
    return [name for name in repo_names if layout.has_repo(name)]


def _counts(summary: dict) -> dict:
    """The non-zero whole-number counts of a stage summary (not its rates, times or per-reason tables)."""
    return {k: v for k, v in summary.items() if isinstance(v, int) and not isinstance(v, bool) and v}


def tasks_from_messages(data_dir: str | Path, repos: list[str], force: bool, max_tasks: int) -> dict:
    """generate-tasks without an LLM: every commit gets task.json from its cleaned message (fast, in-process)."""
    summary: dict = {"commits": 0, "already_done": 0, "ok": 0, "failed": 0, "written": 0}
    all_drops: Counter = Counter()
    layout = DatasetLayout(data_dir)
    names = st.repo_names(layout, repos)
    with st.local_view(layout, names, "generate-tasks") as view, storage.Uploads() as uploads:
        for repo in names:
            repo_summary, drops = _tasks_from_messages(layout, view, repo, force, max_tasks, uploads)
            for k in ("commits", "already_done", "ok", "written"):
                summary[k] += repo_summary[k]
            all_drops.update(drops)
    if names:
        summary["drops"] = dict(all_drops)
    return summary


def _tasks_from_messages(
    layout: DatasetLayout, view: DatasetLayout, repo: str, force: bool, max_tasks: int, uploads: storage.Uploads
) -> tuple[dict, Counter]:
    """One repository's task.json files from commit messages, written in `view` (on object storage its local copy,
    each file then uploaded) and its stats."""
    todo, done = st.plan_tasks(st.commit_dirs(view, repo), force, llm=False)
    drops: Counter = Counter()
    written = 0
    for commit_dir in todo:
        n, reason = st.tasks_from_commit_message(commit_dir, max_tasks)
        written += n
        if reason:
            drops[reason] += 1
        if view is not layout:  # (kept on this node for generate-fim in this run: layout.py run_scope)
            number = st.commit_number(commit_dir)
            keep = functools.partial(layout.keep_written, repo, number, [commit_dir / TASKS], current_run())
            uploads.submit([(commit_dir / TASKS, layout.commit_file(repo, number, TASKS))], then=keep)
    repo_summary = {
        "commits": len(todo),
        "already_done": done,
        "ok": len(todo),
        "failed": 0,
        "written": written,
        "source": "commit_message",
        "drops": dict(drops),
    }
    uploads.wait()  # (the files before the stats that count them)
    st.update_stats(layout, repo, "generate-tasks", repo_summary)
    return repo_summary, drops


def _llm_summary(summary: dict) -> dict:
    return {
        "counts": _counts(summary),
        "drops": {**summary["drops"], **{f"failed:{k}": v for k, v in summary["failures_by_reason"].items()}},
    }


def run_generate_tasks(repo_names: list[str], data_dir: str | Path, llm_cfg: LLMConfig, force: bool = False) -> dict:
    names = _present(repo_names, data_dir)
    if not names:
        return {"counts": {}, "drops": {}}
    settings = load_settings()
    if not settings.configured:
        summary = tasks_from_messages(data_dir, names, force, llm_cfg.max_tasks_per_commit)
        print(
            "generate-tasks: no LLM configured, tasks from cleaned commit messages (source: commit_message)",
            file=sys.stderr,
        )
        return {
            "counts": {**_counts(summary), "from_commit_message": int(summary["commits"])},
            "drops": dict(summary.get("drops", {})),
        }

    return _llm_summary(run_llm_stage("generate-tasks", llm_cfg, settings, data_dir, names, force).as_dict())


def run_generate_reasoning(
    repo_names: list[str], data_dir: str | Path, llm_cfg: LLMConfig, force: bool = False
) -> dict:
    names = _present(repo_names, data_dir)
    if not names:
        return {"counts": {}, "drops": {}}
    settings = load_settings()
    if not settings.configured:
        print(f"generate-reasoning: skipped, it needs an LLM: {NO_LLM_MESSAGE}", file=sys.stderr)
        return {"counts": {"skipped_no_llm": 1}, "drops": {}}

    return _llm_summary(run_llm_stage("generate-reasoning", llm_cfg, settings, data_dir, names, force).as_dict())
