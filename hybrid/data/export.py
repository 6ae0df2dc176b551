"""`hybrid pipeline export`: data/ast_dataset → datasets/io_pairs/{train,validation,test}.jsonl.

Two kinds of pairs (docs/data-format.md):
- fim: input = the task text when there is one + `<|fim_prefix|>prefix<|fim_suffix|>suffix<|fim_middle|>`,
  output = the middle;
- reasoning: input = the task + the function before and after the change, output = the first-person reasoning.

Splits never share a function: with three or more repositories whole repositories go to validation and test;
otherwise by time — each function belongs to the commit where it first appears, and the functions that appear
last go to test, the ones before them to validation, the rest to train."""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybrid.core import storage
from hybrid.core.errors import HybridError
from hybrid.core.io import atomic_write_json, atomic_write_jsonl, iter_jsonl, read_json
from hybrid.core.layout import DIFF_AST, FIM, REASONING, TASKS, DatasetLayout
from hybrid.data.tokenizer import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, TASK
from pipelines.dedup import drop_marked_and_repeated

SPLITS = ("train", "validation", "test")
KINDS = ("fim", "reasoning")


@dataclass
class ExportResult:
    output_dir: Path
    sizes: dict[str, int]
    split_by: str
    repos: list[str]
    skipped: Counter = field(default_factory=Counter)

    def paths(self) -> dict[str, Path]:
        return {s: self.output_dir / f"{s}.jsonl" for s in SPLITS}


def fim_input(prefix: str, suffix: str, task: str | None = None) -> str:
    head = f"{TASK}{task.strip()}\n" if task and task.strip() else ""
    return f"{head}{FIM_PREFIX}{prefix}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}"


def reasoning_input(
    function_id: str, operation: str, before: str | None, after: str | None, task: str | None = None
) -> str:
    parts = [f"{TASK}{task.strip()}\n" if task and task.strip() else "", f"{operation} {function_id}\n"]
    if before:
        parts.append(f"Before:\n{before}\n")
    if after:
        parts.append(f"After:\n{after}\n")
    parts.append("Why:\n")
    return "".join(parts)


def _tasks_for(task_file: Path) -> tuple[dict[str, list[str]], list[str]]:
    """Task texts by function id, and those for the whole commit."""
    by_function: dict[str, list[str]] = defaultdict(list)
    whole: list[str] = []
    if not task_file.is_file():
        return by_function, whole
    data = read_json(task_file)
    for task in (data or {}).get("tasks", []) if isinstance(data, dict) else []:
        text = task.get("description") if isinstance(task, dict) else None
        if not text:
            continue
        ids = task.get("function_ids") or []
        if ids:
            for fid in ids:
                by_function[fid].append(text)
        else:
            whole.append(text)
    return by_function, whole


def _list_file(path: Path) -> list[Any]:
    data = read_json(path)
    if not isinstance(data, list):
        raise HybridError(f"{path}: expected a JSON list, got {type(data).__name__}")
    return data


def iter_repo_pairs(
    layout: DatasetLayout, repo: str, kinds: tuple[str, ...], skipped: Counter
) -> Iterator[dict[str, Any]]:
    for number in layout.commits(repo):
        cdir = layout.local_commit_dir(repo, number)
        tasks_by_fn, whole_tasks = _tasks_for(cdir / TASKS)
        if "fim" in kinds and (cdir / FIM).is_file():
            path = cdir / FIM
            for i, rec in enumerate(_list_file(path)):
                if not isinstance(rec, dict) or not all(
                    isinstance(rec.get(k), str) for k in ("fim_prefix", "fim_middle", "fim_suffix")
                ):
                    skipped["fim_missing_fields"] += 1
                    continue
                if not rec["fim_middle"].strip():
                    skipped["fim_empty_middle"] += 1
                    continue
                fid = rec.get("function_id") or rec.get("id") or f"{path}#{i}"
                task = rec.get("task") or "\n".join(tasks_by_fn.get(fid, []) + whole_tasks) or None
                yield {
                    "input": fim_input(rec["fim_prefix"], rec["fim_suffix"], task),
                    "output": rec["fim_middle"],
                    "repo": repo,
                    "commit_number": rec.get("commit_number", number),
                    "function_id": fid,
                    "kind": "fim",
                    "id": rec.get("id", f"{fid}#{i}"),
                }
        if "reasoning" in kinds and (cdir / REASONING).is_file():
            code: dict[str, tuple[str | None, str | None]] = {}
            if (cdir / DIFF_AST).is_file():
                for _, d in iter_jsonl(cdir / DIFF_AST):
                    if isinstance(d, dict) and d.get("id"):
                        code[d["id"]] = (d.get("before_code"), d.get("after_code"))
            for rec in _list_file(cdir / REASONING):
                if not isinstance(rec, dict) or not isinstance(rec.get("reasoning"), str) or not rec.get("function_id"):
                    skipped["reasoning_missing_fields"] += 1
                    continue
                if not rec["reasoning"].strip():
                    skipped["reasoning_empty"] += 1
                    continue
                fid = rec["function_id"]
                before, after = code.get(fid, (None, None))
                task = "\n".join(tasks_by_fn.get(fid, []) + whole_tasks) or None
                yield {
                    "input": reasoning_input(fid, rec.get("operation_type", "UPDATE"), before, after, task),
                    "output": rec["reasoning"],
                    "repo": repo,
                    "commit_number": number,
                    "function_id": fid,
                    "kind": "reasoning",
                    "id": f"{fid}@{number}:reasoning",
                }


