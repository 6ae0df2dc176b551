"""Tiny IO-pair data shared by the training and tuning tests."""

from __future__ import annotations

import json
import random

import pytest


def make_pairs(path, n, seed):
    """`n` IO pairs of a few words each (the output: the first three input words reversed)."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    with open(path, "w") as f:
        for _ in range(n):
            a = [rng.choice(words) for _ in range(rng.randint(3, 24))]
            f.write(json.dumps({"input": " ".join(a), "output": " ".join(reversed(a[:3]))}) + "\n")
    return path


@pytest.fixture(scope="session")
def io_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("io")
    return {"train": make_pairs(d / "train.jsonl", 48, 0), "validation": make_pairs(d / "validation.jsonl", 8, 1)}
