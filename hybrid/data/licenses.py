"""The export's licence policy: each repository's licence (`DatasetLayout.license_file`, written by the licence
detector) is put on every record as `license` (an SPDX id or expression, or null), and `pipeline.licenses_allowed`
decides which repositories' records are kept.

A repository's licence has one *label* the allow-list is matched against:
- its SPDX expression when the detector named one (`MIT`, `MIT OR Apache-2.0`);
- "none": the detector found no licence file;
- "unknown": a licence file the detector could not name (never guessed: the record's `license` is null);
- "undetected": there is no license.json (the licence was never looked for).
An expression is allowed when it is as a whole: `A OR B` when either is, `A AND B` when both are, `A WITH exception`
when `A` is (an exception only adds permissions). Ids compare case-insensitively; "*" in the list allows all.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from hybrid.core import storage
from hybrid.core.errors import HybridError
from hybrid.core.layout import DatasetLayout

NONE, UNKNOWN, UNDETECTED = "none", "unknown", "undetected"
STATUSES = ("detected", UNKNOWN, NONE)
_TOKEN = re.compile(r"\(|\)|[^\s()]+")


@dataclass(frozen=True)
class RepoLicense:
    """A repository's licence as license.json records it: `spdx` goes on every record, `label` meets the list."""

    spdx: str | None
    label: str
    file: str | None = None


def read_license(layout: DatasetLayout, repo: str) -> RepoLicense:
    """The licence of `repo`: its license.json, or "undetected" when there is none; a malformed one is a one-line
    error naming the file (it is the detector's output, so a broken one is a bug to see, not to skip)."""
    path = layout.license_file(repo)
    if not storage.exists(path):
        return RepoLicense(None, UNDETECTED)
    try:
        data = json.loads(storage.read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HybridError(f"{storage.shown(path)}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise HybridError(f"{storage.shown(path)}: expected a JSON object, got {type(data).__name__}")
    spdx, status, file = data.get("spdx"), data.get("status"), data.get("file")
    if status not in STATUSES:
        raise HybridError(f"{storage.shown(path)}: status: expected one of {', '.join(STATUSES)}, got {status!r}")
    if status == "detected":
        if not isinstance(spdx, str) or not spdx.strip():
            raise HybridError(f"{storage.shown(path)}: spdx: expected an SPDX id for status detected, got {spdx!r}")
        return RepoLicense(spdx.strip(), spdx.strip(), file if isinstance(file, str) else None)
    return RepoLicense(None, status, file if isinstance(file, str) else None)


class LicensePolicy:
    """`pipeline.licenses_allowed` applied to licence labels (see the module docstring)."""

    def __init__(self, allowed: list[str]) -> None:
        self.allowed = list(allowed)
        self._ids = {a.strip().lower() for a in allowed}
        self.allow_all = "*" in self._ids

    def allows(self, label: str) -> bool:
        if self.allow_all or label.lower() in self._ids:
            return True
        if label in (NONE, UNKNOWN, UNDETECTED):
            return False
        try:
            return self._expression(_TOKEN.findall(label), label)
        except HybridError:
            return False  # not an expression this reads: allowed only when listed as it is (checked above)

    def _expression(self, tokens: list[str], label: str) -> bool:
        pos, value = self._or(tokens, 0, label)
        if pos != len(tokens):
            raise HybridError(f"license {label!r}: unexpected {tokens[pos]!r}")
        return value

    # precedence as the SPDX spec: WITH binds tightest, then AND, then OR
    def _or(self, tokens: list[str], pos: int, label: str) -> tuple[int, bool]:
        pos, value = self._and(tokens, pos, label)
        while pos < len(tokens) and tokens[pos].upper() == "OR":
            pos, right = self._and(tokens, pos + 1, label)
            value = value or right
        return pos, value

    def _and(self, tokens: list[str], pos: int, label: str) -> tuple[int, bool]:
        pos, value = self._term(tokens, pos, label)
        while pos < len(tokens) and tokens[pos].upper() == "AND":
            pos, right = self._term(tokens, pos + 1, label)
            value = value and right
        return pos, value

    def _term(self, tokens: list[str], pos: int, label: str) -> tuple[int, bool]:
        if pos >= len(tokens):
            raise HybridError(f"license {label!r}: ends early")
        token = tokens[pos]
        if token == "(":
            pos, value = self._or(tokens, pos + 1, label)
            if pos >= len(tokens) or tokens[pos] != ")":
                raise HybridError(f"license {label!r}: unbalanced parentheses")
            return pos + 1, value
        if token == ")" or token.upper() in ("AND", "OR", "WITH"):
            raise HybridError(f"license {label!r}: unexpected {token!r}")
        pos += 1
        if pos < len(tokens) and tokens[pos].upper() == "WITH":
            if pos + 1 >= len(tokens):
                raise HybridError(f"license {label!r}: WITH names no exception")
            exception = tokens[pos + 1]
            whole = f"{token} WITH {exception}".lower()
            return pos + 2, whole in self._ids or token.lower() in self._ids
        return pos, token.lower() in self._ids
