"""The sweep's space, checked before any trial starts: the keys a sweep may not set (`OWNED`), the grid's size,
every value valid, the metric and the data; path settings made absolute; Tune's `param_space`."""

from __future__ import annotations

import math
import os
from typing import Any

from hybrid.config.recipe import SECTIONS, RecipeConfig, absolute_path, path_keys, with_absolute_paths, with_values
from hybrid.config.tune import TuneConfig
from hybrid.core import storage
from hybrid.core.errors import ConfigError
from hybrid.training.recipe import REPORTED_METRICS

# Keys every trial's config gets from the sweep (`trial_config`): swept, they would be silently overwritten
OWNED = {
    "train.max_iters": "every trial runs tune.max_iters steps (ASHA's budget); set tune.max_iters",
    "train.output_dir": "each trial trains into <tune.output_dir>/trials/<trial>",
    "train.resume": "each trial resumes its own checkpoints (auto), so a retried or resumed trial continues",
    "train.num_workers": "the sweep's concurrency and each trial's CPUs are counted from it; set it for every trial "
    "outside tune.space",
    "train.best_by": "it follows tune.metric",
    "memory.service": "each trial gets a memory service of its own (<service>-<sweep>-<trial>)",
}


def grid_size(tcfg: TuneConfig) -> int:
    """Trials the sweep will have: the grid's points × num_samples."""
    return math.prod(len(spec) for spec in tcfg.space.values() if isinstance(spec, list)) * tcfg.num_samples


def check_space(base: RecipeConfig, tcfg: TuneConfig) -> None:
    """Every key is a training-config key the sweep does not set itself, the grid is not larger than
    tune.max_trials, and every value a key can take is valid — before any trial starts."""
    for key in tcfg.space:
        if key in OWNED:
            raise ConfigError(
                f"tune.space: {key}: set by the sweep for every trial, so it cannot be swept ({OWNED[key]})"
            )
    trials = grid_size(tcfg)
    if trials > tcfg.max_trials:
        points = " × ".join(str(len(v)) for v in tcfg.space.values() if isinstance(v, list))
        raise ConfigError(
            f"tune.space: {trials:,} trials ({points} grid points × tune.num_samples {tcfg.num_samples}) "
            f"is more than tune.max_trials ({tcfg.max_trials:,}); narrow the space or raise "
            f"tune.max_trials"
        )
    for key, spec in tcfg.space.items():
        if isinstance(spec, list):
            candidates = spec
        else:
            ((kind, args),) = spec.items()
            candidates = args
            if kind in ("uniform", "loguniform"):
                section, _, name = key.partition(".")
                fields = type(getattr(base, section)).model_fields if section in SECTIONS else {}
                if name in fields and fields[name].annotation in (int, "int"):
                    raise ConfigError(
                        f"tune.space: {key}: {kind} draws fractions, but {key} is an integer "
                        f"(give a list or {{choice: [...]}})"
                    )
        for value in candidates:
            with_values(base, {key: value})


def check_sweep(base: RecipeConfig, tcfg: TuneConfig, data: bool = True) -> None:
    """What can be known wrong before Ray starts: the metric, the space, the data (`data=False`: the recall objective
    makes its data later) — one line each."""
    if tcfg.objective == "recall" and storage.at(tcfg.output_dir).stages:  # not a folder of this machine
        raise ConfigError(
            f"tune.objective=recall: tune.output_dir={storage.shown(tcfg.output_dir)} must be a local "
            f"folder (the recall data and the base are made on this machine)"
        )
    if tcfg.metric not in REPORTED_METRICS:
        raise ConfigError(
            f"tune.metric={tcfg.metric}: not a metric a trial reports (one of {', '.join(REPORTED_METRICS)})"
        )
    check_space(base, tcfg)
    if not data:
        return
    if base.data.train is None:
        raise ConfigError("data.train: the trials need training data (data.train=PATH)")
    if tcfg.metric in ("val_loss", "val_exact_match") and not base.data.validation:
        raise ConfigError(f"tune.metric={tcfg.metric}: the trials need validation data (data.validation=PATH)")


def with_absolute_sweep_paths(
    base: RecipeConfig, tcfg: TuneConfig, cwd: str | None = None
) -> tuple[RecipeConfig, TuneConfig]:
    """Every path setting (data.*, model.pretrained, train.init_from, tune.output_dir, …, and swept values of them)
    made absolute against the folder the command started in: Tune runs each trial in its own folder, where a
    relative `data.train=datasets/io_pairs/train.jsonl` names nothing."""
    cwd = cwd or os.getcwd()
    paths = set(path_keys())

    def fix(key, spec):
        if key not in paths:
            return spec
        if isinstance(spec, list):
            return [absolute_path(key, v, cwd) for v in spec]
        ((kind, args),) = spec.items()
        return {kind: [absolute_path(key, v, cwd) for v in args]}

    space = {key: fix(key, spec) for key, spec in tcfg.space.items()}
    output_dir = absolute_path("tune.output_dir", tcfg.output_dir, cwd)  # a URI as it is
    return with_absolute_paths(base, cwd), tcfg.model_copy(update={"space": space, "output_dir": output_dir})


def param_space(tcfg: TuneConfig) -> dict[str, Any]:
    from ray import tune

    make = {"choice": tune.choice, "uniform": lambda a: tune.uniform(*a), "loguniform": lambda a: tune.loguniform(*a)}
    out = {}
    for key, spec in tcfg.space.items():
        if isinstance(spec, list):
            out[key] = tune.grid_search(spec)
        else:
            ((kind, args),) = spec.items()
            out[key] = make[kind](args)
    return out
