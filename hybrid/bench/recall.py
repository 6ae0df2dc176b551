"""`hybrid bench recall`: does the memory help? Long-context recall across four model variants (issue #7).

Four variants of one tiny model - no memory, internal memory only, external memory only, both - are trained for
the same number of steps on the same synthetic IO pairs (hybrid/bench/recall_tasks.py: key-value recall, passkey,
two-hop facts) and evaluated by exact match at 1x, 4x and 16x `segment_length`. The attention window is one
segment, so at 4x and 16x the answer lies outside every window the question can see.

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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hybrid.errors import HybridError

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
    # Stage-2 curriculum: (fraction of the steps, {segments: weight}); in-window examples stay in the mix.
    curriculum: list[tuple[float, dict[int, float]]] = field(
        default_factory=lambda: [(1.0, {1: 1.0, 2: 1.0, 4: 2.0})])
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
    p.add_argument("--base-steps", type=int,
                   help="stage 1: in-window steps of the base the variants share (default 1500; --quick 200)")
    p.add_argument("--steps", type=int,
                   help="stage 2: length-curriculum steps per variant (default 1500; --quick 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the weights (default: %(default)s)")
    p.add_argument("--variants", help=f"comma-separated subset of {','.join(VARIANTS)}")
    p.add_argument("--tasks", help="comma-separated subset of kv,passkey,facts")
    p.add_argument("--lengths", help="comma-separated lengths in segments (default 1,4,16)")
    p.add_argument("--eval-examples", type=int, help="test examples per task and length (default 100)")
    p.add_argument("--threads", type=int, default=1,
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
    if s.steps < 1 or s.base_steps < 0 or s.batch_size < 1 or s.eval_examples < 1:
        raise HybridError("--steps, --eval-examples and bench.batch_size must be positive, --base-steps >= 0")
    return s


# ----------------------------------------------------------------------------------------------------------
# Vocabulary and batches


class WordVocab:
    """The benchmark's fixed word-level vocabulary: one token per word, 0 = padding (never used: all examples
    of one length have the same number of tokens)."""

    def __init__(self, words: list[str]):
        self.words = ["<pad>"] + list(words)
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.index[w] for w in text.split()]
        except KeyError as e:
            raise HybridError(f"recall: word {e.args[0]!r} is not in the benchmark vocabulary") from None


def encode_batch(vocab: WordVocab, examples: list, device: str = "cpu"):
    """(input_ids, labels) with labels = ids on output tokens and -100 on input tokens (HF convention)."""
    import torch

    ids, labels = [], []
    for ex in examples:
        a, b = vocab.encode(ex.input), vocab.encode(ex.output)
        ids.append(a + b)
        labels.append([-100] * len(a) + b)
    if len({len(x) for x in ids}) != 1:
        raise HybridError("recall: a batch mixes lengths (examples of one length must have one token count)")
    return torch.tensor(ids, device=device), torch.tensor(labels, device=device)


def exact_match(logits, labels) -> "torch.Tensor":  # noqa: F821
    """Per row: every output token is the argmax of the logits one position earlier (so greedy decoding would
    produce exactly the output)."""
    pred = logits[:, :-1].argmax(-1)  # (B, T-1)
    target = labels[:, 1:]
    mask = target != -100
    return ((pred == target) | ~mask).all(dim=1).float()


# ----------------------------------------------------------------------------------------------------------
# Training and evaluation of one variant


def _model_config(s: Settings, variant: str, vocab_size: int):
    from hybrid.models.config import ModelConfig

    values = dict(s.model)
    values.update(VARIANTS[variant])
    values["segment_length"] = s.segment_length
    values["vocab_size"] = vocab_size
    try:
        return ModelConfig(**values)
    except Exception as e:  # pydantic ValidationError: name the key
        raise HybridError(f"recall: model settings: {str(e).splitlines()[-2:]}") from None


def _length_schedule(curriculum, steps: int, step: int) -> dict[int, float]:
    done = 0.0
    for fraction, weights in curriculum:
        done += fraction
        if step < done * steps:
            return weights
    return curriculum[-1][1]


def _lr(s: Settings, step: int, steps: int) -> float:
    if step < s.warmup:
        return s.learning_rate * (step + 1) / s.warmup
    progress = (step - s.warmup) / max(1, steps - s.warmup)
    return s.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _train_loop(s: Settings, model, vocab: WordVocab, steps: int, curriculum, seed: int, tag: str, log=print,
                on_log=None, chain_separator: float = 1.0):
    """AdamW with warmup + cosine; each step draws one length from the curriculum and a batch of fresh examples
    (tasks and training aids mixed) of that length from seeded streams."""
    import torch

    from hybrid.bench import recall_tasks as rt

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=s.learning_rate, betas=(0.9, 0.98))
    rng = random.Random(seed)
    streams = {}
    t0 = time.time()
    running = []
    for step in range(steps):
        weights = _length_schedule(curriculum, steps, step)
        n = rng.choices(list(weights), weights=list(weights.values()))[0]
        examples = []
        for _ in range(s.batch_size):
            task = rng.choice(s.tasks + s.train_aids)
            if (task, n) not in streams:
                options = {"n_pairs": tuple(s.train_kv_pairs)} if task == "kv" else {}
                if task == "chain" and chain_separator != 1.0:
                    options = {"separator": chain_separator}
                streams[(task, n)] = rt.generate(task, n, 10**9, s.segment_length, seed, "train", **options)
            examples.append(next(streams[(task, n)]))
        ids, labels = encode_batch(vocab, examples)
        for group in opt.param_groups:
            group["lr"] = _lr(s, step, steps)
        out = model(ids, labels=labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            running.append((n, exact_match(out.logits, labels).mean().item(), out.loss.item()))
        if (step + 1) % max(1, steps // 8) == 0 or step + 1 == steps:
            by_n: dict[int, list[float]] = {}
            for m, acc, _ in running:
                by_n.setdefault(m, []).append(acc)
            accs = " ".join(f"{m}x={sum(v) / len(v):.2f}" for m, v in sorted(by_n.items()))
            loss = sum(r[2] for r in running) / len(running)
            log(f"  [{tag}] step {step + 1}/{steps} loss {loss:.3f} train exact match {accs} "
                f"({time.time() - t0:.0f}s)")
            running = []
            if on_log is not None:
                on_log(model, step + 1)
                model.train()
    model.eval()
    return model


def train_base(s: Settings, vocab: WordVocab, log=print, on_log=None) -> dict:
    """Stage 1, shared by the four variants: the memory-free model trained in-window (1x) so that the lookup
    (induction) circuit forms where the answer is visible. Returns its weights."""
    import torch

    from hybrid.models import build_model

    torch.manual_seed(s.seed)
    model = build_model(_model_config(s, "none", len(vocab)), len(vocab), None)
    _train_loop(s, model, vocab, s.base_steps, [(1.0, {1: 1.0})], s.seed * 7919 + 1, "base", log, on_log)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_variant(s: Settings, variant: str, vocab: WordVocab, base_state: dict | None = None, log=print,
                  on_log=None):
    """Stage 2: the variant starts from the shared base (its memory parameters from their no-op init) and trains
    `steps` steps with the length curriculum, where the answer is out of the window for n > 1."""
    import torch

    from hybrid.models import build_model
    from hybrid.models.modeling import is_memory_param

    torch.manual_seed(s.seed + 1)
    model = build_model(_model_config(s, variant, len(vocab)), len(vocab), None)
    if base_state is not None:
        missing, unexpected = model.load_state_dict(base_state, strict=False)
        bad = [k for k in missing if not is_memory_param(k)] + list(unexpected)
        if bad:
            raise HybridError(f"recall: the base weights do not fit variant {variant}: {bad[:3]}")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".internal_memory.gate") and s.internal_gate_init:
                p.fill_(math.atanh(s.internal_gate_init))
            elif name.endswith(".self_attn.memory_gate") and s.external_gate_init:
                p.fill_(math.atanh(s.external_gate_init))
    return _train_loop(s, model, vocab, s.steps, s.curriculum, s.seed * 7919 + 2, variant, log, on_log,
                       chain_separator=s.chain_separator)


def evaluate_variant(s: Settings, model, vocab: WordVocab) -> dict[str, dict[int, float]]:
    import torch

    from hybrid.bench import recall_tasks as rt

    model.eval()
    results: dict[str, dict[int, float]] = {}
    batch = 32
    with torch.no_grad():
        for task in s.tasks:
            results[task] = {}
            for n in s.lengths:
                examples = list(rt.generate(task, n, s.eval_examples, s.segment_length, s.seed, "test"))
                hits = 0.0
                for i in range(0, len(examples), batch):
                    ids, labels = encode_batch(vocab, examples[i:i + batch])
                    out = model(ids, labels=labels)
                    hits += exact_match(out.logits, labels).sum().item()
                results[task][n] = hits / len(examples)
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
    from rich.console import Console

    from hybrid.bench.recall_tasks import CHANCE, vocabulary
    from hybrid.utils.io import atomic_write_json

    import torch

    # Wide enough for the whole table when the output is not a terminal (logs, CI, tests).
    console = Console() if sys.stdout.isatty() else Console(width=140)

    def log(message: str) -> None:
        console.print(message, markup=False, highlight=False)

    s = settings_from_args(args)
    if args.threads < 1:
        raise HybridError(f"--threads: expected a positive number, got {args.threads}")
    torch.set_num_threads(args.threads)
    vocab = WordVocab(vocabulary())
    t0 = time.time()
    accuracy: dict[str, dict[str, dict[str, float]]] = {}
    seconds: dict[str, float] = {}
    console.print(f"[bold]base[/] (shared by the variants): {s.base_steps} in-window steps")
    base_state = train_base(s, vocab, log=log)
    seconds["base"] = round(time.time() - t0, 1)
    for variant in s.variants:
        t1 = time.time()
        console.print(f"[bold]{VARIANT_TITLES[variant]}[/]: {s.steps} steps of the length curriculum")
        model = train_variant(s, variant, vocab, base_state, log=log)
        acc = evaluate_variant(s, model, vocab)
        accuracy[variant] = {task: {str(n): a for n, a in by_n.items()} for task, by_n in acc.items()}
        seconds[variant] = round(time.time() - t1, 1)
    result = {"bench": "recall", "settings": asdict(s), "chance": {t: CHANCE[t] for t in s.tasks},
              "accuracy": accuracy, "seconds": seconds, "total_seconds": round(time.time() - t0, 1)}
    console.print(render_table(result))
    console.print(f"total {result['total_seconds']:.0f}s")
    if args.json:
        atomic_write_json(args.json, result)
        console.print(f"wrote {args.json}")
    if args.markdown:
        from hybrid.utils.io import atomic_write_text

        atomic_write_text(args.markdown, markdown_table(result))
        console.print(f"wrote {args.markdown}")
    if args.plot:
        draw_plot(result, args.plot)
        console.print(f"wrote {args.plot}")
    return 0
