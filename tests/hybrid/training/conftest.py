"""A tiny-model training config shared by the training tests (the IO pairs: tests/hybrid/conftest.py)."""

from __future__ import annotations

import pytest

TINY = ["model=tiny_llama_hybrid", "train=tiny", "data.max_length=40"]


@pytest.fixture(scope="session")
def tiny_overrides():
    """tiny_overrides(io_data, output_dir, *extra) -> the key=value list of a tiny training run."""

    def make(io_data, output_dir, *extra):
        return [
            *TINY,
            f"data.train={io_data['train']}",
            f"data.validation={io_data['validation']}",
            f"train.output_dir={output_dir}",
            *extra,
        ]

    return make
