"""The repository registry (`hybrid repos add|list|remove`, the seed's `manage-repos`).

Repositories are bare clones (pygit2) in data/repos/<name>; data/repos/registry.json lists
{"name", "source", "default_branch", "added_at"}. `add` clones into a temp folder and renames it into place
only when everything worked, so a failure changes nothing.

On object storage (`pipeline.data_dir=s3://…`) a clone is one archive, `repos/<name>.tar` (uploaded once by `add`
and `update`), that each machine unpacks into its own cache the first time it needs it (`local_clone`; the older
archives' folders are removed once no process on the machine uses them: `clone_in_use`); the registry is the same
registry.json. There, `add`/`update`/`remove` are not locked against each other: run them from
one place at a time (docs/cluster.md).

Every read-modify-write of the registry holds `data/repos/.registry.lock` (flock), so commands run at once never
lose an entry. Names are checked wherever the registry is read (a hand-edited `../x` is an error, never a path).
A URL's userinfo (`https://user:token@host/...`) is used for the clone only: the registry and the clone's
`origin` keep the URL without it; `update` takes the credentials from HYBRID_GIT_USERNAME / HYBRID_GIT_TOKEN.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from hybrid.config.pipeline import PipelineConfig
from hybrid.core import storage
from hybrid.core.errors import HybridError
from hybrid.core.io import exclusive_lock
from hybrid.core.layout import CLONE_LOCK, REGISTRY, DatasetLayout
from hybrid.core.redact import library_message, redact_url, split_userinfo

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
URL_RE = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|[\w.-]+@[\w.-]+:)", re.I)


@dataclass
class RepoEntry:
    name: str
    source: str
    default_branch: str
    added_at: str

    def path(self, cfg: PipelineConfig) -> Path:
        """The bare clone on this machine (on object storage, unpacked from its archive on first use)."""
        return local_clone(DatasetLayout(cfg.data_dir), self.name)

    def location(self, cfg: PipelineConfig) -> str:
        """Where the clone is kept: its folder, or on object storage its archive."""
        layout = DatasetLayout(cfg.data_dir)
        return layout.clone_archive(self.name) if layout.staged else layout.clone_dir(self.name)


def local_clone(layout: DatasetLayout, name: str) -> Path:
    """The bare clone of a registered repository as a folder of this machine: the clone itself, or on object storage
    its archive unpacked into this machine's cache (once per archive: a new archive from `update` is a new folder,
    and the folders of older archives of the same repository are removed when no process uses them)."""
    with clone_in_use(layout, name) as path:
        return path


@contextmanager
def clone_in_use(layout: DatasetLayout, name: str) -> Iterator[Path]:
    """`local_clone`, held for the block: on object storage, while it runs no other process on this machine removes
    that unpacked clone (a shared `flock` on `<folder>.lock` beside it; `_remove_older_clones` takes it exclusively)."""
    if not layout.staged:
        yield layout.local(layout.clone_dir(name))
        return
    archive = layout.clone_archive(name)
    stamp = storage.at(archive).stat(archive)
    if stamp is None:
        raise HybridError(
            f"{storage.shown(archive)}: no such file (the clone of {name!r} is missing: "
            f"`hybrid repos remove {name}`, then add it again)"
        )
    dest = layout.clone_cache(name, stamp)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _clone_lock(dest.parent, exclusive=False, wait=True):
        if not dest.is_dir():
            _unpack(archive, name, dest)
        _remove_older_clones(dest.parent)
        yield dest


def _unpack(archive: str, name: str, dest: Path) -> None:
    import tarfile

    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=dest.parent))
    try:
        storage.at(archive).get_files([(archive, tmp / "clone.tar")])
        with tarfile.open(tmp / "clone.tar") as tar:
            tar.extractall(tmp / "x", filter="data")
        try:
            (tmp / "x" / name).rename(dest)
        except OSError:  # another process on this machine unpacked it first
            if not dest.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _clone_lock(folder: Path, exclusive: bool, wait: bool) -> Iterator[bool]:
    """A `flock` on `<folder>.lock` (shared: a process uses the clone; exclusive: one removes it). Yields whether it
    is held (False only without `wait`, when another process holds it)."""
    import fcntl

    fd = os.open(folder.with_name(folder.name + CLONE_LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # (releases the lock)


def _remove_older_clones(current: Path) -> None:
    """Remove this machine's unpacked clones of other archives of the same repository (`DatasetLayout.clone_versions`)
    that no process uses now: each is renamed away under an exclusive lock, then deleted; one in use stays for a later
    call. The cache keeps one clone per repository instead of one per archive ever unpacked."""
    for other in DatasetLayout.clone_versions(current):
        with _clone_lock(other, exclusive=True, wait=False) as held:
            if not held or not other.is_dir():
                continue
            doomed = other.with_name(f".{other.name}.{os.getpid()}.removed")
            other.rename(doomed)
            other.with_name(other.name + CLONE_LOCK).unlink(missing_ok=True)
        shutil.rmtree(doomed, ignore_errors=True)


def _publish_clone(layout: DatasetLayout, name: str, clone: Path) -> None:
    """Upload a bare clone as its archive (one file: one PUT, never seen half-written), then keep `clone` as this
    machine's unpacked copy of that archive."""
    import tarfile

    archive = layout.clone_archive(name)
    packed = clone.parent / f".{name}.tar"
    with tarfile.open(packed, "w") as tar:  # (not compressed: git's pack files are)
        tar.add(clone, arcname=name)
    try:
        storage.at(archive).put_file(packed, archive)
    finally:
        packed.unlink(missing_ok=True)
    stamp = storage.at(archive).stat(archive)
    dest = layout.clone_cache(name, stamp) if stamp else None
    if dest is not None and not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        clone.rename(dest)
    if dest is not None:
        _remove_older_clones(dest.parent)


