"""`hybrid bench train`: training tokens/s with 1 and 2 Ray Train workers, and peak memory.

Synthetic IO pairs of a fixed length (so every step carries the same tokens), the demo's model unless told
otherwise, `--steps` optimizer steps per run; per-worker batch fixed, so 2 workers process twice the tokens per
step. Tokens/s counts every real token (input and output) of the global batch, measured after the first step
(which pays for start-up). Peak memory is the largest per-worker resident set (and CUDA allocation on GPUs)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", help="key=value config overrides (default model: the demo's)")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts to measure (default 1,2)")
    p.add_argument("--steps", type=int, default=12, help="optimizer steps per run")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per worker per step")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (about half of them output)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")


def _synthetic_pairs(path, n: int, seq_len: int, seed: int = 0) -> None:
    import json
    import random

    rng = random.Random(seed)
    words = [f"w{i}" for i in range(200)]
    with open(path, "w") as f:
        for _ in range(n):
            # ~1 token per word plus a space; the tokenizer is trained on the same words, so lengths are stable
            f.write(json.dumps({"input": " ".join(rng.choice(words) for _ in range(seq_len // 2)),
                                "output": " ".join(rng.choice(words) for _ in range(seq_len // 2))}) + "\n")


def run(args: argparse.Namespace) -> int:
    import json
    import platform
    import tempfile
    import time
    from pathlib import Path

    import torch
    from rich.console import Console
    from rich.table import Table

    from hybrid.cli.config import load_config
    from hybrid.core.errors import HybridError
    from hybrid.core.io import atomic_write_json
    from hybrid.training.train import train

    try:
        workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        raise HybridError(f"--workers: expected comma-separated integers, got {args.workers!r}") from None
    if args.steps < 2:
        raise HybridError("--steps: need at least 2 (the first step is not timed)")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp = Path(tmp)
        _synthetic_pairs(tmp / "train.jsonl", 256, args.seq_len)
        for n in workers:
            cfg = load_config(["model=demo_hybrid", "train=demo", *args.overrides,
                               f"data.train={tmp / 'train.jsonl'}", f"data.max_length={args.seq_len + 8}",
                               f"train.output_dir={tmp / f'w{n}'}", f"train.num_workers={n}",
                               f"train.batch_size={args.batch_size}", f"train.max_iters={args.steps}",
                               f"train.eval_every={args.steps}", "train.log_every=1", "train.tokenizer_vocab_size=512"])
            t0 = time.time()
            result = train(cfg.recipe(), quiet=True)
            wall = time.time() - t0
            records = [r for r in map(json.loads, open(result.output_dir / "metrics.jsonl")) if "loss" in r]
            first, last = records[0], records[-1]
            tokens = sum(r["tokens"] for r in records[1:])
            tok_s = tokens / max(1e-9, last["elapsed_s"] - first["elapsed_s"])
            results.append({"workers": n, "tokens_per_s": tok_s, "tokens_per_step": last["tokens"],
                            "step_s": (last["elapsed_s"] - first["elapsed_s"]) / (len(records) - 1),
                            "peak_rss_mb": max(r["peak_rss_mb"] for r in records),
                            "peak_cuda_mb": max(r["peak_cuda_mb"] for r in records),
                            "wall_s_including_start": wall, "final_loss": last["loss"]})
    table = Table(title=f"training throughput ({args.steps} steps, batch {args.batch_size}/worker, "
                        f"{args.seq_len} tokens/sequence)")
    for col in ("workers", "tokens/s", "s/step", "peak RSS MiB", "peak CUDA MiB", "wall s (with start-up)"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(str(r["workers"]), f"{r['tokens_per_s']:,.0f}", f"{r['step_s']:.2f}", f"{r['peak_rss_mb']:,.0f}",
                      f"{r['peak_cuda_mb']:,.0f}", f"{r['wall_s_including_start']:.0f}")
    Console().print(table)
    if args.json:
        atomic_write_json(args.json, {"results": results, "steps": args.steps, "batch_size": args.batch_size,
                                      "seq_len": args.seq_len, "cpu_count": __import__("os").cpu_count(),
                                      "torch": torch.__version__, "machine": platform.platform(),
                                      "cuda": torch.cuda.is_available()})
        print(f"results → {args.json}")
    return 0
