"""`hybrid pipeline generate-tasks|generate-reasoning|test-llm` and the seed's console scripts of the same names.

Light on import (`hybrid --help` must stay instant): openai, ray and rich are imported inside the commands.
"""

from __future__ import annotations

import argparse
import sys

from hybrid.commands_util import console_main
from hybrid.errors import HybridError


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("items", nargs="*", metavar="REPO|key=value",
                   help="repositories to process (default: all in the dataset) and config overrides, "
                        "e.g. llm.requests_per_minute=120 llm.runner=local")
    p.add_argument("--force", action="store_true", help="redo commits whose output exists")
    p.add_argument("--json", metavar="FILE", help="also write the run's summary as JSON")


def register(sub) -> None:
    p = sub.add_parser("generate-tasks", help="task.json per commit: tasks by an LLM, else from commit messages")
    _add_common(p)
    p.set_defaults(func=generate_tasks)
    p = sub.add_parser("generate-reasoning", help="reasoning.json per commit: first-person reasoning per changed function (needs an LLM)")
    _add_common(p)
    p.set_defaults(func=generate_reasoning)
    p = sub.add_parser("test-llm", help="check the configured LLM endpoint: model, structured output, latency")
    p.add_argument("items", nargs="*", metavar="key=value", help="config overrides, e.g. llm.timeout_s=20")
    p.add_argument("--requests", type=int, default=3, help="completions to time for the latency figure")
    p.set_defaults(func=test_llm)


def _load(items: list[str]):
    from hybrid.config import load_config, split_overrides

    overrides, repos = split_overrides(items)
    return load_config(overrides), repos


def _settings():
    from pipelines.llm.settings import load_settings

    try:
        return load_settings()
    except Exception as e:  # pydantic ValidationError text could carry values: name the field only
        loc = getattr(e, "errors", lambda: [{}])()[0].get("loc", ("?",)) if hasattr(e, "errors") else ("?",)
        raise HybridError(f".env / environment: invalid value for {'.'.join(map(str, loc))}") from None


def _print_summary(stage: str, summary: dict, console, json_path: str | None = None) -> None:
    if json_path:
        from hybrid.utils.io import atomic_write_json

        atomic_write_json(json_path, {"stage": stage, **summary})
    parts = [f"{k}={v}" for k, v in summary.items() if v not in (0, {}, None) or k in ("ok", "failed")]
    console.print(f"{stage}: " + "  ".join(parts), highlight=False, soft_wrap=True)


def generate_tasks(args: argparse.Namespace) -> int:
    from rich.console import Console

    cfg, repos = _load(args.items)
    settings = _settings()
    console = Console(stderr=True)
    if not settings.configured:
        summary = tasks_from_messages(cfg.pipeline.data_dir, repos, args.force, cfg.llm.max_tasks_per_commit)
        console.print("generate-tasks: no LLM configured, tasks from cleaned commit messages "
                      "(source: commit_message)", highlight=False, soft_wrap=True)
        _print_summary("generate-tasks", summary, console, args.json)
        return 0
    from pipelines.llm.runner import run_llm_stage

    totals = run_llm_stage("generate-tasks", cfg.llm, settings, cfg.pipeline.data_dir, repos, args.force, console)
    _print_summary("generate-tasks", totals.as_dict(), console, args.json)
    return 1 if totals.failed or totals.partial else 0


def tasks_from_messages(data_dir: str, repos: list[str], force: bool, max_tasks: int) -> dict:
    """generate-tasks without an LLM: every commit gets task.json from its cleaned message (fast, in-process)."""
    from collections import Counter

    from pipelines.llm import stages as st

    summary: dict = {"commits": 0, "already_done": 0, "ok": 0, "failed": 0, "written": 0}
    for repo in st.repo_dirs(data_dir, repos):
        todo, done = st.plan_tasks(st.commit_dirs(repo), force, llm=False)
        drops: Counter = Counter()
        written = 0
        for commit_dir in todo:
            n, reason = st.tasks_from_commit_message(commit_dir, max_tasks)
            written += n
            if reason:
                drops[reason] += 1
        repo_summary = {"commits": len(todo), "already_done": done, "ok": len(todo), "failed": 0,
                        "written": written, "source": "commit_message", "drops": dict(drops)}
        st.update_stats(repo, "generate-tasks", repo_summary)
        for k in ("commits", "already_done", "ok", "written"):
            summary[k] += repo_summary[k]
        summary.setdefault("drops", Counter()).update(drops)
    if "drops" in summary:
        summary["drops"] = dict(summary["drops"])
    return summary


def generate_reasoning(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pipelines.llm.settings import NO_LLM_MESSAGE

    cfg, repos = _load(args.items)
    settings = _settings()
    if not settings.configured:
        raise HybridError(f"generate-reasoning needs an LLM: {NO_LLM_MESSAGE}")
    from pipelines.llm.runner import run_llm_stage

    console = Console(stderr=True)
    totals = run_llm_stage("generate-reasoning", cfg.llm, settings, cfg.pipeline.data_dir, repos, args.force, console)
    _print_summary("generate-reasoning", totals.as_dict(), console, args.json)
    return 1 if totals.failed or totals.partial else 0


def test_llm(args: argparse.Namespace) -> int:
    import asyncio

    from pipelines.llm.settings import NO_LLM_MESSAGE
    from pipelines.llm.check import check_endpoint

    cfg, rest = _load(args.items)
    if rest:
        raise HybridError(f"test-llm: unexpected argument {rest[0]!r} (only key=value overrides)")
    settings = _settings()
    if not settings.configured:
        print(f"test-llm: FAIL: {NO_LLM_MESSAGE}")
        return 1
    ok, lines = asyncio.run(check_endpoint(settings, cfg.llm, max(1, args.requests)))
    for line in lines:
        print(line)
    return 0 if ok else 1


def generate_tasks_main(argv=None) -> int:
    return console_main(register, "generate-tasks", argv)


def generate_reasoning_main(argv=None) -> int:
    return console_main(register, "generate-reasoning", argv)


def test_llm_main(argv=None) -> int:
    return console_main(register, "test-llm", argv)


if __name__ == "__main__":
    sys.exit(generate_tasks_main())
