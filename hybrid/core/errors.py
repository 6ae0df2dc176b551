"""Errors users see as one clear line (the CLI prints them without a traceback)."""

import errno


class HybridError(Exception):
    """A user-facing error: bad input, bad configuration, a missing file. Printed as one line."""


class ConfigError(HybridError):
    """A configuration key is unknown, mistyped or out of range. The message names the key."""


def root_cause(e: BaseException) -> BaseException:
    """The error at the bottom of a chain that Ray wraps: a failed worker group's first worker failure
    (`worker_failures`), else Ray's `cause`, else `__cause__` — so a `HybridError` raised in a worker or a Tune trial
    reaches the user as the one line it is."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        failures = getattr(e, "worker_failures", None)
        if failures:
            e = next(iter(failures.values()))
            continue
        nxt = getattr(e, "cause", None) or e.__cause__
        if nxt is None:
            break
        e = nxt
    return e


_OS_HINTS = {
    errno.ENOSPC: "the disk is full; free some space and rerun (finished outputs are kept)",
    errno.EFBIG: "the file is too large for this file system or ulimit -f; free space or raise the limit",
    errno.EDQUOT: "the disk quota is exhausted; free some space and rerun",
    errno.EROFS: "the file system is read-only; pick a writable folder",
    errno.EACCES: "permission denied; pick a folder you can write",
    errno.ENOTDIR: "a path component is a file, not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.EEXIST: "already exists and is not a folder (a file where a folder is needed); move it away",
}


def describe_os_error(e: OSError) -> str:
    """One line for an `OSError`: the path, what went wrong and what to do."""
    where = f"{e.filename}: " if e.filename else ""
    hint = _OS_HINTS.get(e.errno) if e.errno is not None else None
    what = hint or e.strerror or str(e) or type(e).__name__
    return f"{where}{what}"
