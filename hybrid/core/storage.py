"""Where outputs live: a local folder or a URI of a pyarrow file system (`s3://bucket/prefix`, `gs://…`,
`hdfs://…`), behind one small interface — `at(path)` picks its kind once, from the path:

    LocalStorage   a local folder: atomic writes (a temp file or folder, then a rename), `best` a symlink, a run
                   writes straight into its output folder
    ArrowStorage   a pyarrow file system: a whole file is one PUT (never seen half-written); there is no rename, so a
                   folder is uploaded file by file and made valid by its last file (a checkpoint's
                   `trainer_state.json`, see hybrid/training/checkpoints.py), a pointer such as `best` is a small
                   text file, and a run writes into a local staging folder first, then publishes

Callers say what they want ("write this file under that run", "publish this folder there") and never ask whether a
location is a URI: this module is the only one that does. The module-level functions (`exists`, `read_text`, …) are
the same operations for callers that hold one path.

Credentials and endpoints come from where pyarrow looks for them — the URI itself (`s3://…?endpoint_override=…`),
or the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, `AWS_DEFAULT_REGION`, …), which
Ray workers inherit from the cluster — and are never printed: messages show URIs without userinfo and query.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit

from hybrid.core.errors import HybridError
from hybrid.core.io import atomic_write
from hybrid.core.redact import library_message, redact_url

T = TypeVar("T")
PathLike = str | os.PathLike[str]


def is_uri(path: PathLike) -> bool:
    """`s3://…`, `gs://…`, `file://…` — anything a pyarrow file system opens — as opposed to a local path."""
    head, sep, _ = str(path).partition("://")
    return bool(sep) and head.isalnum() and len(head) > 1


def cache_root() -> Path:
    """This machine's cache of staged runs and fetched folders (`HYBRID_CACHE_DIR`, else the temp folder's)."""
    return Path(os.environ.get("HYBRID_CACHE_DIR") or Path(tempfile.gettempdir()) / "hybrid-cache")


class Storage:
    """The operations on one kind of location. Paths are whole locations (a local path or a URI) of this kind."""

    # whether a run writes through a local staging folder (then publishes) rather than into the location itself
    stages: bool = False

    def shown(self, path: PathLike) -> str:
        """A location as messages show it (URIs without credentials or query)."""
        raise NotImplementedError

    def absolute(self, path: PathLike) -> str:
        """The location as a run records it: a local path resolved, a URI without its trailing slash."""
        raise NotImplementedError

    def native(self, path: PathLike) -> Path | str:
        """The location as callers hand it on: a `Path` for a local folder, the URI string otherwise."""
        raise NotImplementedError

    def join(self, base: PathLike, *parts: str) -> str:
        raise NotImplementedError

    def base_name(self, path: PathLike) -> str:
        raise NotImplementedError

    def exists(self, path: PathLike) -> bool:
        raise NotImplementedError

    def is_dir(self, path: PathLike) -> bool:
        raise NotImplementedError

    def list_dir(self, path: PathLike) -> list[tuple[str, bool]]:
        """(name, is a folder) of the entries directly in a folder; [] when it does not exist."""
        raise NotImplementedError

    def files_under(self, path: PathLike) -> list[str]:
        """Every file below a folder (recursive, hidden ones left out), as locations, sorted."""
        raise NotImplementedError

    def glob(self, pattern: str) -> list[str]:
        """The files a glob matches (`**` recursive), as locations, sorted."""
        raise NotImplementedError

    def relative_files(self, path: PathLike) -> list[str]:
        """Every file below a folder as a '/'-separated path relative to it (hidden ones too), sorted; [] when there is
        no such folder. One recursive listing (on an object store, one request per 1,000 files)."""
        raise NotImplementedError

    def stat(self, path: PathLike) -> tuple[int, int] | None:
        """(size in bytes, modification time in ns) of a file, or None when there is none."""
        raise NotImplementedError

    def get_files(self, pairs: list[tuple[str, Path]]) -> None:
        """Each file (location, local path) copied to its local path (folders made), several at once on an object
        store; a file that is not there is an error naming it."""
        for src, dest in pairs:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with self.open_input(src) as f:
                dest.write_bytes(f.read())

    def open_input(self, path: PathLike) -> IO[bytes]:
        """A binary stream of a file."""
        raise NotImplementedError

    def read_text(self, path: PathLike) -> str:
        raise NotImplementedError

    def write_bytes(self, path: PathLike, data: bytes) -> None:
        """A whole file: atomic locally (temp + rename), one PUT on an object store."""
        raise NotImplementedError

    def write_text(self, path: PathLike, text: str) -> None:
        self.write_bytes(path, text.encode("utf-8"))

    def remove_dir(self, path: PathLike) -> None:
        raise NotImplementedError

    def remove_file(self, path: PathLike) -> None:
        """Delete a file; nothing to do when there is none."""
        raise NotImplementedError

    def remove_files(self, paths: list[str]) -> None:
        """Delete files (several at once on an object store); nothing to do for one that is not there."""
        for path in paths:
            self.remove_file(path)

    # -- runs: a local work folder, published to the location -----------------------------------------------------
    def work_dir(self, path: PathLike) -> Path:
        """The local folder a run whose output is `path` writes in: the folder itself, or a staging folder on this
        machine (one per location) that `put_dir` / `put_file` publish from."""
        raise NotImplementedError

    def put_dir(self, local: PathLike, dest: PathLike, last: str | None = None) -> None:
        """The local folder `local` at `dest` (its file named `last` written after all the others); nothing to do
        when `dest` is that folder."""
        raise NotImplementedError

    def put_file(self, local: PathLike, dest: PathLike) -> None:
        """The local file `local` at `dest` (one whole write); nothing to do when `dest` is that file."""
        raise NotImplementedError

    def get_dir(self, src: PathLike, local: Path) -> Path:
        """A local folder with the contents of the folder `src`: `src` itself when it is local, else a download
        into `local` (created)."""
        raise NotImplementedError

    def set_pointer(self, folder: PathLike, name: str, target: str) -> None:
        """`folder/name` names the entry `target` of the same folder (a symlink swapped atomically, or a small text
        file on an object store)."""
        raise NotImplementedError

    def read_pointer(self, folder: PathLike, name: str) -> str | None:
        """The entry `folder/name` names, or None when there is no such pointer."""
        raise NotImplementedError


class LocalStorage(Storage):
    stages = False

    def shown(self, path: PathLike) -> str:
        return str(path)

    def absolute(self, path: PathLike) -> str:
        return str(Path(path).resolve())

    def native(self, path: PathLike) -> Path:
        return Path(path)

    def join(self, base: PathLike, *parts: str) -> str:
        return str(Path(base, *parts))

    def base_name(self, path: PathLike) -> str:
        return Path(path).name

    def exists(self, path: PathLike) -> bool:
        return Path(path).exists()

    def is_dir(self, path: PathLike) -> bool:
        return Path(path).is_dir()

    def list_dir(self, path: PathLike) -> list[tuple[str, bool]]:
        p = Path(path)
        return [(c.name, c.is_dir()) for c in p.iterdir()] if p.is_dir() else []

    def files_under(self, path: PathLike) -> list[str]:
        return sorted(str(p) for p in Path(path).rglob("*") if p.is_file() and not p.name.startswith("."))

    def glob(self, pattern: str) -> list[str]:
        return sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())

    def relative_files(self, path: PathLike) -> list[str]:
        root = Path(path)
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) if root.is_dir() else []

    def stat(self, path: PathLike) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return st.st_size, st.st_mtime_ns

    def open_input(self, path: PathLike) -> IO[bytes]:
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise HybridError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise HybridError(f"{path}: is a folder, not a data file") from None

    def read_text(self, path: PathLike) -> str:
        return Path(path).read_text(encoding="utf-8")

    def write_bytes(self, path: PathLike, data: bytes) -> None:
        atomic_write(path, data)

    def remove_dir(self, path: PathLike) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def remove_file(self, path: PathLike) -> None:
        Path(path).unlink(missing_ok=True)

    def work_dir(self, path: PathLike) -> Path:
        return Path(path).resolve()

    def put_dir(self, local: PathLike, dest: PathLike, last: str | None = None) -> None:
        if _same(local, dest):
            return
        shutil.copytree(local, dest, dirs_exist_ok=True)

    def put_file(self, local: PathLike, dest: PathLike) -> None:
        if not _same(local, dest):
            atomic_write(dest, Path(local).read_bytes())

    def get_dir(self, src: PathLike, local: Path) -> Path:
        return Path(src)

    def set_pointer(self, folder: PathLike, name: str, target: str) -> None:
        folder = Path(folder)
        tmp = folder / f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # unique: never another writer's
        os.symlink(target, tmp)
        os.replace(tmp, folder / name)

    def read_pointer(self, folder: PathLike, name: str) -> str | None:
        link = Path(folder) / name
        return link.resolve().name if link.exists() else None


def _same(a: PathLike, b: PathLike) -> bool:
    return Path(a).resolve() == Path(b).resolve()


_BUCKET_SCHEMES = ("s3", "gs", "gcs")


def _one_request(uri: str) -> str:
    """The URI of a whole-file write: on S3 with pyarrow's `allow_delayed_open`, so a small file is one PutObject
    instead of three requests of a multipart upload (created, part, completed) — half the time per file on the
    pipeline's per-commit files here (23 -> 12 ms, moto). An error (a missing bucket) then comes at close, still
    inside the write."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or "allow_delayed_open" in parts.query:
        return uri
    return parts._replace(query="&".join(q for q in (parts.query, "allow_delayed_open=true") if q)).geturl()


