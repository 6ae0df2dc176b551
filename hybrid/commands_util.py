"""Small helpers shared by the command modules."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence



def console_main(register: Callable[[argparse._SubParsersAction], None], name: str,
                 argv: Sequence[str] | None = None) -> int:
    """Run one registered subcommand as its own console script (e.g. `generate-ast` = `hybrid pipeline generate-ast`)."""
    from hybrid.cli import run_command

    parser = argparse.ArgumentParser(prog=name)
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args([name, *(sys.argv[1:] if argv is None else argv)])
    return run_command(args.func, args)
