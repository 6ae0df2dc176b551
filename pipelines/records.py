"""The JSON lines of ast.jsonl and diff_ast.jsonl, built as text.

Byte for byte what `json.dumps(record, ensure_ascii=False)` gives for these records (tests/pipelines check it
against json on real outputs and on awkward strings), but faster: a record's layout is known, and the code of a
declaration — most of every line — is escaped once and cached, since a declaration keeps its text for many
commits while its file changes around it (on ripgrep's history 9 in 10 code strings written were seen before).
"""

from __future__ import annotations

from json import encoder

# The C escaper that json.dumps(..., ensure_ascii=False) itself uses for every string.
_escape = encoder.encode_basestring
_encode = encoder.JSONEncoder(ensure_ascii=False).encode


def _opt(text: str | None) -> str:
    return "null" if text is None else _escape(text)


def _range(d: dict | None) -> str:
    if d is None:
        return "null"
    return (
        f'{{"start_byte": {d["start_byte"]}, "end_byte": {d["end_byte"]}, "start_line": {d["start_line"]}, '
        f'"end_line": {d["end_line"]}}}'
    )


class RecordEncoder:
    """Encodes ast.jsonl and diff_ast.jsonl records, caching the escaped code strings (one per worker)."""

    def __init__(self, max_cached: int = 20_000) -> None:
        self.max_cached = max_cached
        self._code: dict[str, str] = {}

    def code(self, text: str | None) -> str:
        if text is None:
            return "null"
        hit = self._code.get(text)
        if hit is None:
            if len(self._code) >= self.max_cached:
                self._code.clear()
            hit = self._code[text] = _escape(text)
        return hit

    def ast_line(self, path: str, language: str | None, d: dict) -> str:
        """The line of `{"id", "file", "language", **d}` for a declaration `d` of parse_declarations."""
        kind, name = d["kind"], d["name"]
        return (
            f'{{"id": {_escape(f"{path}::{kind}::{name}")}, "file": {_escape(path)}, "language": {_opt(language)}, '
            f'"kind": {_escape(kind)}, "name": {_escape(name)}, "start_byte": {d["start_byte"]}, '
            f'"end_byte": {d["end_byte"]}, "start_line": {d["start_line"]}, "end_line": {d["end_line"]}, '
            f'"code": {self.code(d["code"])}}}\n'
        )

    def diff_line(
        self,
        file: str,
        old_file: str | None,
        language: str | None,
        kind: str,
        name: str,
        status: str,
        whitespace_only: bool,
        before: dict | None,
        after: dict | None,
        metadata_json: str,
    ) -> str:
        """The line of one diff_ast.jsonl record (docs/data-format.md); `metadata_json`: the commit's
        `commit_metadata`, encoded once per commit with `encode`."""
        return (
            f'{{"id": {_escape(f"{file}::{kind}::{name}")}, "file": {_escape(file)}, "old_file": {_opt(old_file)}, '
            f'"language": {_opt(language)}, "kind": {_escape(kind)}, "name": {_escape(name)}, '
            f'"status": {_escape(status)}, "whitespace_only": {"true" if whitespace_only else "false"}, '
            f'"before_code": {self.code(before["code"] if before else None)}, '
            f'"after_code": {self.code(after["code"] if after else None)}, '
            f'"before_range": {_range(before)}, "after_range": {_range(after)}, '
            f'"commit_metadata": {metadata_json}}}\n'
        )


def encode(obj) -> str:
    """json.dumps(obj, ensure_ascii=False) with one shared encoder."""
    return _encode(obj)
