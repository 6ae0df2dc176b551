"""Streaming keeps memory flat: the driver of a training run (and its workers) peak at about the same memory for N
and 10·N IO pairs — the driver holds the file list and the tokenizer's sample, a worker one block of the stream."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pytest

from tests.commands import run_process

ROOT = Path(__file__).resolve().parents[3]

# One driver process, joined to the session's Ray, trains on N pairs, then on 10·N pairs: its peak resident memory
# (VmHWM) after each run. Had the driver held the data, the second peak would sit above the first by about the
# data's size.
DRIVER = """
import json, os, sys
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
from hybrid.cli.config import load_config
from hybrid.core.ray_utils import init_ray
from hybrid.training.recipe import peak_rss_mb
from hybrid.training.train import train

init_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
peaks = []
for data, out in zip(sys.argv[1::2], sys.argv[2::2]):
    train(load_config(["model=tiny_llama_hybrid", "train=tiny", f"data.train={data}", f"train.output_dir={out}",
                       "train.num_workers=1", "train.max_iters=3", "train.eval_every=3", "train.batch_size=2",
                       "train.tokenizer_sample=300", "data.max_length=64", "data.shuffle_window=256",
                       "data.local_rows=0"]).recipe(),  # both through Ray Data (N pairs would be read by the worker)
          quiet=True)
    peaks.append(peak_rss_mb())
print(json.dumps(peaks))
"""


def write_pairs(path: Path, n: int, seed: int) -> int:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(400)]
    with open(path, "w") as f:
        for _ in range(n):
            text = " ".join(rng.choices(words, k=700))  # ~3.3 KB per pair
            f.write(json.dumps({"input": text, "output": " ".join(text.split()[:5])}) + "\n")
    return path.stat().st_size


@pytest.mark.slow
def test_driver_and_worker_peaks_do_not_grow_with_the_data(ray_session, tmp_path):
    sizes, args = [], []
    for shards in (1, 10):  # N pairs, then 10·N in 10 files of N (a data set comes in shards)
        data = tmp_path / f"data{shards}"
        data.mkdir()
        sizes.append(sum(write_pairs(data / f"part-{i}.jsonl", 3_000, i) for i in range(shards)) / 2**20)
        args += [str(data), str(tmp_path / f"out{shards}")]
    out = run_process(
        [sys.executable, "-c", DRIVER, *args],
        cwd=ROOT,
        timeout=540,
        env={**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    d1, d10 = json.loads(out.stdout.strip().splitlines()[-1])
    w1, w10 = (
        max(
            r["peak_rss_mb"]
            for r in map(json.loads, (tmp_path / f"out{s}" / "metrics.jsonl").read_text(encoding="utf-8").splitlines())
            if "peak_rss_mb" in r
        )
        for s in (1, 10)
    )
    peaks = {"data MiB": sizes, "driver": (d1, d10), "worker": (w1, w10)}
    # the bound, and one with teeth whatever the baseline (a process's peak varies with what it imported):
    # the extra 9·N records, held in Python with their token ids (at least twice the JSON: a token id costs a list
    # slot of 8 bytes, a word of this text ~5), would add at least 2× the extra JSON; allow a quarter of that
    extra = sizes[1] - sizes[0]
    assert d10 <= 1.3 * d1 and d10 - d1 <= 0.5 * extra, peaks
    assert w10 <= 1.3 * w1 and w10 - w1 <= 0.5 * extra, peaks
