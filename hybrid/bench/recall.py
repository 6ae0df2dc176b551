"""`hybrid bench recall`: does the memory help? Long-context recall across four model variants (issue #7).

Four variants of one tiny model - no memory, internal memory only, external memory only, both - are trained for
the same number of steps through `hybrid train`'s `train(cfg)` (in-process, train.num_workers=0) on the same
synthetic IO pairs written as JSONL (hybrid/bench/recall_tasks.py: key-value recall, passkey,
two-hop facts) and evaluated by exact match at 1x, 4x and 16x `segment_length`. The attention window is one
segment, so at 4x and 16x the answer lies outside every window the question can see. Evaluation is `hybrid eval`'s
`evaluate()` (teacher-forced exact match: greedy exact match token for token, in batched forwards).

The recipe (docs/recall.md says why): a word-level vocabulary (one token per word), external memory with
chunk_size 1 at the last layer, and a curriculum over lengths - in-window examples first so that the induction
circuit forms where the answer is visible, then longer examples mixed in so that the same circuit learns to find
its keys in memory (RMT trained with a curriculum over segments for the same reason).

Heavy imports (torch, matplotlib, rich) happen inside functions.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hybrid.cli import non_negative_int, positive_int
from hybrid.core.errors import HybridError

VARIANTS = {
    "none": {"use_internal_memory": False, "use_external_memory": False},
    "internal": {"use_internal_memory": True, "use_external_memory": False},
    "external": {"use_internal_memory": False, "use_external_memory": True},
    "both": {"use_internal_memory": True, "use_external_memory": True},
}
VARIANT_TITLES = {"none": "no memory", "internal": "internal only", "external": "external only", "both": "both"}


@dataclass
class Settings:
    """Everything a run depends on (written into the JSON, so a result names its recipe)."""

    segment_length: int = 32
    lengths: list[int] = field(default_factory=lambda: [1, 4, 16])
    tasks: list[str] = field(default_factory=lambda: ["kv", "passkey", "facts"])
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    base_steps: int = 1500  # stage 1, shared: in-window only
    steps: int = 1500  # stage 2, per variant: the length curriculum
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup: int = 100
    # Stage-2 length mix {segments: weight} of the training file (the curriculum as data: `hybrid train` shuffles
    # one file, so phases cannot be expressed); in-window examples stay in the mix. data.bucket_by_length=true
    # draws every batch from one length.
    length_mix: dict[int, float] = field(default_factory=lambda: {1: 1.0, 2: 1.0, 4: 2.0})
    # Training draws each key-value example's number of pairs from this range (evaluation always uses 8):
    # with one or two pairs the lookup is easy and its gradient strong, which starts the induction circuit.
    train_kv_pairs: list[int] = field(default_factory=lambda: [1, 8])
    # Training aids mixed into the training batches (not evaluated): see recall_tasks.chain_example.
    train_aids: list[str] = field(default_factory=lambda: ["chain"])
    # Stage 2: the chance that a chain link ends with `,` (recall_tasks.chain_example). Stage 1 always separates
    # links (unambiguous while the circuit forms); in stage 2 half the links sit side by side, as key-value pairs
    # do - measured: external-only key-value at 4x 0.86 -> 0.92 (docs/recall.md).
    chain_separator: float = 0.5
    # Opening of the memory read gates at the start of stage 2 (tanh of the gate parameter). The model starts
    # them at 0 - a no-op, right for a pretrained base. The internal memory's gate then gets a gradient
    # proportional to a read that is itself ~0 (weights of std 0.02), and nothing else gets one until it opens:
    # measured here, internal-only reached 0.17-0.19 train exact match at 4x with 0 and passkey 0.69 / key-value
    # 0.31 at 4x with 0.5. The external gate opens fast from 0 (its read is full-size), so it stays at 0.
    internal_gate_init: float = 0.5
    external_gate_init: float = 0.0
    eval_examples: int = 100
    seed: int = 0
    model: dict[str, Any] = field(default_factory=lambda: {
        "family": "llama", "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "memory_slots": 8, "num_mem_heads": 4, "chunk_size": 1, "retrieval_k": 8,
        "retrieval_layers": [1], "external_memory_size": 1024, "max_position_embeddings": 64})


QUICK = dict(base_steps=200, steps=100, eval_examples=16, lengths=[1, 4], batch_size=16, warmup=10)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a smoke run (minutes): few steps, 1x and 4x only")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="draw accuracy vs length, one line per variant")
    p.add_argument("--markdown", metavar="FILE.md", help="write the table as markdown")
    p.add_argument("--base-steps", type=positive_int,
                   help="stage 1: in-window steps of the base the variants share (default 1500; --quick 200)")
    p.add_argument("--steps", type=positive_int,
                   help="stage 2: length-curriculum steps per variant (default 1500; --quick 100)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the data and the weights (default: %(default)s)")
    p.add_argument("--variants", help=f"comma-separated subset of {','.join(VARIANTS)}")
    p.add_argument("--tasks", help="comma-separated subset of kv,passkey,facts")
    p.add_argument("--lengths", help="comma-separated lengths in segments (default 1,4,16)")
    p.add_argument("--eval-examples", type=positive_int, help="test examples per task and length (default 100)")
    p.add_argument("--threads", type=non_negative_int, default=1,
                   help="torch CPU threads (default %(default)s: the tiny model gains nothing from more, and on a "
                        "busy machine extra threads make each step many times slower)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="model.<key>=value or bench.<key>=value (e.g. model.hidden_size=128 bench.learning_rate=1e-3)")


def _csv(text: str | None, cast=str) -> list | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return [cast(t) for t in items]
    except ValueError:
        raise HybridError(f"expected a comma-separated list, got {text!r}") from None


def settings_from_args(args: argparse.Namespace) -> Settings:
    import yaml

    from hybrid.bench.recall_tasks import TASKS

    s = Settings()
    if args.quick:
        for key, value in QUICK.items():
            setattr(s, key, value)
    s.seed = args.seed
    if args.steps is not None:
        s.steps = args.steps
    if args.base_steps is not None:
        s.base_steps = args.base_steps
    if args.eval_examples is not None:
        s.eval_examples = args.eval_examples
    s.variants = _csv(args.variants) or s.variants
    s.tasks = _csv(args.tasks) or s.tasks
    s.lengths = _csv(args.lengths, int) or s.lengths
    for v in s.variants:
        if v not in VARIANTS:
            raise HybridError(f"--variants: unknown variant {v!r} (choose from {', '.join(VARIANTS)})")
    for t in s.tasks:
        if t not in TASKS:
            raise HybridError(f"--tasks: unknown task {t!r} (choose from {', '.join(TASKS)})")
    for n in s.lengths:
        if n < 1:
            raise HybridError(f"--lengths: {n} is not a positive number of segments")
    for item in args.overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise HybridError(f"override {item!r}: expected key=value")
        value = yaml.safe_load(raw) if raw else raw
        group, _, name = key.partition(".")
        if group == "model" and name:
            s.model[name] = value
        elif group == "bench" and name and name in Settings.__dataclass_fields__ and name != "model":
            setattr(s, name, value)
        else:
            raise HybridError(f"{key}: unknown key (use model.<key> or bench.<key>, bench keys: "
                              f"{', '.join(k for k in Settings.__dataclass_fields__ if k != 'model')})")
    for name in ("internal_gate_init", "external_gate_init"):
        if not -1 < getattr(s, name) < 1:
            raise HybridError(f"bench.{name}: must lie in (-1, 1) (it is tanh of the gate), got {getattr(s, name)}")
    if not isinstance(s.length_mix, dict) or not s.length_mix or not all(
            isinstance(n, int) and n >= 1 and isinstance(w, (int, float)) and w > 0 for n, w in s.length_mix.items()):
        raise HybridError(f"bench.length_mix: expected {{segments: weight}} with positive integers and weights, "
                          f"got {s.length_mix!r}")
    if s.steps < 1 or s.base_steps < 1 or s.batch_size < 1 or s.eval_examples < 1:
        raise HybridError("--steps, --base-steps, --eval-examples and bench.batch_size must be positive")
    return s


# ----------------------------------------------------------------------------------------------------------
# Data files, configs, and the two stages through `hybrid train` / `hybrid eval`

# The IO-pair template of `hybrid train`: input <|sep|> output <|endoftext|> - two tokens the generators leave room
# for, so that an example of n segments is exactly n * segment_length tokens (no BOS is added).
TEMPLATE_SUFFIX = 2


def _layout():
    from hybrid.bench.recall_tasks import Layout

    return Layout(prefix=0, suffix=TEMPLATE_SUFFIX, echo_key=True)


def write_jsonl(path: Path, records) -> int:
    """Write IO-pair records (one JSON object a line) atomically; returns the count."""
    from hybrid.core.io import atomic_write_text

    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return len(lines)


def training_examples(s: Settings, steps: int, lengths: dict[int, float], seed: int,
                      chain_separator: float = 1.0) -> list:
    """steps x batch_size fresh examples (benchmark tasks and training aids mixed) from seeded streams, each
    example's length drawn from `lengths` ({segments: weight}): the curriculum as a data mix. With
    data.bucket_by_length every batch then holds one length, as the old per-step length draw did."""
    from hybrid.bench import recall_tasks as rt

    rng = random.Random(seed)
    streams: dict = {}
    out = []
    for _ in range(steps * s.batch_size):
        n = rng.choices(list(lengths), weights=list(lengths.values()))[0]
        task = rng.choice(s.tasks + s.train_aids)
        if (task, n) not in streams:
            options = {"n_pairs": tuple(s.train_kv_pairs)} if task == "kv" else {}
            if task == "chain" and chain_separator != 1.0:
                options = {"separator": chain_separator}
            streams[(task, n)] = rt.generate(task, n, 10**9, s.segment_length, seed, "train", _layout(), **options)
        out.append(next(streams[(task, n)]))
    return out


def vocabulary_records(examples: list, segment_length: int, seed: int) -> list[dict]:
    """`train.tokenizer=word` builds its vocabulary from the training words. A short run (--quick, tests) may not
    see every word of the benchmark's vocabulary, and a word it lacks would be <|unk|> at test time: the missing
    words get a few 1x examples of their own (filler to fill the segment, `.` as output). The default run sees
    every word, so this adds nothing there."""
    from hybrid.bench.recall_tasks import _filler, vocabulary

    seen = {w for ex in examples for w in (ex.input + " " + ex.output).split()}
    missing = [w for w in vocabulary() if w not in seen]
    rng = random.Random(seed)
    room = segment_length - TEMPLATE_SUFFIX - 1  # input words of one 1x example
    records = []
    for i in range(0, len(missing), room):
        words = missing[i:i + room]
        words += _filler(rng, room - len(words))
        records.append({"input": " ".join(words), "output": ".", "task": "vocabulary", "segments": 1})
    return records


def train_overrides(s: Settings, variant: str, output_dir: Path, data: Path, steps: int, seed: int,
                    init_from: Path | None = None) -> list[str]:
    """The `hybrid train` overrides of one stage: the model of `variant`, the recipe's optimizer settings."""
    model = dict(s.model)
    model.update(VARIANTS[variant])
    model["segment_length"] = s.segment_length
    model.setdefault("num_key_value_heads", model.get("num_attention_heads", 4))
    over = [f"model.{k}={json.dumps(v)}" for k, v in model.items()]
    over += [
        f"data.train={data}", "data.bucket_by_length=true",
        f"data.max_length={max(s.lengths + list(s.length_mix)) * s.segment_length}",
        "train.tokenizer=word", "train.num_workers=0", "train.precision=fp32", "train.resume=none",
        f"train.output_dir={output_dir}", f"train.max_iters={steps}", f"train.batch_size={s.batch_size}",
        f"train.learning_rate={s.learning_rate}", f"train.warmup_iters={s.warmup}", "train.min_lr_ratio=0.1",
        "train.weight_decay=0.01", "train.beta1=0.9", "train.beta2=0.98", "train.grad_clip=1.0",
        f"train.seed={seed}", f"train.eval_every={steps}", f"train.log_every={max(1, steps // 8)}",
        "train.keep_last=1"]
    if init_from is not None:
        over.append(f"train.init_from={init_from}")
    return over


