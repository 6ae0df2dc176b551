"""`RecipeConfig`: the sections a training run reads (model, train, data, memory) — what the training recipe and
`hybrid.tuning` take, what every checkpoint saves as config.yaml, and what `hybrid train --config FILE` reads."""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError

from hybrid.config.memory import MemoryConfig
from hybrid.config.model import ModelConfig
from hybrid.config.section import Section, describe_error
from hybrid.config.train import DataConfig, TrainConfig
from hybrid.core.errors import ConfigError

SECTIONS = ("model", "train", "data", "memory")


class RecipeConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig, description="model family, sizes and memory")
    train: TrainConfig = Field(default_factory=TrainConfig, description="optimisation and checkpointing")
    data: DataConfig = Field(default_factory=DataConfig, description="training / validation data")
    memory: MemoryConfig = Field(default_factory=MemoryConfig, description="external memory store backend")


def with_values(base: RecipeConfig, values: dict[str, Any], where: str = "tune.space") -> RecipeConfig:
    """`base` with dotted keys set (`model.retrieval_k`: 4), validated: a one-line ConfigError naming the key
    otherwise (`where` says which setting the keys came from)."""
    tree = base.model_dump(mode="json")
    for key, value in values.items():
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name or "." in name:
            raise ConfigError(f"{where}: {key}: not a key of the training config (model.*, train.*, data.*, memory.*)")
        if name not in type(getattr(base, section)).model_fields:
            raise ConfigError(f"{where}: {key}: unknown key")
        tree[section][name] = value
    try:
        return RecipeConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(f"{where}: {describe_error(e)}") from None
