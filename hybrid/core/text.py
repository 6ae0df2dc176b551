"""Text that Python holds but cannot write as UTF-8, and JSON lines that parse into it (or not at all).

Python keeps what is not valid Unicode as lone surrogates: a command-line argument or environment variable with
bytes that are not UTF-8 (`$'\\xff'` becomes `\\udcff`, PEP 383), and a JSON string with a `\\ud800` escape. Such a
string passes every check until a library encodes it — the tokenizer (a TypeError or UnicodeEncodeError), a file
name (after the run folder was created) — so each way text comes in checks it here first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hybrid.core.errors import HybridError

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # a JSON escape that may decode to a lone surrogate


def not_unicode(text: str) -> str | None:
    """Why `text` cannot be written as UTF-8, or None: the byte that was not UTF-8 (an argument's, a file name's)
    or the lone surrogate (a JSON escape)."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        code = ord(text[e.start])
        if 0xDC80 <= code <= 0xDCFF:  # how Python keeps a byte that was not UTF-8 (surrogateescape)
            return f"not UTF-8 text (byte 0x{code - 0xDC00:02x})"
        return f"not valid Unicode text (a lone surrogate \\u{code:04x})"


class BadJSONLine(ValueError):
    """A JSON line that cannot be used: `reason` is the skip counter's key, the message says why."""

    def __init__(self, reason: str, why: str):
        super().__init__(why)
        self.reason = reason


def _strings(value: Any) -> Iterator[str]:
    """Every string in a parsed JSON value (keys too), without recursion (the value may be deep)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            yield v
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def parse_json_line(line: str) -> Any:
    """One line of a JSONL file, parsed; `BadJSONLine` when it is not JSON, is nested deeper than Python's
    recursion limit (the decoder's RecursionError: about 1,000 levels here), or holds a lone surrogate."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        raise BadJSONLine("not_json", f"not valid JSON ({e.msg})") from None
    except RecursionError:
        raise BadJSONLine("too_deep", "JSON nested too deeply (past Python's recursion limit)") from None
    if _SURROGATE_ESCAPE.search(line):  # only then can a string hold a lone surrogate: check the strings
        for s in _strings(value):
            why = not_unicode(s)
            if why:
                raise BadJSONLine("not_unicode", why)
    return value


def read_text_lines(path: str | Path, what: str = "") -> list[str]:
    """The non-blank lines of a UTF-8 text file (one text per line); `FILE:LINE: not UTF-8 text` otherwise.
    `what` names the option that gave the path in the messages (`--demonstrations: …`)."""
    path = Path(path)
    where = f"{what}: " if what else ""
    if not path.is_file():
        raise HybridError(f"{where}{path}: no such file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise HybridError(f"{where}{path}:{line}: not UTF-8 text") from None
    return [line for line in text.splitlines() if line.strip()]


def printable(text: str) -> str:
    """`text` quoted for a message, a byte that was not UTF-8 shown as `\\xff` (a lone surrogate as `\\ud800`)."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return ascii(text)
    return "'" + raw.decode("utf-8", "backslashreplace") + "'"
