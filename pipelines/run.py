"""`hybrid pipeline run`: the stages in order, on Ray Data.

The plan: for each repository, list its first-parent commits, keep the ones a stage still has to do (all with
`force`), cut them into contiguous ranges of `pipeline.commits_per_task`, and map `process_range` over the
ranges with `ray.data.TaskPoolStrategy(size=pipeline.num_workers)`. Consecutive per-commit stages run in the
same pass, so a range parses each blob once for generate-ast and generate-ast-diffs. With the data folder on object
storage (docs/cluster.md) the planner lists each repository once, the rows carry what each commit folder holds,
and each worker unpacks the clone archive on its machine and uploads the commit folders it builds.

Two shapes of stage: a per-commit step (pipelines/steps.py: `RangeStep` subclasses, run by a `RangeWorker` over
commit ranges) and a repository stage that runs itself (the LLM stages, pipelines/llm/pipeline_stages.py, which
sit between generate-ast-diffs and generate-fim): `run(repo names, data_dir, llm_cfg, force)`, or one that needs
the pipeline section (the dedup stage, pipelines/dedup.py): `pipeline_run(repo names, cfg, force, local)`. All
return {"counts": {...}, "drops": {...}}. Add one by putting a `Stage` into `STAGES` at its place, or `register_stage`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hybrid.config.llm import LLMConfig
from hybrid.config.pipeline import PipelineConfig
from hybrid.core import storage
from hybrid.core.errors import HybridError, describe_os_error
from hybrid.core.layout import COMMIT_DATA, DatasetLayout, current_run, done_in, forget_listings, run_scope
from hybrid.core.ray_utils import init_ray, task_slots
from pipelines.dedup import STAGE as DEDUP_STAGE
from pipelines.dedup import run_dedup
from pipelines.licenses import record_license
from pipelines.llm.pipeline_stages import run_generate_reasoning, run_generate_tasks
from pipelines.range_worker import WORKER_KEY, WRITTEN_KEY, process_range
from pipelines.repos import RepoEntry, clone_in_use, first_parent_hashes, get_repo, list_repos
from pipelines.steps import OUTPUT_FILES, STEP_KEYS, STEPS, AstExtractor, DeclarationDiffer, FimSampler, StageStats

# A repository stage runs itself over whole repositories: run(repo names, data_dir, llm_cfg, force) -> stats.
RepoStageFn = Callable[[list[str], str, LLMConfig, bool], dict]
# ... or with the pipeline section: pipeline_run(repo names, cfg, force, local) -> stats.
PipelineStageFn = Callable[[list[str], PipelineConfig, bool, bool], dict]


@dataclass
class Stage:
    name: str  # the command name: `hybrid pipeline <name>`
    range_stage: str | None = None  # the key of a per-commit step (pipelines/steps.py), run over commit ranges
    run: RepoStageFn | None = None  # or a stage that runs itself over whole repositories
    pipeline_run: PipelineStageFn | None = None  # or one that also needs the pipeline section
    help: str = ""
    object_storage: bool = False  # whether it works with `pipeline.data_dir` on object storage (docs/cluster.md)


STAGES: list[Stage] = [
    Stage(
        AstExtractor.name,
        range_stage=AstExtractor.key,
        help="declarations of the files each commit touched",
        object_storage=True,
    ),
    Stage(
        DeclarationDiffer.name,
        range_stage=DeclarationDiffer.key,
        help="added / modified / deleted declarations",
        object_storage=True,
    ),
    Stage(
        DEDUP_STAGE,
        pipeline_run=run_dedup,
        help="commit filters and exact / near-duplicate changes (MinHash LSH), marked before any LLM call",
        object_storage=True,
    ),
    Stage("generate-tasks", run=run_generate_tasks, help="task.json (LLM, else commit messages)", object_storage=True),
    Stage("generate-reasoning", run=run_generate_reasoning, help="reasoning.json (LLM)", object_storage=True),
    Stage(
        FimSampler.name,
        range_stage=FimSampler.key,
        help="fill-in-the-middle samples of the changed declarations",
        object_storage=True,
    ),
]


def register_stage(stage: Stage, before: str = "generate-fim") -> None:
    """Insert a stage into `pipeline run`'s order, before the named one (idempotent by name)."""
    names = [s.name for s in STAGES]
    if stage.name in names:
        STAGES[names.index(stage.name)] = stage
        return
    STAGES.insert(names.index(before) if before in names else len(STAGES), stage)


def stage_names() -> list[str]:
    return [s.name for s in STAGES]


