"""`hybrid tune [key=value …] [--json FILE] [--resume]`: a Ray Tune sweep of training runs (docs/tune.md)."""

from __future__ import annotations

import argparse

from hybrid.cli import config_and_words
from hybrid.core.errors import HybridError
from hybrid.core.io import atomic_write_json


def register(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="sweep memory (or any training) settings with Ray Tune; each trial a training run",
        description="Example: hybrid tune tune=small model=tiny_llama_hybrid train=tiny "
        "data.train=train.jsonl data.validation=validation.jsonl "
        "'tune.space={model.retrieval_k: [1, 4], model.memory_slots: [2, 8]}'",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        help="key=value overrides: model.*, train.*, data.*, memory.* apply to every trial; tune.* "
        "configure the sweep (tune=small picks configs/tune/small.yaml)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the trials and the best as JSON")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the sweep in tune.output_dir (finished trials are not rerun; a finished sweep only "
        "prints its results again)",
    )
    p.set_defaults(func=run_tune)


def print_sweep(sweep) -> None:
    from rich.console import Console
    from rich.table import Table

    from hybrid.core import storage

    table = Table(
        title=f"hybrid tune: {len(sweep.trials)} trials, {sweep.metric} ({sweep.mode}), "
        f"{sweep.seconds:.0f} s → {storage.shown(sweep.output_dir)}"
    )
    for col in ("trial", "status", "steps", *sweep.keys, sweep.metric):
        table.add_column(col, justify="right")
    for t in sweep.trials:
        mark = " ★" if sweep.best is not None and t.trial_id == sweep.best.trial_id else ""
        table.add_row(
            t.trial_id + mark,
            t.status if not t.error else f"failed: {t.error[:60]}",
            str(t.steps),
            *[str(t.config.get(k)) for k in sweep.keys],
            "-" if t.value is None else f"{t.value:.4f}",
        )
    Console().print(table)
    if sweep.best is not None:
        print(
            f"best: {sweep.best.trial_id} {sweep.metric} {sweep.best.value:.4f} "
            f"({', '.join(f'{k}={v}' for k, v in sweep.best.config.items())}) checkpoint {sweep.best.checkpoint}"
        )
        print(
            f"reproduce it: hybrid train --config {storage.shown(storage.join(sweep.output_dir, 'best.yaml'))} "
            f"train.output_dir=…"
        )


def run_tune(args: argparse.Namespace) -> int:
    from hybrid.tuning.sweep import run_sweep

    cfg, rest = config_and_words(args.overrides, outputs=("tune.output_dir",))
    if rest:
        raise HybridError(f"unexpected argument {rest[0]!r} (overrides look like tune.max_iters=50)")
    if args.resume and [o for o in args.overrides if not o.startswith("tune.output_dir=")]:
        raise HybridError(
            "--resume continues the sweep as it was started (its sweep.yaml); give only tune.output_dir=… with it"
        )
    sweep = run_sweep(cfg.recipe(), cfg.tune, resume=args.resume, say=lambda line: print(line, flush=True))
    print_sweep(sweep)
    if args.json:
        atomic_write_json(args.json, sweep.to_json())
        print(f"results → {args.json}")
    return 0
