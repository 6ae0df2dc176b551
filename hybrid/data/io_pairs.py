"""Reading input/output pairs: `{"input": str, "output": str, ...}` records in JSONL or Parquet files — a file, a
folder of them, a glob, or a URI of a pyarrow file system (`s3://bucket/prefix/`, `gs://…`).

Records stream: `iter_pairs` reads one file line by line (JSONL) or row group by row group (Parquet), so nothing
here holds a whole data set. A bad record is an error naming the file and line (or row), or a skip counted by
reason when the caller asks for `on_bad="skip"`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from hybrid.core import storage
from hybrid.core.errors import HybridError
from hybrid.core.redact import library_message
from hybrid.core.storage import shown
from hybrid.core.text import BadJSONLine, parse_json_line

JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
FOLDER_SUFFIXES = (".jsonl", ".parquet")  # in a folder only these count: export writes stats.json beside the splits
OnBad = Literal["error", "skip"]


def _suffix(path: str) -> str:
    name = storage.base_name(path)  # a URI's query left out
    return "." + name.rsplit(".", 1)[-1] if "." in name else ""


def _check_suffix(path: str) -> None:
    if _suffix(path) not in JSONL_SUFFIXES + PARQUET_SUFFIXES:
        raise HybridError(f"{shown(path)}: expected a .jsonl or .parquet file (or a folder of them)")


def data_files(spec: str | Path) -> list[str]:
    """The JSONL/Parquet files `spec` names — itself, the files of a folder (recursive; .jsonl and .parquet only,
    hidden files left out), the matches of a glob — sorted, as strings (URIs keep their scheme, credentials and
    query, so each opens on its own — in a Ray task, too)."""
    spec = str(spec)
    where = storage.at(spec)
    if any(c in spec for c in "*?["):
        files = where.glob(spec)
        if not files:
            raise HybridError(f"{where.shown(spec)}: no file matches")
        for f in files:
            _check_suffix(f)
        return files
    if not where.exists(spec):
        raise HybridError(f"{where.shown(where.native(spec))}: no such file or folder")
    if where.is_dir(spec):
        files = [f for f in where.files_under(spec) if _suffix(f) in FOLDER_SUFFIXES]
        if not files:
            raise HybridError(f"{where.shown(where.native(spec))}: folder holds no .jsonl or .parquet files")
        return files
    _check_suffix(spec)
    return [str(where.native(spec))]


def open_file(path: str) -> IO[bytes]:
    """A binary stream of a data file (local or URI)."""
    return storage.at(path).open_input(path)


def check_record(record: Any) -> str | None:
    """Why a record is unusable as an IO pair, or None."""
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


def _bad(on_bad: OnBad, skipped: Counter, reason: str, message: str) -> None:
    """A bad line: counted under `reason` when the user asked to skip, else the one-line error `message`."""
    if on_bad != "skip":
        raise HybridError(message)
    skipped[reason] += 1


def iter_pairs(
    path: str, on_bad: OnBad = "error", skipped: Counter | None = None, check=check_record
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, or row number for Parquet, counted from 1; record) for each usable record of one file.
    `check(record)` says why a record is unusable (default: not an IO pair)."""
    skipped = Counter() if skipped is None else skipped
    name = shown(path)
    if _suffix(path) in PARQUET_SUFFIXES:
        yield from _iter_parquet(path, on_bad, skipped, check)
        return
    with open_file(path) as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                _bad(on_bad, skipped, "not_utf8", f"{name}:{lineno}: not UTF-8 text")
                continue
            if not line.strip():
                continue
            try:
                record = parse_json_line(line)
            except BadJSONLine as e:  # not JSON, nested too deeply, a lone surrogate
                _bad(on_bad, skipped, e.reason, f"{name}:{lineno}: {e}")
                continue
            problem = check(record)
            if problem:
                _bad(on_bad, skipped, "bad_record", f"{name}:{lineno}: {problem}")
                continue
            yield lineno, record


def _iter_parquet(path: str, on_bad: OnBad, skipped: Counter, check) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    name = shown(path)
    with open_file(path) as f:
        try:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise HybridError(f"{name}: not a readable Parquet file ({library_message(e, path)})") from None
        if check is check_record:
            for key in ("input", "output"):
                if key not in names:
                    raise HybridError(f"{name}: Parquet file has no {key!r} column (columns: {', '.join(names)})")
        row = 0
        for batch in pf.iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                row += 1
                problem = check(record)
                if problem:
                    _bad(on_bad, skipped, "bad_record", f"{name}: row {row}: {problem}")
                    continue
                yield row, record


@dataclass
class IOPairs:
    """The records of a (small) data set read whole, where they came from, and what was skipped (by reason)."""

    records: list[dict[str, Any]]
    files: list[str]
    skipped: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.records)


def read_io_pairs(path: str | Path, on_bad: OnBad = "error") -> IOPairs:
    """Every IO pair under `path`, in memory — for evaluation sets and corpora of `hybrid memory build`; training
    streams instead (hybrid/training/datastream.py). An empty result is an error naming the path."""
    files = data_files(path)
    skipped: Counter = Counter()
    records: list[dict[str, Any]] = []
    for file in files:
        got = [record for _, record in iter_pairs(file, on_bad, skipped)]
        if not got and len(files) == 1 and not skipped:
            raise HybridError(f"{shown(file)}: empty file (no IO pairs)")
        records.extend(got)
    if not records:
        what = f" ({sum(skipped.values())} bad records skipped)" if skipped else ""
        raise HybridError(f"{shown(str(path))}: no IO pairs{what}")
    return IOPairs(records=records, files=files, skipped=skipped)


def _check_input(record: Any) -> str | None:
    if not isinstance(record, dict) or not isinstance(record.get("input"), str):
        return "record has no string 'input'"
    return None


def read_inputs(path: str | Path) -> list[str]:
    """The `input` of every record of a JSONL/Parquet file or folder (no `output` needed), file:line errors."""
    inputs = [record["input"] for file in data_files(path) for _, record in iter_pairs(file, check=_check_input)]
    if not inputs:
        raise HybridError(f"{shown(str(path))}: no inputs")
    return inputs
