"""The long-context recall recipe (docs/recall.md): synthetic IO pairs whose answer lies beyond the attention window
(hybrid/data/recall_tasks.py), a memory-free base trained in-window, a stage per memory variant, and scoring —
shared by `hybrid bench recall` and `hybrid tune tune=recall`.

    stage 1   the memory-free base, trained on 1x examples (the tasks and the chain aid as data) through
              `hybrid.training.train.train`, in rounds of `base_steps` (each round starts from the last one's
              weights), until its in-window key-value exact match on the validation stream reaches `base_bar` or
              `base_rounds` rounds are spent; the result says which (`base_learning_rate` and
              `base_chain_separator`: stage 1's own peak learning rate and chain-link separator chance)
    stage 2   per variant: `train.init_from=<base>`, the memory parameters fresh (read gates opened to
              `model.memory_gate_init` / `model.external_gate_init`), `steps` steps on the length mix (the tasks
              alike or by `stage2_weights`); with `stage2_inits` > 1 from several training seeds, the one best on
              validation kept
    scoring   per example, the argmax at every output position in one teacher-forced forward (greedy decoding's
              tokens as long as it stays on the reference): exact match of the whole output (key echo, value,
              end-of-text) and of the value words alone (the key echo is free); RULER's score on those argmax words
              (the fraction of the reference strings present) and, for qa1-qa3, BABILong's label-set verdict; the
              controls (the value edited in the haystack, the haystack of another example) score the answer memory
              would then give (`answering`)

Every run is a `hybrid train` run on a config built from `base` (the caller's defaults) with the recipe's keys set
(`stage_values`), in-process (`train.num_workers=0`)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybrid.config.recipe import RecipeConfig, with_values
from hybrid.core.errors import HybridError
from hybrid.core.io import atomic_write_jsonl
from hybrid.data import recall_tasks as rt
from hybrid.data.encode import collate, encode_pairs
from hybrid.data.tokenizer import TextTokenizer
from hybrid.memory import store_factory
from hybrid.models.modeling import scored_labels
from hybrid.training import checkpoints as ckpt_io
from hybrid.training.train import train

VARIANTS = {
    "none": {"use_internal_memory": False, "use_external_memory": False},
    "internal": {"use_internal_memory": True, "use_external_memory": False},
    "external": {"use_internal_memory": False, "use_external_memory": True},
    "both": {"use_internal_memory": True, "use_external_memory": True},
}

# The IO-pair template of `hybrid train`: input <|sep|> output <|endoftext|> - two tokens the generators leave room
# for, so that an example of n segments is exactly n * segment_length tokens (no BOS is added).
TEMPLATE_SUFFIX = 2


@dataclass
class RecallRecipe:
    """How the variants are trained (the bench's `bench.<key>` overrides and `model.<key>` set these)."""

    segment_length: int = 32
    tasks: list[str] = field(default_factory=lambda: list(rt.TASKS))
    base_steps: int = 1500  # stage 1, one round: in-window only
    base_bar: float = 0.9  # stage 1 passes when in-window key-value exact match on validation reaches this
    base_rounds: int = 5  # stage 1: at most this many rounds (stops at the bar)
    # Stage 1 from this many initialisations (each its own rounds), keeping the one with the best mean in-window
    # exact match on validation over the tasks some init learned (pick_init): best-of-N, for circuits that form on
    # some inits and not others.
    base_inits: int = 1
    steps: int = 1500  # stage 2, per variant: the length curriculum
    # Stage 2 from this many training seeds per variant, keeping the one with the best mean validation exact match
    # over the (task, length) cells some try learned (pick_init; the bench's `val_lengths`): best-of-N for routes
    # that form on some training runs and not others. Every variant gets the same number of tries.
    stage2_inits: int = 1
    batch_size: int = 32
    learning_rate: float = 1e-3
    # Stage 1's peak learning rate (None: `learning_rate`); chosen on validation: docs/recall.md, Stage 1.
    base_learning_rate: float | None = 0.002
    warmup: int = 100
    # Stage-2 length mix {segments: weight} of the training file (the curriculum as data); in-window examples stay
    # in the mix. data.bucket_by_length=true draws every batch from one length.
    length_mix: dict[int, float] = field(default_factory=lambda: {1: 1.0, 2: 1.0, 4: 2.0})
    # Stage 2's task mix {task or training aid: weight}; one left out weighs 1 (empty: every one alike), a weighted
    # task the run does not train is ignored.
    stage2_weights: dict[str, float] = field(default_factory=dict)
    # Training draws each key-value example's number of pairs from this range (evaluation always uses 8).
    train_kv_pairs: list[int] = field(default_factory=lambda: [1, 8])
    train_aids: list[str] = field(default_factory=lambda: ["chain"])  # recall_tasks.chain_example
    # Stage 2: the chance that a chain link ends with `,`; stage 1: `base_chain_separator` (1.0: always separated).
    chain_separator: float = 0.5
    base_chain_separator: float = 1.0
    # Stage 2: chain links drawn from the digits too, not only keys and values (stage 1 keeps its letters).
    chain_digits: bool = False
    # Two-hop facts answered with their support first (`where is apple` -> `mary kitchen`), in training and scoring
    # alike: each answer word one lookup (recall_tasks.facts_example). Off: the default run's facts task.
    facts_support: bool = False
    # With facts_support: the answer also starts with the asked object (`where apple` -> `apple mary kitchen`), so
    # the holder is predicted at the object, as key-value's value is at its echoed key (recall_tasks.facts_example).
    facts_echo: bool = False
    val_examples: int = 200  # validation examples per task and length
    model: dict[str, Any] = field(
        default_factory=lambda: {
            "family": "llama",
            "hidden_size": 64,
            "intermediate_size": 256,
            # 3 layers, retrieval at the last two: passkey on every seed (docs/recall.md, Three layers)
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "memory_slots": 8,
            "num_mem_heads": 4,
            "chunk_size": 1,
            "retrieval_k": 8,
            "retrieval_layers": [1, 2],
            "external_memory_size": 1024,
            "max_position_embeddings": 64,
            # the internal read gate opened at the start of stage 2 (a closed gate gets almost no gradient)
            "memory_gate_init": 0.5,
            "external_gate_init": 0.0,
        }
    )

    def check(self, where: str = "bench") -> None:
        if (
            not isinstance(self.length_mix, dict)
            or not self.length_mix
            or not all(
                isinstance(n, int) and n >= 1 and isinstance(w, (int, float)) and w > 0
                for n, w in self.length_mix.items()
            )
        ):
            raise HybridError(
                f"{where}.length_mix: expected {{segments: weight}} with positive integers and weights, "
                f"got {self.length_mix!r}"
            )
        for name in ("steps", "base_steps", "base_rounds", "base_inits", "stage2_inits", "batch_size", "val_examples"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise HybridError(f"{where}.{name}: must be a positive integer, got {getattr(self, name)!r}")
        if not 0 <= self.base_bar <= 1:
            raise HybridError(f"{where}.base_bar: an exact-match level in [0, 1], got {self.base_bar!r}")
        lr = self.base_learning_rate
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0):
            raise HybridError(f"{where}.base_learning_rate: a positive learning rate or null, got {lr!r}")
        for name in ("chain_digits", "facts_support", "facts_echo"):
            if not isinstance(getattr(self, name), bool):
                raise HybridError(f"{where}.{name}: true or false, got {getattr(self, name)!r}")
        for aid in self.train_aids:
            if aid not in rt.TRAINING_AIDS:
                raise HybridError(
                    f"{where}.train_aids: unknown training aid {aid!r} (choose from {', '.join(rt.TRAINING_AIDS)})"
                )
        w = self.stage2_weights
        if not isinstance(w, dict) or not all(
            not isinstance(v, bool) and isinstance(v, (int, float)) and v >= 0 for v in w.values()
        ):
            raise HybridError(f"{where}.stage2_weights: expected {{task: weight}} with weights >= 0, got {w!r}")
        for t in w:  # a task this run leaves out may keep its weight (the default's passkey with --tasks kv,...)
            if t not in rt.ALL_TASKS + rt.TRAINING_AIDS:
                raise HybridError(
                    f"{where}.stage2_weights: unknown task or training aid {t!r} "
                    f"(choose from {', '.join(rt.ALL_TASKS + rt.TRAINING_AIDS)})"
                )
        if w and not any(w.get(t, 1) > 0 for t in self.tasks + self.train_aids):
            raise HybridError(f"{where}.stage2_weights: every weight is 0")
        if self.facts_echo and not self.facts_support:
            raise HybridError(f"{where}.facts_echo: needs {where}.facts_support=true (the echo is the support's key)")
        for t in self.tasks:
            if t not in rt.ALL_TASKS:
                raise HybridError(f"{where}.tasks: unknown task {t!r} (choose from {', '.join(rt.ALL_TASKS)})")


def layout() -> rt.Layout:
    return rt.Layout(prefix=0, suffix=TEMPLATE_SUFFIX, echo_key=True)


def training_examples(
    r: RecallRecipe,
    steps: int,
    lengths: dict[int, float],
    seed: int,
    chain_separator: float = 1.0,
    chain_digits: bool = False,
    task_weights: dict[str, float] | None = None,
) -> list[rt.Example]:
    """steps x batch_size fresh examples (tasks and training aids mixed, alike or by `task_weights`) from seeded
    train streams, each example's length drawn from `lengths` ({segments: weight}): the curriculum as a data mix."""
    rng = random.Random(seed)
    streams: dict = {}
    out = []
    kinds = r.tasks + r.train_aids
    weights = [task_weights.get(t, 1.0) for t in kinds] if task_weights else None
    for _ in range(steps * r.batch_size):
        n = rng.choices(list(lengths), weights=list(lengths.values()))[0]
        # no weights: rng.choice, the draw every committed run was made with
        task = rng.choices(kinds, weights=weights)[0] if weights else rng.choice(kinds)
        if (task, n) not in streams:
            options = task_options(r, task)
            if task == "kv":
                options["n_pairs"] = tuple(r.train_kv_pairs)
            if task == "chain" and chain_separator != 1.0:
                options["separator"] = chain_separator
            if task == "chain" and chain_digits:
                options["digits"] = True
            streams[(task, n)] = rt.generate(task, n, 10**9, r.segment_length, seed, "train", layout(), **options)
        out.append(next(streams[(task, n)]))
    return out


def vocabulary_records(examples: list, segment_length: int, seed: int, tasks: Sequence[str] = rt.TASKS) -> list[dict]:
    """`train.tokenizer=word` builds its vocabulary from the training words. A short run may not see every word of
    the benchmark's vocabulary, and a word it lacks would be <|unk|> at test time: the missing words get a few 1x
    examples of their own (filler to fill the segment, `.` as output). A full-size run sees every word."""
    seen = {w for ex in examples for w in (ex.input + " " + ex.output).split()}
    missing = [w for w in rt.vocabulary(tasks) if w not in seen]
    rng = random.Random(seed)
    room = segment_length - TEMPLATE_SUFFIX - 1  # input words of one 1x example
    records = []
    for i in range(0, len(missing), room):
        words = missing[i : i + room]
        words += rt._filler(rng, room - len(words))
        records.append({"input": " ".join(words), "output": ".", "task": "vocabulary", "segments": 1})
    return records


def task_options(r: RecallRecipe, task: str) -> dict[str, Any]:
    """The generator options a task takes from the recipe in training and scoring alike."""
    if task != "facts" or not r.facts_support:
        return {}
    return {"support": True, "echo": True} if r.facts_echo else {"support": True}


def eval_examples(r: RecallRecipe, task: str, n: int, count: int, seed: int, split: str) -> list[rt.Example]:
    return list(rt.generate(task, n, count, r.segment_length, seed, split, layout(), **task_options(r, task)))


# -- training ---------------------------------------------------------------------------------------------------------
def stage_values(
    r: RecallRecipe,
    variant: str,
    output_dir: Path,
    data: Path,
    steps: int,
    seed: int,
    max_length: int,
    init_from: Path | None = None,
    learning_rate: float | None = None,
) -> dict[str, Any]:
    """The training-config keys of one stage: the model of `variant`, the recipe's optimizer settings
    (`learning_rate`: another peak learning rate than the recipe's)."""
    model = dict(r.model)
    model.update(VARIANTS[variant])
    model["segment_length"] = r.segment_length
    model.setdefault("num_key_value_heads", model.get("num_attention_heads", 4))
    values = {f"model.{k}": v for k, v in model.items()}
    values.update(
        {
            "model.pretrained": None,
            "data.train": str(data),
            "data.validation": None,
            "data.bucket_by_length": True,
            "data.max_length": max_length,
            "train.tokenizer": "word",
            "train.num_workers": 0,
            "train.precision": "fp32",
            "train.resume": "none",
            "train.output_dir": str(output_dir),
            "train.max_iters": steps,
            "train.batch_size": r.batch_size,
            "train.gradient_accumulation_steps": 1,
            "train.learning_rate": learning_rate or r.learning_rate,
            "train.warmup_iters": r.warmup,
            "train.min_lr_ratio": 0.1,
            "train.weight_decay": 0.01,
            "train.beta1": 0.9,
            "train.beta2": 0.98,
            "train.grad_clip": 1.0,
            "train.seed": seed,
            "train.eval_every": steps,
            "train.log_every": max(1, steps // 8),
            "train.keep_last": 1,
            "train.max_minutes": None,
            "train.init_from": str(init_from) if init_from else None,
        }
    )
    return values


def train_stage(base: RecipeConfig, values: dict[str, Any], where: str = "recall") -> Path:

    result = train(with_values(base, values, where=where), quiet=True)
    if result.checkpoint is None:
        raise HybridError(f"{where}: training wrote no checkpoint in {result.output_dir}")
    return Path(result.checkpoint)


@dataclass
class BaseResult:
    checkpoint: Path
    val_kv_1x: list[float]  # in-window key-value exact match on validation after each round
    passed: bool  # the last round reached the bar
    # with base_inits > 1: every init's {"val_kv_1x", "passed", "val_1x"}, the index of the one kept and the tasks
    # its pick compared
    inits: list[dict[str, Any]] = field(default_factory=list)
    chosen: int = 0
    scored: list[str] = field(default_factory=list)  # the tasks the pick compared (pick_init)

    @property
    def rounds(self) -> int:
        return len(self.val_kv_1x)


def val_in_window(r: RecallRecipe, checkpoint: Path, seed: int) -> dict[str, float]:
    """Every task of the recipe in the window (1x), exact match on the validation stream."""
    out = {}
    with loaded(checkpoint) as (model, tokenizer):
        for task in r.tasks:
            out[task] = round(
                score(model, tokenizer, eval_examples(r, task, 1, r.val_examples, seed, "val")).exact_match, 4
            )
    return out


def train_base(
    r: RecallRecipe, base: RecipeConfig, work: Path, seed: int, max_length: int, say: Callable[[str], None] = print
) -> BaseResult:
    """Stage 1: the memory-free model trained in-window until key-value on validation reaches the bar (see the
    module docstring); with `base_inits` > 1, that from each of several initialisations, keeping the one whose
    mean in-window exact match on validation over the tasks some init learned is highest (pick_init). Returns its
    checkpoint (weights + the word-level tokenizer the variants inherit)."""
    examples = training_examples(r, r.base_steps, {1: 1.0}, seed * 7919 + 1, chain_separator=r.base_chain_separator)
    data = work / "base_train.jsonl"
    atomic_write_jsonl(
        data, [e.record() for e in examples] + vocabulary_records(examples, r.segment_length, seed, r.tasks)
    )
    val = eval_examples(r, "kv", 1, r.val_examples, seed, "val") if "kv" in r.tasks else []
    if r.base_inits == 1:
        return _train_base_init(r, base, work, data, val, seed, max_length, say)
    results, records = [], []
    for i in range(r.base_inits):
        say(f"  base init {i + 1} of {r.base_inits}")
        # the first init is the single-init run's (same seeds, same folders); the others start elsewhere
        res = _train_base_init(
            r, base, work / f"init{i}" if i else work, data, val, seed + 100_003 * i, max_length, say
        )
        per_task = val_in_window(r, res.checkpoint, seed)
        results.append(res)
        records.append({"val_kv_1x": res.val_kv_1x, "passed": res.passed, "val_1x": per_task})
        say(
            f"  base init {i + 1}: in the window, validation: " + ", ".join(f"{t} {v:.2f}" for t, v in per_task.items())
        )
    levels = {
        t: sum(map(rt.mentioned_chance, ex)) / len(ex)
        for t in r.tasks
        for ex in [eval_examples(r, t, 1, r.val_examples, seed, "val")]
    }
    best, scored, mean = pick_init([rec["val_1x"] for rec in records], levels)
    left_out = [t for t in r.tasks if t not in scored]
    say(
        f"  base: init {best + 1} kept (mean in-window validation {mean:.3f} over {', '.join(scored)}"
        + (f"; left out, learned by no init: {', '.join(left_out)})" if left_out else ")")
    )
    kept = results[best]
    return BaseResult(kept.checkpoint, kept.val_kv_1x, kept.passed, records, best, scored)


# A task counts as learned by an init when its in-window exact match beats the task's "mentioned" level (answering
# with one of the candidates the input mentions) by more than this: 3 standard errors of a 1/3 level at the default
# 200 validation examples.
LEARNED_MARGIN = 0.1


def pick_init(val_1x: list[dict[str, float]], levels: dict[str, float]) -> tuple[int, list[str], float]:
    """Best-of-N's choice (stage 1's inits on in-window tasks, stage 2's tries on (task, length) cells), from
    validation exact match per task: the highest mean over the tasks some init has learned (see LEARNED_MARGIN;
    every task when none is) - a task no init learned sits at its shortcut level on each, and its noise would decide
    (docs/recall.md, Best-of-N). Ties keep the earlier init. Returns (the kept init's index, the tasks scored, its
    mean)."""
    tasks = list(val_1x[0])
    scored = [t for t in tasks if any(v[t] > levels.get(t, 0.0) + LEARNED_MARGIN for v in val_1x)] or tasks
    means = [sum(v[t] for t in scored) / len(scored) for v in val_1x]
    best = max(range(len(val_1x)), key=lambda i: (means[i], -i))
    return best, scored, means[best]


def _train_base_init(
    r: RecallRecipe,
    base: RecipeConfig,
    work: Path,
    data: Path,
    val: list[rt.Example],
    seed: int,
    max_length: int,
    say: Callable[[str], None],
) -> BaseResult:
    """One initialisation's rounds (training seed `seed`), until the key-value bar or `base_rounds`."""
    scores: list[float] = []
    checkpoint: Path | None = None
    for round_ in range(r.base_rounds):
        checkpoint = train_stage(
            base,
            stage_values(
                r,
                "none",
                work / f"base{round_}",
                data,
                r.base_steps,
                seed + 7 * round_,
                max_length,
                init_from=checkpoint,
                learning_rate=r.base_learning_rate,
            ),
        )
        if not val:
            return BaseResult(checkpoint, [], True)
        with loaded(checkpoint) as (model, tokenizer):
            scores.append(score(model, tokenizer, val).exact_match)
        say(f"  base round {round_ + 1}: in-window key-value on validation {scores[-1]:.2f} (bar {r.base_bar})")
        if scores[-1] >= r.base_bar:
            break
    assert checkpoint is not None
    return BaseResult(checkpoint, scores, not val or scores[-1] >= r.base_bar)


def stage2_data(r: RecallRecipe, work: Path, seed: int) -> Path:
    data = work / "stage2_train.jsonl"
    atomic_write_jsonl(
        data,
        [
            e.record()
            for e in training_examples(
                r,
                r.steps,
                r.length_mix,
                seed * 7919 + 2,
                chain_separator=r.chain_separator,
                chain_digits=r.chain_digits,
                task_weights=r.stage2_weights,
            )
        ],
    )
    return data


def train_variant(
    r: RecallRecipe,
    base: RecipeConfig,
    variant: str,
    base_checkpoint: Path,
    work: Path,
    data: Path,
    seed: int,
    max_length: int,
    attempt: int = 0,
) -> Path:
    """Stage 2: `train.init_from=<base>`, `steps` steps on the length mix (`attempt` > 0: another training seed, in
    its own folder, for best-of-N). Returns the final checkpoint."""
    folder = work / variant if attempt == 0 else work / f"{variant}_try{attempt + 1}"
    return train_stage(
        base,
        stage_values(
            r, variant, folder, data, r.steps, seed + 1 + 100_003 * attempt, max_length, init_from=base_checkpoint
        ),
    )


def train_variant_best(
    r: RecallRecipe,
    base: RecipeConfig,
    variant: str,
    base_checkpoint: Path,
    work: Path,
    data: Path,
    seed: int,
    max_length: int,
    vals: dict[tuple[str, int], list[rt.Example]],
    say: Callable[[str], None] = print,
) -> tuple[Path, dict[str, Any]]:
    """Stage 2 from `stage2_inits` training seeds (the first is `train_variant`'s run; one try is the plain run),
    each scored on the validation examples `vals` {(task, length): examples}; keeps the one pick_init prefers over
    the (task, length) cells. Returns its checkpoint and {"tries": [{task: {length: exact}}], "chosen", "scored"}."""
    tell = say if r.stage2_inits > 1 else (lambda _: None)
    tries: list[dict[str, dict[str, float]]] = []
    checkpoints = []
    for i in range(r.stage2_inits):
        checkpoints.append(train_variant(r, base, variant, base_checkpoint, work, data, seed, max_length, attempt=i))
        with loaded(checkpoints[-1]) as (model, tokenizer):
            cells: dict[str, dict[str, float]] = {}
            for (t, n), ex in vals.items():
                cells.setdefault(t, {})[str(n)] = score(model, tokenizer, ex).exact_match
        tries.append(cells)
        tell(
            f"  [{variant}] stage 2 try {i + 1} of {r.stage2_inits}, validation: "
            + ", ".join(f"{t} {n}x {v:.3f}" for t, by_n in cells.items() for n, v in by_n.items())
        )
    flat = [{f"{t} {n}x": v for t, by_n in cells.items() for n, v in by_n.items()} for cells in tries]
    levels = {f"{t} {n}x": sum(map(rt.mentioned_chance, ex)) / len(ex) for (t, n), ex in vals.items()}
    best, scored, mean = pick_init(flat, levels)
    tell(f"  [{variant}] stage 2: try {best + 1} kept (mean validation {mean:.3f} over {', '.join(scored)})")
    return checkpoints[best], {"tries": tries, "chosen": best, "scored": scored}


# -- scoring ----------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def loaded(checkpoint: Path, memory: Any = None, **model_overrides) -> Iterator[tuple[Any, Any]]:
    """(model, tokenizer) of a checkpoint on the CPU, in eval mode; `memory` (a MemoryConfig) picks the external
    store (default: the exact torch store); `model_overrides` change memory fields (e.g. external_memory_size)."""

    model = ckpt_io.load_model(checkpoint, **model_overrides)
    if memory is not None:
        c = model.config
        model.store_factory = store_factory(memory, c.chunks_capacity, c.chunk_size, False)
    model.eval()
    yield model, TextTokenizer.load(checkpoint)


@dataclass
class Scores:
    """Per example: whether the whole output matched, whether its value words matched, RULER's score (the fraction
    of reference strings present in the output) and, for the BABILong-like tasks, BABILong's label-set verdict."""

    exact: list[bool]
    value: list[bool]
    ruler: list[float] = field(default_factory=list)
    label_set: list[bool] = field(default_factory=list)  # qa1-qa3 only

    @property
    def exact_match(self) -> float:
        return sum(self.exact) / max(1, len(self.exact))

    @property
    def value_accuracy(self) -> float:
        return sum(self.value) / max(1, len(self.value))

    @property
    def ruler_score(self) -> float:
        return sum(self.ruler) / max(1, len(self.ruler))

    @property
    def label_set_accuracy(self) -> float | None:
        return sum(self.label_set) / len(self.label_set) if self.label_set else None


def value_words(example: rt.Example) -> list[str]:
    """The words of the answer that need the haystack (the echo of the question's key is free)."""
    return example.output.split()[rt.echo_words(example) :]


def score(model, tokenizer, examples: Sequence[rt.Example], batch_size: int = 32) -> Scores:
    """Teacher-forced argmax at every output position (see the module docstring), in batches of one length."""
    import torch

    records = [e.record() for e in examples]
    max_length = max(len(e.input.split()) + len(e.output.split()) for e in examples) + TEMPLATE_SUFFIX
    enc = encode_pairs(tokenizer, records, max_length)
    if enc.counts.get("input_truncated_left"):
        raise HybridError("recall: test inputs truncated (the example is longer than the scoring window)")
    exact, value, ruler, label_set = [], [], [], []
    with torch.no_grad():
        for b in range(0, len(examples), batch_size):
            rows = list(zip(enc.input_ids[b : b + batch_size], enc.prompt_lengths[b : b + batch_size]))
            ids, labels, mask = collate(rows, tokenizer.pad_id)
            logits = model(ids, attention_mask=mask).logits
            target = scored_labels(labels)
            pred = logits.argmax(-1)
            for k in range(len(rows)):
                positions = (target[k] != -100).nonzero().flatten()
                got = pred[k, positions].tolist()
                want = target[k, positions].tolist()
                ex = examples[b + k]
                exact.append(got == want)
                n_values = len(value_words(ex))
                start = len(ex.output.split()) - n_values  # value words follow the echo; end-of-text is last
                value.append(got[start : start + n_values] == want[start : start + n_values])
                # the output as words: the argmax at each output position (see the module docstring)
                output = [tokenizer.tokenizer.id_to_token(i) for i in got]
                ruler.append(rt.ruler_score(output, rt.references(ex)))
                if ex.task in rt.BABILONG_TASKS:
                    label_set.append(rt.label_set_correct(output, ex.output, rt.question_words(ex)))
    return Scores(exact, value, ruler, label_set)


# -- controls ---------------------------------------------------------------------------------------------------------
def answering(example: rt.Example, values: Sequence[str]) -> rt.Example:
    """The example with its value words replaced by `values` (the key echo kept): a control scores the answer that a
    model reading memory would give. Teacher forcing must feed *that* answer: a passkey digit is predicted from the
    digit before it, and feeding the original digits after an edit would break the chain where greedy decoding, which
    feeds the model's own digits, would follow the edit."""
    words = example.output.split()
    start = len(words) - len(value_words(example))
    return rt.Example(example.input, " ".join(words[:start] + list(values)), example.task, example.n)


def edited_haystack(example: rt.Example, rng: random.Random) -> tuple[rt.Example, list[str]]:
    """The example with the asked value changed where the haystack states it (key-value: the value after the
    asked key; passkey: the digits); returns it (with its original answer) and the new value words, which a model
    that reads memory follows (score `answering(example, new)`)."""
    words = example.input.split()
    if example.task == "kv":  # the asked key's first occurrence is its pair (the question comes last)
        pos = words.index(words[-1])
        new = [rng.choice([v for v in rt.VALUES if v != words[pos + 1]])]
        words[pos + 1] = new[0]
    elif example.task == "passkey":  # the first `the pass key is` states it (the question's comes last)
        pos = next(i for i in range(len(words)) if words[i : i + 4] == ["the", "pass", "key", "is"])
        old = words[pos + 4 : pos + 4 + rt.PASSKEY_DIGITS]
        new = old
        while new == old:
            new = [rng.choice(rt.DIGITS) for _ in old]
        words[pos + 4 : pos + 4 + rt.PASSKEY_DIGITS] = new
    else:
        raise HybridError(f"recall: no edit control for task {example.task!r}")
    return rt.Example(" ".join(words), example.output, example.task, example.n), new


def swapped_haystack(
    example: rt.Example, donor: rt.Example, segment_length: int
) -> tuple[rt.Example, list[str] | None]:
    """The example's last segment (filler, question) after the haystack of `donor` (same task and length): the
    example's own answer is no longer in its input; returns it and the donor's answer to the same question when
    the donor's haystack has one (passkey: always; key-value: when the donor has the asked key)."""
    words, donor_words = example.input.split(), donor.input.split()
    cut = (example.n - 1) * segment_length  # words before the last segment (no prefix token)
    new = rt.Example(" ".join(donor_words[:cut] + words[cut:]), example.output, example.task, example.n)
    if example.task == "passkey":
        return new, donor.output.split()
    if example.task == "kv":
        key = words[-1]
        hay = donor_words[:cut]
        pos = [i for i in range(len(hay) - 1) if hay[i] == key and hay[i + 1] in rt.VALUES]
        return new, ([hay[pos[0] + 1]] if pos else None)
    return new, None