def _train(overrides: list[str], log=print):
    from hybrid.cli.config import load_config
    from hybrid.training.train import train

    result = train(load_config(overrides).recipe())
    if result.checkpoint is None:
        raise HybridError(f"recall: training wrote no checkpoint in {result.output_dir}")
    return result


def train_base(s: Settings, work: Path, log=print) -> Path:
    """Stage 1, shared by the four variants: the memory-free model trained in-window (1x) through
    `hybrid.training.train.train` so that the lookup (induction) circuit forms where the answer is visible.
    Returns its checkpoint (weights + the word-level tokenizer the variants inherit)."""
    examples = training_examples(s, s.base_steps, {1: 1.0}, s.seed * 7919 + 1)
    data = work / "base_train.jsonl"
    write_jsonl(data, [e.record() for e in examples] + vocabulary_records(examples, s.segment_length, s.seed))
    return _train(train_overrides(s, "none", work / "base", data, s.base_steps, s.seed), log).checkpoint


def gated_init(s: Settings, variant: str, base: Path, dest: Path) -> Path:
    """The checkpoint stage 2 starts from: a copy of the base with the variant's memory read gates added at
    tanh(gate) = bench.internal_gate_init / bench.external_gate_init. `train.init_from` loads every parameter the
    checkpoint has and leaves the others (the memory) at their fresh init, where both gates are 0; training has no
    knob for the gates' initial value, so the bench writes them into the init checkpoint, by parameter name
    (`*.internal_memory.gate`, `*.self_attn.memory_gate`). The other memory parameters stay fresh."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from hybrid.cli.config import load_config
    from hybrid.models import build_model

    gates = {".internal_memory.gate": s.internal_gate_init, ".self_attn.memory_gate": s.external_gate_init}
    if not any(gates.values()):
        return base
    vocab = json.loads((base / "config.json").read_text())["vocab_size"]
    cfg = load_config(train_overrides(s, variant, dest, dest, 1, 0))
    with torch.device("meta"):
        model = build_model(cfg.model, vocab_size=vocab)
    extra = {}
    for name, p in model.named_parameters():
        for suffix, value in gates.items():
            if name.endswith(suffix) and value:
                extra[name] = torch.full(tuple(p.shape), math.atanh(value), dtype=torch.float32)
    if not extra:
        return base
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(base, dest)
    files = sorted(dest.glob("*.safetensors"))
    if len(files) != 1:
        raise HybridError(f"recall: expected one .safetensors file in {base}, found {len(files)}")
    weights = load_file(str(files[0]))
    weights.update(extra)
    save_file(weights, str(files[0]), metadata={"format": "pt"})
    return dest


def train_variant(s: Settings, variant: str, base: Path, work: Path, data: Path, log=print) -> Path:
    """Stage 2: `train.init_from=<base>` (memory parameters fresh, read gates opened per the recipe), `steps`
    steps on the length mix, where the answer is out of the window for n > 1. Returns the final checkpoint."""
    init = gated_init(s, variant, base, work / f"init_{variant}")
    over = train_overrides(s, variant, work / variant, data, s.steps, s.seed + 1, init_from=init)
    return _train(over, log).checkpoint


def test_files(s: Settings, work: Path) -> dict[tuple[str, int], Path]:
    from hybrid.bench import recall_tasks as rt

    files = {}
    for task in s.tasks:
        for n in s.lengths:
            path = work / "test" / f"{task}_{n}x.jsonl"
            write_jsonl(path, [e.record() for e in rt.generate(task, n, s.eval_examples, s.segment_length, s.seed,
                                                              "test", _layout())])
            files[(task, n)] = path
    return files


def evaluate_variant(s: Settings, checkpoint: Path, tests: dict[tuple[str, int], Path]) -> dict[str, dict[int, float]]:
    """Exact match per task and length through `hybrid eval`'s `evaluate()`: teacher-forced (batched), which is
    greedy exact match token for token, output and closing end-of-text."""
    from hybrid.training.evaluate import evaluate

    results: dict[str, dict[int, float]] = {}
    for task in s.tasks:
        results[task] = {}
        for n in s.lengths:
            m = evaluate(checkpoint, tests[(task, n)], batch_size=32, max_generate=0)
            if m.get("input_truncated_left"):
                raise HybridError(f"recall: {m['input_truncated_left']} test inputs truncated ({task}, {n}x)")
            results[task][n] = float(m["teacher_forced_exact_match"])
    return results


# ----------------------------------------------------------------------------------------------------------
# Reporting


def render_table(result: dict) -> "rich.table.Table":  # noqa: F821
    from rich.table import Table

    from hybrid.bench.recall_tasks import CHANCE, TASK_TITLES

    lengths = result["settings"]["lengths"]
    L = result["settings"]["segment_length"]
    table = Table(title=f"exact match (segment_length {L}; window = 1 segment)")
    table.add_column("task")
    table.add_column("length")
    table.add_column("chance", justify="right")
    for v in result["settings"]["variants"]:
        table.add_column(VARIANT_TITLES[v], justify="right")
    for task in result["settings"]["tasks"]:
        for n in lengths:
            row = [TASK_TITLES[task], f"{n}x ({n * L} tok)", f"{CHANCE[task]:.3g}"]
            row += [f"{result['accuracy'][v][task][str(n)]:.2f}" for v in result["settings"]["variants"]]
            table.add_row(*row)
    return table


def markdown_table(result: dict) -> str:
    """The table as GitHub markdown (for READMEs)."""
    from hybrid.bench.recall_tasks import CHANCE, TASK_TITLES

    variants = result["settings"]["variants"]
    L = result["settings"]["segment_length"]
    lines = ["| task | length | chance | " + " | ".join(VARIANT_TITLES[v] for v in variants) + " |",
             "|---|---|---:|" + "---:|" * len(variants)]
    for task in result["settings"]["tasks"]:
        for n in result["settings"]["lengths"]:
            cells = [f"{result['accuracy'][v][task][str(n)]:.2f}" for v in variants]
            lines.append(f"| {TASK_TITLES[task]} | {n}× ({n * L} tokens) | {CHANCE[task]:.3g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def draw_plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hybrid.bench.recall_tasks import CHANCE, TASK_TITLES

    tasks = result["settings"]["tasks"]
    lengths = result["settings"]["lengths"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for v in result["settings"]["variants"]:
            ax.plot(lengths, [result["accuracy"][v][task][str(n)] for n in lengths], marker="o",
                    label=VARIANT_TITLES[v])
        ax.axhline(CHANCE[task], color="grey", linestyle=":", label="chance")
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [f"{n}x" for n in lengths])
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(TASK_TITLES[task])
        ax.set_xlabel("input length (segments)")
    axes[0][0].set_ylabel("exact match")
    axes[0][-1].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from hybrid.bench.recall_tasks import CHANCE
    from hybrid.core.io import atomic_write_json

    # Wide enough for the whole table when the output is not a terminal (logs, CI, tests).
    console = Console() if sys.stdout.isatty() else Console(width=140)

    def log(message: str) -> None:
        console.print(message, markup=False, highlight=False)

    s = settings_from_args(args)
    if args.threads < 1:
        raise HybridError(f"--threads: expected a positive number, got {args.threads}")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    accuracy: dict[str, dict[str, dict[str, float]]] = {}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="hybrid-recall-") as tmp:
        work = Path(tmp)
        console.print(f"[bold]base[/] (shared by the variants): {s.base_steps} in-window steps (hybrid train)")
        base = train_base(s, work, log=log)
        seconds["base"] = round(time.time() - t0, 1)
        mix = s.length_mix
        data = work / "stage2_train.jsonl"
        write_jsonl(data, [e.record() for e in training_examples(
            s, s.steps, mix, s.seed * 7919 + 2, chain_separator=s.chain_separator)])
        tests = test_files(s, work)
        for variant in s.variants:
            t1 = time.time()
            console.print(f"[bold]{VARIANT_TITLES[variant]}[/]: {s.steps} steps on the length mix "
                          f"{ {f'{n}x': w for n, w in mix.items()} } (hybrid train, init from the base)")
            checkpoint = train_variant(s, variant, base, work, data, log=log)
            acc = evaluate_variant(s, checkpoint, tests)
            accuracy[variant] = {task: {str(n): a for n, a in by_n.items()} for task, by_n in acc.items()}
            seconds[variant] = round(time.time() - t1, 1)
            log(f"  [{variant}] exact match " + ", ".join(f"{task} {n}x {a:.2f}" for task, by_n in acc.items()
                                                      for n, a in by_n.items()) + f" ({seconds[variant]:.0f}s)")
    result = {"bench": "recall", "settings": asdict(s), "chance": {t: CHANCE[t] for t in s.tasks},
              "accuracy": accuracy, "seconds": seconds, "total_seconds": round(time.time() - t0, 1)}
    console.print(render_table(result))
    console.print(f"total {result['total_seconds']:.0f}s")
    if args.json:
        atomic_write_json(args.json, result)
        console.print(f"wrote {args.json}")
    if args.markdown:
        from hybrid.core.io import atomic_write_text

        atomic_write_text(args.markdown, markdown_table(result))
        console.print(f"wrote {args.markdown}")
    if args.plot:
        draw_plot(result, args.plot)
        console.print(f"wrote {args.plot}")
    return 0
