"""`hybrid pipeline generate-tasks|generate-reasoning|test-llm` and the seed's console scripts of the same names."""

from __future__ import annotations

import argparse

from hybrid.cli import config_and_words, console_main, positive_int
from hybrid.core.errors import HybridError
from hybrid.core.io import atomic_write_json


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "items",
        nargs="*",
        metavar="REPO|key=value",
        help="repositories to process (default: all in the dataset) and config overrides, "
        "e.g. llm.requests_per_minute=120 llm.runner=local",
    )
    p.add_argument("--force", action="store_true", help="redo commits whose output exists")
    p.add_argument("--json", metavar="FILE", help="also write the run's summary as JSON")


def add_parser(sub, name: str) -> None:
    if name == "test-llm":
        p = sub.add_parser("test-llm", help="check the configured LLM endpoint: model, structured output, latency")
        p.add_argument("items", nargs="*", metavar="key=value", help="config overrides, e.g. llm.timeout_s=20")
        p.add_argument("--requests", type=positive_int, default=3, help="completions to time for the latency figure")
        p.set_defaults(func=test_llm)
        return
    helps = {
        "generate-tasks": "task.json per commit: tasks by an LLM, else from commit messages",
        "generate-reasoning": "reasoning.json per commit: first-person reasoning per changed function (needs an LLM)",
    }
    p = sub.add_parser(name, help=helps[name])
    _add_common(p)
    p.set_defaults(func=lambda args: run_stage(name, args))


def register(sub) -> None:
    for name in ("generate-tasks", "generate-reasoning", "test-llm"):
        add_parser(sub, name)


def _print_summary(stage: str, summary: dict, console, json_path: str | None = None) -> None:
    if json_path:
        atomic_write_json(json_path, {"stage": stage, **summary})
    parts = [f"{k}={v}" for k, v in summary.items() if v not in (0, {}, None) or k in ("ok", "failed")]
    console.print(f"{stage}: " + "  ".join(parts), highlight=False, soft_wrap=True)


def run_stage(stage: str, args: argparse.Namespace) -> int:
    from rich.console import Console

    from pipelines.llm.pipeline_stages import tasks_from_messages
    from pipelines.llm.settings import NO_LLM_MESSAGE, load_settings

    cfg, repos = config_and_words(args.items, outputs=("pipeline.data_dir",))
    settings = load_settings()
    console = Console(stderr=True)
    if not settings.configured:
        if stage == "generate-reasoning":
            raise HybridError(f"generate-reasoning needs an LLM: {NO_LLM_MESSAGE}")
        summary = tasks_from_messages(cfg.pipeline.data_dir, repos, args.force, cfg.llm.max_tasks_per_commit)
        console.print(
            "generate-tasks: no LLM configured, tasks from cleaned commit messages (source: commit_message)",
            highlight=False,
            soft_wrap=True,
        )
        _print_summary(stage, summary, console, args.json)
        return 0
    from pipelines.llm.runner import run_llm_stage

    totals = run_llm_stage(stage, cfg.llm, settings, cfg.pipeline.data_dir, repos, args.force, console)
    _print_summary(stage, totals.as_dict(), console, args.json)
    return 1 if totals.failed or totals.partial else 0


def test_llm(args: argparse.Namespace) -> int:
    import asyncio

    from pipelines.llm.check import check_endpoint
    from pipelines.llm.settings import NO_LLM_MESSAGE, load_settings

    cfg, rest = config_and_words(args.items, outputs=("pipeline.data_dir",))
    if rest:
        raise HybridError(f"test-llm: unexpected argument {rest[0]!r} (only key=value overrides)")
    settings = load_settings()
    if not settings.configured:
        print(f"test-llm: FAIL: {NO_LLM_MESSAGE}")
        return 1
    ok, lines = asyncio.run(check_endpoint(settings, cfg.llm, max(1, args.requests)))
    for line in lines:
        print(line)
    return 0 if ok else 1


def generate_tasks_main(argv=None) -> int:
    return console_main(add_parser, "generate-tasks", argv)


def generate_reasoning_main(argv=None) -> int:
    return console_main(add_parser, "generate-reasoning", argv)


def test_llm_main(argv=None) -> int:
    return console_main(add_parser, "test-llm", argv)
