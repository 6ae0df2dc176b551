"""Running an LLM stage over many commits: on a Ray Data actor pool (default) or in this process.

Each actor of the pool (`StageWorker`) holds one async OpenAI client with `concurrency_per_actor` requests in
flight; every request of every actor first asks the run's one `RateLimiterActor`. The driver streams the result
rows back, shows progress (requests/s, tokens/s, retries, failures), then writes each repo's
`llm_failures.jsonl` and the stage's entry in `stats.json` and prints a summary.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hybrid.config.llm import LLMConfig
from hybrid.core import storage
from hybrid.core.errors import HybridError
from hybrid.core.layout import DatasetLayout
from hybrid.core.ray_utils import init_ray
from pipelines.llm import stages as st
from pipelines.llm.cache import AnswerCache
from pipelines.llm.client import ClientStats, LLMClient, LLMFatal
from pipelines.llm.ratelimit import RateLimiter, start_limiter_actor
from pipelines.llm.settings import LLMSettings
from pipelines.llm.stages import reasoning_for_commit, tasks_for_commit


class StageWorker:
    """One commit per call; the same class is the Ray Data actor and the local worker."""

    def __init__(
        self, stage: str, settings: LLMSettings, cfg: dict, limiter, cache_dir: str | None, force: bool = False
    ):

        self.stage = stage
        self.cfg = LLMConfig.model_validate(cfg)
        self.force = force
        self.client = LLMClient(settings, self.cfg, limiter, AnswerCache(cache_dir))
        self.worker_id = uuid.uuid4().hex[:12]
        self.fatal: str | None = None

    async def __call__(self, row: dict) -> dict:
        if "dest" not in row:
            return await self._commit(row, Path(row["commit_dir"]))
        # object storage: the commit's inputs came in the row; a local copy, and the output uploaded from it
        staged = await asyncio.to_thread(st.StagedCommit, row, self.stage)
        try:
            out = await self._commit(row, staged.commit_dir)
            if out["status"] in ("ok", "partial"):
                await asyncio.to_thread(staged.upload)
        finally:
            await asyncio.to_thread(staged.__exit__, None, None, None)
        out["failures"] = staged.shown(out["failures"])
        return out

    async def _commit(self, row: dict, commit_dir: Path) -> dict:
        out = {
            "repo": row["repo"],
            "commit_dir": row.get("commit_dir") or row["dest"],
            "status": "failed",
            "written": 0,
            "failures": "[]",
            "drops": "{}",
            "error": "",
            "worker": self.worker_id,
            "stats": "{}",
        }
        if self.fatal is None:
            try:
                if self.stage == "generate-tasks":
                    result = await tasks_for_commit(commit_dir, self.client, self.cfg)
                else:
                    result = await reasoning_for_commit(commit_dir, self.client, self.cfg, self.force)
                out.update(
                    status=result["status"],
                    written=result["written"],
                    failures=json.dumps(result["failures"]),
                    drops=json.dumps(result["drops"]),
                )
            except LLMFatal as e:
                self.fatal = str(e)
            except Exception as e:  # a bad input file (or a bug): this commit is recorded as failed, the run goes on
                reason = "bad_input" if isinstance(e, HybridError) else "internal_error"
                detail = str(e) if isinstance(e, HybridError) else f"{type(e).__name__}: {e}"
                out.update(
                    failures=json.dumps(
                        [
                            {
                                "stage": self.stage,
                                "commit_number": st.commit_number(commit_dir),
                                "function_id": None,
                                "reason": reason,
                                "detail": self.client.redact(detail),
                                "attempts": 0,
                            }
                        ]
                    )
                )
        if self.fatal is not None:
            out.update(status="fatal", error=self.fatal)
        out["stats"] = json.dumps(self.client.stats.snapshot())
        return out


@dataclass
class RunTotals:
    stage: str
    items: int = 0
    done_before: int = 0
    ok: int = 0
    partial: int = 0
    failed: int = 0
    written: int = 0
    drops: Counter = field(default_factory=Counter)
    failure_reasons: Counter = field(default_factory=Counter)
    worker_stats: dict = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    elapsed_s: float = 0.0

    def client_totals(self) -> dict:
        total: Counter = Counter()
        for s in self.worker_stats.values():
            for k, v in s.items():
                if isinstance(v, (int, float)):
                    total[k] += v
        return dict(total)

    def as_dict(self) -> dict:
        """The run's counts, then every client counter (`ClientStats`) summed over the actors."""
        c = self.client_totals()
        elapsed = self.elapsed_s or (time.monotonic() - self.started)
        client = {name: c.get(name, 0) for name in ClientStats.counter_names()}
        client = {k: (round(v, 3) if isinstance(v, float) else int(v)) for k, v in client.items()}
        return {
            "commits": self.items,
            "already_done": self.done_before,
            "ok": self.ok,
            "partial": self.partial,
            "failed": self.failed,
            "written": self.written,
            **client,
            "elapsed_s": round(elapsed, 2),
            "requests_per_s": round(c.get("requests", 0) / elapsed, 3) if elapsed else 0,
            "drops": dict(self.drops),
            "failures_by_reason": dict(self.failure_reasons),
        }


