"""`hybrid bench recall`: does the memory help? Long-context recall across four model variants (issues #7, #16).

Four variants of one tiny model - no memory, internal memory only, external memory only, both - are trained the same
way through `hybrid train` (the recipe: hybrid/training/recall.py, docs/recall.md) on synthetic IO pairs whose
answer lies beyond the attention window (hybrid/data/recall_tasks.py), for each of several seeds, and scored on a
test stream the recipe never saw (its choices are made on the validation stream):

    cells      exact match of the whole output and of the value words alone, and RULER's score (the fraction of
               reference strings present), per variant, task and length (1x, 4x, 16x trained lengths or less; 64x
               longer than any training example, with the external memory smaller than the haystack, so it evicts,
               and again with a memory that holds the whole haystack), mean over the seeds, the per-seed values and
               a 95 % interval (`interval`)
    effective  per variant and task, RULER's effective length: the longest tested length up to which the score
               stays at or above `effective_threshold` (0.85)
    baselines  uniform chance and the "one of the mentioned candidates" level (recall_tasks.mentioned_chance)
    controls   on the `both` variant: every memory gate closed at evaluation; the haystack of another example;
               the asked value edited in the haystack (the prediction must follow the edit)
    FAISS      the `both` variant with the external memory in FAISS (flat, and IVF) instead of the exact torch store

`--base-only` trains and judges stage 1 alone, per seed on validation (recipe work). `--from-json FILE` renders a
saved result without training; `--write-docs` puts its tables into README.md and docs/recall.md between their
`recall-table` markers (tests/hybrid/bench/test_recall.py checks that they agree).
Heavy imports (torch, matplotlib, rich) happen inside functions.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from hybrid.bench.report import DocTable, load_result, markdown_table, save_figure
from hybrid.bench.stats import interval
from hybrid.cli import non_negative_int, positive_int
from hybrid.core.errors import HybridError

VARIANTS = ("none", "internal", "external", "both")  # hybrid.training.recall.VARIANTS (imported late: `hybrid --help`)
VARIANT_TITLES = {"none": "no memory", "internal": "internal only", "external": "external only", "both": "both"}

CONTROL_TITLES = {
    "gates_closed": "both, every memory gate closed at evaluation",
    "swapped": "both, haystack of another example (own answer)",
    "swapped_follows": "both, haystack of another example (the other's answer)",
    "edited_follows": "both, the asked value edited in the haystack (follows the edit)",
}
FAISS_ROWS = {"faiss_flat": "both, FAISS flat store", "faiss_ivf": "both, FAISS IVF store (nlist 8, nprobe 2)"}
DOCS = DocTable(
    "recall-table",
    "hybrid bench recall --from-json docs/recall-results.json --write-docs",
    {"README.md": False, "docs/recall.md": True},
)


@dataclass
class Settings:
    """Everything a run depends on (written into the JSON, so a result names its recipe)."""

    recipe: Any = field(default_factory=lambda: _recipe_class()())  # hybrid.training.recall.RecallRecipe
    lengths: list[int] = field(default_factory=lambda: [1, 4, 16])
    long_lengths: list[int] = field(default_factory=lambda: [64])  # scored on kv and passkey only
    long_examples: int = 200
    # the long lengths scored again with the external memory sized to the whole input (no eviction)
    full_memory: bool = True
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    eval_examples: int = 500
    # Per cell of the control rows and of the FAISS rows: the first of the test examples. Fewer than the main cells
    # (issue #28: the default run within 45 min): the controls' effects are all-or-nothing (0.05 vs 0.95), and the
    # FAISS rows only have to show the flat index equal to the exact store; the FAISS rows were 2/5 of the `both`
    # process's time at 200 examples (docs/recall.md, Time).
    control_examples: int = 100
    faiss_examples: int = 50
    controls: bool = True
    faiss: bool = True
    effective_threshold: float = 0.85  # RULER's effective length: the score a length must keep
    # the lengths each variant is scored at on the validation stream (empty: the longest trained length, 4x) -
    # recipe work that must see 16x, where a passkey route can fail while 4x holds (docs/recall.md)
    val_lengths: list[int] = field(default_factory=list)


def _recipe_class():
    from hybrid.training.recall import RecallRecipe

    return RecallRecipe


QUICK = dict(lengths=[1, 4], long_lengths=[], eval_examples=16, control_examples=16, seeds=[0], faiss=False)
EFFECTIVE_THRESHOLD = 0.85  # Settings.effective_threshold, for results saved before it existed
QUICK_RECIPE = dict(base_steps=200, steps=100, batch_size=16, warmup=10, base_rounds=1, val_examples=16)
LONG_TASKS = ("kv", "passkey")
CONTROL_TASKS = ("kv", "passkey")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a smoke run (a minute): few steps, 1x and 4x, one seed")
    p.add_argument(
        "--base-only",
        action="store_true",
        help="stage 1 alone: each seed's base and its in-window key-value on validation per round (recipe work; "
        "no stage 2, no test stream)",
    )
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="draw accuracy vs length, one line per variant")
    p.add_argument("--markdown", metavar="FILE.md", help="write the tables as markdown")
    p.add_argument(
        "--from-json",
        metavar="FILE[,FILE…]",
        help="render the results saved in FILE (no training); several files of the same settings and "
        "different seeds are merged",
    )
    p.add_argument(
        "--write-docs",
        action="store_true",
        help="put the tables into README.md and docs/recall.md between their recall-table markers",
    )
    p.add_argument("--seeds", help="comma-separated seeds of the data and the weights (default 0,1,2)")
    p.add_argument("--seed", type=non_negative_int, help="one seed (same as --seeds N)")
    p.add_argument("--base-steps", type=positive_int, help="stage 1: steps per round (default 1500)")
    p.add_argument("--steps", type=positive_int, help="stage 2: length-curriculum steps per variant (default 1500)")
    p.add_argument("--variants", help=f"comma-separated subset of {','.join(VARIANTS)}")
    p.add_argument(
        "--tasks",
        help="comma-separated tasks (default kv,passkey,facts; opt-in: multikey,multivalue,vt (RULER-style), "
        "qa1,qa2,qa3 (BABILong-like))",
    )
    p.add_argument("--lengths", help="comma-separated lengths in segments (default 1,4,16)")
    p.add_argument("--long-lengths", help="lengths beyond training, kv and passkey only (default 64; '' = none)")
    p.add_argument("--eval-examples", type=positive_int, help="test examples per task and length (default 500)")
    p.add_argument("--no-controls", action="store_true", help="skip the control rows")
    p.add_argument("--no-faiss", action="store_true", help="skip the FAISS rows")
    p.add_argument(
        "--no-full-memory",
        action="store_true",
        help="skip scoring the long lengths again with an external memory that holds the whole input",
    )
    p.add_argument(
        "--jobs",
        type=non_negative_int,
        default=0,
        help="seeds trained at once, each in its own single-threaded process (default 0: every seed at "
        "once; 1: one after another in this process)",
    )
    p.add_argument(
        "--threads",
        type=non_negative_int,
        default=1,
        help="torch CPU threads (default %(default)s: the tiny model gains nothing from more, and on a "
        "busy machine extra threads make each step many times slower)",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="model.<key>=value or bench.<key>=value (e.g. model.hidden_size=128 bench.learning_rate=1e-3)",
    )


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

    from hybrid.data.recall_tasks import ALL_TASKS

    s = Settings()
    r = s.recipe
    if args.quick:
        for key, value in QUICK.items():
            setattr(s, key, value)
        for key, value in QUICK_RECIPE.items():
            setattr(r, key, value)
    if args.seed is not None:
        s.seeds = [args.seed]
    s.seeds = _csv(args.seeds, int) or s.seeds
    if args.steps is not None:
        r.steps = args.steps
    if args.base_steps is not None:
        r.base_steps = args.base_steps
    if args.eval_examples is not None:
        s.eval_examples = args.eval_examples
    s.variants = _csv(args.variants) or s.variants
    r.tasks = _csv(args.tasks) or r.tasks
    s.lengths = _csv(args.lengths, int) or s.lengths
    if args.long_lengths is not None:
        s.long_lengths = _csv(args.long_lengths, int) or []
    s.controls = s.controls and not args.no_controls
    s.faiss = s.faiss and not args.no_faiss
    s.full_memory = s.full_memory and not args.no_full_memory
    for v in s.variants:
        if v not in VARIANTS:
            raise HybridError(f"--variants: unknown variant {v!r} (choose from {', '.join(VARIANTS)})")
    for t in r.tasks:
        if t not in ALL_TASKS:
            raise HybridError(f"--tasks: unknown task {t!r} (choose from {', '.join(ALL_TASKS)})")
    for n in s.lengths + s.long_lengths:
        if n < 1:
            raise HybridError(f"--lengths: {n} is not a positive number of segments")
    if not s.seeds or any(x < 0 for x in s.seeds) or len(set(s.seeds)) != len(s.seeds):
        raise HybridError(f"--seeds: expected distinct non-negative integers, got {s.seeds}")
    own = {f.name for f in fields(Settings)} - {"recipe"}
    for item in args.overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise HybridError(f"override {item!r}: expected key=value")
        value = yaml.safe_load(raw) if raw else raw
        group, _, name = key.partition(".")
        if group == "model" and name:
            r.model[name] = value
        elif group == "bench" and name in own:
            setattr(s, name, value)
        elif group == "bench" and name and name in type(r).__dataclass_fields__ and name != "model":
            setattr(r, name, value)
        else:
            keys = sorted((own | set(type(r).__dataclass_fields__)) - {"model"})
            raise HybridError(f"{key}: unknown key (use model.<key> or bench.<key>, bench keys: {', '.join(keys)})")
    r.check()
    if min(s.eval_examples, s.long_examples, s.control_examples, s.faiss_examples) < 1:
        raise HybridError(
            "--eval-examples, bench.long_examples, bench.control_examples and bench.faiss_examples must be positive"
        )
    if not isinstance(s.val_lengths, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in s.val_lengths
    ):
        raise HybridError(f"bench.val_lengths: a list of positive numbers of segments, got {s.val_lengths!r}")
    if not isinstance(s.effective_threshold, (int, float)) or not 0 < s.effective_threshold <= 1:
        raise HybridError(f"bench.effective_threshold: a score in (0, 1], got {s.effective_threshold!r}")
    return s


# ----------------------------------------------------------------------------------------------------------
# Statistics


def summary(per_seed: list[float], n: int) -> dict[str, Any]:
    lo, hi = interval(per_seed, n)
    return {"mean": sum(per_seed) / len(per_seed), "per_seed": per_seed, "ci95": [lo, hi], "n_per_seed": n}


# ----------------------------------------------------------------------------------------------------------
# One seed


def _scores_cell(scores) -> dict[str, float]:
    cell = {"exact": scores.exact_match, "value": scores.value_accuracy, "ruler": scores.ruler_score}
    if scores.label_set_accuracy is not None:  # qa1-qa3
        cell["label_set"] = scores.label_set_accuracy
    return cell


def val_lengths(s: Settings) -> list[int]:
    return list(s.val_lengths) or [max(s.recipe.length_mix)]


def run_seed(s: Settings, seed: int, work: Path, log=print) -> dict[str, Any]:
    """Stage 1, stage 2 per variant, then every score of this seed: {"base", "cells", "cells_full_memory",
    "validation", "controls", "faiss", "mentioned", "seconds"}."""
    from hybrid.cli.config import load_config
    from hybrid.config.memory import MemoryConfig
    from hybrid.data import recall_tasks as rt
    from hybrid.training import recall as rc

    r = s.recipe
    base_cfg = load_config([]).recipe()
    trained = max(s.lengths + list(r.length_mix))
    max_length = trained * r.segment_length
    t0 = time.time()
    seconds: dict[str, float] = {}
    log(f"[seed {seed}] base: up to {r.base_rounds} x {r.base_steps} in-window steps (hybrid train)")
    base = rc.train_base(r, base_cfg, work, seed, max_length, say=log)
    seconds["base"] = round(time.time() - t0, 1)
    if not base.passed:
        log(
            f"  the base missed the bar: in-window key-value {base.val_kv_1x[-1]:.2f} < {r.base_bar} after "
            f"{base.rounds} rounds (reported; the variants still start from it)"
        )
    data = rc.stage2_data(r, work, seed)
    tests = {(t, n): rc.eval_examples(r, t, n, s.eval_examples, seed, "test") for t in r.tasks for n in s.lengths}
    tests.update(
        {
            (t, n): rc.eval_examples(r, t, n, s.long_examples, seed, "test")
            for t in r.tasks
            if t in LONG_TASKS
            for n in s.long_lengths
        }
    )
    vals = {(t, n): rc.eval_examples(r, t, n, r.val_examples, seed, "val") for t in r.tasks for n in val_lengths(s)}
    mentioned = {
        t: {str(n): sum(map(rt.mentioned_chance, ex)) / len(ex) for (tt, n), ex in tests.items() if tt == t}
        for t in r.tasks
    }
    cells: dict[str, Any] = {}
    cells_full: dict[str, Any] = {}  # the long lengths with an external memory that holds the whole input
    validation: dict[str, Any] = {}
    stage2: dict[str, Any] = {}  # bench.stage2_inits > 1: every try's validation cells and the one kept
    controls: dict[str, Any] = {}
    faiss: dict[str, Any] = {}
    for variant in s.variants:
        t1 = time.time()
        log(
            f"[seed {seed}] {VARIANT_TITLES[variant]}: {r.steps} steps on the length mix (hybrid train, init from "
            f"the base)"
        )
        # scored on validation as it is trained, in its seconds (bench.stage2_inits > 1: every try into the JSON)
        ckpt, tried = rc.train_variant_best(
            r, base_cfg, variant, base.checkpoint, work, data, seed, max_length, vals, say=log
        )
        validation[variant] = tried["tries"][tried["chosen"]]
        if r.stage2_inits > 1:
            stage2[variant] = tried
        seconds[f"{variant}_train"] = round(time.time() - t1, 1)
        cells[variant] = {t: {} for t in r.tasks}
        with rc.loaded(ckpt) as (model, tok):
            for (t, n), ex in tests.items():
                sc = rc.score(model, tok, ex)
                cells[variant][t][str(n)] = _scores_cell(sc)
                if t == "passkey":  # diagnosis: a lookup keyed on the digit before is ambiguous when a digit repeats
                    ok = [x for x, e in zip(sc.exact, ex) if len(set(e.output.split())) == len(e.output.split())]
                    cells[variant][t][str(n)]["distinct_digits"] = {
                        "examples": len(ok),
                        "exact": sum(ok) / max(1, len(ok)),
                    }
            seconds[f"{variant}_score"] = round(time.time() - t1 - seconds[f"{variant}_train"], 1)
            if variant == "both" and s.controls:
                t2 = time.time()
                controls = _controls(s, model, tok, tests, seed)
                seconds["controls"] = round(time.time() - t2, 1)
        long_tests = {(t, n): ex for (t, n), ex in tests.items() if n in s.long_lengths}
        if s.full_memory and long_tests and rc.VARIANTS[variant]["use_external_memory"]:
            t2 = time.time()
            room = max(s.long_lengths) * r.segment_length  # every token of the longest input: nothing is evicted
            cells_full[variant] = {t: {} for t in r.tasks if t in LONG_TASKS}
            with rc.loaded(ckpt, external_memory_size=max(room, r.model["external_memory_size"])) as (model, tok):
                for (t, n), ex in long_tests.items():
                    cells_full[variant][t][str(n)] = _scores_cell(rc.score(model, tok, ex))
            seconds[f"{variant}_full_memory"] = round(time.time() - t2, 1)
        if variant == "both" and s.faiss:
            t2 = time.time()
            for name, memory in (
                ("faiss_flat", MemoryConfig(backend="faiss", faiss_index="flat")),
                ("faiss_ivf", MemoryConfig(backend="faiss", faiss_index="ivf", ivf_nlist=8, ivf_nprobe=2)),
            ):
                with rc.loaded(ckpt, memory=memory) as (model, tok):
                    faiss[name] = {
                        t: {
                            str(n): _scores_cell(rc.score(model, tok, ex[: s.faiss_examples]))
                            for (tt, n), ex in tests.items()
                            if tt == t and n >= 16
                        }
                        for t in r.tasks
                        if t in LONG_TASKS
                    }
            seconds["faiss"] = round(time.time() - t2, 1)
        seconds[variant] = round(time.time() - t1, 1)
        log(
            f"  [{variant}] exact match "
            + ", ".join(
                f"{t} {n}x {cells[variant][t][n]['exact']:.2f}" for t in cells[variant] for n in cells[variant][t]
            )
            + f" ({seconds[variant]:.0f}s)"
        )
    return {
        "base": {"rounds": base.rounds, "val_kv_1x": base.val_kv_1x, "passed": base.passed, **_inits(base)},
        "cells": cells,
        "cells_full_memory": cells_full,
        "validation": validation,
        **({"stage2": stage2} if stage2 else {}),
        "controls": controls,
        "faiss": faiss,
        "mentioned": mentioned,
        "seconds": seconds,
    }


def _controls(s: Settings, model, tok, tests: dict, seed: int) -> dict[str, Any]:
    """The control rows on one model (the `both` variant), at the trained lengths above 1x of the control tasks, on
    the first `control_examples` test examples of each."""
    from hybrid.models.controls import memory_gates_closed
    from hybrid.training import recall as rc

    out: dict[str, Any] = {name: {} for name in CONTROL_TITLES}
    rng = random.Random(seed * 31 + 5)
    for (t, n), ex in tests.items():
        if t not in CONTROL_TASKS or n == 1 or n in s.long_lengths:
            continue
        ex = ex[: s.control_examples]
        with memory_gates_closed(model):
            out["gates_closed"].setdefault(t, {})[str(n)] = _scores_cell(rc.score(model, tok, ex))
        donors = ex[1:] + ex[:1]
        swapped = [rc.swapped_haystack(e, d, s.recipe.segment_length) for e, d in zip(ex, donors)]
        out["swapped"].setdefault(t, {})[str(n)] = _scores_cell(rc.score(model, tok, [e for e, _ in swapped]))
        follows = [rc.answering(e, o) for e, o in swapped if o is not None]  # key-value: the donor has the key
        if follows:
            cell = _scores_cell(rc.score(model, tok, follows))
            out["swapped_follows"].setdefault(t, {})[str(n)] = {**cell, "examples": len(follows)}
        edited = [rc.answering(e, o) for e, o in (rc.edited_haystack(e, rng) for e in ex)]
        out["edited_follows"].setdefault(t, {})[str(n)] = _scores_cell(rc.score(model, tok, edited))
    return out


# ----------------------------------------------------------------------------------------------------------
# Across seeds


def aggregate(st: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-seed results (`run_seed`'s) → mean, per-seed values and 95 % interval per cell (exact match; value
    accuracy beside); `st` the settings (as in the JSON)."""

    def cell(get, n_examples):
        exact = [get(run)["exact"] for run in runs]
        out = summary(exact, n_examples)
        out["value"] = summary([get(run)["value"] for run in runs], n_examples)
        for extra in ("ruler", "label_set"):  # scored since issue #28 (absent from older results)
            if all(extra in get(run) for run in runs):
                out[extra] = summary([get(run)[extra] for run in runs], n_examples)
        return out

    def n_of(n: str, limit: int | None = None) -> int:
        n_examples = st["long_examples"] if int(n) in st["long_lengths"] else st["eval_examples"]
        return min(n_examples, limit) if limit else n_examples

    first = runs[0]
    accuracy = {
        v: {
            t: {n: cell(lambda run, v=v, t=t, n=n: run["cells"][v][t][n], n_of(n)) for n in by_n}
            for t, by_n in first["cells"][v].items()
        }
        for v in first["cells"]
    }
    accuracy_full_memory = {
        v: {
            t: {n: cell(lambda run, v=v, t=t, n=n: run["cells_full_memory"][v][t][n], n_of(n)) for n in by_n}
            for t, by_n in by_t.items()
        }
        for v, by_t in first.get("cells_full_memory", {}).items()
    }
    controls = {}
    for name, by_t in first["controls"].items():
        # A row scored on a subset (the other's answer: examples whose key the donor holds) pools the fewest
        # examples any seed had, so its interval is not narrower than the data allow.
        controls[name] = {
            t: {
                n: cell(
                    lambda run, name=name, t=t, n=n: run["controls"][name][t][n],
                    min(run["controls"][name][t][n].get("examples", n_of(n, st["control_examples"])) for run in runs),
                )
                for n in by_n
            }
            for t, by_n in by_t.items()
        }
    faiss = {
        name: {
            t: {
                # results saved before faiss_examples existed scored these rows on control_examples
                n: cell(
                    lambda run, name=name, t=t, n=n: run["faiss"][name][t][n],
                    n_of(n, st.get("faiss_examples", st["control_examples"])),
                )
                for n in by_n
            }
            for t, by_n in by_t.items()
        }
        for name, by_t in first["faiss"].items()
    }
    mentioned = {
        t: {n: sum(run["mentioned"][t][n] for run in runs) / len(runs) for n in by_n}
        for t, by_n in first["mentioned"].items()
    }
    validation = {
        v: {
            t: {n: sum(run["validation"][v][t][n] for run in runs) / len(runs) for n in by_n}
            for t, by_n in first["validation"][v].items()
        }
        for v in first["validation"]
    }
    out = {
        "accuracy": accuracy,
        "accuracy_full_memory": accuracy_full_memory,
        "controls": controls,
        "faiss": faiss,
        "mentioned": mentioned,
        "validation": validation,
    }
    out["effective_length"] = effective_lengths({"settings": st, **out})
    return out


