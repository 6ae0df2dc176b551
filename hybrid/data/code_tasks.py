"""Long-context code tasks from the pipeline's outputs, and what in an answer can only come from far away
(`hybrid bench code-memory`, docs/code-memory.md).

    long-file change   for each declaration a commit adds or changes (diff_ast.jsonl): input = the file at that
                       commit up to the declaration plus the declaration's first line; output = the rest of the
                       declaration, up to `max_output_chars` (cut at a line end). The file before the declaration is
                       what a developer has in front of them when writing it; nothing of the output is in it.

    far tokens         an output token belongs to a *name* (an identifier of 3+ characters or a string literal) that
                       occurs earlier in the sequence; the occurrence is `within` when the name also stands inside the
                       attention window at that point (the tokens of its own segment before it) or earlier in the
                       output, and `far` when it stands only before that window — the model can get it from memory
                       alone. An example is in the `beyond` subset when its output has a far name, else `within`.

The analysis runs on the token ids a model is fed (after left truncation), so `beyond` means beyond *that* model's
window: `segment_length` tokens, the attention span of the memory variants."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hybrid.core.errors import HybridError
from hybrid.core.io import iter_jsonl
from hybrid.core.layout import DIFF_AST, DatasetLayout
from hybrid.data.tokenizer import SPECIAL_TOKENS, UNK, TextTokenizer

# A name: an identifier of 3+ characters (shorter ones - i, x, df - are everywhere) or a string literal.
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}|\"[^\"\n]{2,80}\"|'[^'\n]{2,80}'")
KEYWORDS = frozenset(
    [
        "and",
        "as",
        "assert",
        "async",
        "await",
        "break",
        "class",
        "continue",
        "def",
        "del",
        "elif",
        "else",
        "except",
        "false",
        "finally",
        "for",
        "from",
        "global",
        "if",
        "import",
        "in",
        "is",
        "lambda",
        "none",
        "nonlocal",
        "not",
        "or",
        "pass",
        "raise",
        "return",
        "self",
        "true",
        "try",
        "while",
        "with",
        "yield",
        "let",
        "mut",
        "pub",
        "fn",
        "impl",
        "use",
        "mod",
        "struct",
        "enum",
        "match",
        "const",
        "static",
        "func",
        "var",
        "package",
        "type",
        "interface",
        "return",
        "void",
        "int",
        "char",
        "bool",
        "string",
        "new",
        "this",
        "null",
        "public",
        "private",
        "protected",
        "extends",
        "implements",
        "function",
        "export",
        "default",
        "typeof",
        "instanceof",
    ]
)


@dataclass(frozen=True)
class CodeExample:
    input: str
    output: str
    repo: str
    commit_number: int
    file: str
    function_id: str
    task: str = "long_file"

    def record(self) -> dict[str, Any]:
        return asdict(self)


def _declaration_split(decl: str, max_output_chars: int) -> tuple[str, str] | None:
    """(first line with its newline, the following lines up to `max_output_chars`, cut at a line end)."""
    first, sep, rest = decl.partition("\n")
    if not sep or not rest.strip():
        return None
    if len(rest) > max_output_chars:
        cut = rest.rfind("\n", 0, max_output_chars)
        rest = rest[: cut + 1] if cut > 0 else rest[:max_output_chars]
    return first + "\n", rest


def long_file_examples(
    data_dir: str | Path,
    repo_name: str,
    repo_path: str | Path,
    max_input_chars: int = 6000,
    max_output_chars: int = 400,
) -> Iterator[CodeExample]:
    """Long-file change examples of one repository (see the module docstring), oldest commit first. The files come
    from the repository's bare clone (`repo_path`); the records from data/ast_dataset/<repo>/commit_<N>/."""
    import pygit2

    layout = DatasetLayout(data_dir)
    if not layout.has_repo(repo_name):
        raise HybridError(
            f"{layout.repo_dir(repo_name)}: no pipeline output for {repo_name} (run `hybrid pipeline run {repo_name}`)"
        )
    repo = pygit2.Repository(str(repo_path))
    for number in layout.commits(repo_name):
        diff_file = layout.local_commit_dir(repo_name, number) / DIFF_AST
        if not diff_file.is_file():
            continue
        blobs: dict[str, bytes | None] = {}
        commit = None
        for _, rec in iter_jsonl(diff_file):
            if (
                rec.get("status") not in ("added", "modified")
                or not rec.get("after_range")
                or rec.get("whitespace_only")
            ):
                continue
            if commit is None:
                commit = repo[rec["commit_metadata"]["commit_hash"]] if "commit_metadata" in rec else None
                if commit is None:
                    break
            path = rec["file"]
            if path not in blobs:
                try:
                    blobs[path] = commit.tree[path].data
                except KeyError:
                    blobs[path] = None
            data = blobs[path]
            if data is None:
                continue
            start, end = rec["after_range"]["start_byte"], rec["after_range"]["end_byte"]
            try:
                prefix = data[:start].decode("utf-8")[-max_input_chars:]
                decl = data[start:end].decode("utf-8")
            except UnicodeDecodeError:
                continue
            parts = _declaration_split(decl, max_output_chars)
            if parts is None or not prefix.strip():
                continue
            yield CodeExample(prefix + parts[0], parts[1], repo_name, number, path, rec.get("id", ""))


