"""`hybrid pipeline export`: data/ast_dataset → datasets/io_pairs/{train,validation,test}.jsonl.

Two kinds of pairs (docs/data-format.md):
- fim: input = the task text when there is one + `<|fim_prefix|>prefix<|fim_suffix|>suffix<|fim_middle|>`,
  output = the middle;
- reasoning: input = the task + the function before and after the change, output = the first-person reasoning.

Splits never share a function: with three or more repositories whole repositories go to validation and test;
otherwise by time — each function belongs to the commit where it first appears, and the functions that appear
last go to test, the ones before them to validation, the rest to train.

Before the split, each record gets its repository's `license` and the licence policy drops the repositories
`pipeline.licenses_allowed` does not allow (hybrid/data/licenses.py); after it, training records that contain a
validation/test output or a named benchmark item are dropped (hybrid/data/decontaminate.py) and listed in
decontamination.jsonl. The splits are written as JSONL (the default) or as Parquet shards with a dataset card
(hybrid/data/parquet_export.py), to a local folder or a URI, through hybrid.core.storage."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybrid.config.pipeline import PipelineConfig
from hybrid.core import storage
from hybrid.core.errors import HybridError
from hybrid.core.io import iter_jsonl, read_json
from hybrid.core.layout import COMMIT_DATA, DEDUP, DIFF_AST, FILTERED_COMMITS, FIM, REASONING, TASKS, DatasetLayout
from hybrid.data.decontaminate import Reference, build_index, decontaminate
from hybrid.data.licenses import NONE, UNDETECTED, UNKNOWN, LicensePolicy, read_license
from hybrid.data.parquet_export import CARD, DATA, CardFacts, write_card, write_shards
from hybrid.data.tokenizer import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, TASK
from pipelines.dedup import drop_marked_and_repeated

SPLITS = ("train", "validation", "test")
KINDS = ("fim", "reasoning")
FORMATS = ("jsonl", "parquet")
STATS = "stats.json"
DECONTAMINATION = "decontamination.jsonl"
_json = json.JSONEncoder(ensure_ascii=False).encode  # the lines hybrid.core.io.atomic_write_jsonl writes
# bookkeeping fields of a record while it is exported (for the counts and the dataset card), never written
LANGUAGE, DATE = "_language", "_date"


@dataclass(frozen=True)
class ExportOptions:
    """The export's filters and format (`pipeline.*` keys and the command's options)."""

    licenses_allowed: tuple[str, ...]
    decontaminate_splits: bool
    decontaminate_inputs: bool
    ngram: int
    threshold: float
    rows_per_shard: int
    dedup: bool = False  # also drop repeats across the exported repositories (pipeline.dedup)
    benchmarks: tuple[str, ...] = ()
    format: str = "jsonl"
    command: str = "hybrid pipeline export"

    @classmethod
    def from_config(cls, pipeline: PipelineConfig | None = None, **options: Any) -> ExportOptions:
        """The `pipeline` section's export keys (the defaults when None), `options` on top."""
        p = pipeline or PipelineConfig()
        keys: dict[str, Any] = {
            "licenses_allowed": tuple(p.licenses_allowed),
            "decontaminate_splits": p.decontaminate_splits,
            "decontaminate_inputs": p.decontaminate_inputs,
            "ngram": p.decontamination_ngram,
            "threshold": p.decontamination_threshold,
            "rows_per_shard": p.export_rows_per_shard,
            "dedup": p.dedup,
        }
        return cls(**{**keys, **options})


@dataclass
class ExportResult:
    output_dir: Path | str
    sizes: dict[str, int]
    split_by: str
    repos: list[str]
    skipped: Counter = field(default_factory=Counter)
    format: str = "jsonl"
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> records the filters dropped
    licenses: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def paths(self) -> dict[str, str]:
        return {s: storage.join(self.output_dir, f"{s}.jsonl") for s in SPLITS}


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


class _CommitDate:
    """The date of a commit (commit_data.json's `date`), read once and only when the commit yields a record."""

    def __init__(self, path: Path) -> None:
        self.path, self.read = path, False
        self.date: str | None = None

    def __call__(self) -> str | None:
        if not self.read:
            self.read = True
            data = read_json(self.path) if self.path.is_file() else None
            date = data.get("date") if isinstance(data, dict) else None
            self.date = date if isinstance(date, str) else None
        return self.date


