"""The whole configuration of a command: YAML files in `configs/`, composed and overridden with `key=value`.

    configs/config.yaml         `defaults:` names one file per group (model: llama_hybrid, train: default, ...)
    configs/<group>/<name>.yaml  the group's values

On the command line `model=gpt2_hybrid` picks another file for a group and `train.batch_size=4` overrides one
value (parsed as YAML, so `4` is an int and `null` is None). Every section is a pydantic model that rejects
unknown keys and wrong types; the error names the key (`train.batch_size`).

Each section's schema is a leaf in `hybrid.config`; this module (the command layer's) only composes them, and
hands each library the sections it reads — never the whole `Config`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hybrid.config.llm import LLMConfig
from hybrid.config.memory import MemoryConfig
from hybrid.config.model import ModelConfig
from hybrid.config.pipeline import PipelineConfig
from hybrid.config.recipe import RecipeConfig
from hybrid.config.section import describe_error
from hybrid.config.train import DataConfig, TrainConfig
from hybrid.config.tune import TuneConfig
from hybrid.core.errors import ConfigError
from hybrid.core.text import not_unicode, printable

CONFIG_DIR = Path(os.environ.get("HYBRID_CONFIG_DIR", Path(__file__).resolve().parents[2] / "configs"))
GROUPS = ("model", "train", "data", "memory", "pipeline", "llm", "tune")


class Config(BaseModel):
    """The whole resolved configuration of a run (saved next to every checkpoint)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: ModelConfig = Field(default_factory=ModelConfig, description="model family, sizes and memory")
    train: TrainConfig = Field(default_factory=TrainConfig, description="optimisation and checkpointing")
    data: DataConfig = Field(default_factory=DataConfig, description="training / validation data")
    memory: MemoryConfig = Field(default_factory=MemoryConfig, description="external memory store backend")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="data-generation pipeline")
    llm: LLMConfig = Field(default_factory=LLMConfig, description="LLM endpoint limits for the LLM stages")
    tune: TuneConfig = Field(default_factory=TuneConfig, description="Ray Tune sweeps (hybrid tune)")

    def recipe(self) -> RecipeConfig:
        """The sections a training run reads."""
        return RecipeConfig(model=self.model, train=self.train, data=self.data, memory=self.memory)


def override_value(raw: str) -> Any:
    """The value of a `key=value` override: YAML (`2`, `true`, `[1, 2]`, `{a: 1}`), else the text as it is."""
    try:
        return yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        return raw


def split_overrides(items: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split command-line words into `key=value` overrides and the other positionals (e.g. repo names)."""
    overrides, rest = [], []
    for item in items:
        key = item.split("=", 1)[0]
        (overrides if "=" in item and key and " " not in key and "/" not in key else rest).append(item)
    return overrides, rest


def _read_yaml(path: Path | str) -> dict[str, Any]:
    """A YAML mapping from a file (or a URI: `--config s3://…/best.yaml`)."""
    from hybrid.core import storage

    try:
        text = storage.read_text(path)
        data = yaml.safe_load(text) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a YAML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])}: is a value, not a section (in override {dotted}=...)")
        node = child
    node[parts[-1]] = value


def _check_text(tree: dict[str, Any], prefix: str = "") -> None:
    """Every string value must be text: bytes that are not UTF-8 in an override (`train.output_dir=$'x\\xff'`) or a
    `\\ud800` escape in a YAML file would reach a library that encodes it — after the run folder was created."""
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, dict):
                _check_text(v, dotted + ".")
            elif isinstance(v, str) and not_unicode(v):
                raise ConfigError(f"{dotted}: {printable(v)} is {not_unicode(v)}")


def load_config(
    overrides: Iterable[str] = (), config_dir: Path | None = None, base: str | Path | None = None
) -> Config:
    """Compose configs/config.yaml's defaults — or start from the whole config in the YAML file `base` (a checkpoint's
    config.yaml, a sweep's best.yaml; sections it lacks take the defaults) — then apply group choices
    (`model=gpt2_hybrid` replaces that section with the preset) and dotted overrides, and validate."""
    config_dir = Path(config_dir or CONFIG_DIR)
    root = _read_yaml(config_dir / "config.yaml")
    choices: dict[str, str] = dict(root.pop("defaults", {}) or {})
    if base is not None:
        tree_from_file = _read_yaml(base)
        unknown = [k for k in tree_from_file if k not in GROUPS]
        if unknown:
            raise ConfigError(f"{base}: {unknown[0]}: unknown config group (choose from {', '.join(GROUPS)})")
        root = {}  # the file's sections stand as they are; only what it lacks comes from the defaults
        choices = {g: n for g, n in choices.items() if g not in tree_from_file}
    dotted: list[tuple[str, Any]] = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("+")
        if not key:
            raise ConfigError(f"override {item!r}: empty key")
        if "." not in key and key in GROUPS and raw and not raw.startswith(("{", "[")):
            choices[key] = raw  # `model=gpt2_hybrid` picks configs/model/gpt2_hybrid.yaml
            continue
        if "." not in key:
            raise ConfigError(f"{key}: unknown config group (choose from {', '.join(GROUPS)})")
        dotted.append((key, override_value(raw)))

    tree: dict[str, Any] = dict(tree_from_file) if base is not None else {}
    for group, name in choices.items():
        if group not in GROUPS:
            raise ConfigError(f"{config_dir / 'config.yaml'}: defaults.{group}: unknown config group")
        path = config_dir / group / f"{name}.yaml"
        if not path.is_file():
            options = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
            raise ConfigError(f"{group}={name}: no {path} (choose from: {', '.join(options) or 'none'})")
        tree[group] = _read_yaml(path)
    for key, value in root.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            tree[key].update(value)
        else:
            tree[key] = value
    for key, value in dotted:
        _set_dotted(tree, key, value)
    _check_text(tree)
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(describe_error(e)) from None