def effective_length(scores: dict[int, float], threshold: float) -> int:
    """RULER's effective length: the longest tested length (in segments) up to which the score stays at or above
    `threshold` - every shorter tested length passes too; 0 when the shortest already fails."""
    best = 0
    for n in sorted(scores):
        if scores[n] < threshold:
            break
        best = n
    return best


def score_metric(result: dict) -> str:
    """The score effective lengths are measured on: RULER's where the result has it, else exact match (results
    saved before issue #28)."""
    st = result["settings"]
    some = result["accuracy"][st["variants"][0]]
    return "ruler" if all("ruler" in c for by_n in some.values() for c in by_n.values()) else "exact"


def _mean(c: dict, metric: str) -> float:
    return c["mean"] if metric == "exact" else c[metric]["mean"]


def effective_lengths(result: dict) -> dict[str, Any]:
    """{variant: {task: segments}} on the mean over seeds of `score_metric`, at the lengths the main cells test
    (the long ones with the evicting memory), and `full_memory` the same with the long lengths scored with a memory
    that holds the whole input (variants with an external memory)."""
    st = result["settings"]
    threshold = st.get("effective_threshold", EFFECTIVE_THRESHOLD)
    metric = score_metric(result)

    def lengths(v: str, full: bool) -> dict[str, int]:
        out = {}
        for t, by_n in result["accuracy"][v].items():
            scores = {int(n): _mean(c, metric) for n, c in by_n.items()}
            if full:
                for n, c in result.get("accuracy_full_memory", {}).get(v, {}).get(t, {}).items():
                    scores[int(n)] = _mean(c, metric)
            out[t] = effective_length(scores, threshold)
        return out

    return {
        "metric": metric,
        "threshold": threshold,
        "variants": {v: lengths(v, False) for v in result["accuracy"]},
        "full_memory": {v: lengths(v, True) for v in result.get("accuracy_full_memory", {})},
    }


