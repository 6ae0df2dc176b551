"""The `tune` section: a Ray Tune sweep whose trials are training runs (`hybrid tune`, docs/tune.md).

`space` maps dotted keys of the training config (`model.*`, `train.*`, `data.*`, `memory.*`) to what to try:

    model.retrieval_k: [1, 4]                       a grid: every value (crossed with the other grids)
    model.memory_slots: {choice: [4, 16]}           sampled, `num_samples` times
    train.learning_rate: {loguniform: [1e-4, 1e-2]} sampled from a log-uniform range (also `uniform`)

On the command line the whole space is one YAML value:
`tune.space={model.retrieval_k: [1, 4], model.memory_slots: [2, 8]}`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from hybrid.config.section import PATH, Section

SAMPLERS = ("choice", "uniform", "loguniform")


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


class RecallObjective(Section):
    """`objective: recall`: the long-context recall task of `hybrid bench recall` instead of `data.*`."""

    task: Literal["key_value", "passkey", "two_hop"] = Field("key_value", description="which recall task")
    length: int = Field(4, ge=1, description="examples are this many times the attention window (segment length)")
    train_examples: int = Field(2000, ge=8, description="training examples (a length mix of 1×, 2× and `length`×)")
    eval_examples: int = Field(
        200, ge=8, description="validation examples, all `length`× (the metric is their teacher-forced exact match)"
    )
    base_steps: int = Field(600, ge=1, description="steps of the shared in-window base the trials start from")
    seed: int = Field(0, description="seed of the recall data and the base")


class TuneConfig(Section):
    metric: str = Field(
        "val_loss",
        min_length=1,
        description="what a trial reports and the sweep optimises (val_loss, val_exact_match, train_loss)",
    )
    mode: Literal["min", "max"] = Field("min", description="minimise or maximise the metric")
    scheduler: Literal["asha", "fifo"] = Field(
        "asha", description="asha stops trials below the median early; fifo runs every trial to the end"
    )
    grace_steps: int = Field(2, ge=1, description="ASHA: steps every trial runs before it can be stopped")
    reduction_factor: int = Field(2, ge=2, description="ASHA: 1/reduction_factor of the trials go on at each rung")
    max_iters: int = Field(100, ge=1, description="each trial's step budget (its train.max_iters)")
    num_samples: int = Field(1, ge=1, description="samples of the sampled keys (each crossed with the grid)")
    max_trials: int = Field(
        1000,
        ge=1,
        description="most trials a sweep may have (the grid's points × num_samples): Tune generates every "
        "point up front, so a 1000 × 1000 grid only grows memory for minutes",
    )
    max_concurrent_trials: int = Field(0, ge=0, description="trials at once (0 = as many as the cluster fits)")
    output_dir: str = Field(
        "outputs/tune",
        description="the sweep: results.csv, best.yaml, plots, each trial's run "
        "folder (trials/), Tune's own state (tune/)",
        **PATH,
    )
    seed: int = Field(0, description="seed of the sampled keys")
    space: dict[str, Any] = Field(
        default_factory=lambda: {"model.retrieval_k": [1, 2, 4, 8], "model.memory_slots": [4, 16, 32]},
        description="dotted config key -> a list (grid) or {choice|uniform|loguniform: [...]}",
    )
    objective: Literal["train", "recall"] = Field(
        "train",
        description="train: the trials train on data.*; recall: on the recall task below (its data and "
        "a shared in-window base are made first, in <output_dir>/recall), scored by validation "
        "exact match (tune=recall)",
    )
    recall: RecallObjective = Field(default_factory=RecallObjective, description="objective: recall")

    @model_validator(mode="after")
    def _check(self) -> TuneConfig:
        if self.scheduler == "asha" and self.grace_steps > self.max_iters:
            # (Ray's ASHA asserts on it when the sweep starts, after the sweep's folder was made)
            raise ValueError(
                f"grace_steps: {self.grace_steps} is more than max_iters ({self.max_iters}): ASHA "
                f"can stop a trial only after grace_steps; lower tune.grace_steps or raise tune.max_iters"
            )
        if not self.space:
            raise ValueError("space is empty: name at least one key to sweep")
        for key, value in self.space.items():
            if "." not in key:
                raise ValueError(f"space: {key}: expected a dotted key such as model.retrieval_k")
            if isinstance(value, list):
                if not value:
                    raise ValueError(f"space: {key}: an empty list")
                continue
            if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in SAMPLERS:
                raise ValueError(
                    f"space: {key}: expected a list (grid) or one of {{{', '.join(SAMPLERS)}: [...]}}, got {value!r}"
                )
            ((kind, args),) = value.items()
            if kind == "choice" and (not isinstance(args, list) or not args):
                raise ValueError(f"space: {key}: choice needs a non-empty list")
            if kind in ("uniform", "loguniform"):
                if isinstance(args, list):  # YAML reads 1e-4 (no dot) as text: numbers are what is meant
                    args = value[kind] = [_number(a) for a in args]
                if not (
                    isinstance(args, list)
                    and len(args) == 2
                    and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
                    and args[0] < args[1]
                ):
                    raise ValueError(f"space: {key}: {kind} needs [low, high] numbers with low < high, got {args!r}")
                if kind == "loguniform" and args[0] <= 0:
                    raise ValueError(f"space: {key}: loguniform needs a positive low end, got {args[0]}")
        return self