# Ranges come in up to MAX_ROUNDS rounds (ranges = rounds x workers) while each range keeps MIN_RANGE_COMMITS.
MIN_RANGE_COMMITS = 25
MAX_ROUNDS = 4


@dataclass
class RangeTask:
    repo: str
    repo_path: str
    numbers: list[int]
    hashes: list[str]
    present: dict[int, list[str]] = field(default_factory=dict)  # object storage: the files each commit has


@dataclass
class Summary:
    repos: list[str]
    stages: dict[str, dict] = field(default_factory=dict)  # stage name -> {"counts", "drops", "by_language"}
    per_repo: dict[str, dict[str, dict]] = field(default_factory=dict)
    seconds: float = 0.0
    worker: dict[str, float] = field(default_factory=dict)  # CPU seconds in process_range, parse-cache numbers
    processes: dict[str, list[int]] = field(default_factory=dict)  # repo -> ids of the processes that ran its ranges
    timings: dict[str, dict] = field(default_factory=dict)  # stage -> its own seconds (the dedup stage's passes)

    def to_dict(self) -> dict:
        return {
            "repos": self.repos,
            "stages": self.stages,
            "per_repo": self.per_repo,
            "seconds": self.seconds,
            "worker": self.worker,
            "processes": self.processes,
            "timings": self.timings,
        }


def select_repos(repo_names: list[str] | None, cfg: PipelineConfig) -> list[RepoEntry]:
    if repo_names:
        return [get_repo(n, cfg) for n in repo_names]
    repos = list_repos(cfg)
    if not repos:
        raise HybridError("no repositories registered: add one with `hybrid repos add PATH_OR_URL`")
    return repos


