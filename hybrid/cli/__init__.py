"""The command layer: argument parsing, printing and exit codes for every `hybrid` command (and the seed's
console scripts). One module per command group — repos, pipeline (+ the LLM stages and export), train (train,
eval, generate), memory — each with `register(subparsers)`; `hybrid.main` assembles them with the benchmarks
and the demo. Light to import: heavy libraries (torch, ray, faiss, pygit2, openai, rich — and pydantic, which
the config schemas load) are imported inside the commands, so `hybrid --help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from hybrid.core.errors import HybridError, describe_os_error
from hybrid.core.redact import redact_text
from hybrid.core.text import not_unicode, printable


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


def _number(
    kind: type, low: float | None, high: float | None, what: str, low_open: bool = False, high_open: bool = False
) -> Callable[[str], int | float]:
    """An argparse `type` that parses a number and checks its range, so `--batch-size 0` is a one-line usage
    error instead of a wrong result or a traceback later."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):  # nan, inf
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        if (
            low is not None
            and (value <= low if low_open else value < low)
            or high is not None
            and (value >= high if high_open else value > high)
        ):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


positive_int = _number(int, 1, None, "an integer >= 1")
non_negative_int = _number(int, 0, None, "an integer >= 0")
positive_float = _number(float, 0, None, "a number > 0", low_open=True)
non_negative_float = _number(float, 0, None, "a number >= 0")
fraction = _number(float, 0, 1, "a fraction in [0, 1)", high_open=True)
probability = _number(float, 0, 1, "a probability in [0, 1]")


def at_least(low: int) -> Callable[[str], int]:
    return _number(int, low, None, f"an integer >= {low}")


def check_arguments(argv: Sequence[str]) -> None:
    """Every word of the command line must be text: bytes that are not UTF-8 (`--prompt $'x\\xff'`), which Python
    keeps as lone surrogates, would reach a library that encodes them (the tokenizer: a TypeError). One line
    naming the option or the key."""
    previous = ""
    for word in argv:
        why = not_unicode(word)
        if why:
            name, value = word.split("=", 1) if "=" in word else ("", word)  # --option=value, key=value
            if not_unicode(name) or not value:
                name, value = "argument", word
            name = name or (previous if previous.startswith("-") else "argument")
            raise HybridError(f"{name}: {printable(value)} is {why}")
        previous = word


def run_command(
    func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace, argv: Sequence[str] = ()
) -> int:
    """Run a command; a HybridError is one line on stderr and exit code 2, never a traceback. `argv`: the words
    the command was given, checked first (`check_arguments`)."""
    try:
        check_arguments(argv)
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (HybridError, OSError) as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        return 2


def error_line(e: HybridError | OSError) -> str:
    """The one line a user sees for a failure (after `error: `). Every such line goes through the redactor, whoever
    wrote it: a library's text we pass on may quote a URL with its credentials."""
    # an OSError is the machine's fault, not a bug: a full disk, a read-only or missing folder
    text = describe_os_error(e) if isinstance(e, OSError) else str(e)
    return redact_text(" ".join(text.split()))


def config_and_words(words: Sequence[str], base: str | None = None, outputs: Sequence[str] = ()):
    """(the whole `Config` after the `key=value` overrides among `words` — on top of the config file `base` when
    given — and the other words). The config schemas are pydantic models whose import costs ~0.4 s, so they load
    when a command runs, not for `--help`. `outputs`: the dotted keys of the folders the command writes, which
    inside a Ray job must be absolute or URIs (hybrid.core.storage.require_lasting)."""
    from hybrid.cli.config import load_config, split_overrides
    from hybrid.core.storage import require_lasting

    overrides, rest = split_overrides(words)
    cfg = load_config(overrides, base=base)
    for key in outputs:
        section, name = key.split(".")
        require_lasting(key, getattr(getattr(cfg, section), name))
    return cfg, rest


def console_main(
    add_parser: Callable[[argparse._SubParsersAction, str], None], name: str, argv: Sequence[str] | None = None
) -> int:
    """Run one subcommand as its own console script (`generate-ast` = `hybrid pipeline generate-ast`).
    `add_parser(subparsers, name)` adds the command's parser under `name`."""
    parser = argparse.ArgumentParser(prog=name)
    sub = parser.add_subparsers(dest="command", parser_class=IntermixedParser)
    add_parser(sub, name)
    sub.choices[name].prog = name
    words = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args([name, *words])
    return run_command(args.func, args, words)