# ----------------------------------------------------------------------------------------------------------
# Reporting


def _fmt(c: dict[str, Any]) -> str:
    lo, hi = c["ci95"]
    return f"{c['mean']:.2f} [{lo:.2f}, {hi:.2f}]"


def _lengths_of(result: dict) -> list[str]:
    st = result["settings"]
    return [str(n) for n in st["lengths"] + st["long_lengths"]]


METRIC_TITLES = {
    "exact": "exact match",
    "ruler": "RULER score (the fraction of reference strings present)",
    "label_set": "BABILong label-set accuracy (the target and no other place)",
}


def _length(n: int) -> str:
    return "< 1×" if n == 0 else f"{n}×"


def _chances(st: dict) -> dict[str, float]:
    """Each task's uniform chance under the run's recipe (settings `st`): two-hop facts with support name two words."""
    from hybrid.data.recall_tasks import chance

    support = bool(st["recipe"].get("facts_support"))
    return {t: chance(t, support=support) for t in st["recipe"]["tasks"]}


def table_rows(result: dict, metric: str = "exact") -> tuple[list[str], list[list[str]]]:
    """A table of `metric` (exact match: the main one): task, length, chance, mentioned, one column per variant (mean
    [95 % interval]); the long lengths again with a memory that holds the whole input where the result has them,
    and (exact match) each task's effective length per variant."""
    from hybrid.data.recall_tasks import TASK_TITLES

    st = result["settings"]
    L = st["recipe"]["segment_length"]
    chance = _chances(st)
    header = ["task", "length", "chance", "mentioned"] + [VARIANT_TITLES[v] for v in st["variants"]]
    full = result.get("accuracy_full_memory", {})
    effective = effective_lengths(result)

    def fmt(c: dict | None) -> str:
        if c is None:
            return "—"
        return _fmt(c) if metric == "exact" else _fmt(c[metric])

    rows = []
    for t in st["recipe"]["tasks"]:
        first = result["accuracy"][st["variants"][0]].get(t, {})
        if metric != "exact" and not all(metric in c for c in first.values()):
            continue
        for n in _lengths_of(result):
            if n not in first:
                continue
            beyond = " (beyond training)" if int(n) in st["long_lengths"] else ""
            head = [TASK_TITLES[t], f"{n}× ({int(n) * L} tokens){beyond}", f"{chance[t]:.3g}"]
            head.append(f"{result['mentioned'][t][n]:.3g}")
            rows.append(head + [fmt(result["accuracy"][v][t][n]) for v in st["variants"]])
            if any(n in full.get(v, {}).get(t, {}) for v in st["variants"]):
                rows.append(
                    [TASK_TITLES[t], f"{n}× (beyond training), a memory that holds all {int(n) * L} tokens"]
                    + head[2:]
                    + [fmt(full.get(v, {}).get(t, {}).get(n)) for v in st["variants"]]
                )
        if metric == "exact" and first:
            what = f"{METRIC_TITLES[effective['metric']].split(' (')[0]} ≥ {effective['threshold']:g}"
            rows.append(
                [TASK_TITLES[t], f"effective length ({what})", "", ""]
                + [_length(effective["variants"][v][t]) for v in st["variants"]]
            )
            if any(t in full.get(v, {}) for v in st["variants"]):
                rows.append(
                    [TASK_TITLES[t], "effective length, a memory that holds the input", "", ""]
                    + [_length(effective["full_memory"][v][t]) if t in full.get(v, {}) else "—" for v in st["variants"]]
                )
    return header, rows


