"""Which files the structural stages keep. Every file that is not kept gets one reason, counted by the stages.

Reasons, in the order they are checked:
    lock_file    a lock file by name (Cargo.lock, package-lock.json, …)
    vendored     under a vendored folder (vendor/, node_modules/, third_party/, …)
    binary       a NUL byte in the first 8,000 bytes (git's own test)
    not_source   not one of the eight languages by extension
    too_large    over `pipeline.max_file_bytes`
    non_utf8     not valid UTF-8
    generated    a "generated" / "do not edit" marker in a comment in the first lines
    minified     a line over `pipeline.max_line_chars` or a mean line length over `pipeline.max_mean_line_chars`
    parse_error  tree-sitter found syntax errors and no clean declaration is left (checked by the stages after
                 parsing; in a file with clean declarations only the broken ones are dropped: decl_parse_error)
and, from the git tree entry's mode, `submodule` (a gitlink) and `symlink`: there is no file content to parse.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from hybrid.config.pipeline import PipelineConfig
from pipelines.languages import language_of

DROP_REASONS = (
    "submodule",
    "symlink",
    "lock_file",
    "vendored",
    "binary",
    "not_source",
    "too_large",
    "non_utf8",
    "generated",
    "minified",
    "parse_error",
)
# Only comment lines (or a docstring's first line) of the header count: code that merely mentions
# "generated" (like this module) is not generated.
COMMENT_PREFIXES = ("#", "//", "/*", "*", "--", ";", "<!--", '"""', "'''")
BINARY_SNIFF_BYTES = 8000  # what git checks for a NUL byte (xdiff's buffer_is_binary)


def path_drop_reason(path: str, cfg: PipelineConfig) -> str | None:
    p = PurePosixPath(path)
    if p.name in cfg.lock_files:
        return "lock_file"
    vendored = set(cfg.vendored_dirs)
    if any(part in vendored for part in p.parts[:-1]):
        return "vendored"
    return None


def content_drop_reason(path: str, data: bytes, cfg: PipelineConfig, path_checked: bool = False) -> str | None:
    """The reason a file with this content is not parsed, or None to parse it (path reasons come first;
    `path_checked`: the caller found none already)."""
    reason = None if path_checked else path_drop_reason(path, cfg)
    if reason:
        return reason
    if b"\0" in data[:BINARY_SNIFF_BYTES]:
        return "binary"
    if language_of(path) is None:
        return "not_source"
    if len(data) > cfg.max_file_bytes:
        return "too_large"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "non_utf8"
    if cfg.generated_header_lines:
        head = [ln.strip().lower() for ln in text.split("\n", cfg.generated_header_lines)[: cfg.generated_header_lines]]
        comments = "\n".join(ln for ln in head if ln.startswith(COMMENT_PREFIXES))
        if any(marker.lower() in comments for marker in cfg.generated_markers):
            return "generated"
    if len(text) / (text.count("\n") + 1) > cfg.max_mean_line_chars or _has_long_line(data, cfg.max_line_chars):
        return "minified"
    return None


def _has_long_line(data: bytes, max_chars: int) -> bool:
    """A line of more than `max_chars` characters in UTF-8 `data`. Such a line has more bytes than that, so the
    lines are measured in bytes (splitting bytes is 3x faster than splitting text) and only the candidates in
    characters (a line of many multi-byte characters can be long in bytes only)."""
    lines = data.split(b"\n")
    if max(map(len, lines)) <= max_chars:
        return False
    return any(len(line.decode("utf-8")) > max_chars for line in lines if len(line) > max_chars)
