"""Which commits give no training data: one reason per dropped commit, checked on its commit_data.json.

Reasons, in the order they are checked (`pipeline.commit_filters` picks which apply):
    merge           more than one parent, or a merge subject ("Merge pull request …"): the changes of a merge
                    against its first parent are the merged branch's, not one change of its own
    revert          `Revert "…"` or "This reverts commit <sha>": the change undoes an older one
    bot             the author matches `pipeline.bot_author_patterns`, or a bot's subject ("Bump x from 1 to 2")
    lock_file_only  every changed file is a lock file (`pipeline.lock_files`)
    version_bump    every changed file is a manifest (`pipeline.manifest_files`) or a lock file, and in the
                    manifests only version strings changed

The merge and bot subjects are the commit-message rules of the tasks (pipelines/llm/commit_messages.py, CommitPack
style); a filtered commit keeps its folder and files (the layout and the "done" rule stay as they are), and the dedup
stage lists it in the repository's filtered_commits.jsonl, which later stages and export read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from hybrid.config.pipeline import PipelineConfig
from pipelines.llm.commit_messages import BOT_MESSAGE_RE, MERGE_RE

REVERT_SUBJECT_RE = re.compile(r'^revert\b\s*["\'“(]', re.I)
REVERT_BODY_RE = re.compile(r"^this reverts commit [0-9a-f]{7,40}", re.I | re.M)
# a version string: 1.2, 1.2.3, 1.2.3-beta.1, 1.2.3+build (with an optional v / ^ / ~ / = / >= before it)
VERSION_RE = re.compile(r"[v^~=<>]*\d+(?:\.\d+)+(?:[-+.][0-9A-Za-z.]+)?")
DIFF_FILE_RE = re.compile(r"^diff --git a/(.*) b/(.*)$")


class CommitFilter:
    """The commit filters of one configuration (patterns compiled once)."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.enabled = tuple(cfg.commit_filters)
        self.bot_author = (
            re.compile("|".join(f"(?:{p})" for p in cfg.bot_author_patterns), re.I)
            if (cfg.bot_author_patterns)
            else None
        )
        self.lock_files = frozenset(cfg.lock_files)
        self.manifests = frozenset(cfg.manifest_files)

    def reason(self, commit: dict[str, Any]) -> str | None:
        """Why this commit (a commit_data.json object) gives no training data, or None to keep it."""
        if not self.enabled:
            return None
        message = str(commit.get("message") or "")
        subject = message.strip().splitlines()[0].strip() if message.strip() else ""
        checks = {
            "merge": lambda: len(commit.get("parents") or []) > 1 or bool(MERGE_RE.match(subject)),
            "revert": lambda: bool(REVERT_SUBJECT_RE.match(subject) or REVERT_BODY_RE.search(message)),
            "bot": lambda: bool(
                (self.bot_author and self.bot_author.search(str(commit.get("author") or "")))
                or BOT_MESSAGE_RE.match(subject)
            ),
            "lock_file_only": lambda: self._only(commit, self.lock_files),
            "version_bump": lambda: self._version_bump(commit),
        }
        for name in ("merge", "revert", "bot", "lock_file_only", "version_bump"):
            if name in self.enabled and checks[name]():
                return name
        return None

    @staticmethod
    def _paths(commit: dict[str, Any]) -> list[str]:
        return [str(f.get("path")) for f in commit.get("files") or [] if isinstance(f, dict)]

    def _only(self, commit: dict[str, Any], names: frozenset[str]) -> bool:
        paths = self._paths(commit)
        return bool(paths) and all(PurePosixPath(p).name in names for p in paths)

    def _version_bump(self, commit: dict[str, Any]) -> bool:
        paths = self._paths(commit)
        names = [PurePosixPath(p).name for p in paths]
        if not paths or commit.get("diff_truncated") or not any(n in self.manifests for n in names):
            return False
        if not all(n in self.manifests or n in self.lock_files for n in names):
            return False
        changed = manifest_changes(str(commit.get("diff") or ""), self.manifests)
        return bool(changed) and all(only_versions_differ(removed, added) for removed, added in changed.values())


def manifest_changes(diff: str, manifests: frozenset[str]) -> dict[str, tuple[list[str], list[str]]]:
    """{manifest path: (removed lines, added lines)} of a unified diff, for the files named in `manifests`."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    current: tuple[list[str], list[str]] | None = None
    for line in diff.splitlines():
        m = DIFF_FILE_RE.match(line)
        if m:
            path = m.group(2)
            current = out.setdefault(path, ([], [])) if PurePosixPath(path).name in manifests else None
        elif current is None or line.startswith(("+++", "---")):
            continue
        elif line.startswith("-"):
            current[0].append(line[1:])
        elif line.startswith("+"):
            current[1].append(line[1:])
    return out


def only_versions_differ(removed: Sequence[str], added: Sequence[str]) -> bool:
    """Whether the removed and added lines are the same once their version strings are masked (and some changed)."""

    def masked(lines: Sequence[str]) -> list[str]:
        return sorted(VERSION_RE.sub("<v>", ln).strip() for ln in lines if ln.strip())

    removed_m, added_m = masked(removed), masked(added)
    return bool(removed_m) and removed_m == added_m and any("<v>" in ln for ln in added_m)