def per_seed_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    from hybrid.data.recall_tasks import TASK_TITLES

    st = result["settings"]
    header = [
        "task",
        "length",
        "variant",
        "exact match per seed (" + ", ".join(map(str, st["seeds"])) + ")",
        "value tokens per seed",
    ]
    ruler = score_metric(result) == "ruler"
    if ruler:
        header.append("RULER score per seed")
    full = result.get("accuracy_full_memory", {})
    rows = []
    for t in st["recipe"]["tasks"]:
        for n in _lengths_of(result):
            cells = [(v, result["accuracy"][v].get(t, {}).get(n), f"{n}×") for v in st["variants"]]
            cells += [(v, full.get(v, {}).get(t, {}).get(n), f"{n}×, memory holds it") for v in st["variants"]]
            for v, c, length in cells:
                if c is None:
                    continue
                rows.append(
                    [
                        TASK_TITLES[t],
                        length,
                        VARIANT_TITLES[v],
                        " ".join(f"{x:.2f}" for x in c["per_seed"]),
                        " ".join(f"{x:.2f}" for x in c["value"]["per_seed"]),
                    ]
                    + ([" ".join(f"{x:.2f}" for x in c["ruler"]["per_seed"])] if ruler else [])
                )
    return header, rows


def control_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    from hybrid.data.recall_tasks import TASK_TITLES

    header = ["row", "task", "length", "exact match", "value tokens"]
    rows = []
    for group, titles in (("controls", CONTROL_TITLES), ("faiss", FAISS_ROWS)):
        for name, title in titles.items():
            for t, by_n in result[group].get(name, {}).items():
                for n, c in by_n.items():
                    rows.append([title, TASK_TITLES[t], f"{n}×", _fmt(c), _fmt(c["value"])])
    return header, rows


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    return markdown_table(header, rows, text_columns=2)  # variant and task


