"""The unit of work of the structural pipeline: one contiguous range of commits of one repository.

`process_range` is a Ray Data task in `pipeline run`, a plain call with `--local` and in tests. A `RangeWorker`
stays alive in its worker process between ranges: it holds the open repository and an LRU parse cache keyed by
blob id (plus the syntax trees for incremental re-parsing), so a file is parsed once per version however many
commits touch or follow it; and it runs the steps (pipelines/steps.py) over each commit in order.
"""

from __future__ import annotations

import functools
import gc
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from hybrid.config.pipeline import PipelineConfig
from hybrid.core import storage
from hybrid.core.io import remove_temps
from hybrid.core.layout import DatasetLayout, commit_name
from pipelines.declarations import ParsedFile, parse_declarations, parse_tree, update_declarations
from pipelines.filters import content_drop_reason, path_drop_reason
from pipelines.languages import grammar_key, language_of
from pipelines.records import RecordEncoder
from pipelines.steps import DONE_FILES, STEP_KEYS, STEPS, CommitContext, RangeStep

WORKER_KEY = "_worker"  # process_range's own numbers: CPU seconds, parse-cache hits, incremental parses
WRITTEN_KEY = "_written"  # on object storage: {commit number: the files uploaded into its folder}
TREE_CACHE_SIZE = 256  # syntax trees kept per worker for incremental re-parsing (a tree is ~10x its source)


class IncrementalMismatch(RuntimeError):
    """An incremental re-parse gave other declarations than a fresh parse (checked when `verify_incremental`)."""


