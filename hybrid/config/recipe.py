"""`RecipeConfig`: the sections a training run reads (model, train, data, memory) — what the training recipe and
`hybrid.tuning` take, what every checkpoint saves as config.yaml, and what `hybrid train --config FILE` reads."""

from __future__ import annotations

import os
from typing import Any, cast

from pydantic import Field, ValidationError

from hybrid.config.memory import MemoryConfig
from hybrid.config.model import ModelConfig
from hybrid.config.section import Section, describe_error, is_path_setting
from hybrid.config.train import DataConfig, TrainConfig
from hybrid.core.errors import ConfigError
from hybrid.core.storage import is_absolute

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


# values of path settings that are not paths (train.resume=auto, an MLflow store named by a word)
PATH_KEYWORDS = {
    "train.resume": ("auto", "none", "no", "false", ""),
    "train.init_from": ("none", ""),
    "train.mlflow_uri": ("databricks", "databricks-uc"),
}


def path_keys() -> list[str]:
    """The dotted keys of the training config that name files or folders (marked `**PATH` in their schema)."""
    return [
        f"{section}.{name}"
        for section in SECTIONS
        for name, field in cast("type[Section]", RecipeConfig.model_fields[section].annotation).model_fields.items()
        if is_path_setting(field)
    ]


def absolute_path(key: str, value: Any, cwd: str) -> Any:
    """`value` of the path setting `key` made absolute against `cwd` (URIs, absolute paths, globs' absolute heads
    and the setting's keywords as they are)."""
    if not isinstance(value, str) or not value.strip():
        return value
    text = value.strip()
    if text.lower() in PATH_KEYWORDS.get(key, ()) or is_absolute(text):
        return os.path.expanduser(text) if text.startswith("~") else value
    return os.path.normpath(os.path.join(cwd, text))


def with_absolute_paths(cfg: RecipeConfig, cwd: str | None = None) -> RecipeConfig:
    """`cfg` with every path setting absolute against `cwd` (default: the current folder) — for runs that start
    somewhere else (a Ray Tune trial runs in its own folder, so `data.train=datasets/x.jsonl` would not be found)."""
    cwd = cwd or os.getcwd()
    values = {}
    for key in path_keys():
        section, _, name = key.partition(".")
        value = getattr(getattr(cfg, section), name)
        resolved = absolute_path(key, value, cwd)
        if resolved != value:
            values[key] = resolved
    return with_values(cfg, values, where="paths") if values else cfg
