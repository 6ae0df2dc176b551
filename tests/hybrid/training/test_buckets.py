"""data.bucket_by_length: every global micro-batch comes from one length bucket of its shuffle window, the order is a
function of (seed, step) alone, and a resumed run still ends with the weights of an uninterrupted one."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hybrid.cli.config import load_config
from hybrid.training.datastream import window_order
from hybrid.training.train import train


def test_window_batches_are_single_bucket_full_and_seeded():
    rng = random.Random(0)
    lengths = np.array(
        [rng.choice([rng.randint(5, 16), rng.randint(60, 64), rng.randint(250, 256)]) for _ in range(37)]
    )
    order = window_order(lengths, (0, 123), seed=3, global_batch=4, bucket_width=16)
    batches = order.reshape(-1, 4)
    buckets = -(-lengths // 16)
    assert all(len(set(buckets[b])) == 1 for b in batches)  # every global batch is one bucket ...
    assert set(order.tolist()) == set(range(37))  # ... every example is in one, and only fill-ups repeat
    assert len(order) == sum(-(-int((buckets == k).sum()) // 4) * 4 for k in set(buckets.tolist()))
    assert np.array_equal(order, window_order(lengths, (0, 123), 3, 4, 16))  # a function of its arguments
    assert not np.array_equal(order, window_order(lengths, (1, 123), 3, 4, 16))  # epochs differ
    assert not np.array_equal(order, window_order(lengths, (0, 123), 4, 4, 16))  # seeds differ


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("mixed")
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]

    def make(path, n, seed):
        rng = random.Random(seed)
        with open(path, "w") as f:
            for _ in range(n):
                a = [rng.choice(words) for _ in range(rng.choice([rng.randint(2, 5), rng.randint(40, 50)]))]
                f.write(json.dumps({"input": " ".join(a), "output": " ".join(a[:2])}) + "\n")
        return path

    return {"train": make(d / "train.jsonl", 40, 0), "validation": make(d / "validation.jsonl", 8, 1)}


def steps(out):
    return [r for r in map(json.loads, open(out / "metrics.jsonl")) if "loss" in r]


def test_bucketed_training_pads_little_and_resumes_exactly(mixed_data, tmp_path, tiny_overrides):
    common = [
        "train.tokenizer=word",
        "data.max_length=64",
        "train.batch_size=4",
        "train.max_iters=6",
        "train.eval_every=3",
        "train.log_every=1",
        "train.keep_last=2",
    ]
    S = 16  # tiny_llama_hybrid's segment_length
    whole = train(
        load_config(tiny_overrides(mixed_data, tmp_path / "whole", *common, "data.bucket_by_length=true")).recipe(),
        quiet=True,
    )
    for r in steps(whole.output_dir):  # every row is padded by less than one segment
        assert r["padded_tokens"] - r["tokens"] < 4 * S, r
    plain = train(load_config(tiny_overrides(mixed_data, tmp_path / "plain", *common)).recipe(), quiet=True)
    assert any(r["padded_tokens"] - r["tokens"] >= 4 * S for r in steps(plain.output_dir))  # the check has teeth

    resumed = train(
        load_config(
            tiny_overrides(
                mixed_data,
                tmp_path / "resumed",
                *common,
                "data.bucket_by_length=true",
                f"train.resume={whole.output_dir / 'checkpoint_step_000003'}",
            )
        ).recipe(),
        quiet=True,
    )
    assert [r["step"] for r in steps(resumed.output_dir)] == [4, 5, 6]
    for a, b in zip(steps(whole.output_dir)[3:], steps(resumed.output_dir)):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6) and a["padded_tokens"] == b["padded_tokens"]
    x = load_file(whole.checkpoint / "model.safetensors")
    y = load_file(resumed.checkpoint / "model.safetensors")
    for k in x:
        torch.testing.assert_close(x[k], y[k], rtol=0, atol=1e-6, msg=k)
    assert whole.metrics["val_loss"] == pytest.approx(resumed.metrics["val_loss"], rel=1e-5)