class RangeWorker:
    """Holds an open repository and the parse cache of one worker process, and runs the steps over ranges."""

    verify_incremental = False  # tests: check every incremental update against a fresh parse

    def __init__(self, repo_name: str, repo_path: str, cfg: PipelineConfig) -> None:
        import pygit2

        self.repo_name, self.repo_path, self.cfg = repo_name, repo_path, cfg
        self.layout = DatasetLayout(cfg.data_dir)
        # libgit2 hashes every object it reads to check its id (SHA-1 with collision detection): a tenth of
        # this stage's time on a real history. git itself does not (`git log -p` reads the same objects
        # unchecked); pack files are checked as a whole when fetched. Process-wide, so set where the stages run.
        pygit2.settings.enable_strict_hash_verification(False)
        self.repo = pygit2.Repository(repo_path)
        self.cache: OrderedDict[tuple[str, str], ParsedFile | str] = OrderedDict()
        self.trees: OrderedDict[tuple[str, str], tuple[object, bytes]] = OrderedDict()
        self.path_info: dict[str, tuple[str | None, str | None]] = {}  # path -> (path drop reason, language)
        self.encoder = RecordEncoder()  # ast.jsonl / diff_ast.jsonl lines; caches escaped code between commits
        self.cache_hits = self.cache_misses = self.incremental = 0
        # generate-ast running together with generate-ast-diffs parses each file's old version first, so the
        # new one is an incremental re-parse even at the start of a range (a cold cache)
        self.prefetch_old = False
        self.prefetched: set[tuple[str, str]] = set()

    # -- parsing ------------------------------------------------------------------------------------------
    def path_facts(self, path: str) -> tuple[str | None, str | None]:
        """(the path's drop reason, its language), kept per path: the same paths come back in many commits."""
        facts = self.path_info.get(path)
        if facts is None:
            facts = self.path_info[path] = (path_drop_reason(path, self.cfg), language_of(path))
        return facts

    def parse(
        self, blob_id: str, path: str, prev_id: str | None = None, hunks: Callable[[], list] | None = None
    ) -> ParsedFile | str:
        """The declarations of a blob at `path`, or the reason it is not parsed (`parse_error`: syntax errors
        and no clean declaration left; see ParsedFile).
        `prev_id`: the blob this one replaced; when its tree is cached the parse is incremental, with the edits
        of `hunks()` (the commit diff's hunks from `prev_id` to this blob; without them, git diffs the two)."""
        reason, language = self.path_facts(path)
        if reason:
            return reason
        key = (blob_id, grammar_key(path, language) if language else "")
        hit = self.cache.get(key)
        if hit is not None:
            self.cache.move_to_end(key)
            self.cache_hits += 1
            return _usable(hit)
        self.cache_misses += 1
        data = self.repo[blob_id].data
        result: ParsedFile | str | None = content_drop_reason(path, data, self.cfg, path_checked=True)
        if result is None:
            old = self.trees.get((prev_id, key[1])) if prev_id else None
            edits = None
            if old is not None:
                if hunks is not None:
                    edits = hunks()
                else:
                    import pygit2

                    patch = pygit2.Patch.create_from(old[1], data, context_lines=0)
                    edits = [(h.old_start, h.old_lines, h.new_start, h.new_lines) for h in patch.hunks]
            tree, edit = parse_tree(data, key[1], *(old or (None, None)), hunks=edits)
            old_parsed = self.cache.get((prev_id, key[1])) if edit else None
            if isinstance(old_parsed, ParsedFile):
                self.incremental += 1
                parsed = update_declarations(data, key[1], tree, old_parsed, old[0], old[1], edit)
                if self.verify_incremental and parse_declarations(data, key[1]) != parsed:
                    raise IncrementalMismatch(f"incremental declarations differ for {path} {blob_id}")
            else:
                parsed = parse_declarations(data, key[1], tree)
            result = parsed  # (kept even when unusable: the next version re-parses incrementally from it)
            self.trees[key] = (tree, data)
            if len(self.trees) > TREE_CACHE_SIZE:
                self.trees.popitem(last=False)
        if self.cfg.parse_cache_size:
            self.cache[key] = result
            if len(self.cache) > self.cfg.parse_cache_size:
                self.cache.popitem(last=False)
        return _usable(result)

    def run_range(
        self,
        numbers: list[int],
        hashes: list[str],
        step_keys: list[str],
        force: bool = False,
        present: dict[int, list[str]] | None = None,
        run: str = "",
    ) -> dict:
        """Run the steps named by `step_keys` (in STEPS order) on commits `numbers` (contiguous, oldest first)
        with the given hashes. Returns {step key: StageStats dict} with `skipped_done` counts. `present`: on object
        storage, the names of the files each commit folder holds (the driver's listing); `run`: the `pipeline run`
        whose node-local copies of uploaded files to use and add to (hybrid/core/layout.py `run_scope`)."""
        unknown = [k for k in step_keys if k not in STEP_KEYS]
        if unknown:
            raise ValueError(f"unknown range stages {unknown}")
        steps = [s(self) for s in STEPS if s.key in step_keys]
        self.prefetch_old = "ast" in step_keys and "ast-diffs" in step_keys
        self.prefetched.clear()
        if present is not None:
            written = self._run_staged(numbers, hashes, steps, force, present, run)
            return {**{s.key: s.stats.to_dict() for s in steps}, WRITTEN_KEY: written}
        for number, commit_hash in zip(numbers, hashes):
            out_dir = self.layout.local_commit_path(self.repo_name, int(number))  # (plain text: see the layout)
            todo = _todo(steps, force, lambda s, d=out_dir: s.is_done(d))
            if not todo:
                continue
            try:
                os.mkdir(out_dir)
            except FileExistsError:  # an earlier run wrote here: it may have been killed between write and rename
                remove_temps(out_dir, [f for s in todo for f in DONE_FILES[s.key]])
            except FileNotFoundError:
                os.makedirs(out_dir, exist_ok=True)
            self._run_commit(todo, int(number), commit_hash, out_dir)
        return {s.key: s.stats.to_dict() for s in steps}

    def _run_commit(self, todo: list[RangeStep], number: int, commit_hash: str, out_dir: str) -> None:
        import pygit2

        commit = self.repo.get(commit_hash)
        if commit is None or not isinstance(commit, pygit2.Commit):
            raise ValueError(f"{self.repo_path}: no commit {commit_hash}")
        ctx = CommitContext(self.repo, number, commit)
        for s in todo:
            s.run(ctx, Path(out_dir))  # (a Path: the steps' interface)

    def _run_staged(
        self,
        numbers: list[int],
        hashes: list[str],
        steps: list[RangeStep],
        force: bool,
        present: dict[int, list[str]],
        run: str,
    ) -> dict[int, list[str]]:
        """On object storage: the range's commit folders are built in a local staging folder (the inputs the steps
        read fetched into it first, all at once), and each commit's new files are uploaded in the background while
        the next commit is worked on — in the order the steps write them, so a stage's done marker (its last file)
        is never there before the rest of its files. Within a `pipeline run` the staging folder is the run's
        workspace on this node (`DatasetLayout.workspace`): what was uploaded or fetched stays there for the run's
        later stages — on this history that spares dedup and generate-fim 1,280 of the 2,265 requests (GET + HEAD
        per file), and a folder made and removed per commit and stage (1-1.5 ms each here). Returns the names of the
        files uploaded into each commit folder (for the driver's listing: `DatasetLayout.note_written`)."""
        repo = self.repo_name
        root, own = self.layout.workspace(repo, run)
        todo_of, wanted, written_to = {}, {}, {}
        for number in numbers:
            have = frozenset(present.get(number, ()))
            todo = _todo(steps, force, lambda s, h=have: self.layout.done_from(h, s.name))
            written = {f for s in todo for f in DONE_FILES[s.key]}
            todo_of[number] = todo
            wanted[number] = sorted({f for s in todo for f in s.reads if f in have and f not in written})
        try:
            self.layout.fetch_commit_files(repo, {n: w for n, w in wanted.items() if w}, root)
            with storage.Uploads() as uploads:
                for number, commit_hash in zip(numbers, hashes):
                    if not todo_of[number]:
                        continue
                    out_dir = root / commit_name(number)
                    out_dir.mkdir(exist_ok=True)
                    self._run_commit(todo_of[number], int(number), commit_hash, str(out_dir))
                    files = [
                        (out_dir / f, self.layout.commit_file(repo, number, f))
                        for s in todo_of[number]
                        for f in DONE_FILES[s.key]
                        if (out_dir / f).exists()
                    ]
                    # (in a run, the commit folder stays in the run's workspace: run_scope)
                    uploads.submit(files, then=functools.partial(shutil.rmtree, out_dir, True) if own else None)
                    written_to[number] = [local.name for local, _ in files]
        finally:
            if own:
                shutil.rmtree(root, ignore_errors=True)
        return written_to


