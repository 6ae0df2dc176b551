"""Decontamination at export: a training record that holds most of a reference text — a validation/test record's
output (what a model is scored on) or an item of a benchmark file the user names — is dropped, counted and listed.
What is searched is the training record's output, what the loss trains on (hybrid trains on output tokens only);
`inputs=True` searches its input (the context: task, FIM prefix/suffix) too. Searching inputs on this project's
own history dropped 643 of 2,500 training records, mostly because a test middle such as a protocol method's
signature also stands in other files' FIM context; outputs alone dropped 111, each a moved or copied function.

Texts are compared as n-grams of code tokens (identifiers, numbers and single punctuation characters; whitespace is
ignored, so reformatting does not hide a copy). A training record is contaminated by a reference when it holds at
least `threshold` of the reference's distinct n-grams. n = 13 follows GPT-3's test-set check (Brown et al. 2020,
appendix C); a reference shorter than n tokens cannot be checked and is counted as `too_short`.

Speed: every reference n-gram goes into one set (and an index n-gram -> references); a training record's n-grams are
made and intersected with that set by C code (`zip` of slices, `set &`), and only its hits are looked up per
reference (timings in docs/training.md).
"""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from hybrid.core import storage
from hybrid.core.errors import HybridError

_CODE_TOKEN = re.compile(r"\w+|[^\w\s]")
# the fields of a benchmark record that are compared, each on its own (HumanEval: prompt, canonical_solution;
# MBPP: text, code); a record needs at least one of them
BENCHMARK_FIELDS = ("prompt", "canonical_solution", "code", "text")


def code_tokens(text: str) -> list[str]:
    return _CODE_TOKEN.findall(text)


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The distinct n-grams of code tokens of `text` (empty when it has fewer than n tokens)."""
    tokens = code_tokens(text)
    return set(zip(*(tokens[i:] for i in range(n))))


@dataclass(frozen=True)
class Reference:
    """A text training must not contain: where it comes from (`source`: validation, test or benchmark; `file`, `line`
    for a benchmark), its `id` and the `field` that held it."""

    source: str
    id: str
    field: str
    file: str | None = None
    line: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"source": self.source, "id": self.id, "field": self.field}
        if self.file is not None:
            d.update(file=self.file, line=self.line)
        return d


@dataclass
class NgramIndex:
    """The n-grams of every reference, for `match`."""

    n: int
    threshold: float
    references: list[Reference] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    too_short: Counter[str] = field(default_factory=Counter)  # by source
    _where: dict[tuple[str, ...], int | list[int]] = field(default_factory=dict)
    _all: set[tuple[str, ...]] = field(default_factory=set)

    def add(self, ref: Reference, text: str) -> None:
        grams = ngrams(text, self.n)
        if not grams:
            self.too_short[ref.source] += 1
            return
        k = len(self.references)
        self.references.append(ref)
        self.sizes.append(len(grams))
        where = self._where
        for g in grams:
            seen = where.get(g)
            if seen is None:
                where[g] = k
            elif isinstance(seen, int):
                where[g] = [seen, k]
            else:
                seen.append(k)
        self._all |= grams

    def __len__(self) -> int:
        return len(self.references)

    def match(self, text: str) -> tuple[Reference, float] | None:
        """The reference `text` holds the largest share of (at least `threshold`), and that share; else None."""
        if not self._all:
            return None
        hits = ngrams(text, self.n) & self._all
        if not hits:
            return None
        counts: Counter[int] = Counter()
        for g in hits:
            seen = self._where[g]
            if isinstance(seen, int):
                counts[seen] += 1
            else:
                counts.update(seen)
        best, share = -1, 0.0
        for k, c in counts.items():
            s = c / self.sizes[k]
            if s > share or (s == share and k < best):
                best, share = k, s
        return (self.references[best], share) if share >= self.threshold else None


def _open_lines(path: str) -> Iterator[bytes]:
    stream = storage.at(path).open_input(path)
    with stream:
        if path.endswith(".gz"):
            with gzip.open(stream) as unzipped:
                yield from unzipped
        else:
            yield from stream


def read_benchmark(path: str) -> list[tuple[Reference, str]]:
    """The references of a benchmark JSONL file (`.jsonl` or `.jsonl.gz`, local or a URI): per record, each string
    field of BENCHMARK_FIELDS; named by `task_id` (or `id`) when the record has one, else by its line. A line that is
    not a JSON object with one of those fields is a one-line error naming the file and line."""
    shown = storage.shown(path)
    out: list[tuple[Reference, str]] = []
    try:
        for number, raw in enumerate(_open_lines(path), 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise HybridError(f"{shown}:{number}: not valid JSON ({e})") from None
            texts = [(f, rec[f]) for f in BENCHMARK_FIELDS if isinstance(rec, dict) and isinstance(rec.get(f), str)]
            if not texts:
                raise HybridError(f"{shown}:{number}: no {', '.join(BENCHMARK_FIELDS)} field holding a string")
            name = rec.get("task_id", rec.get("id"))
            rid = str(name) if name is not None else f"line {number}"
            out.extend((Reference("benchmark", rid, f, shown, number), text) for f, text in texts)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise HybridError(f"{shown}: cannot read ({e})") from None
    if not out:
        raise HybridError(f"{shown}: empty file (no benchmark records)")
    return out


def build_index(
    n: int, threshold: float, split_refs: Iterable[tuple[Reference, str]], benchmark_files: Iterable[str] = ()
) -> NgramIndex:
    index = NgramIndex(n, threshold)
    for ref, text in split_refs:
        index.add(ref, text)
    for path in benchmark_files:
        for ref, text in read_benchmark(str(path)):
            index.add(ref, text)
    return index


def record_text(record: dict[str, Any], inputs: bool = False) -> str:
    """The text of an IO pair that is searched: its output, or its input and output."""
    return f"{record['input']}\n{record['output']}" if inputs else record["output"]


def decontaminate(
    records: list[dict[str, Any]], index: NgramIndex, inputs: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the records kept, one line per dropped record naming it and what it overlapped)."""
    if not len(index):
        return records, []
    kept, dropped = [], []
    for rec in records:
        found = index.match(record_text(rec, inputs))
        if found is None:
            kept.append(rec)
            continue
        ref, share = found
        dropped.append(
            {
                "id": rec["id"],
                "repo": rec["repo"],
                "function_id": rec["function_id"],
                "kind": rec["kind"],
                "commit_number": rec["commit_number"],
                "overlap": round(share, 4),
                "ngram": index.n,
                "against": ref.to_dict(),
            }
        )
    return kept, dropped