def _progress(console, total: int, stage: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn(f"[bold]{stage}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
        disable=total == 0 or not console.is_terminal and os.environ.get("HYBRID_PROGRESS") != "1",
    )


def _info(totals: RunTotals) -> str:
    c = totals.client_totals()
    dt = max(time.monotonic() - totals.started, 1e-6)
    tokens = c.get("prompt_tokens", 0) + c.get("completion_tokens", 0)
    return (
        f"{c.get('requests', 0) / dt:.1f} req/s  {tokens / dt:.0f} tok/s  "
        f"retries {int(c.get('retries', 0))}  failed {totals.failed + totals.partial}"
    )


def run_llm_stage(
    stage: str,
    cfg: LLMConfig,
    settings: LLMSettings,
    data_dir: str | Path,
    repos: list[str],
    force: bool = False,
    console=None,
    runner: str | None = None,
) -> RunTotals:
    """Plan, run and record one LLM stage; returns the totals (also written to each repo's stats.json)."""
    from rich.console import Console

    console = console or Console(stderr=True)
    runner = runner or cfg.runner
    layout = DatasetLayout(data_dir)
    names = st.repo_names(layout, repos)
    with st.local_view(layout, names, stage) as view:
        totals = _run_planned(stage, cfg, settings, layout, view, names, force, console, runner)
    return totals


def _run_planned(
    stage: str,
    cfg: LLMConfig,
    settings: LLMSettings,
    layout: DatasetLayout,
    view: DatasetLayout,
    names: list[str],
    force: bool,
    console,
    runner: str,
) -> RunTotals:
    """Plan on `view` (the data folder, or its local copy on object storage: `stages.local_view`), run, record."""
    items: list[dict] = []
    totals = RunTotals(stage)
    for repo in names:
        commits = st.commit_dirs(view, repo)
        todo, done = (
            st.plan_tasks(commits, force, llm=True) if stage == "generate-tasks" else st.plan_reasoning(commits, force)
        )
        totals.done_before += done
        if view is layout:
            items += [{"repo": repo, "commit_dir": str(c.resolve())} for c in todo]
        else:  # object storage: each row carries its commit's inputs, the worker uploads the output
            marks = st.marks_by_commit(view, repo)
            for c in todo:
                row = st.commit_row(layout, repo, c, stage, marks.get(st.commit_number(c), {}))
                items.append({"repo": repo, **row})
    totals.items = len(items)
    failures: dict[str, list[dict]] = {r: [] for r in names}
    cache_dir = storage.at(layout.data_dir).absolute(layout.llm_cache)
    fatal: str | None = None

    def consume(row: dict, progress, task_id) -> None:
        nonlocal fatal
        status = row["status"]
        if status == "fatal":
            fatal = fatal or row["error"]
        else:
            setattr(totals, status, getattr(totals, status) + 1)
        totals.written += int(row["written"])
        for f in json.loads(row["failures"]):
            failures[row["repo"]].append(f)
            totals.failure_reasons[f["reason"]] += 1
        totals.drops.update(json.loads(row["drops"]))
        # cumulative per actor, but rows come back in block order, not finish order: keep the largest counts
        snapshot, seen = json.loads(row["stats"]), totals.worker_stats.get(row["worker"], {})
        totals.worker_stats[row["worker"]] = {
            k: max(v, seen.get(k, v)) if isinstance(v, (int, float)) else v for k, v in snapshot.items()
        }
        progress.update(task_id, advance=1, info=_info(totals))

    with _progress(console, len(items), stage) as progress:
        task_id = progress.add_task(stage, total=len(items), info="")
        if items and runner == "local":
            asyncio.run(
                _run_local(stage, cfg, settings, items, cache_dir, force, lambda r: consume(r, progress, task_id))
            )
        elif items:
            _run_ray(stage, cfg, settings, items, cache_dir, force, lambda r: consume(r, progress, task_id))
    totals.elapsed_s = time.monotonic() - totals.started
    if fatal:
        raise HybridError(f"{stage}: {fatal}")
    summary = totals.as_dict()
    for repo in names:
        st.write_failures(layout, repo, stage, failures[repo], view)
        st.update_stats(layout, repo, stage, {**summary, "failures": len(failures[repo])})
    return totals


async def _run_local(stage, cfg, settings, items, cache_dir, force, consume) -> None:

    limiter = RateLimiter(cfg.requests_per_minute, cfg.tokens_per_minute, cfg.burst_seconds)
    worker = StageWorker(stage, settings, cfg.model_dump(), limiter, cache_dir, force)
    gate = asyncio.Semaphore(max(16, cfg.concurrency_per_actor * 2))  # rows at once, like one Ray Data actor

    async def one(row):
        async with gate:
            return await worker(row)

    try:
        for fut in asyncio.as_completed([one(r) for r in items]):
            consume(await fut)
    finally:
        await worker.client.close()


def _run_ray(stage, cfg, settings, items, cache_dir, force, consume) -> None:
    import ray

    init_ray()
    limiter = start_limiter_actor(cfg.requests_per_minute, cfg.tokens_per_minute, cfg.burst_seconds)
    try:
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), cfg.num_actors * 4)))
        ds = ds.map(
            StageWorker,
            fn_constructor_kwargs={
                "stage": stage,
                "settings": settings,
                "cfg": cfg.model_dump(),
                "limiter": limiter,
                "cache_dir": cache_dir,
                "force": force,
            },
            compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
            num_cpus=cfg.actor_num_cpus,
        )
        for row in ds.iter_rows():
            consume(dict(row))
    finally:
        ray.kill(limiter)