def repos_dir(cfg: PipelineConfig) -> Path:
    layout = DatasetLayout(cfg.data_dir)
    return layout.local(layout.repos_dir)


def registry_path(cfg: PipelineConfig) -> Path:
    layout = DatasetLayout(cfg.data_dir)
    return layout.local(layout.registry)


def registry_lock(cfg: PipelineConfig):
    """Held around every read-modify-write of the registry (a context manager)."""
    return exclusive_lock(repos_dir(cfg) / ".registry.lock", f"{registry_path(cfg)}")


def list_repos(cfg: PipelineConfig) -> list[RepoEntry]:
    layout = DatasetLayout(cfg.data_dir)
    path = storage.shown(layout.registry)
    if not storage.exists(layout.registry):
        return []
    try:
        items = json.loads(storage.read_text(layout.registry))
        entries = [
            RepoEntry(**{k: item[k] for k in ("name", "source", "default_branch", "added_at")}) for item in items
        ]
    except UnicodeDecodeError:
        raise HybridError(f"{path}: not UTF-8 text") from None
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise HybridError(f"{path}: not a valid registry ({type(e).__name__}: {e})") from None
    for i, e in enumerate(entries):
        if not isinstance(e.name, str) or not _valid_name(e.name):
            raise HybridError(
                f"{path}: entry {i}: name {e.name!r} is not a valid repo name (letters, digits, '.', "
                f"'_', '-'; no '/' or '..'); fix or remove that entry"
            )
    return entries


def get_repo(name: str, cfg: PipelineConfig) -> RepoEntry:
    for entry in list_repos(cfg):
        if entry.name == name:
            return entry
    known = ", ".join(e.name for e in list_repos(cfg)) or "none; add one with `hybrid repos add PATH_OR_URL`"
    raise HybridError(f"repo {name!r}: not registered (known: {known})")


def _save(entries: list[RepoEntry], cfg: PipelineConfig) -> None:
    text = json.dumps([asdict(e) for e in entries], indent=2, ensure_ascii=False) + "\n"  # (as atomic_write_json)
    storage.write_text(DatasetLayout(cfg.data_dir).registry, text)


def _valid_name(name: str) -> bool:
    return bool(NAME_RE.match(name)) and ".." not in name and name not in (REGISTRY, ".registry.lock")


def validate_name(name: str) -> str:
    if not _valid_name(name):
        raise HybridError(f"repo name {name!r}: use letters, digits, '.', '_', '-' (no '/', no '..', at most 100)")
    return name