def time_split(
    examples: Sequence[CodeExample], validation: float = 0.1, test: float = 0.1
) -> dict[str, list[CodeExample]]:
    """Train on the earliest commits, validation on the next, test on the latest: whole commits go to one split
    (a commit's examples never straddle two): a commit goes where the middle of its examples falls in the running
    count."""
    commits = sorted({(e.repo, e.commit_number) for e in examples}, key=lambda rc: rc[1])
    per_commit: dict[tuple[str, int], int] = {}
    for e in examples:
        per_commit[(e.repo, e.commit_number)] = per_commit.get((e.repo, e.commit_number), 0) + 1
    total = len(examples)
    split_of, seen = {}, 0
    for rc in commits:
        share = (seen + per_commit[rc] / 2) / max(1, total)  # where the commit's middle falls
        split_of[rc] = "train" if share < 1 - validation - test else ("validation" if share < 1 - test else "test")
        seen += per_commit[rc]
    out: dict[str, list[CodeExample]] = {"train": [], "validation": [], "test": []}
    for e in examples:
        out[split_of[(e.repo, e.commit_number)]].append(e)
    return out


# -- what can only come from far away --------------------------------------------------------------------------------
@dataclass
class FarAnalysis:
    """Of one encoded example: `far` (positions of the output tokens whose name stands only beyond the window) and
    `names` (the far names, for inspection)."""

    far: list[int]
    names: list[str]

    @property
    def beyond(self) -> bool:
        return bool(self.far)


def _token_texts(tokenizer: TextTokenizer, ids: Sequence[int]) -> list[str]:
    """The text of each token (special tokens: none), so that their concatenation is the decoded sequence."""
    special = {tokenizer.tokenizer.token_to_id(t) for t in (*SPECIAL_TOKENS, UNK)}
    return ["" if i in special else tokenizer.decode([i], skip_special_tokens=False) for i in ids]


def _is_name(match: str) -> bool:
    return match[0] in "\"'" or match.lower() not in KEYWORDS


def _earlier_starts(name: str, text: str, hi: int) -> list[int]:
    """Where `name` stands as a whole word (a literal: as is) in text[:hi] (`hi`: where the name's later occurrence
    starts, so no earlier one runs into it)."""
    pattern = re.escape(name) if name[0] in "\"'" else rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])"
    head = text[:hi]
    return [m.start() for m in re.finditer(pattern, head)] if name in head else []


def far_tokens(tokenizer: TextTokenizer, ids: Sequence[int], prompt_length: int, segment_length: int) -> FarAnalysis:
    """Which output tokens (positions >= `prompt_length`) belong to a name found earlier only beyond the window (see
    the module docstring). The window of the token at position p is positions [p - p % S, p) with S =
    `segment_length`; a name counts as inside it when an earlier occurrence lies wholly in the text from the window's
    first token up to the name (so a name the output itself wrote earlier in the same segment is within); one cut
    by the window's start counts as beyond."""
    texts = _token_texts(tokenizer, ids)
    starts, pos = [], 0
    for t in texts:
        starts.append(pos)
        pos += len(t)
    text = "".join(texts)
    out_start = starts[prompt_length] if prompt_length < len(starts) else len(text)
    far: list[int] = []
    names: list[str] = []

    def token_at(char: int) -> int:
        lo, hi = 0, len(starts) - 1
        while lo < hi:  # the last token starting at or before `char`
            mid = (lo + hi + 1) // 2
            if starts[mid] <= char:
                lo = mid
            else:
                hi = mid - 1
        return lo

    for m in NAME.finditer(text, out_start):
        name = m.group(0)
        if not _is_name(name):
            continue
        p = token_at(m.start())
        if p < prompt_length:  # a name that begins in the prompt (the declaration's first line goes on)
            continue
        window_start = starts[p - p % segment_length]
        earlier = _earlier_starts(name, text, m.start())
        if not earlier or max(earlier) >= window_start:
            continue  # not earlier at all, or wholly inside the window: nothing to fetch from far away
        last = token_at(m.end() - 1)
        far.extend(range(p, last + 1))
        names.append(name)
    return FarAnalysis(sorted(set(far)), names)
