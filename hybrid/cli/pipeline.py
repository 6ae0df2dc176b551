"""`hybrid pipeline …`: `run`, the structural stages, the LLM stages (`hybrid.cli.llm`), `export`,
`cleanup-dataset`, `check-ast-coverage`; and the seed's console scripts for them (generate-ast, …).

Stage commands take repo names mixed with `key=value` config overrides: `generate-ast self pipeline.num_workers=1`.
"""

from __future__ import annotations

import sys

from hybrid.cli import IntermixedParser, config_and_words, console_main, fraction, llm, positive_int
from hybrid.core.io import atomic_write_json

STAGE_COMMANDS = {
    "generate-ast": "parse the files each commit touched: ast.jsonl + commit_data.json",
    "generate-ast-diffs": "added / modified / deleted declarations per commit: diff_ast.jsonl",
    "dedup": "commit filters and exact / near-duplicate changes: <repo>/dedup.jsonl + filtered_commits.jsonl",
    "generate-fim": "fill-in-the-middle samples per commit: fim_dataset.json",
}


# What each stage keeps (the count shown as "kept"); every other count is listed beside it
KEPT = {
    "generate-ast": ("files_parsed", "files parsed"),
    "generate-ast-diffs": ("records", "changes"),
    "dedup": ("records_kept", "changes"),
    "generate-tasks": ("written", "tasks"),
    "generate-reasoning": ("written", "reasonings"),
    "generate-fim": ("samples", "samples"),
}


WIDE = 120  # a console at least this wide gets the reasons and other counts as columns; a narrower one, lines below