class ArrowStorage(Storage):
    stages = True

    def __init__(self) -> None:
        self._filesystems: dict[tuple[str, str, str], Any] = {}

    def shown(self, path: PathLike) -> str:
        return redact_url(str(path))

    def absolute(self, path: PathLike) -> str:
        return str(path).rstrip("/")

    def native(self, path: PathLike) -> str:
        return str(path)

    def join(self, base: PathLike, *parts: str) -> str:
        p = urlsplit(str(base))
        return p._replace(path="/".join([p.path.rstrip("/"), *parts])).geturl()

    def base_name(self, path: PathLike) -> str:
        return urlsplit(str(path)).path.rstrip("/").rsplit("/", 1)[-1]

    def filesystem(self, uri: str) -> tuple[Any, str]:
        """(pyarrow file system, path inside it) of a URI; a one-line error when pyarrow cannot open it. An S3 or GCS
        file system is made once per bucket, endpoint and credentials: the pipeline opens thousands of files there."""
        import pyarrow.fs as pafs

        parts = urlsplit(uri)
        key = (parts.scheme, parts.netloc, parts.query)
        cached = self._filesystems.get(key) if parts.scheme in _BUCKET_SCHEMES and "%" not in parts.path else None
        if cached is not None:  # s3/gs: the path inside is the bucket (the URI's host) and the URI's path
            return cached, (parts.netloc.rpartition("@")[2] + parts.path).rstrip("/")
        try:
            fs, inner = pafs.FileSystem.from_uri(uri)
        except Exception as e:  # ArrowInvalid, OSError: an unknown scheme, a malformed URI, …
            raise HybridError(f"{self.shown(uri)}: cannot open ({library_message(e, uri)})") from None
        if parts.scheme in _BUCKET_SCHEMES:
            self._filesystems[key] = fs
        return fs, str(inner)

    def _call(self, uri: PathLike, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except HybridError:
            raise
        except FileNotFoundError:
            raise HybridError(f"{self.shown(uri)}: no such file or folder") from None
        except Exception as e:
            raise HybridError(f"{self.shown(uri)}: cannot {what} ({library_message(e, str(uri))})") from None

    def _type(self, path: PathLike) -> Any:
        fs, inner = self.filesystem(str(path))
        return self._call(path, "read", lambda: fs.get_file_info(inner).type)

    def exists(self, path: PathLike) -> bool:
        import pyarrow.fs as pafs

        return bool(self._type(path) != pafs.FileType.NotFound)

    def is_dir(self, path: PathLike) -> bool:
        import pyarrow.fs as pafs

        return bool(self._type(path) == pafs.FileType.Directory)

    def list_dir(self, path: PathLike) -> list[tuple[str, bool]]:
        import pyarrow.fs as pafs

        fs, inner = self.filesystem(str(path))

        def ls() -> list[tuple[str, bool]]:
            if fs.get_file_info(inner).type != pafs.FileType.Directory:
                return []
            infos = fs.get_file_info(pafs.FileSelector(inner.rstrip("/"), recursive=False))
            return [(i.base_name, i.type == pafs.FileType.Directory) for i in infos]

        return self._call(path, "list", ls)

    def _files(self, uri: str, root: str, keep: Callable[[str], bool]) -> list[str]:
        """The files below `root` (a path inside `uri`'s file system) that `keep`, as URIs that keep the original's
        credentials and query (an S3 `endpoint_override`, say), so each opens on its own — in a Ray task, too."""
        import pyarrow.fs as pafs

        fs, _ = self.filesystem(uri)
        found = self._call(
            uri,
            "list",
            lambda: fs.get_file_info(pafs.FileSelector(root.rstrip("/"), recursive=True, allow_not_found=True)),
        )
        files = sorted(
            f.path for f in found if f.type == pafs.FileType.File and not f.base_name.startswith(".") and keep(f.path)
        )
        parts = urlsplit(uri)
        host = parts.hostname or ""
        # s3/gs paths start with the bucket (the URI's host); others (hdfs) with the path alone
        return [parts._replace(path=f[len(host) :] if host and f.startswith(host + "/") else f).geturl() for f in files]

    def files_under(self, path: PathLike) -> list[str]:
        _, inner = self.filesystem(str(path))
        return self._files(str(path), inner, lambda f: True)

    def glob(self, pattern: str) -> list[str]:
        _, inner = self.filesystem(pattern)
        cut = min(i for i in (inner.find(c) for c in "*?[") if i >= 0)
        return self._files(pattern, inner[:cut].rsplit("/", 1)[0], lambda f: fnmatch.fnmatch(f, inner))

    def relative_files(self, path: PathLike) -> list[str]:
        import pyarrow.fs as pafs

        fs, inner = self.filesystem(str(path))
        root = inner.rstrip("/")
        found = self._call(
            path, "list", lambda: fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        )
        return sorted(f.path[len(root) + 1 :] for f in found if f.type == pafs.FileType.File)

    def stat(self, path: PathLike) -> tuple[int, int] | None:
        import pyarrow.fs as pafs

        fs, inner = self.filesystem(str(path))
        info = self._call(path, "read", lambda: fs.get_file_info(inner))
        if info.type != pafs.FileType.File:
            return None
        return int(info.size or 0), int(info.mtime_ns or 0)

    def get_files(self, pairs: list[tuple[str, Path]]) -> None:
        def get(pair: tuple[str, Path]) -> None:
            src, dest = pair
            fs, inner = self.filesystem(src)

            def read() -> bytes:
                with fs.open_input_stream(inner) as f:
                    return bytes(f.read())

            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(self._call(src, "read", read))

        _in_threads(get, pairs)

    def open_input(self, path: PathLike) -> IO[bytes]:
        fs, inner = self.filesystem(str(path))
        try:  # buffered: pyarrow's streams cannot iterate lines themselves
            return io.BufferedReader(fs.open_input_stream(inner), 1 << 20)
        except FileNotFoundError:
            raise HybridError(f"{self.shown(path)}: no such file") from None
        except Exception as e:
            raise HybridError(f"{self.shown(path)}: cannot read ({library_message(e, str(path))})") from None

    def read_text(self, path: PathLike) -> str:
        fs, inner = self.filesystem(str(path))

        def read() -> str:
            with fs.open_input_stream(inner) as f:
                return str(f.read().decode("utf-8"))

        return self._call(path, "read", read)

    def write_bytes(self, path: PathLike, data: bytes) -> None:
        fs, inner = self.filesystem(_one_request(str(path)))

        def write() -> None:
            try:
                out = fs.open_output_stream(inner)
            except FileNotFoundError:  # a file system with real folders (file://, hdfs): make the parent first
                fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
                out = fs.open_output_stream(inner)
            with out as f:
                f.write(data)

        self._call(path, "write", write)

    def remove_dir(self, path: PathLike) -> None:
        fs, inner = self.filesystem(str(path))
        try:
            fs.delete_dir(inner)
        except (FileNotFoundError, OSError):
            pass

    def remove_file(self, path: PathLike) -> None:
        fs, inner = self.filesystem(str(path))
        try:
            fs.delete_file(inner)
        except FileNotFoundError:
            pass

    def remove_files(self, paths: list[str]) -> None:
        _in_threads(self.remove_file, paths)

    def work_dir(self, path: PathLike) -> Path:
        key = hashlib.blake2b(self.absolute(path).encode(), digest_size=8).hexdigest()
        return cache_root() / "runs" / key

    def put_dir(self, local: PathLike, dest: PathLike, last: str | None = None) -> None:
        import pyarrow.fs as pafs

        fs, inner = self.filesystem(str(dest))
        local = Path(local)
        files = sorted(p for p in local.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name == last)  # stable: `last` moves to the end

        def put() -> None:
            fs.create_dir(inner, recursive=True)
            for p in files:
                target = f"{inner.rstrip('/')}/{p.relative_to(local).as_posix()}"
                pafs.copy_files(str(p), target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)

        self._call(dest, "write", put)

    def put_file(self, local: PathLike, dest: PathLike) -> None:
        self.write_bytes(dest, Path(local).read_bytes())

    def get_dir(self, src: PathLike, local: Path) -> Path:
        import pyarrow.fs as pafs

        fs, inner = self.filesystem(str(src))
        local.mkdir(parents=True, exist_ok=True)
        self._call(
            src,
            "read",
            lambda: pafs.copy_files(
                inner, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()
            ),
        )
        return local

    def set_pointer(self, folder: PathLike, name: str, target: str) -> None:
        self.write_text(self.join(folder, name), target + "\n")

    def read_pointer(self, folder: PathLike, name: str) -> str | None:
        pointer = self.join(folder, name)
        return self.read_text(pointer).strip() if self.exists(pointer) else None


TRANSFER_THREADS = 8  # requests in flight per process for many small files (one request each costs a round trip)


def _in_threads(fn: Callable[[Any], None], items: list[Any]) -> None:
    """`fn` over `items`, TRANSFER_THREADS at a time; the first error is raised once all are done."""
    if len(items) <= 1:
        for item in items:
            fn(item)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(TRANSFER_THREADS, len(items))) as pool:
        for future in [pool.submit(fn, item) for item in items]:
            future.result()


