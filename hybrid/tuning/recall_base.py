"""`tune.objective=recall`: the recall task's data and the shared in-window base, made once before the trials."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hybrid.config.recipe import RecipeConfig, with_values
from hybrid.config.tune import TuneConfig
from hybrid.core import storage
from hybrid.core.errors import ConfigError
from hybrid.core.io import atomic_write_jsonl
from hybrid.training import recall as rc

RECALL_TASKS = {"key_value": "kv", "passkey": "passkey", "two_hop": "facts"}


def recall_base(base: RecipeConfig, tcfg: TuneConfig, output_dir: str, say: Callable[[str], None]) -> RecipeConfig:
    """`tune.objective=recall`: the recall task's data (<output_dir>/recall: train.jsonl, a length mix of 1x, 2x and
    `length`x with the chain aid; val.jsonl, `length`x from the validation stream) and the shared in-window base
    (hybrid/training/recall.py's stage 1, trained once, here), and the trials' config: the recall recipe's model
    and optimiser (docs/recall.md) starting from the base, validated every `grace_steps` steps."""
    if storage.at(output_dir).stages:  # not a folder of this machine
        raise ConfigError(
            f"tune.objective=recall: tune.output_dir={output_dir} must be a local folder (the recall "
            f"data and the base are made on this machine)"
        )
    o = tcfg.recall
    task = RECALL_TASKS[o.task]
    recipe = rc.RecallRecipe(tasks=[task], base_steps=o.base_steps, base_rounds=1, val_examples=o.eval_examples)
    folder = Path(output_dir) / "recall"
    max_length = max(2, o.length) * recipe.segment_length
    mix = {1: 1.0, 2: 1.0, o.length: 2.0} if o.length > 2 else {1: 1.0, max(2, o.length): 1.0}
    say(
        f"recall objective: {o.task} at {o.length}x the window; the shared base ({o.base_steps} in-window steps) "
        f"in {folder}"
    )
    examples = rc.training_examples(
        recipe,
        -(-o.train_examples // recipe.batch_size),
        mix,
        o.seed * 7919 + 2,
        chain_separator=recipe.chain_separator,
    )
    train_file, val_file = folder / "train.jsonl", folder / "val.jsonl"
    atomic_write_jsonl(
        train_file,
        [e.record() for e in examples[: o.train_examples]]
        + rc.vocabulary_records(examples, recipe.segment_length, o.seed),
    )
    atomic_write_jsonl(
        val_file, [e.record() for e in rc.eval_examples(recipe, task, o.length, o.eval_examples, o.seed, "val")]
    )
    trained = rc.train_base(recipe, base, folder, o.seed, max_length, say=say)
    values = rc.stage_values(
        recipe,
        "both",
        folder / "unused",
        train_file,
        tcfg.max_iters,
        o.seed + 1,
        max_length,
        init_from=trained.checkpoint,
    )
    values.update(
        {
            "data.validation": str(val_file),
            "train.eval_every": tcfg.grace_steps,
            "train.log_every": max(1, tcfg.grace_steps),
            "train.resume": "auto",
        }
    )
    for key in ("train.output_dir", "train.max_iters", *tcfg.space):
        values.pop(key, None)
    return with_values(base, values, where="tune.objective=recall")
