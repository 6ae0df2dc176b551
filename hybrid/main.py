"""The `hybrid` program: the command layer's groups (`hybrid.cli`), the benchmarks and the demo under one
parser. It sits at the top of the layers (docs/architecture.md): nothing imports it but `python -m hybrid`."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from hybrid import demo
from hybrid.bench import commands as bench
from hybrid.cli import memory, pipeline, repos, run_command, train, tune


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybrid",
        description="Mine git history into training data and train memory-augmented language models on Ray.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (repos, pipeline, train, tune, memory, bench, demo):
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(words)
    return run_command(args.func, args, words)


if __name__ == "__main__":
    sys.exit(main())
