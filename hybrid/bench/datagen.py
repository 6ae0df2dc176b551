"""`hybrid bench datagen [REPO_PATH…] [--synthetic-rust N] [--json FILE]`

Times the AST + diff stages (generate-ast and generate-ast-diffs in one Ray Data pass, `--force`, outputs in a
temp folder) over each repository's first-parent history and, in the same run, `git log -p --first-parent`
over the same history; reports commits/s and the ratio (issue #15's targets: within 5x of git's wall time on a
real ~2,000-commit repository, CPU per worker within 4x). With several repositories it also times them all
in one `pipeline run` ("N together": their ranges share the workers) against the sum of their git times.
Ray's start-up is timed apart and not in the ratio; Ray Data's per-run overhead is.
CPU seconds are reported too (the ranges' own CPU time plus the driver's, and git's from getrusage): on a shared
machine the wall ratio mostly measures the neighbours, and "CPU ratio per worker" is the wall ratio `workers`
free cores would give. The load average (1 minute) is printed beside every row.
`--synthetic-rust N` first builds a realistic N-commit Rust repository locally (pipelines/synthetic.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from hybrid.cli import non_negative_int, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "repo_paths",
        nargs="*",
        metavar="REPO_PATH",
        help="git repositories to time (default: the current one unless --synthetic-rust is given)",
    )
    p.add_argument("--synthetic-rust", type=positive_int, metavar="N", help="also build and time an N-commit Rust repo")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the synthetic repository")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--workers", type=positive_int, default=2, help="Ray Data tasks at once (pipeline.num_workers)")
    p.add_argument("--commits-per-task", type=positive_int, default=None, help="pipeline.commits_per_task")
    p.add_argument("--single-process", action="store_true", help="also time the same stages in one process")
    p.add_argument("--repeat", type=positive_int, default=3, help="git log runs (the best is kept)")
    p.add_argument(
        "--ours-repeat",
        type=positive_int,
        default=1,
        help="runs of our stages per row (the fastest is kept, as for git: fairer on a busy machine)",
    )
    p.add_argument("--no-ray", action="store_true", help="time only the single-process path (no Ray at all)")
    p.add_argument(
        "--filters",
        action="store_true",
        help="also time the pipeline with dedup, commit filters and secret scrubbing on vs off, side by side (a row "
        "per repository)",
    )


def _git_log_seconds(path: Path, repeat: int) -> tuple[float, float]:
    """Best wall and CPU seconds of `git log -p --first-parent HEAD` (output discarded)."""
    import resource

    best, best_cpu = float("inf"), float("inf")
    for _ in range(max(1, repeat)):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(
            ["git", "-C", str(path), "log", "-p", "--first-parent", "HEAD"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        best = min(best, time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        best_cpu = min(best_cpu, r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
    return best, best_cpu


def _best_time_stages(
    targets: list[tuple[Path, str]], overrides: list[str], local: bool, repeat: int, stages: list[str] | None = None
) -> tuple[float, float, dict]:
    """_time_stages `repeat` times; the run with the shortest wall time."""
    return min((_time_stages(targets, overrides, local, stages) for _ in range(max(1, repeat))), key=lambda r: r[0])


def _time_stages(
    targets: list[tuple[Path, str]], overrides: list[str], local: bool, stages: list[str] | None = None
) -> tuple[float, float, dict]:
    """Run generate-ast + generate-ast-diffs over the repositories `targets` ((path, name) pairs, all in one
    `pipeline run`) into a temp data dir: (wall seconds, CPU seconds of the ranges plus the driver, stage stats
    with the CPU split under "_cpu")."""
    import pygit2

    from hybrid.cli.config import load_config
    from hybrid.core.layout import DatasetLayout
    from pipelines.run import run_pipeline

    work = Path(tempfile.mkdtemp(prefix="bench-datagen-", dir=os.environ.get("HYBRID_BENCH_TMP")))
    layout = DatasetLayout(work)
    try:
        layout.local(layout.repos_dir).mkdir()
        registry = []
        for path, name in targets:
            repo = pygit2.Repository(str(path))
            layout.local(layout.clone_dir(name)).symlink_to(Path(repo.path).resolve(), target_is_directory=True)
            registry.append({"name": name, "source": str(path), "default_branch": repo.head.shorthand, "added_at": ""})
        layout.local(layout.registry).write_text(json.dumps(registry))
        cfg = load_config([f"pipeline.data_dir={work}", *overrides])
        t0, c0 = time.perf_counter(), time.process_time()
        summary = run_pipeline(
            [name for _, name in targets],
            cfg.pipeline,
            cfg.llm,
            force=True,
            stages=stages or ["generate-ast", "generate-ast-diffs"],
            local=local,
            progress=False,
        )
        wall, driver_cpu = time.perf_counter() - t0, time.process_time() - c0
        cpu = driver_cpu if local else driver_cpu + summary.worker.get("cpu_s", 0.0)
        return (
            wall,
            cpu,
            {
                **summary.stages,
                "_cpu": {
                    "driver_cpu_s": round(driver_cpu, 3),
                    "ranges_cpu_s": round(summary.worker.get("cpu_s", 0.0), 3),
                    "ranges_thread_cpu_s": round(summary.worker.get("thread_cpu_s", 0.0), 3),
                    "worker_processes": len({p for pids in summary.processes.values() for p in pids}),
                },
                "_timings": summary.timings,
            },
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _import_stages(row: dict) -> dict:
    import pipelines.range_worker  # noqa: F401  (tree-sitter, pygit2 and the grammars load with it)
    from pipelines.languages import get_parser

    get_parser("rust")
    import datasketch  # noqa: F401  (the dedup stage's MinHash, with scipy: 0.5-1 s per process)

    return row


def _warm_up(workers: int) -> None:
    """Start the worker processes and import the stages there, as a long-running pipeline would have."""
    import ray

    ray.data.range(workers, override_num_blocks=workers).map(
        _import_stages, compute=ray.data.TaskPoolStrategy(size=workers)
    ).materialize()


def _commits(path: Path) -> int:
    import pygit2

    from pipelines.repos import RepoEntry, first_parent_hashes

    repo = pygit2.Repository(str(path))
    # with the repository given, no config is needed
    return len(first_parent_hashes(RepoEntry(path.name, str(path), repo.head.shorthand, ""), None, repo))


def _overrides(args) -> list[str]:
    overrides = [f"pipeline.num_workers={args.workers}"]
    if args.commits_per_task:
        overrides.append(f"pipeline.commits_per_task={args.commits_per_task}")
    return overrides


def _result(
    name: str, repo: str, commits: int, git_s: float, git_cpu: float, ours_s: float, ours_cpu: float, stats: dict, args
) -> dict:
    workers = 1 if args.no_ray else args.workers
    git_cpu = max(git_cpu, 1e-3)
    return {
        "repo": repo,
        "name": name,
        "commits": commits,
        "git_log_p_s": round(git_s, 3),
        "git_cpu_s": round(git_cpu, 3),
        "ast_diffs_s": round(ours_s, 3),
        "ast_diffs_cpu_s": round(ours_cpu, 3),
        "workers": workers,
        "commits_per_s": round(commits / ours_s, 1),
        "git_commits_per_s": round(commits / git_s, 1),
        "ratio": round(ours_s / git_s, 2),
        # what the wall ratio would be with `workers` free cores: CPU split over the workers vs git's CPU
        "cpu_ratio_per_worker": round(ours_cpu / workers / git_cpu, 2),
        "load_average": round(os.getloadavg()[0], 1),
        **stats["_cpu"],
        "declarations": stats["generate-ast"]["counts"].get("declarations", 0),
        "diff_records": stats["generate-ast-diffs"]["counts"].get("records", 0),
    }


def bench_repo(path: Path, name: str, args) -> dict:
    """One repository alone; also its git log -p times (`git_times`, kept for the run of all together)."""
    commits = _commits(path)
    git_s, git_cpu = _git_log_seconds(path, args.repeat)
    ours_s, ours_cpu, stats = _best_time_stages([(path, name)], _overrides(args), args.no_ray, args.ours_repeat)
    result = _result(name, str(path), commits, git_s, git_cpu, ours_s, ours_cpu, stats, args)
    if args.single_process and not args.no_ray:
        single_s, single_cpu, _ = _time_stages([(path, name)], _overrides(args), local=True)
        result["single_process_s"] = round(single_s, 3)
        result["single_process_ratio"] = round(single_s / git_s, 2)
        result["single_process_cpu_s"] = round(single_cpu, 3)
        result["single_process_cpu_ratio"] = round(single_cpu / max(git_cpu, 1e-3), 2)
    return result


# The pipeline without its LLM stages (their time is the endpoint's): structural stages, dedup, FIM
FILTER_STAGES = ["generate-ast", "generate-ast-diffs", "dedup", "generate-fim"]
FILTERS_OFF = ["pipeline.dedup=false", "pipeline.commit_filters=[]", "pipeline.scrub_secrets=false"]  # all of #27


def bench_filters(path: Path, name: str, commits: int, args) -> dict:
    """The pipeline (FILTER_STAGES, --force) with dedup, commit filters and secret scrubbing off, then on, in the
    same run: the cost is the on run's extra wall time over the off run's (the on run also skips the duplicates'
    FIM samples), and the dedup stage's own time as a share of the off run."""
    off_s, off_cpu, off = _best_time_stages(
        [(path, name)], _overrides(args) + FILTERS_OFF, args.no_ray, args.ours_repeat, FILTER_STAGES
    )
    on_s, on_cpu, on = _best_time_stages([(path, name)], _overrides(args), args.no_ray, args.ours_repeat, FILTER_STAGES)
    timing = on["_timings"].get("dedup", {})
    dedup_s = float(timing.get("sign_s", 0.0)) + float(timing.get("lsh_s", 0.0))
    dedup = on.get("dedup", {})
    return {
        "repo": str(path),
        "name": name,
        "commits": commits,
        "off_s": round(off_s, 3),
        "on_s": round(on_s, 3),
        "off_cpu_s": round(off_cpu, 3),
        "on_cpu_s": round(on_cpu, 3),
        "cost": round((on_s - off_s) / off_s, 3),
        "dedup_stage_s": round(dedup_s, 3),
        "dedup_stage_share": round(dedup_s / off_s, 3),
        "dedup_timing": timing,
        "records": dedup.get("counts", {}).get("records", 0),
        "dropped": dedup.get("drops", {}),
        "fim_samples_off": off["generate-fim"]["counts"].get("samples", 0),
        "fim_samples_on": on["generate-fim"]["counts"].get("samples", 0),
        "load_average": round(os.getloadavg()[0], 1),
    }