def plan_ranges(
    entry: RepoEntry, cfg: PipelineConfig, range_stages: list[str], force: bool
) -> tuple[list[RangeTask], int]:
    """Contiguous ranges of the commits that still need a stage; also returns how many commits are done.

    The pending commits are split evenly into a multiple of `num_workers` ranges, none longer than
    `commits_per_task`, and into up to `MAX_ROUNDS` rounds of them while each range still has `MIN_RANGE_COMMITS`:
    later commits usually cost more (files grow), so with one range per worker the worker that draws the end of
    the history finishes long after the others (on bat's history, 3 equal ranges on 2 workers took 9.1 s of
    CPU on one worker and 3.6 s on the other). A range's cold start is cheap (generate-ast parses each touched
    file's old version first, so the new one is an incremental re-parse): 8 ranges cost what 3 do. On this
    project's history (202 commits) on two Ray nodes of 1 CPU, generate-ast + generate-ast-diffs: 2 ranges kept
    the nodes busy 46% / 100% of the range phase (3.1 s and 6.6 s), 4 ranges 58% / 100%, 8 ranges 88% / 77%
    (5.1 s; tests/cluster/balance.py)."""
    pcfg = cfg
    hashes = first_parent_hashes(entry, cfg)
    layout = DatasetLayout(cfg.data_dir)
    names = [s.name for s in STEPS if s.key in range_stages]
    runs: list[list[int]] = []  # contiguous runs of pending commit numbers
    done, last_done = 0, 0
    if layout.staged:  # object storage: one listing, not a request per file
        listing = layout.listing(entry.name)
        none: frozenset[str] = frozenset()

        def is_done(n: int, name: str) -> bool:
            return layout.done_from(listing.get(n, none), name)
    else:

        def is_done(n: int, name: str) -> bool:
            return done_in(layout.local_commit_path(entry.name, n), name)

    for n in range(len(hashes)):
        if not force and all(is_done(n, name) for name in names):
            done, last_done = done + 1, n
        elif runs and runs[-1][-1] == n - 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    if not force:
        _check_history(entry, cfg, hashes, done_numbers=sorted({0, last_done}) if hashes else [])
    pending = sum(map(len, runs))
    if not pending:
        return [], done
    workers = pcfg.num_workers
    rounds = -(-max(workers, -(-pending // pcfg.commits_per_task)) // workers)
    rounds = max(rounds, min(MAX_ROUNDS, pending // (workers * MIN_RANGE_COMMITS)))
    n_ranges = min(pending, rounds * workers)
    size = -(-pending // n_ranges)
    tasks = []
    for run in runs:
        # lengths differ by at most one, the longer ranges last (longest first is also latest first)
        parts = -(-len(run) // size)
        short, extra = divmod(len(run), parts)
        start = 0
        for i in range(parts):
            numbers = run[start : start + short + (i >= parts - extra)]
            start += len(numbers)
            present = {n: sorted(listing.get(n, ())) for n in numbers} if layout.staged else {}
            tasks.append(RangeTask(entry.name, str(entry.path(cfg)), numbers, [hashes[n] for n in numbers], present))
    return tasks, done


def _check_history(entry: RepoEntry, cfg: PipelineConfig, hashes: list[str], done_numbers: list[int]) -> None:
    """Commit numbers are positions in the first-parent history: if the history was rewritten (force-push,
    another branch), existing outputs belong to other commits. Checks commit 0 and the last finished one."""
    layout = DatasetLayout(cfg.data_dir)
    for n in done_numbers:
        path = layout.commit_file(entry.name, n, COMMIT_DATA)
        try:
            text = layout.read_commit_text(entry.name, n, COMMIT_DATA, current_run())
            if text is None:
                continue
            recorded = json.loads(text).get("commit_hash")
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if recorded != hashes[n]:
            raise HybridError(
                f"{path}: records commit {str(recorded)[:12]} but commit {n} of {entry.name} is now "
                f"{hashes[n][:12]} (history rewritten?): remove {layout.repo_dir(entry.name)} or rerun "
                f"with --force"
            )


def _process_row(row: dict) -> dict:
    """The Ray Data map function: one range in, its stats out (as JSON, so the schema is fixed)."""
    cfg = PipelineConfig.model_validate_json(row["cfg"])
    try:
        layout = DatasetLayout(cfg.data_dir)
        present = {int(n): names for n, names in json.loads(row["present"]).items()} if layout.staged else None
        # on object storage the driver's clone is not on this machine: this machine's copy of the archive, held
        # while the range runs (no other process removes it meanwhile)
        clone = clone_in_use(layout, row["repo"]) if layout.staged else contextlib.nullcontext(row["repo_path"])
        with clone as repo_path:
            stats = process_range(
                row["repo"],
                str(repo_path),
                [int(n) for n in row["numbers"]],
                [str(h) for h in row["hashes"]],
                json.loads(row["stages"]),
                cfg,
                bool(row["force"]),
                present,
                str(row["run"]),
            )
    except HybridError as e:  # bad input (e.g. a corrupt task.json): one line for the user, not a Ray traceback
        return {"repo": row["repo"], "n": len(row["numbers"]), "stats": "{}", "error": str(e), "pid": os.getpid()}
    except OSError as e:  # the disk: full, read-only, an output folder that is a file — the machine, not a bug
        return {
            "repo": row["repo"],
            "n": len(row["numbers"]),
            "stats": "{}",
            "error": describe_os_error(e),
            "pid": os.getpid(),
        }
    return {"repo": row["repo"], "n": len(row["numbers"]), "stats": json.dumps(stats), "error": "", "pid": os.getpid()}


def plan_rows(
    repos: list[RepoEntry], cfg: PipelineConfig, range_stages: list[str], force: bool, queue: bool = True
) -> tuple[list[dict], dict[str, dict[str, dict]]]:
    """The Ray Data rows (one per range) of all the repositories, and {repo: {stage: stats so far}}.

    Without `queue` (one process: `--local`), repository after repository, oldest commits first. With it,
    every repository's ranges go into one queue, longest first: the workers take them in this order as they
    come free, so several repositories are processed together over all workers rather than one after another,
    and the short ranges fill in at the end (longest-processing-time-first scheduling). Among ranges of equal
    length the latest commits go first: they are usually the costlier (files grow)."""
    rows, per_repo, staged = [], {}, DatasetLayout(cfg.data_dir).staged
    # absolute paths: Ray workers do not share the driver's working directory
    worker_cfg = cfg.model_copy(update={"data_dir": storage.at(cfg.data_dir).absolute(cfg.data_dir)}).model_dump_json()
    for entry in repos:
        tasks, done = plan_ranges(entry, cfg, range_stages, force)
        per_repo[entry.name] = {s: {"counts": {"skipped_done": done}, "drops": {}} for s in range_stages}
        for t in tasks:
            rows.append(
                {
                    "repo": t.repo,
                    "repo_path": str(Path(t.repo_path).resolve()),
                    "numbers": t.numbers,
                    "hashes": t.hashes,
                    "stages": json.dumps(range_stages),
                    "force": force,
                    "cfg": worker_cfg,
                    "present": json.dumps(t.present),
                    "run": current_run() if staged else "",  # object storage: this run's node-local copies
                }
            )
    if queue:
        rows.sort(key=lambda r: (-len(r["numbers"]), -r["numbers"][0]))
    return rows, per_repo


def run_range_stages(
    repos: list[RepoEntry],
    cfg: PipelineConfig,
    range_stages: list[str],
    force: bool = False,
    local: bool = False,
    progress: bool = True,
    label: str = "",
) -> dict[str, dict[str, dict]]:
    """Run per-commit stages over every repo's pending commit ranges. Returns {repo: {stage: stats}}."""
    cfg = cfg.model_copy(update={"num_workers": task_slots(cfg.num_workers, local)})
    rows, per_repo = plan_rows(repos, cfg, range_stages, force, queue=not local)
    total = sum(len(r["numbers"]) for r in rows)
    errors: list[str] = []
    if rows:
        last, layout = OUTPUT_FILES[[s for s in STEP_KEYS if s in range_stages][-1]], DatasetLayout(cfg.data_dir)
        # (a stat per marker: on object storage the bar moves by finished ranges only)
        polled = progress and not layout.staged
        markers = [layout.commit_file(r["repo"], n, last) for r in rows for n in r["numbers"]] if polled else []
        with _progress(progress, label or " + ".join(range_stages), total, markers) as advance:
            for out in _map_rows(rows, cfg, local):
                if out["error"]:
                    errors.append(out["error"])
                stats = json.loads(out["stats"])
                work = per_repo[out["repo"]].setdefault(WORKER_KEY, {"pids": []})
                for k, v in stats.pop(WORKER_KEY, {}).items():
                    work[k] = work.get(k, 0) + v
                layout.note_written(out["repo"], stats.pop(WRITTEN_KEY, {}))  # (object storage: the run's listing)
                if out["pid"] not in work["pids"]:
                    work["pids"].append(out["pid"])
                for s, st in stats.items():
                    per_repo[out["repo"]][s] = StageStats.merge(per_repo[out["repo"]][s], st)
                advance(out["n"])
    if errors:  # the other ranges finished and their outputs stand; the failed ones stay to do
        more = f" (and {len(errors) - 1} more ranges failed)" if len(errors) > 1 else ""
        raise HybridError(errors[0] + more)
    return per_repo


def _map_rows(rows: list[dict], cfg: PipelineConfig, local: bool):
    if local:
        for row in rows:
            yield _process_row(row)
        return
    import ray

    init_ray()
    # One map operator and nothing downstream: Ray Data's per-operator reservation would hold back half the
    # cluster's CPUs (on 2 CPUs: one range at a time), so let the task pool use them all.
    ray.data.DataContext.get_current().op_resource_reservation_enabled = False
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    ds = ds.map(_process_row, compute=ray.data.TaskPoolStrategy(size=cfg.num_workers))
    yield from ds.iter_rows()


class _progress:
    """A rich progress bar over commits (or nothing when `enabled` is false).

    Ranges are long, so besides the finished ranges a thread counts the commits whose last output file was
    written since the start (a stat per pending commit each second; the data folder is shared with the workers
    anyway)."""

    def __init__(self, enabled: bool, label: str, total: int, markers: list[str] = ()) -> None:
        self.enabled, self.label, self.total, self.markers = enabled, label, total, list(markers)
        self.finished = 0

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        import threading

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._p = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("commits"),
            TimeElapsedColumn(),
            transient=False,
        )
        self._p.__enter__()
        self._task = self._p.add_task(self.label, total=self.total)
        self._stop = threading.Event()
        self._t0 = time.time() - 1.0  # mtime resolution
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

        def advance(n: int) -> None:
            self.finished += n
            self._p.update(self._task, completed=max(self.finished, self._p.tasks[0].completed))

        return advance

    def _poll(self) -> None:
        import os

        while not self._stop.wait(1.0):
            written = 0
            for path in self.markers:
                try:
                    written += os.stat(path).st_mtime >= self._t0
                except OSError:
                    pass
            self._p.update(self._task, completed=max(self.finished, written))

    def __exit__(self, *exc):
        if self.enabled:
            self._stop.set()
            self._thread.join()
            self._p.update(self._task, completed=self.finished)
            self._p.__exit__(*exc)
        return False


def write_stats(entry: RepoEntry, cfg: PipelineConfig, stage_stats: dict[str, dict]) -> None:
    """Merge this run's stats into data/ast_dataset/<repo>/stats.json (the last run of each stage)."""
    layout = DatasetLayout(cfg.data_dir)
    old = layout.read_stats(entry.name)
    if old is None:
        return  # JSON that is not an object: not ours to rewrite
    for stage, st in stage_stats.items():
        old[stage] = {**st, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    # (the bytes atomic_write_json writes)
    storage.write_text(layout.stats_file(entry.name), json.dumps(old, indent=2, ensure_ascii=False) + "\n")


def refuse_local_only(chosen: list[Stage], cfg: PipelineConfig) -> None:
    """On object storage, before anything runs: a registered stage that does not say it works there
    (`Stage.object_storage`) is refused in one line."""
    if not DatasetLayout(cfg.data_dir).staged:
        return
    local_only = [s.name for s in chosen if not s.object_storage]
    if local_only:
        takes = ",".join(s.name for s in STAGES if s.object_storage)
        raise HybridError(
            f"pipeline.data_dir={storage.shown(cfg.data_dir)}: {', '.join(local_only)} need a local data folder "
            f"(or one every node mounts); on object storage run `--stages {takes}`"
        )


def run_pipeline(
    repo_names: list[str] | None,
    cfg: PipelineConfig,
    llm_cfg: LLMConfig | None = None,
    force: bool = False,
    stages: list[str] | None = None,
    local: bool = False,
    progress: bool = True,
) -> Summary:
    """Run `stages` (default: all of STAGES, in order) over the named repos (default: all registered)."""
    known = stage_names()
    if stages:
        unknown = [s for s in stages if s not in known]
        if unknown:
            raise HybridError(f"unknown stage {unknown[0]!r} (choose from: {', '.join(known)})")
    chosen = [s for s in STAGES if not stages or s.name in stages]
    refuse_local_only(chosen, cfg)
    repos = select_repos(repo_names, cfg)
    with run_scope():  # (object storage: the run's stages read on each node what it uploaded there)
        return _run_stages(repos, chosen, cfg, llm_cfg, force, local, progress)


def _run_stages(
    repos: list[RepoEntry],
    chosen: list[Stage],
    cfg: PipelineConfig,
    llm_cfg: LLMConfig | None,
    force: bool,
    local: bool,
    progress: bool,
) -> Summary:
    t0 = time.perf_counter()
    for entry in repos:  # <repo>/license.json, the repository's licence (pipelines/licenses.py), for export
        record_license(entry, cfg)
    summary = Summary(repos=[r.name for r in repos])
    i = 0
    while i < len(chosen):
        if chosen[i].range_stage:  # fuse consecutive per-commit stages into one pass
            group = [chosen[i]]
            while i + len(group) < len(chosen) and chosen[i + len(group)].range_stage:
                group.append(chosen[i + len(group)])
            by_name = {s.range_stage: s.name for s in group}
            per_repo = run_range_stages(
                repos,
                cfg,
                [s.range_stage for s in group],
                force,
                local,
                progress,
                label=" + ".join(s.name for s in group),
            )
            for repo, st in per_repo.items():
                for k, v in st.pop(WORKER_KEY, {}).items():
                    if k == "pids":
                        summary.processes[repo] = sorted(set(summary.processes.get(repo, [])) | set(v))
                    else:
                        summary.worker[k] = summary.worker.get(k, 0) + v
                renamed = {by_name[k]: v for k, v in st.items()}
                summary.per_repo.setdefault(repo, {}).update(renamed)
            i += len(group)
        elif chosen[i].pipeline_run is not None:
            st = chosen[i].pipeline_run([r.name for r in repos], cfg, force, local)
            for repo, repo_st in st.pop("per_repo", {}).items():
                summary.per_repo.setdefault(repo, {})[chosen[i].name] = repo_st
            summary.timings[chosen[i].name] = st.pop("timing", {})
            i += 1
        else:
            assert chosen[i].run is not None
            st = chosen[i].run([r.name for r in repos], cfg.data_dir, llm_cfg or LLMConfig(), force) or {}
            forget_listings()  # (it wrote commit files the run's listings do not know of)
            summary.per_repo.setdefault("*", {})[chosen[i].name] = st
            i += 1
    for entry in repos:
        write_stats(entry, cfg, summary.per_repo.get(entry.name, {}))
    for repo_stats in summary.per_repo.values():
        for stage, st in repo_stats.items():
            summary.stages[stage] = StageStats.merge(summary.stages.get(stage, {}), st)
    summary.stages = {s.name: summary.stages[s.name] for s in chosen if s.name in summary.stages}
    summary.seconds = time.perf_counter() - t0
    return summary


__all__ = ["STAGES", "Stage", "Summary", "register_stage", "run_pipeline", "run_range_stages", "OUTPUT_FILES"]