def _kept(base: dict) -> str:
    """' (init 2 of 3 kept)' for a best-of-N stage 1, else ''."""
    return f" (init {base['chosen'] + 1} of {len(base['inits'])} kept)" if base.get("inits") else ""


def markdown_report(result: dict, full: bool = True) -> str:
    """The tables as GitHub markdown: main (means and intervals), then (`full`) controls and FAISS, per seed."""
    st = result["settings"]
    base = "; ".join(
        f"seed {seed}: {b['rounds']} round(s), in-window key-value {b['val_kv_1x'][-1]:.2f}"
        f"{'' if b['passed'] else ' (missed the bar)'}"
        f"{_kept(b)}"
        for seed, b in zip(st["seeds"], result["base"])
        if b["val_kv_1x"]
    )
    parts = [
        f"Exact match, mean over seeds {', '.join(map(str, st['seeds']))} [95 % interval]; "
        f"{st['eval_examples']} test examples per cell and seed ({st['long_examples']} beyond training).\n",
        _markdown(*table_rows(result)),
    ]
    if not full:
        return "".join(parts)
    for metric in ("ruler", "label_set"):
        header, rows = table_rows(result, metric)
        if rows:
            parts += [f"\n{METRIC_TITLES[metric][0].upper()}{METRIC_TITLES[metric][1:]}, mean over seeds:\n"]
            parts.append(_markdown(header, rows))
    if result["controls"] or result["faiss"]:
        parts += [
            "\nControls (the `both` variant) and the external memory in FAISS:\n",
            _markdown(*control_rows(result)),
        ]
    parts += ["\nPer seed:\n", _markdown(*per_seed_rows(result))]
    if base:
        parts.append(f"\nStage 1 (bar {st['recipe']['base_bar']}): {base}.\n")
    return "".join(parts)


