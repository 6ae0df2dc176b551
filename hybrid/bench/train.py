"""`hybrid bench train`: training throughput, memory and start-up of `hybrid train` runs, side by side in one go.

Each run is a real `hybrid train` process (so its peak memory is the driver's own) on synthetic IO pairs of a fixed
length, the demo's model unless told otherwise, `--steps` optimizer steps, the per-worker batch fixed (2 workers
process twice the tokens per step):

    1 worker                    the baseline, on N pairs and on 10·N pairs (the driver and the worker must not grow)
    2 workers, ddp              DistributedDataParallel (the default for more than one worker)
    2 workers, allreduce        the project's first scheme: one flat all-reduce after backward

Tokens/s counts every real token of the global batch from the second step on (the first pays for start-up); time to
first step is from the command's start to the end of its first optimizer step (scan, tokenizer, Ray, workers, the
first data). Peak memory: the driver's resident peak (VmHWM) and the largest worker's. The machine's load average is
printed beside the numbers: on a shared machine they move with it."""

from __future__ import annotations

import argparse

from hybrid.cli import positive_int

RUNS = (
    ("1 worker", 1, "ddp", 1),
    ("2 workers, ddp", 2, "ddp", 1),
    ("2 workers, allreduce", 2, "allreduce", 1),
    ("1 worker, 10·N pairs", 1, "ddp", 10),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", help="key=value config overrides (default model: the demo's)")
    p.add_argument("--steps", type=positive_int, default=12, help="optimizer steps per run")
    p.add_argument("--batch-size", type=positive_int, default=8, help="sequences per worker per step")
    p.add_argument("--seq-len", type=positive_int, default=256, help="tokens per sequence (about half of them output)")
    p.add_argument(
        "--pairs", type=positive_int, default=2000, help="N: IO pairs in the data set (the last run uses 10·N)"
    )
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")


def _synthetic_pairs(folder, shards: int, n: int, seq_len: int) -> None:
    """`shards` JSONL files of `n` pairs each (10·N comes as 10 shards of N, as large data sets do)."""
    import json
    import random

    folder.mkdir(parents=True, exist_ok=True)
    words = [f"w{i}" for i in range(200)]
    for s in range(shards):
        rng = random.Random(s)
        with open(folder / f"part-{s:03d}.jsonl", "w") as f:
            for _ in range(n):
                # ~1 token per word plus a space; the tokenizer is trained on the same words, so lengths are stable
                f.write(
                    json.dumps(
                        {
                            "input": " ".join(rng.choice(words) for _ in range(seq_len // 2)),
                            "output": " ".join(rng.choice(words) for _ in range(seq_len // 2)),
                        }
                    )
                    + "\n"
                )


def run(args: argparse.Namespace) -> int:
    import json
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

    if args.steps < 2:
        raise HybridError("--steps: need at least 2 (the first step is not timed)")
    if args.pairs < 1 or args.batch_size < 1 or args.seq_len < 8:
        raise HybridError("--pairs, --batch-size must be >= 1 and --seq-len >= 8")
    results = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp = Path(tmp)
        for shards in (1, 10):
            _synthetic_pairs(tmp / f"data{shards}", shards, args.pairs, args.seq_len)
        for name, workers, strategy, shards in RUNS:
            out, summary = tmp / f"run{len(results)}", tmp / f"run{len(results)}.json"
            cmd = [
                sys.executable,
                "-m",
                "hybrid",
                "train",
                "model=demo_hybrid",
                "train=demo",
                *args.overrides,
                f"data.train={tmp / f'data{shards}'}",
                f"data.max_length={args.seq_len + 8}",
                f"train.output_dir={out}",
                f"train.num_workers={workers}",
                f"train.strategy={strategy}",
                f"train.batch_size={args.batch_size}",
                f"train.max_iters={args.steps}",
                f"train.eval_every={args.steps}",
                "train.log_every=1",
                "train.tokenizer_vocab_size=512",
                "train.tokenizer_sample=1000",
                "train.max_minutes=null",
                "--json",
                str(summary),
            ]
            print(f"{name}: {args.steps} steps …", flush=True)
            t0 = time.time()
            proc = subprocess.run(
                cmd, capture_output=True, text=True, env={**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
            )
            if proc.returncode != 0:
                raise HybridError(f"{name}: hybrid train failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
            wall = time.time() - t0
            records = [
                r
                for r in map(json.loads, (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines())
                if "loss" in r
            ]
            first, last = records[0], records[-1]
            tokens = sum(r["tokens"] for r in records[1:])
            results.append(
                {
                    "run": name,
                    "workers": workers,
                    "strategy": strategy,
                    "pairs": args.pairs * shards,
                    "tokens_per_s": tokens / max(1e-9, last["elapsed_s"] - first["elapsed_s"]),
                    "tokens_per_step": last["tokens"],
                    "step_s": (last["elapsed_s"] - first["elapsed_s"]) / (len(records) - 1),
                    "time_to_first_step_s": first["first_step_s"],
                    "driver_peak_rss_mb": json.loads(summary.read_text())["driver_peak_rss_mb"],
                    "worker_peak_rss_mb": max(r["peak_rss_mb"] for r in records),
                    "peak_cuda_mb": max(r["peak_cuda_mb"] for r in records),
                    "wall_s": wall,
                    "final_loss": last["loss"],
                }
            )
    by = {r["run"]: r for r in results}
    ratios = {
        "ddp / allreduce tokens/s (2 workers)": by["2 workers, ddp"]["tokens_per_s"]
        / by["2 workers, allreduce"]["tokens_per_s"],
        "driver peak, 10·N / N": by["1 worker, 10·N pairs"]["driver_peak_rss_mb"]
        / by["1 worker"]["driver_peak_rss_mb"],
        "worker peak, 10·N / N": by["1 worker, 10·N pairs"]["worker_peak_rss_mb"]
        / by["1 worker"]["worker_peak_rss_mb"],
    }
    load_after = os.getloadavg()
    table = Table(
        title=f"hybrid train: {args.steps} steps, batch {args.batch_size}/worker, {args.seq_len} tokens/sequence; "
        f"load average {load_before[0]:.1f} → {load_after[0]:.1f}"
    )
    for col in ("run", "pairs", "tokens/s", "s/step", "first step s", "driver peak MiB", "worker peak MiB", "wall s"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            r["run"],
            f"{r['pairs']:,}",
            f"{r['tokens_per_s']:,.0f}",
            f"{r['step_s']:.2f}",
            f"{r['time_to_first_step_s']:.0f}",
            f"{r['driver_peak_rss_mb']:,.0f}",
            f"{r['worker_peak_rss_mb']:,.0f}",
            f"{r['wall_s']:.0f}",
        )
    Console().print(table)
    for k, v in ratios.items():
        print(f"  {k:<40} {v:.2f}x")
    if args.json:
        import platform

        import torch

        atomic_write_json(
            args.json,
            {
                "results": results,
                "ratios": ratios,
                "steps": args.steps,
                "batch_size": args.batch_size,
                "seq_len": args.seq_len,
                "pairs": args.pairs,
                "load_average": {"before": load_before, "after": load_after},
                "cpu_count": os.cpu_count(),
                "torch": torch.__version__,
                "machine": platform.platform(),
                "cuda": torch.cuda.is_available(),
            },
        )
        print(f"results → {args.json}")
    return 0
