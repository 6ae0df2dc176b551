"""`torchrun --nproc_per_node=2 -m hybrid.train …`: the same recipe without Ray — two CPU processes on gloo follow
the loss curve of one process with the same global batch, and write the same kind of checkpoint."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from hybrid.cli.config import load_config
from hybrid.training import checkpoints as ckpt_io
from hybrid.training.train import train
from tests.commands import run_process

ROOT = Path(__file__).resolve().parents[3]
COMMON = [
    "train.max_iters=4",
    "train.log_every=1",
    "train.eval_every=2",
    "train.warmup_iters=1",
    "train.learning_rate=3e-3",
    "data.max_length=32",
]


def losses(output_dir):
    return [(r["step"], r["loss"]) for r in map(json.loads, open(output_dir / "metrics.jsonl")) if "loss" in r]


@pytest.mark.slow
def test_torchrun_two_processes_match_one(io_data, tmp_path, tiny_overrides):
    one = train(
        load_config(tiny_overrides(io_data, tmp_path / "one", *COMMON, "train.batch_size=4")).recipe(), quiet=True
    )
    torchrun = Path(sys.executable).parent / "torchrun"
    out = run_process(
        [
            str(torchrun),
            "--nproc_per_node=2",
            "--master_port=29617",
            "-m",
            "hybrid.train",
            *tiny_overrides(io_data, tmp_path / "two", *COMMON, "train.batch_size=2"),
        ],
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "checkpoints in" in out.stdout
    a, b = losses(one.output_dir), losses(tmp_path / "two")
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3, 4]
    for (_, x), (_, y) in zip(a, b):
        assert math.isclose(x, y, rel_tol=1e-4), (a, b)
    ck = ckpt_io.latest_checkpoint(tmp_path / "two")
    ckpt_io.validate_checkpoint(ck)
    assert ck.name == "checkpoint_step_000004" and (ck / "optimizer.pt").exists()
    # a bad override is one line from rank 0, exit code 2, on every rank
    bad = run_process(
        [str(torchrun), "--nproc_per_node=2", "--master_port=29618", "-m", "hybrid.train", "train.batch_size=abc"],
        cwd=ROOT,
        timeout=300,
    )
    assert bad.returncode != 0 and "error: train.batch_size" in bad.stderr