def _take_from_end(groups: list[tuple[Any, list]], target: int, minimum_groups: int) -> int:
    """How many groups, taken from the end of `groups`, reach `target` records (at least `minimum_groups`)."""
    taken, n = 0, 0
    for _, recs in reversed(groups):
        if taken >= target and n >= minimum_groups:
            break
        taken += len(recs)
        n += 1
    return n


def split_records(
    records: list[dict[str, Any]], validation_fraction: float, test_fraction: float
) -> tuple[dict[str, list[dict[str, Any]]], str]:
    repos = sorted({r["repo"] for r in records})
    if len(repos) >= 3:
        split_by = "repository"
        # a stable pseudo-random order of repositories, so the split does not follow their names
        ordered = sorted(repos, key=lambda r: hashlib.sha256(r.encode()).hexdigest())
        groups = [(repo, [r for r in records if r["repo"] == repo]) for repo in ordered]
    else:
        split_by = "time"
        by_fn: dict[tuple[str, str], list] = defaultdict(list)
        for r in records:
            by_fn[(r["repo"], r["function_id"])].append(r)
        first_seen = {k: min(r["commit_number"] for r in v) for k, v in by_fn.items()}
        groups = sorted(by_fn.items(), key=lambda kv: (first_seen[kv[0]], kv[0]))
    total = len(records)
    enough = len(groups) >= 3  # with fewer groups everything trains (and validation/test stay empty)
    n_test = _take_from_end(groups, round(total * test_fraction), 1) if enough and test_fraction > 0 else 0
    rest = groups[: len(groups) - n_test]
    n_val = _take_from_end(rest, round(total * validation_fraction), 1) if enough and validation_fraction > 0 else 0
    n_val = min(n_val, max(0, len(rest) - 1))
    out = {"train": [], "validation": [], "test": []}
    for i, (_, recs) in enumerate(groups):
        split = "test" if i >= len(groups) - n_test else "validation" if i >= len(rest) - n_val else "train"
        out[split].extend(recs)
    return out, split_by


def check_fractions(validation_fraction: float, test_fraction: float) -> None:
    """Each share in [0, 1), and the training split's, 1 - validation - test, more than 0: at a sum of 1 or more
    the split gives training only the one group it always keeps back — nothing like what was asked for."""
    for option, value in (("--validation-fraction", validation_fraction), ("--test-fraction", test_fraction)):
        if not 0 <= value < 1:
            raise HybridError(f"{option}: must be in [0, 1), got {value}")
    if validation_fraction + test_fraction >= 1:
        raise HybridError(
            f"--validation-fraction {validation_fraction:g} + --test-fraction {test_fraction:g} = "
            f"{validation_fraction + test_fraction:g} leaves nothing to train on: the two together "
            f"must be less than 1"
        )


def export_io_pairs(
    data_dir: str | Path,
    output_dir: str | Path = "datasets/io_pairs",
    kinds: tuple[str, ...] = KINDS,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    repos: list[str] | None = None,
    dedup: bool = False,
) -> ExportResult:
    check_fractions(validation_fraction, test_fraction)
    layout = DatasetLayout(data_dir)
    ast_root = layout.dataset_dir
    if not storage.is_dir(ast_root):
        raise HybridError(f"{ast_root}: no such folder (run `hybrid pipeline run` first)")
    names = layout.repos()
    if repos:
        unknown = sorted(set(repos) - set(names))
        if unknown:
            raise HybridError(f"{ast_root}: no dataset for repo(s) {', '.join(unknown)}")
        names = [n for n in names if n in repos]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise HybridError(f"--kinds: unknown kind(s) {', '.join(bad)} (choose from {', '.join(KINDS)})")
    skipped: Counter = Counter()
    records = [rec for n in names for rec in iter_repo_pairs(layout, n, kinds, skipped)]
    # dedup (pipelines/dedup.py): what the dedup stage marked, and with `dedup` repeats across the repositories
    records = drop_marked_and_repeated(layout, records, skipped, across_repos=dedup)
    if not records:
        raise HybridError(f"{ast_root}: no FIM or reasoning records found (run `hybrid pipeline run` first)")
    splits, split_by = split_records(records, validation_fraction, test_fraction)
    output_dir = Path(output_dir)
    for name in SPLITS:
        atomic_write_jsonl(output_dir / f"{name}.jsonl", splits[name])
    result = ExportResult(
        output_dir=output_dir,
        sizes={s: len(splits[s]) for s in SPLITS},
        split_by=split_by,
        repos=names,
        skipped=skipped,
    )
    kinds_count = Counter(r["kind"] for r in records)
    atomic_write_json(
        output_dir / "stats.json",
        {
            "sizes": result.sizes,
            "split_by": split_by,
            "repos": result.repos,
            "kinds": dict(kinds_count),
            "skipped": dict(skipped),
        },
    )
    return result


def describe(result: ExportResult) -> str:
    sizes = ", ".join(f"{s} {n}" for s, n in result.sizes.items())
    skipped = f"; skipped: {json.dumps(dict(result.skipped))}" if result.skipped else ""
    return f"IO pairs → {result.output_dir}/ ({sizes}; split by {result.split_by}){skipped}"
