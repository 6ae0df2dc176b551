"""`hybrid repos …` and `hybrid pipeline …`, and the seed's console scripts (manage-repos, generate-ast, …).

Light to import: pygit2, tree-sitter and ray are imported inside the commands.
Stage commands take repo names mixed with `key=value` config overrides: `generate-ast self pipeline.num_workers=1`.
"""

from __future__ import annotations

import argparse
import json
import sys

from hybrid.utils.redact import redact_url

STAGE_COMMANDS = {
    "generate-ast": ("ast", "parse the files each commit touched: ast.jsonl + commit_data.json"),
    "generate-ast-diffs": ("ast-diffs", "added / modified / deleted declarations per commit: diff_ast.jsonl"),
    "generate-fim": ("fim", "fill-in-the-middle samples per commit: fim_dataset.json"),
}


class IntermixedParser(argparse.ArgumentParser):
    """Lets options and positionals mix (`generate-ast self --force pipeline.num_workers=1`); plain argparse
    stops collecting `nargs='*'` positionals at the first option."""

    _busy = False

    def parse_known_args(self, args=None, namespace=None):
        simple = self._busy or any(a.nargs in (argparse.PARSER, argparse.REMAINDER) for a in self._actions)
        if simple:
            return super().parse_known_args(args, namespace)
        self._busy = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._busy = False


def _config(words: list[str]):
    from hybrid.config import load_config, split_overrides

    overrides, rest = split_overrides(words)
    return load_config(overrides), rest


def _print_summary(summary, json_path: str | None) -> None:
    from rich.console import Console

    from pipelines.run import summary_table

    Console().print(summary_table(summary))
    if json_path:
        from hybrid.utils.io import atomic_write_json

        atomic_write_json(json_path, summary.to_dict())


# -- repos -----------------------------------------------------------------------------------------------------
def _repos_add(args) -> int:
    from pipelines.repos import add_repo

    cfg, rest = _config(args.overrides)
    if rest:
        from hybrid.errors import HybridError

        raise HybridError(f"unexpected argument {rest[0]!r} (overrides look like pipeline.data_dir=DIR)")
    entry = add_repo(args.source, args.name, cfg)
    print(f"added {entry.name}: {redact_url(entry.source)} (branch {entry.default_branch}) -> {entry.path(cfg)}")
    return 0


def _repos_list(args) -> int:
    from pipelines.repos import list_repos

    cfg, _ = _config(args.overrides)
    entries = list_repos(cfg)
    if args.json:
        print(json.dumps([e.__dict__ for e in entries], indent=2))
        return 0
    if not entries:
        print("no repositories (add one with `hybrid repos add PATH_OR_URL`)")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "source", "branch", "added")
    for e in entries:
        table.add_row(e.name, redact_url(e.source), e.default_branch, e.added_at)
    Console().print(table)
    return 0


def _repos_remove(args) -> int:
    from pipelines.repos import remove_repo

    cfg, _ = _config(args.overrides)
    entry = remove_repo(args.name, cfg, keep_dataset=not args.dataset)
    print(f"removed {entry.name}" + (" and its dataset" if args.dataset else ""))
    return 0


def _repos_update(args) -> int:
    from pipelines.repos import list_repos, update_repo

    cfg, names = _config(args.words)
    for name in names or [e.name for e in list_repos(cfg)]:
        print(f"{name}: {update_repo(name, cfg):+d} commits")
    return 0


def _add_repos_parser(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description="Repositories are cloned bare into DATA_DIR/repos/<name>.")
    rsub = p.add_subparsers(dest="repos_command", required=True, metavar="ACTION", parser_class=IntermixedParser)
    a = rsub.add_parser("add", help="clone a URL or a local git repository and register it")
    a.add_argument("source", help="a git URL or the path of a local git repository")
    a.add_argument("--name", help="registry name (default: the last part of the source)")
    a.add_argument("overrides", nargs="*", help="config overrides, e.g. pipeline.data_dir=/tmp/data")
    a.set_defaults(func=_repos_add)
    ls = rsub.add_parser("list", help="list registered repositories")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.add_argument("overrides", nargs="*", help="config overrides")
    ls.set_defaults(func=_repos_list)
    rm = rsub.add_parser("remove", help="unregister a repository and delete its clone")
    rm.add_argument("name")
    rm.add_argument("--dataset", action="store_true", help="also delete DATA_DIR/ast_dataset/<name>")
    rm.add_argument("overrides", nargs="*", help="config overrides")
    rm.set_defaults(func=_repos_remove)
    up = rsub.add_parser("update", help="fetch new commits from each repository's source")
    up.add_argument("words", nargs="*", metavar="[REPO…] [key=value…]")
    up.set_defaults(func=_repos_update)


# -- pipeline stages -------------------------------------------------------------------------------------------
def _add_common(p) -> None:
    p.add_argument("words", nargs="*", metavar="[REPO…] [key=value…]",
                   help="repository names (default: all registered) and config overrides")
    p.add_argument("--force", action="store_true", help="redo commits whose output already exists")
    p.add_argument("--local", action="store_true", help="run in this process instead of on Ray Data")
    p.add_argument("--json", metavar="FILE", help="also write the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_stages(args, stages: list[str] | None) -> int:
    from pipelines.run import run_pipeline

    cfg, names = _config(args.words)
    summary = run_pipeline(names or None, cfg, force=args.force, stages=stages, local=args.local,
                           progress=not args.no_progress and sys.stderr.isatty())
    _print_summary(summary, args.json)
    return 0


def _pipeline_run(args) -> int:
    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    return _run_stages(args, stages)


def _stage_func(name: str):
    return lambda args: _run_stages(args, [name])


def _add_stage_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help=STAGE_COMMANDS[name][1])
    _add_common(p)
    p.set_defaults(func=_stage_func(name))


