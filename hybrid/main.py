"""The `hybrid` program: the command layer's groups (`hybrid.cli`), the benchmarks and the demo under one
parser. It sits at the top of the layers (docs/architecture.md): nothing imports it but `python -m hybrid`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from hybrid import demo
from hybrid.bench import commands as bench
from hybrid.cli import memory, pipeline, repos, run_command, train, tune
from hybrid.core.ray_utils import VERBOSE_ENV

VERBOSE_HELP = (
    "show Ray's own lines too: its INFO logs, its workers' output with their (… pid=…) prefixes, Ray "
    "Data's plans and progress bars (quiet, they stay in Ray's log files); or set HYBRID_VERBOSE=1"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybrid",
        description="Mine git history into training data and train memory-augmented language models on Ray.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (repos, pipeline, train, tune, memory, bench, demo):
        group.register(sub)
    _verbose_everywhere(sub)
    return parser


def _verbose_everywhere(sub: argparse._SubParsersAction) -> None:
    """`hybrid demo -v` as well as `hybrid -v demo`: every command takes the flag too (SUPPRESS: a command's
    parser leaves the global one alone when its own is not given)."""
    for command in set(sub.choices.values()):
        if not any("--verbose" in a.option_strings for a in command._actions):
            command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _verbose_everywhere(action)


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(words)
    if getattr(args, "verbose", False):
        os.environ[VERBOSE_ENV] = "1"  # Ray starts later, in the command; subprocesses and jobs inherit it
    return run_command(args.func, args, words)


if __name__ == "__main__":
    sys.exit(main())