def write_docs(result: dict, root: Path = Path(".")) -> list[Path]:
    """Replace the block between the recall-table markers of README.md and docs/recall.md with the report."""
    return DOCS.write(lambda full: markdown_report(result, full), root)


def render_table(result: dict):
    from rich.table import Table

    header, rows = table_rows(result)
    table = Table(
        title=f"exact match, mean over seeds {result['settings']['seeds']} [95 % interval] "
        f"(segment_length {result['settings']['recipe']['segment_length']}; window = 1 segment)"
    )
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i < 2 else "right")
    for r in rows:
        table.add_row(*r)
    return table


def draw_plot(result: dict, path: str) -> None:
    """Score vs length per task, one line per variant (its effective length in the legend), the threshold, and the
    long lengths with a memory that holds the whole input as hollow markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hybrid.data.recall_tasks import TASK_TITLES

    st = result["settings"]
    tasks = st["recipe"]["tasks"]
    chance = _chances(st)
    effective = effective_lengths(result)
    metric = effective["metric"]
    full = result.get("accuracy_full_memory", {})

    def mean_and_err(cells: list[dict]) -> tuple[list[float], list[list[float]]]:
        cells = [c if metric == "exact" else c[metric] for c in cells]
        means = [c["mean"] for c in cells]
        return means, [
            [m - c["ci95"][0] for m, c in zip(means, cells)],
            [c["ci95"][1] - m for m, c in zip(means, cells)],
        ]

    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        lengths = [n for n in _lengths_of(result) if n in result["accuracy"][st["variants"][0]][task]]
        xs = [int(n) for n in lengths]
        for v in st["variants"]:
            means, err = mean_and_err([result["accuracy"][v][task][n] for n in lengths])
            label = f"{VARIANT_TITLES[v]} (effective {_length(effective['variants'][v][task])})"
            line = ax.errorbar(xs, means, yerr=err, marker="o", capsize=3, label=label)
            held = [n for n in lengths if n in full.get(v, {}).get(task, {})]
            if held:
                means, err = mean_and_err([full[v][task][n] for n in held])
                ax.errorbar(
                    [int(n) for n in held],
                    means,
                    yerr=err,
                    marker="o",
                    mfc="none",
                    linestyle="none",
                    capsize=3,
                    color=line[0].get_color(),
                    label=f"{VARIANT_TITLES[v]}, memory holds it "
                    f"(effective {_length(effective['full_memory'][v][task])})",
                )
        ax.axhline(chance[task], color="grey", linestyle=":", label="chance")
        ax.axhline(effective["threshold"], color="black", linewidth=0.6, linestyle="-.", label="threshold")
        mentioned = [result["mentioned"][task][n] for n in lengths if n in result.get("mentioned", {}).get(task, {})]
        if mentioned and sum(mentioned) / len(mentioned) > 1.5 * chance[task]:  # the fair baseline, where it differs
            ax.axhline(sum(mentioned) / len(mentioned), color="grey", linestyle="--", label="one of the mentioned")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{n}x" for n in xs])
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(TASK_TITLES[task])
        ax.set_xlabel("input length (segments)")
        ax.legend(loc="best", fontsize=6, framealpha=0.7)
    axes[0][0].set_ylabel(f"{METRIC_TITLES[metric].split(' (')[0]} (95 % interval)")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def base_seed(s: Settings, seed: int, work: Path, log=print) -> dict[str, Any]:
    """`--base-only`: stage 1 of one seed, judged on validation only."""
    from hybrid.cli.config import load_config
    from hybrid.training import recall as rc

    t0 = time.time()
    max_length = max(s.lengths + list(s.recipe.length_mix)) * s.recipe.segment_length
    log(f"[seed {seed}] base: up to {s.recipe.base_rounds} x {s.recipe.base_steps} in-window steps")
    base = rc.train_base(s.recipe, load_config([]).recipe(), work, seed, max_length, say=log)
    # every task in the window, on validation, after the last round: which circuits the base has
    val_1x = base.inits[base.chosen]["val_1x"] if base.inits else rc.val_in_window(s.recipe, base.checkpoint, seed)
    log(f"[seed {seed}] base in the window, validation: " + ", ".join(f"{t} {v:.2f}" for t, v in val_1x.items()))
    return {
        "seed": seed,
        "rounds": base.rounds,
        "val_kv_1x": base.val_kv_1x,
        "val_1x": val_1x,
        "passed": base.passed,
        **_inits(base),
        "seconds": round(time.time() - t0, 1),
    }


def _inits(base) -> dict[str, Any]:
    """A best-of-N stage 1's record (`bench.base_inits` > 1): every init's validation scores and the one kept."""
    return {"inits": base.inits, "chosen": base.chosen, "scored_tasks": base.scored} if base.inits else {}


def _seed_in_process(job: tuple) -> dict[str, Any]:
    """One seed in a worker process (`--jobs`)."""
    import torch

    s, seed, threads, base_only = job
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix=f"hybrid-recall-{seed}-") as tmp:
        return (base_seed if base_only else run_seed)(s, seed, Path(tmp))


def result_of(st: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON of a run: settings, the aggregates, and every seed's own results (`runs`, for merging)."""
    return {
        "bench": "recall",
        "settings": st,
        "chance": _chances(st),
        **aggregate(st, runs),
        "base": [run["base"] for run in runs],
        "seconds": [run["seconds"] for run in runs],
        "runs": runs,
    }