def default_name(source: str) -> str:
    base = re.split(r"[/:\\]", source.rstrip("/\\"))[-1]
    base = base[:-4] if base.endswith(".git") else base
    base = re.sub(r"[^A-Za-z0-9._-]", "-", base).strip(".-") or "repo"
    return base


def _head_branch(repo, source: str) -> str:
    try:
        if repo.head_is_unborn:
            raise HybridError(f"{source}: the repository has no commits")
        return repo.head.shorthand
    except Exception as e:  # pygit2.GitError on a detached/odd HEAD
        if isinstance(e, HybridError):
            raise
        return "HEAD"


def add_repo(source: str, name: str | None, cfg: PipelineConfig) -> RepoEntry:
    """Clone `source` (a URL or a local path to a git repository) bare into data/repos/<name> and register it."""
    import pygit2

    is_url = bool(URL_RE.match(source)) and not Path(source).exists()
    user = password = None
    if is_url:
        source, user, password = split_userinfo(source)  # the secret is used for this clone, never stored
    else:
        local = Path(source).expanduser()
        if not local.exists():
            raise HybridError(f"{source}: no such path (give a git URL or the path of a git repository)")
        found = pygit2.discover_repository(str(local.resolve()))
        if found is None or Path(found).resolve() not in (local.resolve() / ".git", local.resolve()):
            raise HybridError(f"{source}: not a git repository")
        source = str(local.resolve())
    name = validate_name(name or default_name(source))
    if DatasetLayout(cfg.data_dir).staged:
        return _add_to_store(source, name, user, password, cfg)
    created = [p for p in (Path(cfg.data_dir), repos_dir(cfg)) if not p.exists()]
    repos_dir(cfg).mkdir(parents=True, exist_ok=True)
    try:
        with registry_lock(cfg):
            return _add_locked(source, name, user, password, cfg)
    finally:
        if created and not registry_path(cfg).exists():  # a failed first add leaves no empty folders behind
            (repos_dir(cfg) / ".registry.lock").unlink(missing_ok=True)
            for p in reversed(created):
                try:
                    p.rmdir()
                except OSError:
                    pass


def _credentials(user: str | None, password: str | None):
    """pygit2 callbacks that answer an authentication request with (user, password), else with
    HYBRID_GIT_USERNAME / HYBRID_GIT_TOKEN from the environment; None when there is nothing to offer."""
    import os

    import pygit2

    user = user or os.environ.get("HYBRID_GIT_USERNAME")
    password = password or os.environ.get("HYBRID_GIT_TOKEN")
    if not user and not password:
        return None
    return pygit2.RemoteCallbacks(credentials=pygit2.UserPass(user or "git", password or ""))


