"""Ray Train with real workers (gloo): two workers × batch 2 follow the same loss curve as one worker × batch 4.

The loss of a step is the global sum of output-token cross-entropies over the global token count, and gradients
are summed with all-reduce, so the two runs compute the same quantities; what differs is float summation order
(per-worker partial sums, batch shapes in the matmuls). Tolerance: 1e-4 relative on every logged loss."""

from __future__ import annotations

import json
import math

import pytest

from hybrid.cli.config import load_config
from hybrid.training.train import train


def losses(output_dir):
    return [(r["step"], r["loss"]) for r in map(json.loads, open(output_dir / "metrics.jsonl")) if "loss" in r]


@pytest.mark.slow
def test_two_workers_match_one_worker(ray_session, io_data, tmp_path, tiny_overrides):
    common = ["train.max_iters=4", "train.log_every=1", "train.eval_every=2", "train.keep_last=1", "train.warmup_iters=1",
              "train.learning_rate=3e-3", "data.max_length=32"]
    one = train(load_config(tiny_overrides(io_data, tmp_path / "one", *common, "train.num_workers=1",
                                           "train.batch_size=4")).recipe(), quiet=True)
    two = train(load_config(tiny_overrides(io_data, tmp_path / "two", *common, "train.num_workers=2",
                                           "train.batch_size=2")).recipe(), quiet=True)
    a, b = losses(one.output_dir), losses(two.output_dir)
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3, 4]
    for (_, x), (_, y) in zip(a, b):
        assert math.isclose(x, y, rel_tol=1e-4), (a, b)
    assert a[-1][1] < a[0][1]  # it learns, so equal curves are not equal by standing still
    assert one.metrics["val_loss"] == pytest.approx(two.metrics["val_loss"], rel=1e-4)
    assert two.checkpoint.name == "checkpoint_step_000004" and two.best_checkpoint is not None
    # rerun in the same folder with more steps: resumes from step 4 (after our retention removed a checkpoint
    # Ray had been told about)
    more = train(load_config(tiny_overrides(io_data, tmp_path / "two", *common, "train.num_workers=2",
                                            "train.batch_size=2", "train.max_iters=6")).recipe(), quiet=True)
    assert more.checkpoint.name == "checkpoint_step_000006"
    assert [s for s, _ in losses(more.output_dir)] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_two_workers_match_one_worker_with_length_buckets(ray_session, io_data, tmp_path, tiny_overrides):
    """data.bucket_by_length: both workers take their slices of the same single-bucket global batch."""
    common = ["train.max_iters=3", "train.log_every=1", "train.eval_every=3", "train.keep_last=1",
              "train.warmup_iters=1", "train.learning_rate=3e-3", "data.max_length=32", "data.bucket_by_length=true"]
    one = train(load_config(tiny_overrides(io_data, tmp_path / "one", *common, "train.num_workers=1",
                                           "train.batch_size=4")).recipe(), quiet=True)
    two = train(load_config(tiny_overrides(io_data, tmp_path / "two", *common, "train.num_workers=2",
                                           "train.batch_size=2")).recipe(), quiet=True)
    a, b = losses(one.output_dir), losses(two.output_dir)
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3]
    for (_, x), (_, y) in zip(a, b):
        assert math.isclose(x, y, rel_tol=1e-4), (a, b)
    assert one.metrics["val_loss"] == pytest.approx(two.metrics["val_loss"], rel=1e-4)