def summary_table(summary, width: int = WIDE):
    """The one table `pipeline run` ends with: per stage what it kept, what it dropped (in all and by reason), and
    its other counts (the secrets scrubbed as one number; the commits in the title, and in a row only where a stage
    saw fewer). On a console narrower than WIDE (`width`: the console's) the reasons and the other counts follow the
    table, a line per stage, so that no column is squeezed until its counts break mid-number."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    seen = [st["counts"]["commits"] for st in summary.stages.values() if "commits" in st.get("counts", {})]
    commits = max(seen, default=None)  # said once, in the title; a stage that saw fewer says so in its row
    title = f"{commits:,} commits, " if commits is not None else ""
    table = Table(title=f"pipeline: {', '.join(summary.repos)} ({title}{summary.seconds:.1f} s)")
    table.add_column("stage", no_wrap=True)
    table.add_column("kept", justify="right")
    table.add_column("dropped", justify="right")
    narrow = width < WIDE
    if not narrow:
        table.add_column("dropped by reason", overflow="fold")  # a count is folded, never cut
        table.add_column("other counts", overflow="fold")
    below = []
    for stage, st in summary.stages.items():
        counts, drops = st.get("counts", {}), {k: v for k, v in st.get("drops", {}).items() if v}
        key, what = KEPT.get(stage, ("", ""))
        kept = f"{counts[key]:,} {what}" if key in counts else "-"
        # the dedup stage drops changes for two kinds of reason (duplicates; whole commits): count the changes
        dropped = f"{counts['records_dropped']:,} {what}" if "records_dropped" in counts else f"{sum(drops.values()):,}"
        shown = {k: v for k, v in counts.items() if v and k not in (key, "records_dropped")}
        if shown.get("commits") == commits:
            shown.pop("commits")
        # the secrets scrubbed, one count (their kinds are in the --json summary)
        scrubbed = sum(shown.pop(k) for k in [k for k in shown if k.startswith("secrets_")])
        if scrubbed:
            shown["secrets scrubbed"] = scrubbed
        other = ", ".join(f"{k}={v:,}" for k, v in shown.items()) or "-"
        by_reason = ", ".join(f"{k}={v:,}" for k, v in sorted(drops.items(), key=lambda kv: (-kv[1], kv[0]))) or "-"
        if narrow:
            table.add_row(stage, kept, dropped)
            parts = [f"dropped {by_reason}"] * bool(drops) + [other] * bool(shown)
            below.append(Text(f"{stage}: {'; '.join(parts) or '-'}"))
        else:
            table.add_row(stage, kept, dropped, by_reason, other)
    return Group(table, *below) if narrow else table


# -- run and the structural stages ------------------------------------------------------------------------------
def _add_common(p) -> None:
    p.add_argument(
        "words",
        nargs="*",
        metavar="[REPO…] [key=value…]",
        help="repository names (default: all registered) and config overrides",
    )
    p.add_argument("--force", action="store_true", help="redo commits whose output already exists")
    p.add_argument("--local", action="store_true", help="run in this process instead of on Ray Data")
    p.add_argument("--json", metavar="FILE", help="also write the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_stages(args, stages: list[str] | None) -> int:
    from rich.console import Console

    from pipelines.run import run_pipeline

    cfg, names = config_and_words(args.words, outputs=("pipeline.data_dir",))
    summary = run_pipeline(
        names or None,
        cfg.pipeline,
        cfg.llm,
        force=args.force,
        stages=stages,
        local=args.local,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    console = Console()
    console.print(summary_table(summary, console.width))
    if args.json:
        atomic_write_json(args.json, summary.to_dict())
    return 0


def _pipeline_run(args) -> int:
    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    return _run_stages(args, stages)


def add_stage_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help=STAGE_COMMANDS[name])
    _add_common(p)
    p.set_defaults(func=lambda args: _run_stages(args, [name]))


# -- housekeeping ---------------------------------------------------------------------------------------------------
def _cleanup(args) -> int:
    from pipelines.dataset_tools import CLEANABLE, cleanup_dataset

    cfg, names = config_and_words(args.words, outputs=("pipeline.data_dir",))
    kinds = list(CLEANABLE) if args.all else [k for k in CLEANABLE if getattr(args, k)]
    removed = cleanup_dataset(cfg.pipeline, kinds, names or None, temp=args.temp or args.all, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb}: " + (", ".join(f"{n} {name}" for name, n in sorted(removed.items())) or "nothing"))
    return 0


def add_cleanup_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="remove generated files from DATA_DIR/ast_dataset (only there)")
    p.add_argument("words", nargs="*", metavar="[REPO…] [key=value…]")
    for flag, text in (
        ("tasks", "task.json"),
        ("reasoning", "reasoning.json"),
        ("fim", "fim_dataset.json"),
        ("diffs", "diff_ast.jsonl"),
        ("ast", "ast.jsonl"),
        ("commit-data", "commit_data.json"),
    ):
        p.add_argument(f"--{flag}", dest=flag.replace("-", "_"), action="store_true", help=f"remove {text}")
    p.add_argument("--temp", action="store_true", help="remove temp files left by killed runs")
    p.add_argument("--all", action="store_true", help="remove every generated file")
    p.add_argument("--dry-run", action="store_true", help="only count what would be removed")
    p.set_defaults(func=_cleanup)


def _coverage(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from pipelines.dataset_tools import ast_coverage

    cfg, names = config_and_words(args.words, outputs=("pipeline.data_dir",))
    cov = ast_coverage(cfg.pipeline, names or None)
    if args.json:
        atomic_write_json(args.json, cov)
    table = Table(
        "repo",
        "language",
        "parsed cleanly",
        "recovered from syntax errors",
        "unusable (parse_error)",
        "skipped (by reason)",
        "declarations",
        "declarations dropped",
        title="AST coverage (file versions touched by commits)",
    )
    for repo, langs in cov.items():
        for lang, c in langs.items():
            skipped = ", ".join(f"{k.split(':', 1)[1]}={v}" for k, v in sorted(c.items()) if k.startswith("skipped:"))
            table.add_row(
                repo,
                lang,
                str(c.get("parsed", 0)),
                str(c.get("recovered", 0)),
                str(c.get("parse_error", 0)),
                skipped or "-",
                str(c.get("declarations", 0)),
                str(c.get("declarations_dropped", 0)),
            )
    Console().print(table)
    return 0


def add_coverage_parser(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        help="per repo and language: files parsed cleanly, recovered from syntax errors, unusable, skipped by reason",
    )
    p.add_argument("words", nargs="*", metavar="[REPO…] [key=value…]")
    p.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    p.set_defaults(func=_coverage)


# -- export ---------------------------------------------------------------------------------------------------------
def _export_command(args) -> str:
    """The command as it could be typed again (for the dataset card): its words and every option's value."""
    import shlex

    from hybrid.core.storage import shown

    words = ["hybrid", "pipeline", "export", *args.repos, "--output-dir", shown(args.output_dir)]
    words += ["--format", args.format, "--kinds", args.kinds]
    words += ["--validation-fraction", f"{args.validation_fraction:g}", "--test-fraction", f"{args.test_fraction:g}"]
    if args.rows_per_shard is not None:
        words += ["--rows-per-shard", str(args.rows_per_shard)]
    for path in args.decontaminate_against or []:
        words += ["--decontaminate-against", shown(path)]
    return shlex.join(words)