def merge(results: list[dict]) -> dict:
    """Results of the same settings for different seeds (e.g. run on several machines) as one result."""
    if len(results) == 1:
        return results[0]
    first = {k: v for k, v in results[0]["settings"].items() if k != "seeds"}
    seeds: list[int] = []
    runs: list[dict] = []
    for r in results:
        if {k: v for k, v in r["settings"].items() if k != "seeds"} != first:
            raise HybridError("--from-json: the files were made with different settings (only the seeds may differ)")
        if "runs" not in r:
            raise HybridError("--from-json: a file without per-seed results (`runs`) cannot be merged")
        seeds += r["settings"]["seeds"]
        runs += r["runs"]
    if len(set(seeds)) != len(seeds):
        raise HybridError(f"--from-json: a seed appears twice ({sorted(seeds)})")
    merged = result_of({**results[0]["settings"], "seeds": seeds}, runs)
    merged["total_seconds"] = sum(r.get("total_seconds", 0) for r in results)
    merged["merged_from"] = len(results)
    return merged


def _load_result(path: str) -> dict:
    return load_result(path, "recall", lambda result: (result["settings"]["variants"], result["accuracy"]))


def _report_bases(args, s: Settings, runs: list[dict], seconds: float, load_before, log) -> int:
    """`--base-only`'s output: per seed, in-window key-value on validation after each round; `--json` keeps it."""
    from hybrid.core.io import atomic_write_json

    r = s.recipe
    for run in runs:
        rounds = " / ".join(f"{x:.3f}" for x in run["val_kv_1x"])
        tasks = ", ".join(f"{t} {v:.3f}" for t, v in run.get("val_1x", {}).items())
        for i, init in enumerate(run.get("inits", [])):
            compared = ", ".join(run.get("scored_tasks", []))  # absent from results saved before pick_init
            kept = (f" (kept; compared on {compared})" if compared else " (kept)") if i == run["chosen"] else ""
            log(
                f"seed {run['seed']} init {i + 1}{kept}: key-value by round "
                + " / ".join(f"{x:.3f}" for x in init["val_kv_1x"])
                + "; in the window: "
                + ", ".join(f"{t} {v:.3f}" for t, v in init["val_1x"].items())
            )
        log(
            f"seed {run['seed']}: {rounds} ({'passed' if run['passed'] else 'missed'} the bar {r.base_bar}; "
            f"{run['seconds']:.0f}s); every task in the window after the last round: {tasks}"
        )
    passed = sum(run["passed"] for run in runs)
    log(
        f"{passed} of {len(runs)} seeds passed; {seconds:.0f}s "
        f"(load average {load_before[0]:.1f} → {os.getloadavg()[0]:.1f})"
    )
    if args.json:
        atomic_write_json(args.json, {"bench": "recall-base", "settings": asdict(s), "base": runs})
        log(f"wrote {args.json}")
    return 0


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hybrid.core.io import atomic_write_json

    # Wide enough for the whole table when the output is not a terminal (logs, CI, tests).
    console = Console() if sys.stdout.isatty() else Console(width=160)

    def log(message: str) -> None:
        console.print(message, markup=False, highlight=False)

    if args.from_json:
        result = merge([_load_result(path) for path in args.from_json.split(",") if path])
    else:
        import torch

        s = settings_from_args(args)
        if args.threads < 1:
            raise HybridError(f"--threads: expected a positive number, got {args.threads}")
        torch.set_num_threads(args.threads)
        t0, load_before = time.time(), os.getloadavg()
        jobs = args.jobs or len(s.seeds)
        if jobs > 1 and len(s.seeds) > 1:
            from hybrid.core.processes import process_pool  # (late: `hybrid --help` needs none of it)

            with process_pool(min(jobs, len(s.seeds))) as pool:
                jobs_ = [(s, seed, args.threads, args.base_only) for seed in s.seeds]
                runs = list(pool.map(_seed_in_process, jobs_))
        else:
            runs = []
            for seed in s.seeds:
                with tempfile.TemporaryDirectory(prefix=f"hybrid-recall-{seed}-") as tmp:
                    runs.append((base_seed if args.base_only else run_seed)(s, seed, Path(tmp), log=log))
        if args.base_only:
            return _report_bases(args, s, runs, time.time() - t0, load_before, log)
        result = result_of(asdict(s), runs)
        result.update(
            {
                "total_seconds": round(time.time() - t0, 1),
                "jobs": min(jobs, len(s.seeds)),
                "load_average": {"before": load_before, "after": os.getloadavg()},
                "cpu_count": os.cpu_count(),
            }
        )
    console.print(render_table(result))
    header, rows = control_rows(result)
    if rows:
        console.print(_markdown(header, rows), markup=False, highlight=False)
    if "total_seconds" in result:
        la = result.get("load_average", {})
        console.print(
            f"total {result['total_seconds']:.0f}s (load average {la.get('before', [0])[0]:.1f} → "
            f"{la.get('after', [0])[0]:.1f})"
        )
    if args.json and not args.from_json:
        atomic_write_json(args.json, result)
        console.print(f"wrote {args.json}")
    if args.markdown:
        from hybrid.core.io import atomic_write_text

        atomic_write_text(args.markdown, markdown_report(result))
        console.print(f"wrote {args.markdown}")
    if args.write_docs:
        for path in write_docs(result):
            console.print(f"wrote the tables into {path}")
    if args.plot:
        draw_plot(result, args.plot)
        console.print(f"wrote {args.plot}")
    return 0
