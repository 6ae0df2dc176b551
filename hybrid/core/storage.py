"""Where outputs live: a local folder or a URI of a pyarrow file system (`s3://bucket/prefix`, `gs://…`,
`hdfs://…`), behind the few operations the training, evaluation and sweep code needs.

Local folders keep their atomic writes (a temp file or folder, then a rename). Object stores have no rename: a
folder is uploaded file by file and made valid by its last file (a checkpoint's `trainer_state.json`, see
hybrid/training/checkpoints.py), and a whole file is one PUT, so it is never seen half-written.

Credentials and endpoints come from where pyarrow looks for them — the URI itself (`s3://…?endpoint_override=…`),
or the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, `AWS_DEFAULT_REGION`, …), which
Ray workers inherit from the cluster — and are never printed: messages show URIs without userinfo and query.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from hybrid.core.errors import HybridError
from hybrid.core.io import atomic_write
from hybrid.core.redact import library_message, redact_url


def is_uri(path: str | os.PathLike) -> bool:
    """`s3://…`, `gs://…`, `file://…` — anything a pyarrow file system opens — as opposed to a local path."""
    head, sep, _ = str(path).partition("://")
    return bool(sep) and head.isalnum() and len(head) > 1


def shown(path: str | os.PathLike) -> str:
    """A location as messages show it: URIs without credentials or query."""
    return redact_url(str(path)) if is_uri(path) else str(path)


def in_ray_job() -> bool:
    """This process is the entrypoint of a Ray job (`ray job submit`): Ray's job supervisor sets this variable."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def require_lasting(where: str, value: str | os.PathLike) -> None:
    """Inside a Ray job the working directory is a temporary copy that goes away with the job: an output folder
    given as a relative path would vanish with it. A one-line error naming the setting, before anything runs."""
    if in_ray_job() and not is_uri(value) and not Path(value).is_absolute():
        raise HybridError(f"{where}={value}: a relative folder inside a Ray job lands in the job's temporary working "
                          f"dir and is lost when the job ends; give an absolute folder every node sees "
                          f"(e.g. {where}=/shared/…) or a URI (s3://…)")


def base_name(path: str | os.PathLike) -> str:
    """The last part of a path or URI (without a URI's query)."""
    if not is_uri(path):
        return Path(path).name
    return urlsplit(str(path)).path.rstrip("/").rsplit("/", 1)[-1]


def join(base: str | os.PathLike, *parts: str) -> str:
    """`base/part/…` for paths and URIs alike (a URI's query stays at its end)."""
    if not is_uri(base):
        return str(Path(base, *parts))
    p = urlsplit(str(base))
    return p._replace(path="/".join([p.path.rstrip("/"), *parts])).geturl()


def filesystem(uri: str):
    """(pyarrow file system, path inside it) of a URI; a one-line error when pyarrow cannot open it."""
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as e:  # ArrowInvalid, OSError: an unknown scheme, a malformed URI, …
        raise HybridError(f"{shown(uri)}: cannot open ({library_message(e, uri)})") from None


def _fs_call(uri: str, what: str, fn):
    try:
        return fn()
    except HybridError:
        raise
    except FileNotFoundError:
        raise HybridError(f"{shown(uri)}: no such file or folder") from None
    except Exception as e:
        raise HybridError(f"{shown(uri)}: cannot {what} ({library_message(e, uri)})") from None


def exists(path: str | os.PathLike) -> bool:
    if not is_uri(path):
        return Path(path).exists()
    import pyarrow.fs as pafs

    fs, inner = filesystem(str(path))
    return _fs_call(str(path), "read", lambda: fs.get_file_info(inner).type != pafs.FileType.NotFound)


def is_dir(path: str | os.PathLike) -> bool:
    if not is_uri(path):
        return Path(path).is_dir()
    import pyarrow.fs as pafs

    fs, inner = filesystem(str(path))
    return _fs_call(str(path), "read", lambda: fs.get_file_info(inner).type == pafs.FileType.Directory)


def list_dir(path: str | os.PathLike) -> list[tuple[str, bool]]:
    """(name, is a folder) of the entries directly in a folder; [] when it does not exist."""
    if not is_uri(path):
        p = Path(path)
        return [(c.name, c.is_dir()) for c in p.iterdir()] if p.is_dir() else []
    import pyarrow.fs as pafs

    fs, inner = filesystem(str(path))

    def ls():
        if fs.get_file_info(inner).type != pafs.FileType.Directory:
            return []
        infos = fs.get_file_info(pafs.FileSelector(inner.rstrip("/"), recursive=False))
        return [(i.base_name, i.type == pafs.FileType.Directory) for i in infos]

    return _fs_call(str(path), "list", ls)


def read_text(path: str | os.PathLike) -> str:
    if not is_uri(path):
        return Path(path).read_text(encoding="utf-8")
    fs, inner = filesystem(str(path))

    def read():
        with fs.open_input_stream(inner) as f:
            return f.read().decode("utf-8")

    return _fs_call(str(path), "read", read)


def write_text(path: str | os.PathLike, text: str) -> None:
    """A whole text file: atomic locally (temp + rename), one PUT on an object store."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """A whole file: atomic locally (temp + rename), one PUT on an object store."""
    if not is_uri(path):
        atomic_write(path, data)
        return
    fs, inner = filesystem(str(path))

    def write():
        with fs.open_output_stream(inner) as f:
            f.write(data)

    _fs_call(str(path), "write", write)


def upload_dir(local: str | os.PathLike, dest: str, last: str | None = None) -> None:
    """Copy a local folder's files to the URI `dest` (created), the file named `last` after all the others."""
    import pyarrow.fs as pafs

    fs, inner = filesystem(dest)
    local = Path(local)
    files = sorted(p for p in local.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == last)  # stable: `last` moves to the end

    def put():
        fs.create_dir(inner, recursive=True)
        for p in files:
            target = f"{inner.rstrip('/')}/{p.relative_to(local).as_posix()}"
            pafs.copy_files(str(p), target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)

    _fs_call(dest, "write", put)


def download_dir(src: str, local: str | os.PathLike) -> Path:
    """Copy the URI folder `src` into the local folder `local` (created); returns it."""
    import pyarrow.fs as pafs

    fs, inner = filesystem(src)
    local = Path(local)
    local.mkdir(parents=True, exist_ok=True)
    _fs_call(src, "read", lambda: pafs.copy_files(inner, str(local), source_filesystem=fs,
                                                  destination_filesystem=pafs.LocalFileSystem()))
    return local


def remove_dir(path: str | os.PathLike) -> None:
    if not is_uri(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    fs, inner = filesystem(str(path))
    try:
        fs.delete_dir(inner)
    except (FileNotFoundError, OSError):
        pass


def local_copy(path: str | os.PathLike, cache: str | os.PathLike | None = None) -> Path:
    """A local folder with the contents of `path`: itself when local, else a download into `cache` (or a new temp
    folder) — for reading a checkpoint kept on an object store."""
    if not is_uri(path):
        return Path(path)
    target = Path(cache) if cache else Path(tempfile.mkdtemp(prefix="hybrid-ckpt-"))
    return download_dir(str(path), target)
