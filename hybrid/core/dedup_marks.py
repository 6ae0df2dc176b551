"""What the dedup stage (pipelines/dedup.py) marked in a repository: its filtered commits and duplicate changes.

Read by every stage after it — generate-tasks and generate-reasoning (pipelines/llm/stages.py), generate-fim
(pipelines/steps.py) — and by export, which skip what is marked. Here, below the libraries, so that pipelines.llm
reads the marks without importing pipelines (its package sits above it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybrid.core import storage
from hybrid.core.errors import HybridError
from hybrid.core.io import iter_jsonl
from hybrid.core.layout import DEDUP, FILTERED_COMMITS, DatasetLayout


@dataclass(frozen=True)
class Marks:
    """A repository's filtered commits and duplicate changes, as the dedup stage listed them (empty when it has not
    run, or ran with everything off)."""

    commits: dict[int, str] = field(default_factory=dict)  # commit number -> filter reason
    records: dict[tuple[int, str], str] = field(default_factory=dict)  # (commit, function id) -> exact | near
    commits_with_duplicates: frozenset[int] = frozenset()

    def commit_reason(self, commit: int) -> str | None:
        return self.commits.get(commit)

    def reason(self, commit: int, function_id: str) -> str | None:
        """Why this change is skipped: `filtered_commit` or `duplicate`, or None to keep it."""
        if commit in self.commits:
            return "filtered_commit"
        if (commit, function_id) in self.records:
            return "duplicate"
        return None

    def __bool__(self) -> bool:
        return bool(self.commits or self.records)


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    for lineno, row in iter_jsonl(path):  # a line that is not JSON: one line naming file and line
        if not isinstance(row, dict) or not isinstance(row.get("commit"), int):
            raise HybridError(f"{path}:{lineno}: expected an object with an integer `commit`")
        yield row


_MARKS_CACHE: dict[str, tuple[tuple[tuple[int, int] | None, ...], Marks]] = {}


def marks_in(repo_dir: str | os.PathLike[str]) -> Marks:
    """The marks of a repository's output folder (local), cached per process while the two files stay the same."""
    # (the layout's dedup_file and filtered_commits_file, from the folder the commit-level callers have)
    paths = [Path(repo_dir, DEDUP), Path(repo_dir, FILTERED_COMMITS)]
    stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) if p.exists() else None for p in paths)
    hit = _MARKS_CACHE.get(str(repo_dir))
    if hit is not None and hit[0] == stamp:
        return hit[1]
    records = {(int(r["commit"]), str(r.get("function_id"))): str(r.get("reason")) for r in _jsonl(paths[0])}
    marks = Marks(
        commits={int(r["commit"]): str(r.get("reason")) for r in _jsonl(paths[1])},
        records=records,
        commits_with_duplicates=frozenset(n for n, _ in records),
    )
    if len(_MARKS_CACHE) > 64:
        _MARKS_CACHE.clear()
    _MARKS_CACHE[str(repo_dir)] = (stamp, marks)
    return marks


def load_marks(layout: DatasetLayout, repo: str) -> Marks:
    if not layout.staged:
        return marks_in(layout.local(layout.repo_dir(repo)))
    folder = layout.staging_dir(repo)  # object storage: the two files fetched onto this machine, read, removed
    try:
        files = [(DEDUP, layout.dedup_file(repo)), (FILTERED_COMMITS, layout.filtered_commits_file(repo))]
        storage.at(layout.data_dir).get_files([(loc, folder / name) for name, loc in files if storage.exists(loc)])
        return marks_in(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
