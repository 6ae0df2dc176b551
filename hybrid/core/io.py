"""Files written atomically (a unique temp file in the same folder, then a rename) and JSON/JSONL read with
clear errors. Every writer in the project goes through `atomic_write`."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hybrid.core.errors import HybridError
from hybrid.core.text import BadJSONLine, parse_json_line

_encode = json.JSONEncoder(ensure_ascii=False).encode  # one encoder: json.dumps builds one per call


_TMP_TOKEN = os.urandom(4).hex()  # with the pid and a counter: temp names unique across processes and hosts
_tmp_counter = itertools.count()


def _create_temp(path: str) -> tuple[int, str]:
    """A new file `.NAME.<pid>-<token>-<n>.tmp` beside `path` (mode 0600, like tempfile.mkstemp), opened for
    writing: (fd, its path). O_EXCL: an existing name is never reused."""
    head, name = os.path.split(path)
    while True:
        tmp = os.path.join(head, f".{name}.{os.getpid()}-{_TMP_TOKEN}-{next(_tmp_counter)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600), tmp
        except FileExistsError:
            continue


def remove_temps(folder: str | os.PathLike[str], names: Iterable[str]) -> None:
    """Remove the temp files (`_create_temp`'s `.NAME.<pid>-<token>-<n>.tmp`) that a process killed between write and
    rename left beside the files `names` in `folder`. Only for files about to be written again, by the one writer."""
    prefixes = tuple(f".{name}." for name in names)
    for entry in os.listdir(folder):
        if entry.endswith(".tmp") and entry.startswith(prefixes):
            try:
                os.unlink(os.path.join(folder, entry))
            except FileNotFoundError:
                pass


@contextmanager
def atomic_path(path: str | os.PathLike[str], mkdir: bool = True) -> Iterator[Path]:
    """Yield a unique temp path beside `path`; on success it is renamed over `path`, on failure removed.
    A killed process leaves `path` as it was (and at worst a `.NAME.*.tmp` that `cleanup-dataset --temp`
    removes); two processes writing the same file never share a temp file."""
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(str(path))
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write(
    path: str | os.PathLike[str], data: str | bytes | Iterable[str], fsync: bool = True, mkdir: bool = True
) -> None:
    """Write `data` (text as UTF-8, bytes, or an iterable of text pieces) to `path` atomically.

    fsync=False skips forcing the bytes to disk before the rename — for many small files on a hot path (the
    pipeline's per-commit files, where fsync costs more than the parsing on some disks): a crash of the
    machine (not of the process) may then leave an empty file, which the next run redoes.
    (Plain os-level calls: the pipeline writes three files per commit, and a buffered file object, Path
    objects and mkstemp's random names cost as much as the writing.)"""
    path = os.fspath(path)
    if mkdir:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if isinstance(data, bytes):
        raw = data
    else:
        raw = (data if isinstance(data, str) else "".join(data)).encode("utf-8")
    fd, tmp = _create_temp(path)
    try:
        view = memoryview(raw)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


@contextmanager
def exclusive_lock(lock_path: str | os.PathLike[str], what: str, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive advisory lock (`flock`) on `lock_path` for the block: the way two processes that share a
    file (the repository registry, a training output folder) take turns. The kernel drops the lock when the
    process dies, so a killed run never leaves a stale lock. `wait=False`: a `HybridError` naming `what` when
    another process holds it."""
    import fcntl

    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("utf-8", "replace").strip() or "?"
            raise HybridError(
                f"{what} is in use by another process (pid {holder}); wait for it to finish or use another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def atomic_write_text(path: str | os.PathLike[str], text: str, fsync: bool = True) -> None:
    atomic_write(path, text, fsync=fsync)


def json_text(obj: Any, indent: int | None = 2) -> str:
    """The text `atomic_write_json` writes (for writers through hybrid.core.storage: the same bytes anywhere)."""
    return (_encode(obj) if indent is None else json.dumps(obj, indent=indent, ensure_ascii=False)) + "\n"


def jsonl_text(records: Iterable[Any]) -> str:
    """The text `atomic_write_jsonl` writes: one JSON document per line."""
    return "".join(_encode(r) + "\n" for r in records)


def atomic_write_json(
    path: str | os.PathLike[str], obj: Any, indent: int | None = 2, fsync: bool = True, mkdir: bool = True
) -> None:
    atomic_write(path, json_text(obj, indent), fsync=fsync, mkdir=mkdir)


def atomic_write_jsonl(
    path: str | os.PathLike[str], records: Iterable[Any], fsync: bool = True, mkdir: bool = True
) -> int:
    """Write one JSON document per line; returns the number of records."""
    lines = [_encode(r) + "\n" for r in records]
    atomic_write(path, lines, fsync=fsync, mkdir=mkdir)
    return len(lines)


def read_json(path: str | os.PathLike[str]) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise HybridError(f"{path}: not UTF-8 text") from None
    except FileNotFoundError:
        raise HybridError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise HybridError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, Any]]:
    """Yield (line number, record) for each non-blank line; a bad line is an error naming file and line."""
    path = Path(path)
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed by the `with f` below; only open's error is translated)
    except FileNotFoundError:
        raise HybridError(f"{path}: no such file") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise HybridError(f"{path}:{lineno}: not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                record = parse_json_line(line)
            except BadJSONLine as e:  # not JSON, nested too deeply, a lone surrogate
                raise HybridError(f"{path}:{lineno}: {e}") from None
            yield lineno, record


def read_jsonl(path: str | os.PathLike[str]) -> list[Any]:
    return [record for _, record in iter_jsonl(path)]