class Uploads:
    """Batches of files published in the background while the caller goes on, up to TRANSFER_THREADS batches at
    once; the files of a batch go one after the other, in order (its last one is what makes it count: a commit
    folder's done marker). `wait()` waits for all and raises the first error (every batch ran to its end or error)."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(TRANSFER_THREADS)
        self._futures: list[Any] = []

    def submit(self, files: list[tuple[Path, str]], then: Callable[[], None] | None = None) -> None:
        """Publish each (local file, location) in order, then call `then` (e.g. remove the local copies)."""

        def put() -> None:
            for local, dest in files:
                at(dest).put_file(local, dest)
            if then is not None:
                then()

        self._futures.append(self._pool.submit(put))

    def wait(self) -> None:
        futures, self._futures = self._futures, []
        errors = [e for e in (f.exception() for f in futures) if e is not None]
        if errors:
            raise errors[0]

    def __enter__(self) -> Uploads:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self.wait()
        finally:
            self._pool.shutdown(wait=True)


_LOCAL, _ARROW = LocalStorage(), ArrowStorage()


def at(path: PathLike) -> Storage:
    """The storage a location lives on (chosen from the path, once)."""
    return _ARROW if is_uri(path) else _LOCAL


def is_absolute(path: PathLike) -> bool:
    """A URI, or an absolute local path (`~` counts): what stays the same location from any working folder."""
    return is_uri(path) or os.path.isabs(os.path.expanduser(str(path)))


def in_ray_job() -> bool:
    """This process is the entrypoint of a Ray job (`ray job submit`): Ray's job supervisor sets this variable."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def require_lasting(where: str, value: PathLike) -> None:
    """Inside a Ray job the working directory is a temporary copy that goes away with the job: an output folder
    given as a relative path would vanish with it. A one-line error naming the setting, before anything runs."""
    if in_ray_job() and not is_uri(value) and not Path(value).is_absolute():
        raise HybridError(
            f"{where}={value}: a relative folder inside a Ray job lands in the job's temporary working "
            f"dir and is lost when the job ends; give an absolute folder every node sees "
            f"(e.g. {where}=/shared/…) or a URI (s3://…)"
        )


