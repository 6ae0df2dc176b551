"""`hybrid bench tune`: what a sweep costs over the training it runs, side by side in one go.

The same grid of trials (tiny model, `--steps` steps each, one Ray Train worker per trial, FIFO: every trial runs to
the end) three ways:

    one after another   each point as its own `hybrid train` process (what a user would script without Tune)
    sweep, 1 at a time  `hybrid tune tune.max_concurrent_trials=1`
    sweep, 2 at a time  `hybrid tune tune.max_concurrent_trials=2`

Overhead per trial = (sweep at 1 − the one-after-another total) / trials: what Tune adds per trial beyond a training
run of its own (negative when the sweep saves more — one Ray start for all trials — than it adds). Speed-up = sweep
at 1 / sweep at 2. The load average is printed beside the numbers."""

from __future__ import annotations

import argparse

from hybrid.cli import positive_int

GRID = {"model.retrieval_k": [1, 2], "model.memory_slots": [2, 4]}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", help="key=value config overrides for every run")
    p.add_argument("--steps", type=positive_int, default=6, help="optimizer steps per trial")
    p.add_argument("--pairs", type=positive_int, default=200, help="IO pairs in the synthetic data set")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")


def _pairs(path, n: int, seed: int) -> None:
    import json
    import random

    rng = random.Random(seed)
    words = [f"w{i}" for i in range(64)]
    with open(path, "w") as f:
        for _ in range(n):
            a = [rng.choice(words) for _ in range(rng.randint(4, 24))]
            f.write(json.dumps({"input": " ".join(a), "output": " ".join(reversed(a[:4]))}) + "\n")


def run(args: argparse.Namespace) -> int:
    import itertools
    import os
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from hybrid.core.errors import HybridError
    from hybrid.core.io import atomic_write_json

    points = [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        tmp = Path(tmp)
        _pairs(tmp / "train.jsonl", args.pairs, 0)
        _pairs(tmp / "validation.jsonl", max(8, args.pairs // 10), 1)
        common = [
            "model=tiny_llama_hybrid",
            "train=tiny",
            f"train.max_iters={args.steps}",
            f"train.eval_every={args.steps}",
            "train.log_every=1",
            "data.max_length=48",
            f"data.train={tmp / 'train.jsonl'}",
            f"data.validation={tmp / 'validation.jsonl'}",
            *args.overrides,
        ]

        def timed(cmd: list[str], what: str) -> float:
            t0 = time.time()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise HybridError(f"{what} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
            return time.time() - t0

        sequential = []
        for i, point in enumerate(points):
            print(
                f"hybrid train {i + 1}/{len(points)} ({', '.join(f'{k}={v}' for k, v in point.items())}) …", flush=True
            )
            sequential.append(
                timed(
                    [
                        sys.executable,
                        "-m",
                        "hybrid",
                        "train",
                        *common,
                        "train.num_workers=1",
                        *[f"{k}={v}" for k, v in point.items()],
                        f"train.output_dir={tmp / f'run{i}'}",
                    ],
                    "hybrid train",
                )
            )
        space = "tune.space={" + ", ".join(f"{k}: {v}" for k, v in GRID.items()) + "}"
        sweeps = {}
        for concurrent in (1, 2):
            print(f"hybrid tune, {concurrent} trial(s) at a time …", flush=True)
            sweeps[concurrent] = timed(
                [
                    sys.executable,
                    "-m",
                    "hybrid",
                    "tune",
                    *common,
                    "tune.scheduler=fifo",
                    f"tune.max_iters={args.steps}",
                    f"tune.max_concurrent_trials={concurrent}",
                    space,
                    f"tune.output_dir={tmp / f'sweep{concurrent}'}",
                ],
                "hybrid tune",
            )
    load_after = os.getloadavg()
    n = len(points)
    result = {
        "trials": n,
        "steps": args.steps,
        "sequential_s": sequential,
        "sequential_total_s": sum(sequential),
        "sweep_1_s": sweeps[1],
        "sweep_2_s": sweeps[2],
        "overhead_per_trial_s": (sweeps[1] - sum(sequential)) / n,
        "speedup_2_concurrent": sweeps[1] / sweeps[2],
        "load_average": {"before": load_before, "after": load_after},
        "cpu_count": os.cpu_count(),
    }
    table = Table(
        title=f"hybrid tune vs hybrid train: {n} trials × {args.steps} steps; load average "
        f"{load_before[0]:.1f} → {load_after[0]:.1f}, {os.cpu_count()} CPUs"
    )
    for col in ("way", "wall s", "per trial s"):
        table.add_column(col, justify="right")
    table.add_row("hybrid train, one after another", f"{sum(sequential):.0f}", f"{sum(sequential) / n:.1f}")
    table.add_row("hybrid tune, 1 at a time", f"{sweeps[1]:.0f}", f"{sweeps[1] / n:.1f}")
    table.add_row("hybrid tune, 2 at a time", f"{sweeps[2]:.0f}", f"{sweeps[2] / n:.1f}")
    Console().print(table)
    print(f"  sweep overhead per trial (1 at a time − one after another) {result['overhead_per_trial_s']:+.1f} s")
    print(f"  speed-up with 2 concurrent trials                          {result['speedup_2_concurrent']:.2f}x")
    if args.json:
        atomic_write_json(args.json, result)
        print(f"results → {args.json}")
    return 0