def _add_locked(source: str, name: str, user: str | None, password: str | None, cfg: PipelineConfig) -> RepoEntry:
    import pygit2

    entries = list_repos(cfg)
    if any(e.name == name for e in entries):
        raise HybridError(f"repo {name!r}: already registered (remove it first or pick another --name)")
    dest = repos_dir(cfg) / name
    if dest.exists():
        raise HybridError(f"{dest}: already exists and is not in the registry; move it away first")
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=repos_dir(cfg)))
    try:
        try:
            repo = pygit2.clone_repository(
                source, str(tmp / "clone"), bare=True, callbacks=_credentials(user, password)
            )
        except (pygit2.GitError, ValueError, OSError) as e:
            raise HybridError(f"{redact_url(source)}: cannot clone ({library_message(e, source)})") from None
        branch = _head_branch(repo, source)
        (tmp / "clone").rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    entry = RepoEntry(
        name=name,
        source=source,
        default_branch=branch,
        added_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    _save([*entries, entry], cfg)
    return entry


def _clone(source: str, dest: Path, user: str | None, password: str | None):
    import pygit2

    try:
        return pygit2.clone_repository(source, str(dest), bare=True, callbacks=_credentials(user, password))
    except (pygit2.GitError, ValueError, OSError) as e:
        raise HybridError(f"{redact_url(source)}: cannot clone ({library_message(e, source)})") from None


def _add_to_store(source: str, name: str, user: str | None, password: str | None, cfg: PipelineConfig) -> RepoEntry:
    """`add` on object storage: clone on this machine, upload the archive, then the registry (not locked)."""
    layout = DatasetLayout(cfg.data_dir)
    entries = list_repos(cfg)
    if any(e.name == name for e in entries):
        raise HybridError(f"repo {name!r}: already registered (remove it first or pick another --name)")
    archive = layout.clone_archive(name)
    if storage.exists(archive):
        raise HybridError(f"{storage.shown(archive)}: already exists and is not in the registry; remove it first")
    staging = storage.cache_root() / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=staging))
    try:
        branch = _head_branch(_clone(source, tmp / name, user, password), source)
        _publish_clone(layout, name, tmp / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    entry = RepoEntry(name, source, branch, datetime.now(timezone.utc).isoformat(timespec="seconds"))
    _save([*entries, entry], cfg)
    return entry


def update_repo(name: str, cfg: PipelineConfig) -> int:
    """Fetch new commits from the source into the bare clone; returns how many commits the branch gained."""
    import pygit2

    entry = get_repo(name, cfg)
    layout = DatasetLayout(cfg.data_dir)
    path, tmp = entry.path(cfg), None
    if layout.staged:  # fetch into a copy: the unpacked archive in this machine's cache stays what it was
        (storage.cache_root() / "staging").mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=storage.cache_root() / "staging"))
        path = Path(shutil.copytree(path, tmp / name, symlinks=True))
    try:
        repo = pygit2.Repository(str(path))
        before = first_parent_hashes(entry, cfg, repo)
        try:
            repo.remotes["origin"].fetch(["+refs/heads/*:refs/heads/*"], callbacks=_credentials(None, None))
        except (pygit2.GitError, KeyError) as e:
            raise HybridError(
                f"repo {name!r}: cannot fetch from {redact_url(entry.source)} ({library_message(e, entry.source)})"
            ) from None
        gained = len(first_parent_hashes(entry, cfg, repo)) - len(before)
        if tmp is not None and gained:  # a new archive for every machine; this one keeps the fetched copy
            _publish_clone(layout, name, path)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return gained


def remove_repo(name: str, cfg: PipelineConfig, keep_dataset: bool = True) -> RepoEntry:
    validate_name(name)
    layout = DatasetLayout(cfg.data_dir)
    if layout.staged:
        return _remove_from_store(name, cfg, keep_dataset)
    with registry_lock(cfg):
        entries = list_repos(cfg)
        entry = next((e for e in entries if e.name == name), None)
        if entry is None:
            get_repo(name, cfg)  # raises the "not registered" error
        _save([e for e in entries if e.name != name], cfg)
    shutil.rmtree(repos_dir(cfg) / name, ignore_errors=True)
    if not keep_dataset:
        layout = DatasetLayout(cfg.data_dir)
        shutil.rmtree(layout.local(layout.repo_dir(name)), ignore_errors=True)
    return entry


def _remove_from_store(name: str, cfg: PipelineConfig, keep_dataset: bool) -> RepoEntry:
    layout = DatasetLayout(cfg.data_dir)
    entries = list_repos(cfg)
    entry = next((e for e in entries if e.name == name), None) or get_repo(name, cfg)
    _save([e for e in entries if e.name != name], cfg)
    storage.remove_file(layout.clone_archive(name))
    if not keep_dataset:
        storage.remove_dir(layout.repo_dir(name))
    return entry


def first_parent_hashes(entry: RepoEntry, cfg: PipelineConfig | None, repo=None) -> list[str]:
    """Commit hashes of the default branch in first-parent order, oldest first (index = commit number).
    `cfg` locates the clone; it is not needed when the open `repo` is given."""
    import pygit2
    from pygit2.enums import SortMode

    repo = repo or pygit2.Repository(str(entry.path(cfg)))
    ref = repo.references.get(f"refs/heads/{entry.default_branch}")
    if ref is not None:
        tip = ref.peel(pygit2.Commit).id
    elif not repo.head_is_unborn:
        tip = repo.head.peel(pygit2.Commit).id
    else:
        return []
    walker = repo.walk(tip, SortMode.TOPOLOGICAL)
    walker.simplify_first_parent()
    hashes = [str(c.id) for c in walker]
    hashes.reverse()
    return hashes
