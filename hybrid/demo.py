"""`hybrid demo`: the main job on the embedded default repository (the project's own git history).

    repos add (this checkout, cloned bare) → pipeline run → pipeline export → train (a few minutes, CPU) → eval

and one last line: what the memory changed on the run's own test split — the loss on the tokens of names found only
beyond the attention window, with the memory read vs every memory gate closed (hybrid/training/code_memory.py).

Everything lands under --workdir (default: the current folder): data/ (repos, ast_dataset), datasets/io_pairs/,
outputs/demo/<run>/ (checkpoints, metrics, eval.json). Rerunning skips the pipeline work already done and trains
a new run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hybrid.cli import positive_float
from hybrid.cli.repos import DEMO_REPO_NAME, project_checkout

# configs/model/demo_hybrid.yaml: a small hybrid that learns something in minutes on a laptop CPU
DEMO = ["model=demo_hybrid", "train=demo", "data.max_length=512"]
QUICK = ["model=tiny_llama_hybrid", "train=tiny", "train.max_iters=4", "train.eval_every=4", "data.max_length=64"]


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job: pipeline → IO pairs → train → eval on the default repository",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. train.num_workers=2)")
    p.add_argument("--repo", help="git repository to learn from (default: this project's own checkout)")
    p.add_argument("--workdir", default=".", help="where data/, datasets/ and outputs/ go (default: .)")
    p.add_argument("--minutes", type=positive_float, default=5.0, help="training time budget in minutes (default 5)")
    p.add_argument(
        "--force",
        action="store_true",
        help="redo the pipeline's finished commits (e.g. after the history was amended or rebased)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="seconds, not minutes: tiny model, 4 steps in-process, no Ray for the pipeline",
    )
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    import time

    from rich.console import Console

    from hybrid.cli.config import load_config, split_overrides
    from hybrid.cli.train import print_eval
    from hybrid.core.errors import HybridError
    from hybrid.core.io import atomic_write_json
    from hybrid.core.layout import DatasetLayout
    from hybrid.core.ray_utils import ray_log_dir
    from hybrid.data.export import ExportOptions, export_io_pairs
    from hybrid.data.export import describe as describe_export
    from hybrid.training.evaluate import evaluate
    from hybrid.training.train import describe as describe_train
    from hybrid.training.train import train

    console = Console()
    t0 = time.time()
    overrides, rest = split_overrides(args.overrides)
    if rest:
        raise HybridError(f"unexpected argument {rest[0]!r} (overrides are key=value)")
    if args.minutes <= 0:
        raise HybridError(f"--minutes: must be positive, got {args.minutes}")
    workdir = Path(args.workdir).resolve()
    data_dir = workdir / "data"
    io_dir = workdir / "datasets" / "io_pairs"
    run_dir = workdir / "outputs" / "demo" / time.strftime("run-%Y%m%d-%H%M%S")
    base = QUICK if args.quick else [*DEMO, f"train.max_minutes={args.minutes}"]
    cfg = load_config(
        [
            *base,
            f"pipeline.data_dir={data_dir}",
            f"train.output_dir={run_dir}",
            f"data.train={io_dir / 'train.jsonl'}",
            f"data.validation={io_dir / 'validation.jsonl'}",
            *overrides,
        ]
    )

    # 1. the repository
    from pipelines.repos import add_repo, list_repos, update_repo

    source = Path(args.repo).resolve() if args.repo else project_checkout()
    name = DEMO_REPO_NAME if not args.repo else None
    known = {e.name: e for e in list_repos(cfg.pipeline)}
    console.rule("[bold]1/5 repository")
    entry = next((e for e in known.values() if e.source == str(source)), None)
    if entry is None:
        entry = add_repo(str(source), name, cfg.pipeline)
        console.print(f"added {entry.name} ← {source}")
    else:
        gained = update_repo(entry.name, cfg.pipeline)
        console.print(f"{entry.name} already registered ({gained} new commits fetched)")

    # 2. the pipeline
    from hybrid.cli.pipeline import summary_table
    from pipelines.run import run_pipeline

    console.rule("[bold]2/5 pipeline")
    if not args.quick:
        from hybrid.core.ray_utils import init_ray

        init_ray(include_dashboard=True)  # inspect the run in the Ray dashboard (and its State API)
        print(ray_line(), flush=True)  # plain: a path, not to be wrapped
    summary = run_pipeline([entry.name], cfg.pipeline, cfg.llm, force=args.force, local=args.quick)
    console.print(summary_table(summary, console.width))

    # 3. IO pairs
    console.rule("[bold]3/5 IO pairs")
    exported = export_io_pairs(data_dir, io_dir, options=ExportOptions.from_config(cfg.pipeline))
    console.print(describe_export(exported), highlight=False)
    if exported.sizes["train"] == 0:
        raise HybridError(f"{io_dir}: no training pairs were exported (does {source} have history?)")
    if exported.sizes["validation"] == 0:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"validation": None})})
    test_path = io_dir / ("test.jsonl" if exported.sizes["test"] else "train.jsonl")

    # 4. training
    console.rule("[bold]4/5 training" + ("" if args.quick else f" (budget {args.minutes:g} min)"))
    result = train(cfg.recipe())
    console.print(describe_train(result), highlight=False)

    # 5. evaluation
    console.rule("[bold]5/5 evaluation")
    checkpoint = result.best_checkpoint or result.checkpoint
    metrics = evaluate(
        checkpoint, test_path, max_generate=2 if args.quick else 4, max_new_tokens=8 if args.quick else 24
    )
    print_eval(metrics)
    from hybrid.training.code_memory import describe_effect, memory_effect

    metrics["memory_effect"] = memory_effect(checkpoint, test_path, max_examples=24 if args.quick else 64)
    eval_json = run_dir / "eval.json"
    atomic_write_json(eval_json, metrics)

    console.rule("[bold]summary")
    console.print(closing_table(entry.name, summary, exported.sizes, result, metrics), highlight=False)
    layout = DatasetLayout(data_dir)
    # plain print: paths must not be wrapped (copy-paste safe)
    for label, path in (
        ("repositories", layout.repos_dir),
        ("AST dataset", layout.repo_dir(entry.name)),
        ("IO pairs", io_dir),
        ("checkpoints", run_dir),
        ("best checkpoint", checkpoint),
        ("metrics", run_dir / "metrics.jsonl"),
        ("evaluation", eval_json),
        ("Ray's logs", ray_log_dir()),
    ):
        if path is not None:
            print(f"{label:>16}: {path}")
    print(
        f"\nnext: hybrid eval --checkpoint {checkpoint} --test-data {test_path}\n"
        f"      hybrid generate --checkpoint {checkpoint} --prompt 'def add(a, b):'"
    )
    print(f"demo finished in {time.time() - t0:.0f} s", flush=True)
    print(describe_effect(metrics["memory_effect"]), flush=True)
    return 0


def ray_line() -> str:
    """Where to watch the run and where Ray's own lines went (they stay off the terminal unless `hybrid -v`)."""
    from hybrid.core.ray_utils import dashboard_url, ray_log_dir, verbose

    url, logs = dashboard_url(), ray_log_dir()
    parts = [f"Ray dashboard {url}"] if url else []
    if logs and not verbose():
        parts.append(f"Ray's own lines in {logs} (hybrid -v shows them)")
    return "; ".join(parts)


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 24) -> str:
    """`values` (resampled to at most `width` points) as block characters, low to high."""
    if len(values) > width:
        values = [values[round(i * (len(values) - 1) / (width - 1))] for i in range(width)]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(SPARKS[min(len(SPARKS) - 1, int((v - low) / span * len(SPARKS)))] for v in values)