def _todo(steps: list[RangeStep], force: bool, is_done: Callable[[RangeStep], bool]) -> list[RangeStep]:
    """The steps a commit still needs (all with `force`); each one it skips is counted as `skipped_done`."""
    todo = [s for s in steps if force or not is_done(s)]
    for s in steps:
        if s not in todo:
            s.stats.counts["skipped_done"] += 1
    return todo


def _usable(result: ParsedFile | str) -> ParsedFile | str:
    """A parse with nothing usable left (syntax errors and no clean declaration) is dropped as `parse_error`."""
    return "parse_error" if isinstance(result, ParsedFile) and not result.usable else result


_WORKERS: dict[tuple[str, str], RangeWorker] = {}


def get_worker(repo_name: str, repo_path: str, cfg: PipelineConfig) -> RangeWorker:
    """The worker of this process for a repo (kept between ranges so its parse cache stays warm)."""
    key = (repo_path, cfg.model_dump_json())
    worker = _WORKERS.get(key)
    if worker is None:
        if len(_WORKERS) > 8:
            _WORKERS.clear()
        worker = _WORKERS[key] = RangeWorker(repo_name, repo_path, cfg)
    return worker


def process_range(
    repo_name: str,
    repo_path: str,
    numbers: list[int],
    hashes: list[str],
    step_keys: list[str],
    cfg: PipelineConfig,
    force: bool = False,
    present: dict[int, list[str]] | None = None,
    run: str = "",
) -> dict:
    """One range through this process's worker: {step key: StageStats dict}, and under WORKER_KEY the range's CPU
    seconds and parse-cache numbers."""
    cpu0, thread0 = time.process_time(), time.thread_time()
    worker = get_worker(repo_name, repo_path, cfg)
    counters0 = (worker.cache_hits, worker.cache_misses, worker.incremental)
    # The parse cache holds tens of thousands of small dicts that live for the whole range: Python's cyclic GC
    # would re-scan them every few thousand allocations (3% of a range's time on bat's history), and nothing a
    # range makes is cyclic. So no collections during a range; the next allocations after it trigger them.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        result = worker.run_range(numbers, hashes, step_keys, force, present, run)
    finally:
        if gc_was_enabled:
            gc.enable()
    hits, misses, incremental = (
        now - before for now, before in zip((worker.cache_hits, worker.cache_misses, worker.incremental), counters0)
    )
    # cpu_s: the whole process (in a Ray worker also Ray's own threads); thread_cpu_s: the range's own work
    result[WORKER_KEY] = {
        "cpu_s": time.process_time() - cpu0,
        "thread_cpu_s": time.thread_time() - thread0,
        "cache_hits": hits,
        "cache_misses": misses,
        "incremental_parses": incremental,
    }
    return result
