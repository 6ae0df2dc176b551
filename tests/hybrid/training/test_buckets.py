"""data.bucket_by_length: every global micro-batch comes from one length bucket, the order is a function of
(seed, step) alone, and a resumed run still ends with the weights of an uninterrupted one."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from hybrid.cli.config import load_config
from hybrid.training.loop import LengthBuckets
from hybrid.training.train import train


def test_batches_are_single_bucket_full_and_a_function_of_the_index():
    rng = random.Random(0)
    lengths = [rng.choice([rng.randint(5, 16), rng.randint(60, 64), rng.randint(250, 256)]) for _ in range(37)]
    b = LengthBuckets(lengths, width=16, size=4, seed=3)
    assert b.per_epoch == sum(-(-len(x) // 4) for x in b.buckets) and len(b.buckets) == 3
    seen = []
    for g in range(3 * b.per_epoch):
        batch = b.batch(g)
        assert len(batch) == 4 and len({-(-lengths[i] // 16) for i in batch}) == 1, (g, batch)
        seen.append(batch)
    for e in range(3):  # each epoch shows every example
        assert {i for batch in seen[e * b.per_epoch:(e + 1) * b.per_epoch] for i in batch} == set(range(37))
    assert seen[:b.per_epoch] != seen[b.per_epoch:2 * b.per_epoch]  # epochs are reshuffled
    fresh = LengthBuckets(lengths, width=16, size=4, seed=3)  # random access = sequential (resume)
    for g in (2 * b.per_epoch + 1, 5, 0, b.per_epoch):
        assert fresh.batch(g) == seen[g]
    assert LengthBuckets(lengths, width=16, size=4, seed=4).batch(0) != seen[0] or \
        LengthBuckets(lengths, width=16, size=4, seed=4).batch(1) != seen[1]


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("mixed")
    words = "alpha beta gamma delta epsilon zeta eta theta".split()

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
    common = ["train.tokenizer=word", "data.max_length=64", "train.batch_size=4", "train.max_iters=6",
              "train.eval_every=3", "train.log_every=1", "train.keep_last=2"]
    S = 16  # tiny_llama_hybrid's segment_length
    whole = train(load_config(tiny_overrides(mixed_data, tmp_path / "whole", *common, "data.bucket_by_length=true")).recipe(),
                  quiet=True)
    for r in steps(whole.output_dir):  # every row is padded by less than one segment
        assert r["padded_tokens"] - r["tokens"] < 4 * S, r
    plain = train(load_config(tiny_overrides(mixed_data, tmp_path / "plain", *common)).recipe(), quiet=True)
    assert any(r["padded_tokens"] - r["tokens"] >= 4 * S for r in steps(plain.output_dir))  # the check has teeth

    resumed = train(load_config(tiny_overrides(
        mixed_data, tmp_path / "resumed", *common, "data.bucket_by_length=true",
        f"train.resume={whole.output_dir / 'checkpoint_step_000003'}")).recipe(), quiet=True)
    assert [r["step"] for r in steps(resumed.output_dir)] == [4, 5, 6]
    for a, b in zip(steps(whole.output_dir)[3:], steps(resumed.output_dir)):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6) and a["padded_tokens"] == b["padded_tokens"]
    x = load_file(whole.checkpoint / "model.safetensors")
    y = load_file(resumed.checkpoint / "model.safetensors")
    for k in x:
        torch.testing.assert_close(x[k], y[k], rtol=0, atol=1e-6, msg=k)
    assert whole.metrics["val_loss"] == pytest.approx(resumed.metrics["val_loss"], rel=1e-5)
