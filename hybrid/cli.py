"""The `hybrid` command. Each command group registers itself from its own (light) module, so
`hybrid --help` stays instant: heavy imports (torch, ray, faiss) happen inside the commands."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Sequence

from hybrid.errors import HybridError

COMMAND_MODULES = (
    "pipelines.commands",  # repos, pipeline …
    "hybrid.training.commands",  # train, eval, generate
    "hybrid.memory.commands",  # memory stats|build
    "hybrid.bench.commands",  # bench datagen|llm|model|train|memory|recall
    "hybrid.demo",  # demo: the main job
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybrid",
        description="Mine git history into training data and train memory-augmented language models on Ray.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def run_command(func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run a command; a HybridError is one line on stderr and exit code 2, never a traceback."""
    try:
        return int(func(args) or 0)
    except HybridError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
