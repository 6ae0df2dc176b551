"""`hybrid repos add|list|update|remove` and the seed's `manage-repos`."""

from __future__ import annotations

import json

from hybrid.cli import IntermixedParser, config_and_words, console_main
from hybrid.core import storage
from hybrid.core.errors import HybridError
from hybrid.core.redact import redact_url

DEMO_REPO_NAME = "hybrid-llm-trainer"  # this checkout's history, registered by `hybrid demo` and the code-memory bench


def project_checkout():
    """The git checkout holding the installed `hybrid` package (always there: no network needed)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        raise HybridError(f"{root}: the installed package is not in a git checkout; pass --repo PATH")
    return root


def _pipeline_cfg(words: list[str]):
    """The `pipeline` section after `key=value` overrides, and the other words."""
    cfg, rest = config_and_words(words, outputs=("pipeline.data_dir",))
    return cfg.pipeline, rest


def _add(args) -> int:
    from pipelines.repos import add_repo

    pcfg, rest = _pipeline_cfg(args.overrides)
    if rest:
        raise HybridError(f"unexpected argument {rest[0]!r} (overrides look like pipeline.data_dir=DIR)")
    entry = add_repo(args.source, args.name, pcfg)
    where = storage.shown(entry.location(pcfg))
    print(f"added {entry.name}: {redact_url(entry.source)} (branch {entry.default_branch}) -> {where}")
    return 0


def _list(args) -> int:
    from pipelines.licenses import license_label, read_license
    from pipelines.repos import list_repos

    pcfg, _ = _pipeline_cfg(args.overrides)
    entries = list_repos(pcfg)
    licenses = {e.name: license_label(read_license(e.name, pcfg)) for e in entries}  # (as the last run found it)
    if args.json:
        rows = [{**e.__dict__, "source": redact_url(e.source), "license": licenses[e.name]} for e in entries]
        print(json.dumps(rows, indent=2))
        return 0
    if not entries:
        print("no repositories (add one with `hybrid repos add PATH_OR_URL`)")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "source", "branch", "added", "licence")
    for e in entries:
        table.add_row(e.name, redact_url(e.source), e.default_branch, e.added_at, licenses[e.name])
    Console().print(table)
    return 0


def _remove(args) -> int:
    from pipelines.repos import remove_repo

    pcfg, _ = _pipeline_cfg(args.overrides)
    entry = remove_repo(args.name, pcfg, keep_dataset=not args.dataset)
    print(f"removed {entry.name}" + (" and its dataset" if args.dataset else ""))
    return 0


def _update(args) -> int:
    from pipelines.repos import list_repos, update_repo

    pcfg, names = _pipeline_cfg(args.words)
    for name in names or [e.name for e in list_repos(pcfg)]:
        print(f"{name}: {update_repo(name, pcfg):+d} commits")
    return 0


def add_parser(sub, name: str = "repos") -> None:
    p = sub.add_parser(
        name,
        help="add, list, update or remove repositories (manage-repos)",
        description="Repositories are cloned bare into DATA_DIR/repos/<name>.",
    )
    rsub = p.add_subparsers(dest="repos_command", required=True, metavar="ACTION", parser_class=IntermixedParser)
    a = rsub.add_parser("add", help="clone a URL or a local git repository and register it")
    a.add_argument("source", help="a git URL or the path of a local git repository")
    a.add_argument("--name", help="registry name (default: the last part of the source)")
    a.add_argument("overrides", nargs="*", help="config overrides, e.g. pipeline.data_dir=/tmp/data")
    a.set_defaults(func=_add)
    ls = rsub.add_parser("list", help="list registered repositories")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.add_argument("overrides", nargs="*", help="config overrides")
    ls.set_defaults(func=_list)
    rm = rsub.add_parser("remove", help="unregister a repository and delete its clone")
    rm.add_argument("name")
    rm.add_argument("--dataset", action="store_true", help="also delete DATA_DIR/ast_dataset/<name>")
    rm.add_argument("overrides", nargs="*", help="config overrides")
    rm.set_defaults(func=_remove)
    up = rsub.add_parser("update", help="fetch new commits from each repository's source")
    up.add_argument("words", nargs="*", metavar="[REPO…] [key=value…]")
    up.set_defaults(func=_update)


def register(sub) -> None:
    add_parser(sub, "repos")


def manage_repos_main(argv=None) -> int:
    return console_main(add_parser, "manage-repos", argv)
