"""Reading input/output pairs: `{"input": str, "output": str, ...}` records in JSONL or Parquet files, or a
folder of them. Bad data is an error naming the file and line (or a counted skip when asked), found on the
driver before any worker starts."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hybrid.core.errors import HybridError
from hybrid.core.io import iter_jsonl

JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)


@dataclass
class IOPairs:
    """The records read, where they came from, and what was skipped (by reason)."""

    records: list[dict[str, Any]]
    files: list[Path]
    skipped: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.records)


def data_files(path: str | Path) -> list[Path]:
    """The JSONL/Parquet files that `path` names: itself, or those in the folder (sorted, recursive)."""
    path = Path(path)
    if not path.exists():
        raise HybridError(f"{path}: no such file or folder")
    if path.is_dir():
        # in a folder only .jsonl / .parquet count: `hybrid pipeline export` writes stats.json beside the splits
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".jsonl", *PARQUET_SUFFIXES)
                       and not p.name.startswith("."))
        if not files:
            raise HybridError(f"{path}: folder holds no .jsonl or .parquet files")
        return files
    if path.suffix not in JSONL_SUFFIXES + PARQUET_SUFFIXES:
        raise HybridError(f"{path}: expected a .jsonl or .parquet file (or a folder of them)")
    return [path]


def _check_record(record: Any) -> str | None:
    """Why a record is unusable, or None."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    for key in ("input", "output"):
        if key not in record:
            return f"record has no {key!r}"
        if not isinstance(record[key], str):
            return f"{key!r} must be a string, got {type(record[key]).__name__}"
    if not record["output"]:
        return "'output' is empty"
    return None


def _bad(on_bad: str, skipped: Counter, reason: str, message: str) -> None:
    """A bad line: counted under `reason` when the user asked to skip, else the one-line error `message`."""
    if on_bad != "skip":
        raise HybridError(message)
    skipped[reason] += 1


def _read_jsonl(path: Path, on_bad: str, skipped: Counter) -> list[dict[str, Any]]:
    records = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                _bad(on_bad, skipped, "not_utf8", f"{path}:{lineno}: not UTF-8 text")
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                _bad(on_bad, skipped, "not_json", f"{path}:{lineno}: not valid JSON ({e.msg})")
                continue
            problem = _check_record(record)
            if problem:
                _bad(on_bad, skipped, "bad_record", f"{path}:{lineno}: {problem}")
                continue
            records.append(record)
    return records


def _read_parquet(path: Path, on_bad: str, skipped: Counter) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise HybridError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    for key in ("input", "output"):
        if key not in table.column_names:
            raise HybridError(f"{path}: Parquet file has no {key!r} column (columns: {', '.join(table.column_names)})")
    records = []
    for row, record in enumerate(table.to_pylist(), 1):
        problem = _check_record(record)
        if problem:
            _bad(on_bad, skipped, "bad_record", f"{path}: row {row}: {problem}")
            continue
        records.append(record)
    return records


def read_io_pairs(path: str | Path, on_bad: Literal["error", "skip"] = "error") -> IOPairs:
    """Read every IO pair under `path`. An empty result is an error naming the path."""
    files = data_files(path)
    skipped: Counter = Counter()
    records: list[dict[str, Any]] = []
    for file in files:
        reader = _read_parquet if file.suffix in PARQUET_SUFFIXES else _read_jsonl
        got = reader(file, on_bad, skipped)
        if not got and len(files) == 1 and not skipped:
            raise HybridError(f"{file}: empty file (no IO pairs)")
        records.extend(got)
    if not records:
        what = f" ({sum(skipped.values())} bad records skipped)" if skipped else ""
        raise HybridError(f"{path}: no IO pairs{what}")
    return IOPairs(records=records, files=files, skipped=skipped)


def read_inputs(path_text: str) -> list[str]:
    """The `input` of every record of a JSONL/Parquet file or folder (no `output` needed), file:line errors."""
    inputs: list[str] = []
    for file in data_files(path_text):
        if file.suffix in PARQUET_SUFFIXES:
            import pyarrow.parquet as pq

            rows = list(enumerate(pq.read_table(file).to_pylist(), 1))
            where = lambda i: f"{file}: row {i}"  # noqa: E731
        else:
            rows = list(iter_jsonl(file))
            where = lambda i: f"{file}:{i}"  # noqa: E731
        for i, record in rows:
            if not isinstance(record, dict) or not isinstance(record.get("input"), str):
                raise HybridError(f"{where(i)}: record has no string 'input'")
            inputs.append(record["input"])
    if not inputs:
        raise HybridError(f"{path_text}: no inputs")
    return inputs