def training_curve(metrics_jsonl: Path, wall_s: float) -> str:
    """One line from the run's metrics.jsonl: steps, the train loss first → last with its curve, the validation loss
    (last, best)."""
    import json

    rows = (
        [json.loads(line) for line in metrics_jsonl.read_text(encoding="utf-8").splitlines()]
        if metrics_jsonl.exists()
        else []
    )
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    if not train:
        return "no step logged"
    losses = [loss for _, loss in train]
    line = (
        f"{max(r['step'] for r in rows)} steps in {wall_s:.0f} s: train loss {losses[0]:.2f} "
        f"{sparkline(losses)} {losses[-1]:.2f}"
    )
    if val:
        best = min(val, key=lambda sv: sv[1])
        line += f", validation {val[-1][1]:.3f}" + (
            " (best)" if best == val[-1] else f" (best {best[1]:.3f} at step {best[0]})"
        )
    return line


def closing_table(repo: str, summary, sizes: dict[str, int], result, metrics: dict):
    """The demo's closing table: the data, the training curve, the evaluation (its paths follow, plainly printed)."""
    from rich.table import Table

    table = Table(show_header=False, box=None, padding=(0, 1))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    commits = summary.stages.get("generate-ast", {}).get("counts", {}).get("commits")
    table.add_row(
        "data",
        (f"{commits:,} commits of {repo}" if commits else repo)
        + f" → IO pairs: {sizes['train']:,} train, {sizes['validation']:,} validation, {sizes['test']:,} test",
    )
    table.add_row("training", training_curve(Path(str(result.output_dir)) / "metrics.jsonl", result.wall_s))
    em, tf = metrics.get("exact_match"), metrics.get("teacher_forced_exact_match")
    table.add_row(
        "evaluation",
        f"{metrics['examples']:,} test pairs: loss {metrics['loss']:.3f} "
        f"(perplexity {metrics['perplexity']:.1f}), exact match "
        + (f"{tf:.1%} teacher-forced" if tf is not None else "n/a")
        + (f", {metrics['exact_match_count']}/{metrics['generated']} generated" if em is not None else ""),
    )
    return table
