"""Tiny IO-pair data and a tiny-model training config shared by the training tests."""

from __future__ import annotations

import json
import random

import pytest

TINY = ["model=tiny_llama_hybrid", "train=tiny", "data.max_length=40"]


def make_pairs(path, n, seed):
    rng = random.Random(seed)
    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    with open(path, "w") as f:
        for _ in range(n):
            a = [rng.choice(words) for _ in range(rng.randint(3, 24))]
            f.write(json.dumps({"input": " ".join(a), "output": " ".join(reversed(a[:3]))}) + "\n")
    return path


@pytest.fixture(scope="session")
def io_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("io")
    return {"train": make_pairs(d / "train.jsonl", 48, 0), "validation": make_pairs(d / "validation.jsonl", 8, 1)}


@pytest.fixture(scope="session")
def tiny_overrides():
    """tiny_overrides(io_data, output_dir, *extra) -> the key=value list of a tiny training run."""

    def make(io_data, output_dir, *extra):
        return [*TINY, f"data.train={io_data['train']}", f"data.validation={io_data['validation']}",
                f"train.output_dir={output_dir}", *extra]

    return make
