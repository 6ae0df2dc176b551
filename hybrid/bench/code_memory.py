"""`hybrid bench code-memory`: does the memory help on the code we mine? (issue 25, docs/code-memory.md)

From the pipeline's outputs of registered repositories (default: this checkout's history, registered and mined as
`hybrid demo` does) it builds long-file change tasks (hybrid/data/code_tasks.py), split by time (train on the earliest
commits, validation next, test on the latest), trains the same model as five variants with the same data, steps,
tokens and seed — none / internal / external / both (the attention window = one segment) and full (no memory, one
segment as long as the example: the upper bound) — for each seed, keeps each run's checkpoint with the best
validation loss, and scores the test split once:

    loss          nats per output token (the output of each example, and its closing end-of-text)
    exact match   greedy exact match (teacher-forced argmax at every output position)
    far loss      nats per far token: tokens of names found earlier only beyond the window
    subsets       all / beyond (the output names something found only beyond the window) / within (the rest)

Repository memory (on the `external` variant): the input cut to one window of local context; the external memory
filled from the repository at the newest commit before the test split (`repo_memory`; at most the test split's
commits stale), from another code base of the same size (`other_repo_memory`: the next repository named, else the
Python standard library of this interpreter), or empty (`local_only`).

Cells: mean over seeds, per-seed values, a 95 % interval (hybrid/bench/stats.py). `--json` writes
{"results": {VARIANT: {SUBSET: {"loss", "exact_match", "far_loss": CELL}}}, "n": {SUBSET: count}, "settings", ...};
`--from-json FILE --write-docs` puts the table into README.md and docs/code-memory.md between their markers.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hybrid.bench.report import DocTable, load_result, markdown_table, save_figure
from hybrid.bench.stats import interval, mean_interval
from hybrid.cli import non_negative_int, positive_int
from hybrid.core.errors import HybridError

VARIANTS = ("none", "internal", "external", "both", "full")
CONTROLS = ("repo_memory", "other_repo_memory", "local_only")
TITLES = {
    "none": "no memory",
    "internal": "internal only",
    "external": "external only",
    "both": "both",
    "full": "full attention (upper bound)",
    "repo_memory": "external, one window + this repository's memory",
    "other_repo_memory": "external, one window + another code base's memory",
    "local_only": "external, one window, memory empty",
}
SUBSETS = ("all", "beyond", "within")
DOCS = DocTable(
    "code-memory-table",
    "hybrid bench code-memory --from-json docs/code-memory-results.json --write-docs",
    {"README.md": False, "docs/code-memory.md": True},
)
# earlier recipes, kept in docs/code-memory.md: the joint read with 4 chunks retrieved, and the gated read (the
# first default)
JOINT_DOCS = DocTable(
    "code-memory-joint-table",
    "hybrid bench code-memory --from-json docs/code-memory-joint.json --write-docs",
    {"docs/code-memory.md": True},
)
GATE_DOCS = DocTable(
    "code-memory-gate-table",
    "hybrid bench code-memory --from-json docs/code-memory-gate.json --write-docs",
    {"docs/code-memory.md": True},
)
SOURCE_SUFFIXES = (".py", ".rs", ".go", ".js", ".jsx", ".ts", ".tsx", ".java", ".c", ".h", ".cc", ".cpp", ".hpp")


@dataclass
class Settings:
    """Everything a run depends on (written into the JSON, so a result names its recipe)."""

    repos: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 600
    batch_size: int = 8
    learning_rate: float = 2e-3
    warmup: int = 30
    max_length: int = 384  # tokens of an example: 6 windows
    max_input_chars: int = 6000
    max_output_chars: int = 400
    vocab_size: int = 2048
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    max_test: int | None = None  # None: the whole test split
    max_train: int | None = None
    evals: int = 3  # validation passes per run (the best is kept)
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    repo_memory: bool = True
    repo_memory_tokens: int = 200_000  # at most this many tokens of a code base in the repository memory
    model: dict[str, Any] = field(
        default_factory=lambda: {
            "family": "llama",
            "hidden_size": 128,
            "intermediate_size": 344,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "segment_length": 64,
            "max_position_embeddings": 64,
            "memory_slots": 8,
            "num_mem_heads": 4,
            "external_memory_size": 512,
            # the external memory read through one joint softmax with the local keys, 8 chunks retrieved, the
            # read open at 0.9: chosen on validation (docs/code-memory.md, "How the recipe was chosen")
            "external_fusion": "joint",
            "external_gate_init": 0.9,
            "retrieval_k": 8,
            "chunk_size": 4,
            "retrieval_layers": [1],
        }
    )

    @property
    def segment_length(self) -> int:
        return int(self.model["segment_length"])


QUICK = {
    "seeds": [0],
    "steps": 6,
    "batch_size": 4,
    "max_length": 128,
    "max_train": 64,
    "max_test": 24,
    "evals": 1,
    "vocab_size": 512,
    "repo_memory_tokens": 4096,
    "model": {
        "family": "llama",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "segment_length": 32,
        "max_position_embeddings": 32,
        "memory_slots": 2,
        "num_mem_heads": 2,
        "external_memory_size": 128,
        "external_fusion": "joint",
        "external_gate_init": 0.9,
        "retrieval_k": 2,
        "chunk_size": 4,
        "retrieval_layers": [1],
    },
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "repos",
        nargs="*",
        metavar="REPO",
        help="registered repositories to learn from (default: this checkout, registered as the demo does)",
    )
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--steps", type=positive_int, default=None, help="training steps of every variant (default 600)")
    p.add_argument("--max-length", type=positive_int, default=None, help="tokens per example (default 384)")
    p.add_argument("--data-dir", default="data", help="the pipeline's data folder (default: data)")
    p.add_argument(
        "--other-repo",
        default=None,
        help="a git repository or folder for the other-memory control (default: the next REPO, else the "
        "Python standard library)",
    )
    p.add_argument("--no-repo-memory", action="store_true", help="skip the repository-memory rows")
    p.add_argument(
        "--variants",
        default=None,
        help=f"comma-separated variants to train (default all: {','.join(VARIANTS)}; none is always one)",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a model setting of every variant (repeatable), e.g. --model external_fusion=joint",
    )
    p.add_argument("--quick", action="store_true", help="a smoke run in about a minute (tiny model, one seed)")
    p.add_argument(
        "--jobs",
        type=non_negative_int,
        default=0,
        help="seeds trained at once, one single-threaded process each (default 0: every seed at once)",
    )
    p.add_argument("--json", default=None, help="write the result here")
    p.add_argument("--plot", default=None, help="write a PNG plot here")
    p.add_argument("--from-json", default=None, help="render a saved result instead of training")
    p.add_argument(
        "--write-docs",
        action="store_true",
        help="put the table into README.md and docs/code-memory.md (between their markers)",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    s = Settings(**QUICK) if args.quick else Settings()
    s.repos = list(args.repos)
    if args.seeds:
        try:
            s.seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
        except ValueError:
            raise HybridError(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
        if not s.seeds or len(set(s.seeds)) != len(s.seeds):
            raise HybridError(f"--seeds: expected distinct seeds, got {args.seeds!r}")
    if args.steps:
        s.steps = args.steps
    if args.max_length:
        if args.max_length < 2 * s.segment_length:
            raise HybridError(
                f"--max-length: {args.max_length} leaves nothing beyond the window "
                f"({s.segment_length} tokens); use at least {2 * s.segment_length}"
            )
        s.max_length = args.max_length
    s.repo_memory = not args.no_repo_memory
    if args.variants:
        names = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [v for v in names if v not in VARIANTS]
        if unknown or "none" not in names:
            raise HybridError(
                f"--variants: {args.variants!r}: choose from {', '.join(VARIANTS)}, with none among them "
                f"(every ratio is to none)"
            )
        s.variants = [v for v in VARIANTS if v in names]
        s.repo_memory = s.repo_memory and "external" in s.variants  # its rows read the external model
    from hybrid.cli.config import override_value  # the config schemas: not at `hybrid --help`

    for item in args.model:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise HybridError(f"--model: expected KEY=VALUE (a model setting), got {item!r}")
        s.model[key.strip()] = override_value(value)  # checked by the model config when a variant trains
    return s


# ----------------------------------------------------------------------------------------------------------
# Data


@dataclass
class Corpus:
    """The tasks of a run and where they came from."""

    splits: dict[str, list[dict[str, Any]]]
    repos: dict[str, str]  # name -> bare clone
    snapshot: dict[str, str]  # name -> the commit the repository memory is built from (newest before test)
    commits: dict[str, dict[str, int]]  # split -> first / last commit number


def prepare_repos(names: list[str], data_dir: Path, log=print) -> dict[str, str]:
    """The named registered repositories (default: this checkout, registered as the demo does), mined up to date by
    the structural pipeline (finished commits are skipped). Returns name -> bare clone path."""
    from hybrid.cli.config import load_config
    from pipelines.repos import add_repo, list_repos
    from pipelines.run import run_pipeline

    cfg = load_config([f"pipeline.data_dir={data_dir}"])
    known = {e.name: e for e in list_repos(cfg.pipeline)}
    if not names:
        from hybrid.cli.repos import DEMO_REPO_NAME, project_checkout

        source = project_checkout()
        entry = next((e for e in known.values() if e.source == str(source)), None)
        if entry is None:
            entry = add_repo(str(source), DEMO_REPO_NAME, cfg.pipeline)
            log(f"registered {entry.name} ← {source}")
        names = [entry.name]
        known[entry.name] = entry
    missing = [n for n in names if n not in known]
    if missing:
        raise HybridError(
            f"{missing[0]}: not a registered repository in {data_dir} (hybrid repos add …; "
            f"registered: {', '.join(sorted(known)) or 'none'})"
        )
    run_pipeline(
        names, cfg.pipeline, cfg.llm, stages=["generate-ast", "generate-ast-diffs"], local=True, progress=False
    )
    return {n: str(known[n].path(cfg.pipeline)) for n in names}


def build_corpus(s: Settings, data_dir: Path, repos: dict[str, str]) -> Corpus:
    from hybrid.data.code_tasks import long_file_examples, time_split

    splits: dict[str, list] = {"train": [], "validation": [], "test": []}
    snapshot, commits = {}, {}
    for name, path in repos.items():
        examples = list(long_file_examples(data_dir, name, path, s.max_input_chars, s.max_output_chars))
        parts = time_split(examples, s.validation_fraction, s.test_fraction)
        if not all(parts.values()):
            raise HybridError(
                f"{name}: too little history for a time split ({len(examples)} changed declarations "
                f"in {len({e.commit_number for e in examples})} commits: train "
                f"{len(parts['train'])}, validation {len(parts['validation'])}, test {len(parts['test'])})"
            )
        before_test = parts["validation"] or parts["train"]
        snapshot[name] = _commit_hash(data_dir, name, max(e.commit_number for e in before_test))
        commits[name] = {
            k: [min(e.commit_number for e in v), max(e.commit_number for e in v)] if v else None
            for k, v in parts.items()
        }
        for k, v in parts.items():
            splits[k] += [e.record() for e in v]
    if s.max_train:
        splits["train"] = splits["train"][-s.max_train :]
    if s.max_test:
        splits["test"] = splits["test"][: s.max_test]
        splits["validation"] = splits["validation"][: s.max_test]
    return Corpus(splits, repos, snapshot, commits)


def _commit_hash(data_dir: Path, repo: str, number: int) -> str:
    from hybrid.core.io import read_json
    from hybrid.core.layout import COMMIT_DATA, DatasetLayout

    return read_json(DatasetLayout(data_dir).local_commit_dir(repo, number) / COMMIT_DATA)["commit_hash"]


def repo_texts(path: str, commit: str) -> list[str]:
    """The source files of a repository at a commit (the languages the pipeline parses), path order."""
    from hybrid.training.build_memory import texts_from_repo

    texts, _ = texts_from_repo(path, commit, max_bytes=200_000)
    return [t for t in texts if t.split("\n", 1)[0].endswith(SOURCE_SUFFIXES)]


def folder_texts(path: str) -> list[str]:
    """The source files under a folder (not a git repository), path order."""
    out = []
    for p in sorted(Path(path).rglob("*")):
        if p.suffix in SOURCE_SUFFIXES and p.is_file() and p.stat().st_size <= 200_000 and "test" not in p.parts:
            try:
                out.append(f"# file: {p.relative_to(path)}\n{p.read_text(encoding='utf-8')}")
            except (UnicodeDecodeError, OSError):
                continue
    return out


def other_texts(s: Settings, corpus: Corpus, other: str | None) -> tuple[str, list[str]]:
    """(what it is, texts) of the other-memory control: `other` (a git repository or a folder), else the next
    repository of the run, else the Python standard library."""
    if other:
        import pygit2

        try:
            repo = pygit2.Repository(other)
            return other, repo_texts(other, str(repo.head.target))
        except (pygit2.GitError, KeyError):
            if not Path(other).is_dir():
                raise HybridError(f"--other-repo: {other} is neither a git repository nor a folder") from None
            return other, folder_texts(other)
    if len(corpus.repos) > 1:
        name, path = list(corpus.repos.items())[1]
        return name, repo_texts(path, corpus.snapshot[name])
    import sysconfig

    stdlib = sysconfig.get_paths()["stdlib"]
    return f"python stdlib ({stdlib})", folder_texts(stdlib)


def clip_texts(tokenizer, texts: list[str], budget: int) -> tuple[list[str], int]:
    """The first texts that together hold at most `budget` tokens (the last one cut), and their token count."""
    out, total = [], 0
    for text in texts:
        n = len(tokenizer.encode(text)) + 1
        if total + n > budget:
            room = budget - total
            if room > 64:
                out.append(tokenizer.decode(tokenizer.encode(text)[: room - 1]))
                total += room
            break
        out.append(text)
        total += n
    return out, total


# ----------------------------------------------------------------------------------------------------------
# One seed


def training_values(s: Settings, variant: str, data: Path, validation: Path, out: Path, seed: int) -> dict[str, Any]:
    from hybrid.training.code_memory import model_values

    values = model_values(s.model, variant, s.max_length)
    values.update(
        {
            "model.pretrained": None,
            "data.train": str(data),
            "data.validation": str(validation),
            "data.max_length": s.max_length,
            "train.tokenizer": "bpe",
            "train.tokenizer_vocab_size": s.vocab_size,
            "train.num_workers": 0,
            "train.precision": "fp32",
            "train.resume": "none",
            "train.output_dir": str(out),
            "train.max_iters": s.steps,
            "train.batch_size": s.batch_size,
            "train.gradient_accumulation_steps": 1,
            "train.learning_rate": s.learning_rate,
            "train.warmup_iters": s.warmup,
            "train.min_lr_ratio": 0.1,
            "train.seed": seed,
            "train.eval_every": max(1, s.steps // s.evals),
            "train.eval_batches": 1_000_000,
            "train.log_every": max(1, s.steps // 4),
            "train.keep_last": 1,
            "train.max_minutes": None,
            "train.init_from": None,
        }
    )
    return values


def run_seed(
    s: Settings, corpus: Corpus, other: tuple[str, list[str]], seed: int, work: Path, log=print
) -> dict[str, Any]:
    """Train every variant for `seed` and score the test split: {"seed", "scores": {row: `summarize`},
    "metrics": {variant: the run's last metrics (step, tokens_seen, val_loss, …)}, "seconds": {variant: s}}."""
    from hybrid.cli.config import load_config
    from hybrid.config.recipe import with_values
    from hybrid.core.io import atomic_write_jsonl
    from hybrid.data.tokenizer import TextTokenizer
    from hybrid.training import checkpoints as ckpt_io
    from hybrid.training import code_memory as cm
    from hybrid.training.train import train

    data, validation = work / "train.jsonl", work / "validation.jsonl"
    atomic_write_jsonl(data, corpus.splits["train"])
    atomic_write_jsonl(validation, corpus.splits["validation"])
    base = load_config([]).recipe()
    out: dict[str, Any] = {"seed": seed, "scores": {}, "metrics": {}, "seconds": {}}
    tokenizer_json = None
    rows = far = None
    checkpoints = {}
    for variant in s.variants:
        t0 = time.time()
        cfg = with_values(
            base, training_values(s, variant, data, validation, work / variant, seed), where="bench code-memory"
        )
        result = train(cfg, quiet=True)
        checkpoint = result.best_checkpoint or result.checkpoint
        if checkpoint is None:
            raise HybridError(f"bench code-memory: {variant} wrote no checkpoint in {result.output_dir}")
        checkpoints[variant] = Path(checkpoint)
        tok = TextTokenizer.load(checkpoint)
        if tokenizer_json is None:
            tokenizer_json = tok.to_json()
            rows, far = cm.encode_examples(tok, corpus.splits["test"], s.max_length, s.segment_length)
        elif tok.to_json() != tokenizer_json:  # every variant must see the same tokens
            raise HybridError(f"bench code-memory: {variant} trained a different tokenizer from the same data")
        model = ckpt_io.load_model(checkpoint)
        model.eval()
        out["scores"][variant] = cm.summarize(cm.score_rows(model, rows, far, tok.pad_id))
        out["metrics"][variant] = result.metrics
        out["seconds"][variant] = round(time.time() - t0, 1)
        log(
            f"  seed {seed} {variant}: test loss {out['scores'][variant]['all']['loss']:.3f}, beyond far-token loss "
            f"{out['scores'][variant]['beyond']['far_loss'] or float('nan'):.3f} ({out['seconds'][variant]:.0f} s)"
        )
    if s.repo_memory:
        t0 = time.time()
        out["scores"].update(repository_rows(s, corpus, other, checkpoints["external"], rows, far))
        out["seconds"]["repository_memory"] = round(time.time() - t0, 1)
    return out


def repository_rows(
    s: Settings, corpus: Corpus, other: tuple[str, list[str]], checkpoint: Path, rows, far
) -> dict[str, Any]:
    """The `external` model on one window of local context, with the memory filled from this repository, from the
    other code base (the same number of tokens), or empty."""
    from hybrid.data.tokenizer import TextTokenizer
    from hybrid.memory.torch_store import TorchStore
    from hybrid.training import checkpoints as ckpt_io
    from hybrid.training import code_memory as cm

    tok = TextTokenizer.load(checkpoint)
    name, path = next(iter(corpus.repos.items()))
    own, n_own = clip_texts(tok, repo_texts(path, corpus.snapshot[name]), s.repo_memory_tokens)
    others, n_other = clip_texts(tok, other[1], n_own)
    local, local_far = cm.local_rows(rows, far, s.segment_length // 2)
    out = {}
    for row, texts in (("repo_memory", own), ("other_repo_memory", others), ("local_only", None)):
        chunk = s.model["chunk_size"]
        capacity = max(n_own, n_other) // chunk * chunk + chunk
        model = ckpt_io.load_model(checkpoint, external_memory_size=capacity)
        model.eval()
        store = TorchStore(model.config.chunks_capacity)
        if texts:
            cm.write_corpus(model, tok, store, "corpus", texts, read=False)  # one retrieval layer: the same chunks
        out[row] = cm.summarize(
            cm.score_rows(
                model,
                local,
                local_far,
                tok.pad_id,
                batch_size=1,
                memory_store=cm.ReadOnlyStore(store),
                namespace="corpus",
            )
        )
        out[row]["memory_tokens"] = n_own if row == "repo_memory" else (n_other if texts else 0)
    return out


# ----------------------------------------------------------------------------------------------------------
# Aggregation and reports


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """{row: {subset: {metric: CELL}}} with CELL = {"mean", "per_seed", "ci95"}; and paired ratios to `none`."""
    rows = [r for r in (*VARIANTS, *CONTROLS) if r in runs[0]["scores"]]
    results: dict[str, Any] = {}
    for row in rows:
        results[row] = {}
        for subset in SUBSETS:
            cells = {}
            for metric in ("loss", "exact_match", "far_loss"):
                per_seed = [run["scores"][row][subset][metric] for run in runs]
                if any(v is None for v in per_seed):
                    cells[metric] = None
                    continue
                n = runs[0]["scores"][row][subset]["examples"]
                lo, hi = interval(per_seed, n) if metric == "exact_match" else mean_interval(per_seed)
                cells[metric] = {"mean": sum(per_seed) / len(per_seed), "per_seed": per_seed, "ci95": [lo, hi]}
            results[row][subset] = cells
    ratios = {}
    for row in rows:
        if row == "none":
            continue
        ratios[row] = {}
        for subset, metric in (("beyond", "far_loss"), ("beyond", "loss"), ("within", "loss"), ("all", "loss")):
            per_seed = [
                _ratio(run["scores"][row][subset][metric], run["scores"]["none"][subset][metric]) for run in runs
            ]
            if any(v is None for v in per_seed):
                continue
            lo, hi = mean_interval(per_seed)
            ratios[row][f"{subset}_{metric}"] = {
                "mean": sum(per_seed) / len(per_seed),
                "per_seed": per_seed,
                "ci95": [lo, hi],
            }
    n = {subset: runs[0]["scores"]["none"][subset]["examples"] for subset in SUBSETS}
    n["far_tokens"] = runs[0]["scores"]["none"]["beyond"]["far_tokens"]
    return {"results": results, "ratio_to_none": ratios, "n": n}


def _ratio(a, b):
    return None if a is None or not b else a / b


def _fmt(cell) -> str:
    if cell is None:
        return "–"
    return f"{cell['mean']:.3f} [{cell['ci95'][0]:.3f}, {cell['ci95'][1]:.3f}]"


def table_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "loss: all", "loss: beyond", "loss: within", "far tokens", "far / none", "exact match"]
    out = []
    for row, cells in result["results"].items():
        ratio = result["ratio_to_none"].get(row, {}).get("beyond_far_loss")
        out.append(
            [
                TITLES[row],
                _fmt(cells["all"]["loss"]),
                _fmt(cells["beyond"]["loss"]),
                _fmt(cells["within"]["loss"]),
                _fmt(cells["beyond"]["far_loss"]),
                _fmt(ratio) if ratio else "1",
                f"{cells['all']['exact_match']['mean']:.3f}" if cells["all"]["exact_match"] else "–",
            ]
        )
    return header, out


def per_seed_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    seeds = result["settings"]["seeds"]
    header = ["variant", *(f"far tokens, seed {s}" for s in seeds), *(f"loss: within, seed {s}" for s in seeds)]
    out = []
    for row, cells in result["results"].items():
        far = cells["beyond"]["far_loss"]
        within = cells["within"]["loss"]
        out.append(
            [
                TITLES[row],
                *(f"{v:.3f}" for v in (far["per_seed"] if far else [])),
                *(f"{v:.3f}" for v in (within["per_seed"] if within else [])),
            ]
        )
    return header, out


def markdown_report(result: dict, full: bool = True) -> str:
    st, n = result["settings"], result["n"]
    head = (
        f"Test split of {', '.join(st['repos'])} (the latest commits), mean over seeds "
        f"{', '.join(map(str, st['seeds']))} [95 % interval]: {n['all']} examples, {n['beyond']} beyond "
        f"(their {n['far_tokens']} far tokens scored in *far tokens*), {n['within']} within; window "
        f"{st['model']['segment_length']} tokens, examples {st['max_length']} tokens, {st['steps']} steps × "
        f"{st['batch_size']}. Loss in nats per token (lower is better).\n"
    )
    parts = [head, markdown_table(*table_rows(result))]
    if full:
        parts += ["\nPer seed:\n", markdown_table(*per_seed_rows(result))]
    return "".join(parts)


def doc_table(result: dict) -> DocTable:
    """Where a result's table goes, by its recipe: the main table for the default read (joint, the default gate
    and retrieval_k), the joint-table for a joint read with other settings, the gate-table for the gated read."""
    model = result["settings"]["model"]
    if model.get("external_fusion", "gate") != "joint":
        return GATE_DOCS
    default = Settings().model
    if all(model.get(key) == default[key] for key in ("external_gate_init", "retrieval_k")):
        return DOCS
    return JOINT_DOCS


def write_docs(result: dict, root: Path = Path(".")) -> list[Path]:
    """Replace the block between the code-memory-table (or -joint-table, -gate-table: `doc_table`) markers of
    README.md and docs/code-memory.md."""
    return doc_table(result).write(lambda full: markdown_report(result, full), root)


def draw_plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(result["results"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (subset, metric, title) in zip(
        axes,
        (
            ("beyond", "far_loss", "far tokens (beyond the window)"),
            ("beyond", "loss", "all output tokens, beyond subset"),
            ("within", "loss", "all output tokens, within subset"),
        ),
    ):
        for i, row in enumerate(rows):
            cell = result["results"][row][subset][metric]
            if cell is None:
                continue
            ax.errorbar(
                [i],
                [cell["mean"]],
                yerr=[[cell["mean"] - cell["ci95"][0]], [cell["ci95"][1] - cell["mean"]]],
                marker="o",
                capsize=3,
            )
        ax.set_xticks(range(len(rows)), rows, rotation=35, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("loss (nats / token)")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _seed_in_process(job: tuple) -> dict[str, Any]:
    import torch

    s, corpus, other, seed = job
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix=f"hybrid-code-memory-{seed}-") as tmp:
        return run_seed(s, corpus, other, seed, Path(tmp), log=lambda m: print(m, flush=True))


def _load_result(path: str) -> dict:
    return load_result(
        path, "code-memory", lambda result: (result["settings"]["seeds"], result["results"], result["n"])
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hybrid.core.io import atomic_write_json

    console = Console() if sys.stdout.isatty() else Console(width=180)

    def log(message: str) -> None:
        console.print(message, markup=False, highlight=False)

    if args.from_json:
        result = _load_result(args.from_json)
    else:
        s = settings_from_args(args)
        t0, load_before = time.time(), os.getloadavg()
        data_dir = Path(args.data_dir).resolve()
        repos = prepare_repos(s.repos, data_dir, log)
        s.repos = list(repos)
        corpus = build_corpus(s, data_dir, repos)
        log(
            f"tasks: train {len(corpus.splits['train'])}, validation {len(corpus.splits['validation'])}, "
            f"test {len(corpus.splits['test'])} (commits by split: {corpus.commits})"
        )
        other = other_texts(s, corpus, args.other_repo) if s.repo_memory else ("", [])
        jobs = min(len(s.seeds), args.jobs or len(s.seeds))
        if jobs > 1:
            from hybrid.core.processes import process_pool  # (late: `hybrid --help` needs none of it)

            with process_pool(jobs) as pool:
                runs = list(pool.map(_seed_in_process, [(s, corpus, other, seed) for seed in s.seeds]))
        else:
            import torch

            torch.set_num_threads(1)
            runs = []
            for seed in s.seeds:
                with tempfile.TemporaryDirectory(prefix=f"hybrid-code-memory-{seed}-") as tmp:
                    runs.append(run_seed(s, corpus, other, seed, Path(tmp), log=log))
        result = {
            "bench": "code-memory",
            "settings": asdict(s),
            **aggregate(runs),
            "runs": runs,
            "other_memory": other[0],
            "snapshot": corpus.snapshot,
            "commits": corpus.commits,
            "seconds": round(time.time() - t0, 1),
            "jobs": jobs,
            "load_average": {"before": load_before, "after": os.getloadavg()},
            "cpu_count": os.cpu_count(),
        }
    console.print(markdown_report(result), markup=False, highlight=False)
    if "seconds" in result and "load_average" in result:
        la = result["load_average"]
        log(f"total {result['seconds']:.0f} s (load average {la['before'][0]:.1f} → {la['after'][0]:.1f})")
    if args.json and not args.from_json:
        atomic_write_json(args.json, result)
        log(f"wrote {args.json}")
    if args.write_docs:
        for path in write_docs(result):
            log(f"wrote the table into {path}")
    if args.plot:
        draw_plot(result, args.plot)
        log(f"wrote {args.plot}")
    return 0