def bench_together(targets: list[tuple[Path, str]], alone: list[dict], args) -> dict:
    """All the repositories in one `pipeline run` (their ranges share the workers), against the sum of their
    `git log -p` times (git runs them one after another: one process each)."""
    ours_s, ours_cpu, stats = _best_time_stages(targets, _overrides(args), args.no_ray, args.ours_repeat)
    git_s, git_cpu = sum(r["git_log_p_s"] for r in alone), sum(r["git_cpu_s"] for r in alone)
    return _result(
        f"{len(targets)} together",
        " ".join(str(p) for p, _ in targets),
        sum(r["commits"] for r in alone),
        git_s,
        git_cpu,
        ours_s,
        ours_cpu,
        stats,
        args,
    )


def _argv(args) -> list[str]:
    words = [str(p) for p in args.repo_paths]
    if args.synthetic_rust:
        words += ["--synthetic-rust", str(args.synthetic_rust)]
    if args.no_ray:
        words.append("--no-ray")
    if args.single_process:
        words.append("--single-process")
    if args.repeat != 3:
        words += ["--repeat", str(args.repeat)]
    if args.ours_repeat != 1:
        words += ["--ours-repeat", str(args.ours_repeat)]
    if args.filters:
        words.append("--filters")
    return words


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from hybrid.core.errors import HybridError
    from hybrid.core.ray_utils import init_ray

    targets: list[tuple[Path, str]] = []
    tmp_repo = None
    for p in args.repo_paths or ([] if args.synthetic_rust else ["."]):
        path = Path(p).resolve()
        if not path.exists():
            raise HybridError(f"{p}: no such path")
        name = path.name or "repo"
        while name in {n for _, n in targets}:  # two repositories in folders of the same name
            name += "_"
        targets.append((path, name))
    console = Console()
    try:
        if args.synthetic_rust:
            from pipelines.synthetic import build_synthetic_rust_repo

            tmp_repo = Path(tempfile.mkdtemp(prefix="synthetic-rust-"))
            t0 = time.perf_counter()
            build_synthetic_rust_repo(tmp_repo / "repo", args.synthetic_rust, seed=args.seed)
            console.print(
                f"built a synthetic Rust repository of {args.synthetic_rust} commits in "
                f"{time.perf_counter() - t0:.1f} s"
            )
            targets.append((tmp_repo / "repo", f"synthetic-rust-{args.synthetic_rust}"))
        import pygit2

        for path, _ in targets:
            try:
                pygit2.Repository(str(path))
            except pygit2.GitError:
                raise HybridError(f"{path}: not a git repository") from None
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
        t0 = time.perf_counter()
        if not args.no_ray:
            init_ray(num_cpus=max(args.workers, 1), log_to_driver=False)
            _warm_up(args.workers)
        ray_start = time.perf_counter() - t0
        results = [bench_repo(path, name, args) for path, name in targets]
        if len(targets) > 1:
            results.append(bench_together(targets, results, args))
        filters = (
            [bench_filters(p, n, r["commits"], args) for (p, n), r in zip(targets, results)] if args.filters else []
        )
    finally:
        if tmp_repo is not None:
            shutil.rmtree(tmp_repo, ignore_errors=True)
    from rich import box

    console.print(f"AST + diffs vs git log -p --first-parent (Ray start-up and warm-up {ray_start:.1f} s, not counted)")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    single = any("single_process_ratio" in r for r in results)
    columns = [
        "repo",
        "commits",
        "git s\nwall/CPU",
        "ours s\nwall/CPU",
        "commits/s\nours",
        "wall\nratio",
        "CPU per\nworker",
        *(["1 proc\nwall/CPU"] if single else []),
        "load",
    ]
    for col in columns:
        table.add_column(col, no_wrap=col == "repo")

    def pair(wall: float, cpu: float) -> str:
        return "/".join(f"{x:.2f}" if x < 10 else f"{x:.1f}" for x in (wall, cpu))

    for r in results:
        row = [
            r["name"],
            str(r["commits"]),
            pair(r["git_log_p_s"], r["git_cpu_s"]),
            pair(r["ast_diffs_s"], r["ast_diffs_cpu_s"]),
            f"{r['commits_per_s']:.0f}",
            f"{r['ratio']}x",
            f"{r['cpu_ratio_per_worker']}x",
        ]
        if single:
            row.append(
                f"{r['single_process_ratio']}x/{r['single_process_cpu_ratio']}x" if "single_process_ratio" in r else "-"
            )
        table.add_row(*row, str(r["load_average"]))
    console.print(table)
    if filters:
        _print_filters(console, filters)
    if args.json:
        from hybrid.core.io import atomic_write_json

        atomic_write_json(
            args.json,
            {
                "ray_startup_s": None if args.no_ray else round(ray_start, 2),
                "command": "hybrid bench datagen " + " ".join(_argv(args)),
                "results": results,
                **({"filters": filters} if filters else {}),
            },
        )
    return 0


def _print_filters(console, filters: list[dict]) -> None:
    from rich import box
    from rich.table import Table

    console.print(f"pipeline ({', '.join(FILTER_STAGES)}, --force) with dedup, commit filters, scrubbing off vs on")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for col in ("repo", "commits", "off s", "on s", "cost", "dedup stage s", "share", "dropped", "FIM off/on", "load"):
        table.add_column(col, no_wrap=col == "repo")
    for r in filters:
        dropped = ", ".join(f"{k}={v}" for k, v in sorted(r["dropped"].items())) or "-"
        table.add_row(
            r["name"],
            str(r["commits"]),
            f"{r['off_s']:.2f}",
            f"{r['on_s']:.2f}",
            f"{r['cost']:+.0%}",
            f"{r['dedup_stage_s']:.2f}",
            f"{r['dedup_stage_share']:.0%}",
            dropped,
            f"{r['fim_samples_off']}/{r['fim_samples_on']}",
            str(r["load_average"]),
        )
    console.print(table)
