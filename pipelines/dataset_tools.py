"""`cleanup-dataset` and `check-ast-coverage`: housekeeping over data/ast_dataset (never outside it), in a local
folder or on object storage (one listing per repository there)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from hybrid.config.pipeline import PipelineConfig
from hybrid.core import storage
from hybrid.core.errors import HybridError
from hybrid.core.layout import AST, COMMIT_DATA, DIFF_AST, FIM, REASONING, TASKS, DatasetLayout, commit_name
from pipelines.repos import validate_name

# flag -> file name in each commit_<N>/ folder
CLEANABLE = {
    "ast": AST,
    "commit_data": COMMIT_DATA,
    "diffs": DIFF_AST,
    "tasks": TASKS,
    "reasoning": REASONING,
    "fim": FIM,
}
_TEMP_FILE = re.compile(r"^\..+\.tmp$")  # left by a run killed between write and rename (hybrid.core.io)


def _repos(layout: DatasetLayout, repos: list[str] | None) -> list[str]:
    """The named repositories, else every one with outputs (a symbolic link to a folder elsewhere is not one)."""
    if repos:
        missing = [r for r in map(validate_name, repos) if not layout.has_repo(r)]
        if missing:
            raise HybridError(f"{layout.repo_dir(missing[0])}: no dataset for this repo")
        return repos
    if layout.staged:  # (no symbolic links on object storage)
        return layout.repos()
    return [r for r in layout.repos() if not layout.local(layout.repo_dir(r)).is_symlink()]


def _commit_dirs(layout: DatasetLayout, repo: str) -> Iterator[Path]:
    """The repository's commit folders, oldest first (never through a symbolic link: cleanup deletes there)."""
    for n in layout.commits(repo):
        folder = layout.local_commit_dir(repo, n)
        if not folder.is_symlink():
            yield folder


def _stored_commit_files(layout: DatasetLayout, repo: str) -> Iterator[tuple[int, str]]:
    """On object storage: (commit number, file name) of every file directly in a commit folder of the repository,
    oldest commit first, from one listing."""
    listing = layout.listing(repo)
    for n in sorted(listing):
        for name in sorted(listing[n]):
            yield n, name


def cleanup_dataset(
    cfg: PipelineConfig, kinds: list[str], repos: list[str] | None = None, temp: bool = False, dry_run: bool = False
) -> dict[str, int]:
    """Remove the chosen generated files (and, with `temp`, leftover temp files) from commit folders.
    Returns {file name: count}. Only regular files inside data/ast_dataset/<repo>/commit_<N>/ are touched."""
    unknown = [k for k in kinds if k not in CLEANABLE]
    if unknown:
        raise HybridError(f"cleanup-dataset: unknown kind {unknown[0]!r} (choose from {', '.join(CLEANABLE)})")
    if not kinds and not temp:
        raise HybridError("cleanup-dataset: say what to remove (e.g. --tasks --reasoning, or --all)")
    names = {CLEANABLE[k] for k in kinds}
    layout = DatasetLayout(cfg.data_dir)
    if layout.staged:
        return _cleanup_stored(layout, names, repos, temp, dry_run)
    root = layout.local(layout.dataset_dir).resolve()
    removed: Counter = Counter()
    for repo in _repos(layout, repos):
        for cdir in _commit_dirs(layout, repo):
            for entry in os.scandir(cdir):
                if not entry.is_file(follow_symlinks=False):
                    continue
                if entry.name in names or (temp and _TEMP_FILE.match(entry.name)):
                    path = Path(entry.path)
                    if not path.resolve().is_relative_to(root):
                        continue
                    removed["temp files" if _TEMP_FILE.match(entry.name) else entry.name] += 1
                    if not dry_run:
                        path.unlink()
    return dict(removed)


def _cleanup_stored(
    layout: DatasetLayout, names: set[str], repos: list[str] | None, temp: bool, dry_run: bool
) -> dict[str, int]:
    """`cleanup_dataset` on object storage: the same files, found from one listing per repository, deleted
    several at once."""
    removed: Counter = Counter()
    doomed = []
    for repo in _repos(layout, repos):
        for n, name in _stored_commit_files(layout, repo):
            if name in names or (temp and _TEMP_FILE.match(name)):
                removed["temp files" if _TEMP_FILE.match(name) else name] += 1
                doomed.append(layout.commit_file(repo, n, name))
    if not dry_run:
        storage.at(layout.data_dir).remove_files(doomed)
    return dict(removed)


def _commit_data_files(layout: DatasetLayout, repo: str) -> Iterator[tuple[str, Path]]:
    """(the file as messages name it, a local path to read) of each commit_data.json of a repository, oldest first:
    the files themselves, or on object storage local copies (fetched several at once, removed after)."""
    if not layout.staged:
        for cdir in _commit_dirs(layout, repo):
            if (cdir / COMMIT_DATA).exists():
                yield str(cdir / COMMIT_DATA), cdir / COMMIT_DATA
        return
    into = layout.staging_dir(repo)
    try:
        numbers = [n for n, name in _stored_commit_files(layout, repo) if name == COMMIT_DATA]
        layout.fetch_commit_files(repo, {n: [COMMIT_DATA] for n in numbers}, into)
        for n in numbers:
            yield storage.shown(layout.commit_file(repo, n, COMMIT_DATA)), into / commit_name(n) / COMMIT_DATA
    finally:
        shutil.rmtree(into, ignore_errors=True)


def ast_coverage(cfg: PipelineConfig, repos: list[str] | None = None) -> dict[str, dict[str, dict[str, int]]]:
    """Per repo and language, read from commit_data.json (each file version a commit touched counts once):
    `parsed` (cleanly), `recovered` (parsed with syntax errors that tree-sitter recovered from; its broken
    declarations are dropped and counted in `declarations_dropped`), `parse_error` (nothing usable left),
    `skipped:<reason>`, and the `declarations` kept."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    layout = DatasetLayout(cfg.data_dir)
    for repo in _repos(layout, repos):
        per_lang: dict[str, Counter] = {}
        for shown, path in _commit_data_files(layout, repo):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise HybridError(f"{shown}: line {e.lineno}: not valid JSON ({e.msg})") from None
            for f in data.get("files", []):
                if f.get("status") == "deleted":
                    continue
                c = per_lang.setdefault(f.get("language") or "other", Counter())
                skipped = f.get("skipped")
                if skipped is None:
                    if "declarations_dropped" in f:  # written only for files with syntax errors
                        c["recovered"] += 1
                        c["declarations_dropped"] += int(f["declarations_dropped"])
                    else:
                        c["parsed"] += 1
                    c["declarations"] += int(f.get("declarations", 0))
                elif skipped == "parse_error":
                    c["parse_error"] += 1
                else:
                    c[f"skipped:{skipped}"] += 1
        out[repo] = {lang: dict(c) for lang, c in sorted(per_lang.items())}
    return out