def refuse_uri(value: PathLike, what: str) -> None:
    """For the settings that take a local folder only: a URI there would be read as a relative path (`s3://b/x` ->
    a local folder `s3:`), so it is refused in one line (`what`: why, and what to give instead)."""
    if is_uri(value):
        raise ValueError(f"a URI is not supported here ({what})")


# -- the same operations for one path ---------------------------------------------------------------------------
def shown(path: PathLike) -> str:
    """A location as messages show it: URIs without credentials or query."""
    return at(path).shown(path)


def base_name(path: PathLike) -> str:
    """The last part of a path or URI (without a URI's query)."""
    return at(path).base_name(path)


def join(base: PathLike, *parts: str) -> str:
    """`base/part/…` for paths and URIs alike (a URI's query stays at its end)."""
    return at(base).join(base, *parts)


def exists(path: PathLike) -> bool:
    return at(path).exists(path)


def is_dir(path: PathLike) -> bool:
    return at(path).is_dir(path)


def list_dir(path: PathLike) -> list[tuple[str, bool]]:
    """(name, is a folder) of the entries directly in a folder; [] when it does not exist."""
    return at(path).list_dir(path)


def read_text(path: PathLike) -> str:
    return at(path).read_text(path)


def write_text(path: PathLike, text: str) -> None:
    """A whole text file: atomic locally (temp + rename), one PUT on an object store."""
    at(path).write_text(path, text)


def write_bytes(path: PathLike, data: bytes) -> None:
    """A whole file: atomic locally (temp + rename), one PUT on an object store."""
    at(path).write_bytes(path, data)


def remove_dir(path: PathLike) -> None:
    at(path).remove_dir(path)


def remove_file(path: PathLike) -> None:
    """Delete a file (nothing to do when there is none)."""
    at(path).remove_file(path)
