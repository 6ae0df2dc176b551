"""`RecipeConfig`: the sections a training run reads (model, train, data, memory) — what the training recipe and
`hybrid.tuning` take, what every checkpoint saves as config.yaml, and what `hybrid train --config FILE` reads."""

from __future__ import annotations

from pydantic import Field

from hybrid.config.memory import MemoryConfig
from hybrid.config.model import ModelConfig
from hybrid.config.section import Section
from hybrid.config.train import DataConfig, TrainConfig


class RecipeConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig, description="model family, sizes and memory")
    train: TrainConfig = Field(default_factory=TrainConfig, description="optimisation and checkpointing")
    data: DataConfig = Field(default_factory=DataConfig, description="training / validation data")
    memory: MemoryConfig = Field(default_factory=MemoryConfig, description="external memory store backend")