def _cleanup(args) -> int:
    from pipelines.dataset_tools import CLEANABLE, cleanup_dataset

    cfg, names = _config(args.words)
    kinds = list(CLEANABLE) if args.all else [k for k in CLEANABLE if getattr(args, k)]
    removed = cleanup_dataset(cfg, kinds, names or None, temp=args.temp or args.all, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb}: " + (", ".join(f"{n} {name}" for name, n in sorted(removed.items())) or "nothing"))
    return 0


def _add_cleanup_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="remove generated files from DATA_DIR/ast_dataset (only there)")
    p.add_argument("words", nargs="*", metavar="[REPO…] [key=value…]")
    for flag, text in (("tasks", "task.json"), ("reasoning", "reasoning.json"), ("fim", "fim_dataset.json"),
                       ("diffs", "diff_ast.jsonl"), ("ast", "ast.jsonl"), ("commit-data", "commit_data.json")):
        p.add_argument(f"--{flag}", dest=flag.replace("-", "_"), action="store_true", help=f"remove {text}")
    p.add_argument("--temp", action="store_true", help="remove temp files left by killed runs")
    p.add_argument("--all", action="store_true", help="remove every generated file")
    p.add_argument("--dry-run", action="store_true", help="only count what would be removed")
    p.set_defaults(func=_cleanup)


def _coverage(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from pipelines.dataset_tools import ast_coverage

    cfg, names = _config(args.words)
    cov = ast_coverage(cfg, names or None)
    if args.json:
        from hybrid.utils.io import atomic_write_json

        atomic_write_json(args.json, cov)
    table = Table("repo", "language", "parsed", "parse errors", "skipped (by reason)", "declarations",
                  title="AST coverage (file versions touched by commits)")
    for repo, langs in cov.items():
        for lang, c in langs.items():
            skipped = ", ".join(f"{k.split(':', 1)[1]}={v}" for k, v in sorted(c.items()) if k.startswith("skipped:"))
            table.add_row(repo, lang, str(c.get("parsed", 0)), str(c.get("parse_error", 0)), skipped or "-",
                          str(c.get("declarations", 0)))
    Console().print(table)
    return 0


def _add_coverage_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="per repo and language: files parsed, parse errors, skipped by reason")
    p.add_argument("words", nargs="*", metavar="[REPO…] [key=value…]")
    p.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    p.set_defaults(func=_coverage)


def register(sub) -> None:
    _add_repos_parser(sub, "repos", "add, list, update or remove repositories (manage-repos)")
    p = sub.add_parser("pipeline", help="data-generation stages and `pipeline run`")
    pipeline_sub = p.add_subparsers(dest="pipeline_command", required=True, metavar="STAGE",
                                    parser_class=IntermixedParser)
    run = pipeline_sub.add_parser("run", help="run the stages in order on Ray Data and print a summary")
    _add_common(run)
    run.add_argument("--stages", help="comma-separated subset of the stages (default: all, in order)")
    run.set_defaults(func=_pipeline_run)
    for name in STAGE_COMMANDS:
        _add_stage_parser(pipeline_sub, name)
    _add_cleanup_parser(pipeline_sub, "cleanup-dataset")
    _add_coverage_parser(pipeline_sub, "check-ast-coverage")
    from pipelines.llm.commands import register as register_llm

    register_llm(pipeline_sub)
    from hybrid.data.commands import register_export

    register_export(pipeline_sub)


# -- the seed's console scripts ----------------------------------------------------------------------------------
def _main(adder, name: str, argv=None) -> int:
    """Like hybrid.commands_util.console_main, with options and positionals free to mix."""
    from hybrid.cli import run_command

    parser = argparse.ArgumentParser(prog=name)
    sub = parser.add_subparsers(dest="command", parser_class=IntermixedParser)
    adder(sub, name)
    sub.choices[name].prog = name
    args = parser.parse_args([name, *(sys.argv[1:] if argv is None else argv)])
    return run_command(args.func, args)


def manage_repos_main(argv=None) -> int:
    return _main(lambda sub, name: _add_repos_parser(sub, name, "add, list, update or remove repositories"),
                 "manage-repos", argv)


def generate_ast_main(argv=None) -> int:
    return _main(_add_stage_parser, "generate-ast", argv)


def generate_ast_diffs_main(argv=None) -> int:
    return _main(_add_stage_parser, "generate-ast-diffs", argv)


def generate_fim_main(argv=None) -> int:
    return _main(_add_stage_parser, "generate-fim", argv)


def cleanup_dataset_main(argv=None) -> int:
    return _main(_add_cleanup_parser, "cleanup-dataset", argv)


def check_ast_coverage_main(argv=None) -> int:
    return _main(_add_coverage_parser, "check-ast-coverage", argv)