def _export(args) -> int:
    import sys

    from hybrid.core.storage import require_lasting
    from hybrid.data.export import ExportOptions, describe, export_io_pairs

    cfg, repos = config_and_words(args.repos, outputs=("pipeline.data_dir",))
    require_lasting("--output-dir", args.output_dir)
    options = {"rows_per_shard": args.rows_per_shard} if args.rows_per_shard is not None else {}
    result = export_io_pairs(
        cfg.pipeline.data_dir,
        args.output_dir,
        kinds=tuple(k.strip() for k in args.kinds.split(",") if k.strip()),
        validation_fraction=args.validation_fraction,
        test_fraction=args.test_fraction,
        repos=repos or None,
        options=ExportOptions.from_config(
            cfg.pipeline,
            format=args.format,
            benchmarks=tuple(args.decontaminate_against or ()),
            command=_export_command(args),
            **options,
        ),
    )
    summary, *warnings = describe(result).splitlines()
    print(summary)
    for line in warnings:
        print(line, file=sys.stderr)
    return 0


def add_export_parser(sub, name: str = "export") -> None:
    p = sub.add_parser(
        name,
        help="turn data/ast_dataset into datasets/io_pairs/{train,validation,test}.jsonl (or Parquet shards + card)",
    )
    p.add_argument("repos", nargs="*", help="repositories to export (default: all) and key=value config overrides")
    p.add_argument(
        "--output-dir", "--output_dir", default="datasets/io_pairs", help="where the files go (a folder or s3://…)"
    )
    p.add_argument(
        "--format",
        choices=("jsonl", "parquet"),
        default="jsonl",
        help="jsonl: {train,validation,test}.jsonl; parquet: data/<split>-NNNNN-of-NNNNN.parquet + README.md card",
    )
    p.add_argument("--kinds", default="fim,reasoning", help="comma-separated: fim, reasoning")
    p.add_argument("--validation-fraction", type=fraction, default=0.1, help="share of records for validation")
    p.add_argument("--test-fraction", type=fraction, default=0.1, help="share of records for test")
    p.add_argument(
        "--rows-per-shard", type=positive_int, help="rows per Parquet shard (default: pipeline.export_rows_per_shard)"
    )
    p.add_argument(
        "--decontaminate-against",
        action="append",
        metavar="FILE.jsonl",
        help="drop training records that hold an item of this benchmark (JSONL, .jsonl.gz; fields prompt, "
        "canonical_solution, code, text); repeatable",
    )
    p.set_defaults(func=_export)


def register(sub) -> None:
    p = sub.add_parser("pipeline", help="data-generation stages and `pipeline run`")
    pipeline_sub = p.add_subparsers(
        dest="pipeline_command", required=True, metavar="STAGE", parser_class=IntermixedParser
    )
    run = pipeline_sub.add_parser("run", help="run the stages in order on Ray Data and print a summary")
    _add_common(run)
    run.add_argument("--stages", help="comma-separated subset of the stages (default: all, in order)")
    run.set_defaults(func=_pipeline_run)
    for name in STAGE_COMMANDS:
        add_stage_parser(pipeline_sub, name)
    add_cleanup_parser(pipeline_sub, "cleanup-dataset")
    add_coverage_parser(pipeline_sub, "check-ast-coverage")
    llm.register(pipeline_sub)
    add_export_parser(pipeline_sub)


# -- the seed's console scripts ----------------------------------------------------------------------------------
def generate_ast_main(argv=None) -> int:
    return console_main(add_stage_parser, "generate-ast", argv)


def generate_ast_diffs_main(argv=None) -> int:
    return console_main(add_stage_parser, "generate-ast-diffs", argv)


def generate_fim_main(argv=None) -> int:
    return console_main(add_stage_parser, "generate-fim", argv)


def cleanup_dataset_main(argv=None) -> int:
    return console_main(add_cleanup_parser, "cleanup-dataset", argv)


def check_ast_coverage_main(argv=None) -> int:
    return console_main(add_coverage_parser, "check-ast-coverage", argv)