def public(record: dict[str, Any]) -> dict[str, Any]:
    """A record as the export writes it: without its bookkeeping fields (LANGUAGE, DATE)."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


def iter_repo_pairs(
    layout: DatasetLayout, repo: str, kinds: tuple[str, ...], skipped: Counter
) -> Iterator[dict[str, Any]]:
    for number in layout.commits(repo):
        cdir = layout.local_commit_dir(repo, number)
        commit_date = _CommitDate(cdir / COMMIT_DATA)
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
                    LANGUAGE: rec.get("language"),
                    DATE: commit_date(),
                }
        if "reasoning" in kinds and (cdir / REASONING).is_file():
            code: dict[str, tuple[str | None, str | None]] = {}
            languages: dict[str, str | None] = {}
            if (cdir / DIFF_AST).is_file():
                for _, d in iter_jsonl(cdir / DIFF_AST):
                    if isinstance(d, dict) and d.get("id"):
                        code[d["id"]] = (d.get("before_code"), d.get("after_code"))
                        languages[d["id"]] = d.get("language")
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
                    LANGUAGE: languages.get(fid),
                    DATE: commit_date(),
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


def _licensed_records(
    layout: DatasetLayout,
    names: list[str],
    kinds: tuple[str, ...],
    result: ExportResult,
    policy: LicensePolicy,
    files: DatasetLayout | None = None,
) -> list[dict[str, Any]]:
    """Every repository's records with its `license`, those of repositories the policy does not allow dropped (by
    reason: license_not_allowed, or license_unknown / license_none / license_undetected) and counted per licence.
    `files`: where the commit folders are read (a local copy of `layout`'s, when that is on object storage)."""
    records: list[dict[str, Any]] = []
    for name in names:
        lic = read_license(layout, name)
        recs = list(iter_repo_pairs(files or layout, name, kinds, result.skipped))
        for rec in recs:
            rec["license"] = lic.spdx
        allowed = policy.allows(lic.label)
        info = result.licenses.setdefault(lic.label, {"repos": [], "kept": 0, "dropped": 0, "allowed": allowed})
        info["repos"].append(name)
        info["kept" if allowed else "dropped"] += len(recs)
        if allowed:
            records.extend(recs)
        elif recs:
            special = lic.label in (NONE, UNKNOWN, UNDETECTED)
            result.dropped[f"license_{lic.label}" if special else "license_not_allowed"] += len(recs)
        if not recs:
            continue
        verb = "kept, with license null" if allowed else "dropped"
        change = f'leave "{lic.label}" out of' if allowed else f'add "{lic.label}" to'
        to = "drop" if allowed else "keep"
        if lic.label == NONE:
            result.warnings.append(
                f"{name}: no licence file: its {len(recs)} records are {verb} (code without a licence is all rights "
                f"reserved unless it is yours; {change} pipeline.licenses_allowed to {to} them)"
            )
        elif lic.label == UNDETECTED:
            result.warnings.append(
                f"{name}: licence never detected (no {storage.shown(layout.license_file(name))}): its {len(recs)} "
                f"records are {verb} ({change} pipeline.licenses_allowed to {to} them)"
            )
        elif lic.label == UNKNOWN:
            result.warnings.append(
                f"{name}: licence file {lic.file or '?'} not identified: its {len(recs)} records are {verb} "
                f"({change} pipeline.licenses_allowed to {to} them)"
            )
    return records


def _decontaminate(
    splits: dict[str, list[dict[str, Any]]], opts: ExportOptions, result: ExportResult
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Drop the training records that hold a validation/test output or a benchmark item (decontamination.jsonl's
    lines, and its summary for stats.json); (nothing, None) when decontamination is off."""
    if not opts.decontaminate_splits and not opts.benchmarks:
        return [], None
    split_refs = (
        (Reference(split, str(rec["id"]), "output"), rec["output"])
        for split in ("validation", "test")
        if opts.decontaminate_splits
        for rec in splits[split]
    )
    index = build_index(opts.ngram, opts.threshold, split_refs, opts.benchmarks)
    kept, dropped = decontaminate(splits["train"], index, opts.decontaminate_inputs)
    splits["train"] = kept
    if dropped:
        result.dropped["decontaminated"] += len(dropped)
    summary = {
        "ngram": opts.ngram,
        "threshold": opts.threshold,
        "against_splits": opts.decontaminate_splits,
        "searched": "input and output" if opts.decontaminate_inputs else "output",
        "benchmarks": [storage.shown(b) for b in opts.benchmarks],
        "references": dict(Counter(r.source for r in index.references)),
        "too_short": dict(index.too_short),
        "dropped": len(dropped),
        "dropped_by_source": dict(Counter(d["against"]["source"] for d in dropped)),
    }
    return dropped, summary


def _jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(_json(r) + "\n" for r in records).encode("utf-8")


def _refuse_other_format(output_dir: str, fmt: str) -> None:
    """A folder holding the other format's export would mix both: `load_dataset("parquet", data_dir=…)` would take
    train.jsonl for a train shard, and a JSONL reader the card for data. One line, nothing written."""
    if fmt == "parquet":
        found = [f"{s}.jsonl" for s in SPLITS if storage.exists(storage.join(output_dir, f"{s}.jsonl"))]
    else:
        found = [f"{DATA}/{n}" for n, d in storage.list_dir(storage.join(output_dir, DATA)) if n.endswith(".parquet")]
    if found:
        other = "a JSONL" if fmt == "parquet" else "a Parquet"
        raise HybridError(
            f"{storage.shown(output_dir)}: holds {other} export ({found[0]}); give another --output-dir for the "
            f"{fmt} export, or remove it first"
        )


def _time_range(records: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    from datetime import datetime, timezone

    dates = []
    for r in records:
        try:
            d = datetime.fromisoformat(r[DATE]) if r.get(DATE) else None
        except ValueError:
            d = None
        if d is not None:
            dates.append(d if d.tzinfo else d.replace(tzinfo=timezone.utc))
    if not dates:
        return None, None
    return min(dates).astimezone(timezone.utc).isoformat(), max(dates).astimezone(timezone.utc).isoformat()


def _filters(opts: ExportOptions, decontamination: dict[str, Any] | None) -> list[str]:
    allowed = ", ".join(f"`{a}`" for a in opts.licenses_allowed)
    lines = [f"licences: the records of repositories whose licence `pipeline.licenses_allowed` allows: {allowed}"]
    if decontamination is None:
        lines.append("decontamination: off")
    else:
        against = (["the validation and test outputs"] if opts.decontaminate_splits else []) + [
            f"`{b}`" for b in decontamination["benchmarks"]
        ]
        refs = sum(decontamination["references"].values())
        short = sum(decontamination["too_short"].values())
        lines.append(
            f"decontamination: training records whose {decontamination['searched']} held at least "
            f"{opts.threshold:g} of the {opts.ngram}-grams of code tokens of a reference were dropped; references: "
            f"{' and '.join(against)} ({refs} checked, {short} shorter than {opts.ngram} tokens)"
        )
    return lines


def _write(
    output_dir: str,
    splits: dict[str, list[dict[str, Any]]],
    opts: ExportOptions,
    result: ExportResult,
    stats: dict[str, Any],
    contaminated: list[dict[str, Any]],
    decontamination: dict[str, Any] | None,
) -> None:
    rows = {s: [public(r) for r in splits[s]] for s in SPLITS}
    if opts.format == "parquet":
        shards = write_shards(output_dir, rows, opts.rows_per_shard)
        kept = [r for s in SPLITS for r in splits[s]]
        first, last = _time_range(kept)
        facts = CardFacts(
            sizes=result.sizes,
            kinds={s: dict(Counter(r["kind"] for r in splits[s])) for s in SPLITS},
            shards=shards,
            split_by=result.split_by,
            repos=result.repos,
            filters=_filters(opts, decontamination),
            dropped=dict(result.dropped),
            licenses=result.licenses,
            languages=dict(Counter(r.get(LANGUAGE) or "unknown" for r in kept)),
            first_commit=first,
            last_commit=last,
            command=opts.command,
            skipped=dict(result.skipped),
        )
        write_card(output_dir, facts)
        stats["shards"] = shards
    else:
        for name in SPLITS:
            storage.write_bytes(storage.join(output_dir, f"{name}.jsonl"), _jsonl(rows[name]))
    decon_file = storage.join(output_dir, DECONTAMINATION)
    if decontamination is None:
        storage.remove_file(decon_file)  # a list from an earlier export would describe another one
    else:
        storage.write_bytes(decon_file, _jsonl(contaminated))
    storage.write_text(storage.join(output_dir, STATS), json.dumps(stats, indent=2, ensure_ascii=False) + "\n")


_REPO_FILES = (DEDUP, FILTERED_COMMITS)  # (license.json is read where it is)


def _read_by_export(kinds: tuple[str, ...], name: str, beside: set[str]) -> bool:
    """Whether the export reads file `name` of a repository's folder or of a commit folder holding `beside`."""
    if name in _REPO_FILES or name in (COMMIT_DATA, TASKS):
        return True
    if name == FIM:
        return "fim" in kinds
    return "reasoning" in kinds and (name == REASONING or (name == DIFF_AST and REASONING in beside))


def _records(
    layout: DatasetLayout,
    names: list[str],
    kinds: tuple[str, ...],
    result: ExportResult,
    opts: ExportOptions,
    files: DatasetLayout,
) -> list[dict[str, Any]]:
    records = _licensed_records(layout, names, kinds, result, LicensePolicy(list(opts.licenses_allowed)), files)
    # dedup (pipelines/dedup.py): what the dedup stage marked, and with `dedup` repeats across the repositories
    return drop_marked_and_repeated(files, records, result.dropped, across_repos=opts.dedup)


def export_io_pairs(
    data_dir: str | Path,
    output_dir: str | Path = "datasets/io_pairs",
    kinds: tuple[str, ...] = KINDS,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    repos: list[str] | None = None,
    options: ExportOptions | None = None,
) -> ExportResult:
    """Export the pipeline's outputs as IO pairs; `options` (default: the `pipeline` section's defaults) sets the
    filters and the format."""
    opts = options or ExportOptions.from_config()
    check_fractions(validation_fraction, test_fraction)
    if opts.format not in FORMATS:
        raise HybridError(f"--format: unknown format {opts.format!r} (choose from {', '.join(FORMATS)})")
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
    out = str(output_dir)
    _refuse_other_format(out, opts.format)
    result = ExportResult(output_dir=storage.at(out).native(out), sizes={}, split_by="", repos=names)
    result.format = opts.format
    if layout.staged:  # object storage: the files the export reads, fetched onto this machine first, all at once
        tmp = layout.staging_dir("export")
        try:
            files = layout.fetch_dataset(names, tmp, functools.partial(_read_by_export, kinds))
            records = _records(layout, names, kinds, result, opts, files)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        records = _records(layout, names, kinds, result, opts, layout)
    if not records:
        if result.dropped:
            raise HybridError(
                f"{ast_root}: every record was dropped by the licence policy "
                f"({', '.join(f'{k} {v}' for k, v in sorted(result.dropped.items()))}; "
                f"pipeline.licenses_allowed={list(opts.licenses_allowed)})"
            )
        raise HybridError(f"{ast_root}: no FIM or reasoning records found (run `hybrid pipeline run` first)")
    splits, split_by = split_records(records, validation_fraction, test_fraction)
    contaminated, decontamination = _decontaminate(splits, opts, result)
    result.sizes = {s: len(splits[s]) for s in SPLITS}
    result.split_by = split_by
    stats: dict[str, Any] = {
        "sizes": result.sizes,
        "split_by": split_by,
        "repos": result.repos,
        "kinds": dict(Counter(r["kind"] for s in SPLITS for r in splits[s])),
        "skipped": dict(result.skipped),
        "format": opts.format,
        "dropped": dict(result.dropped),
        "licenses": result.licenses,
        "decontamination": decontamination,
    }
    _write(out, splits, opts, result, stats, contaminated, decontamination)
    return result


def describe(result: ExportResult) -> str:
    sizes = ", ".join(f"{s} {n}" for s, n in result.sizes.items())
    skipped = f"; skipped: {json.dumps(dict(result.skipped))}" if result.skipped else ""
    dropped = f"; dropped: {json.dumps(dict(sorted(result.dropped.items())))}" if result.dropped else ""
    what = "IO pairs" if result.format == "jsonl" else f"IO pairs (Parquet shards under {DATA}/, {CARD})"
    line = f"{what} → {storage.shown(result.output_dir)}/ ({sizes}; split by {result.split_by}){skipped}{dropped}"
    return "\n".join([line, *(f"warning: {w}" for w in result.warnings)])
