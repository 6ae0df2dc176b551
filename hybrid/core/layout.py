"""The pipeline's data folder, spelled out in one place (datatrove's `DataFolder` is the model).

    <data_dir>/
      repos/                      bare clones, one folder per repository; repos/registry.json lists them;
                                  repos/.licenseid.db indexes the SPDX licence texts (pipelines/licenses.py)
      llm_cache/                  the LLM stages' answers, by a hash of model + prompt
      ast_dataset/
        <repo>/
          stats.json              the last run of each stage
          llm_failures.jsonl      what the LLM stages could not get, retried next run
          license.json            the repository's licence as an SPDX id ({"spdx": "MIT" | null, "file": ...})
          dedup.jsonl             the dedup stage: changes that duplicate an older one, and of what
          filtered_commits.jsonl  the dedup stage: commits dropped by the commit filters (merge, revert, bot, …)
          commit_<N>/             N: the commit's place in the first-parent history, oldest first, from 0
            commit_data.json  ast.jsonl  diff_ast.jsonl  task.json  reasoning.json  fim_dataset.json

Every stage, export, cleanup, coverage, the code tasks, the demo and the benches ask a `DatasetLayout` for these
names. Its own file-system work (listing, existence, reading small files) goes through hybrid.core.storage, so the
layout can sit on a URI (`s3://…`) once the stages write through storage too; until then the stages write on a
local disk, through `local(...)` (a `pathlib.Path`, for atomic temp-file + rename writes on the hot path).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hybrid.core import storage

DATASET = "ast_dataset"
REPOS = "repos"
REGISTRY = "registry.json"
LLM_CACHE = "llm_cache"
COMMIT_PREFIX = "commit_"

# the files in a commit folder, one per stage output
COMMIT_DATA = "commit_data.json"  # generate-ast, written last: the commit's metadata and its files
AST = "ast.jsonl"  # generate-ast: the declarations of the files the commit touched
DIFF_AST = "diff_ast.jsonl"  # generate-ast-diffs: added / modified / deleted declarations
TASKS = "task.json"  # generate-tasks
REASONING = "reasoning.json"  # generate-reasoning
FIM = "fim_dataset.json"  # generate-fim
COMMIT_FILES = (AST, COMMIT_DATA, DIFF_AST, TASKS, REASONING, FIM)

# beside the commit folders of a repository
STATS = "stats.json"
LLM_FAILURES = "llm_failures.jsonl"
LICENSE_INFO = "license.json"
DEDUP = (
    "dedup.jsonl"  # {function_id, commit, reason: exact|near, duplicate_of: {repo, commit, function_id}, similarity}
)
FILTERED_COMMITS = "filtered_commits.jsonl"  # {commit, commit_hash, reason}
LICENSE_DB = ".licenseid.db"  # the licence detector's index of the SPDX texts, beside the clones (hidden: no repo)

# The "done" rule: a commit is done for a stage when every file the stage writes there exists (the last one listed
# is written last). A deleted ast.jsonl is redone although commit_data.json is still there. The LLM stages look
# inside theirs as well (pipelines/llm/stages.py: a commit-message task.json is redone once an LLM is configured).
STAGE_FILES: dict[str, tuple[str, ...]] = {
    "generate-ast": (AST, COMMIT_DATA),
    "generate-ast-diffs": (DIFF_AST,),
    "generate-tasks": (TASKS,),
    "generate-reasoning": (REASONING,),
    "generate-fim": (FIM,),
}


def done_in(folder: str | os.PathLike[str], stage: str) -> bool:
    """The "done" rule (STAGE_FILES) on a local commit folder (`DatasetLayout.local_commit_path`): for the per-commit
    loops of the planner and the workers, a stat per file without a `Path` or the storage layer's dispatch
    (`DatasetLayout.is_done` is the same rule on any location)."""
    return all(os.path.exists(f"{folder}/{name}") for name in STAGE_FILES[stage])


def commit_name(number: int) -> str:
    """The folder name of commit `number`: `commit_<N>`."""
    return f"{COMMIT_PREFIX}{number}"


def commit_number(name: str) -> int | None:
    """N of a folder named `commit_<N>` exactly as `commit_name` writes it (ASCII digits, no leading zeros), else
    None: the one parse rule of commit folders."""
    digits = name[len(COMMIT_PREFIX) :] if name.startswith(COMMIT_PREFIX) else ""
    if not (digits.isascii() and digits.isdigit()) or commit_name(int(digits)) != name:
        return None
    return int(digits)


class DatasetLayout:
    """Where everything of the pipeline lives under one data folder (a local folder; see the module docstring).
    Locations are strings as hybrid.core.storage takes them."""

    __slots__ = ("data_dir", "_local_repo_dirs")

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = str(data_dir)
        self._local_repo_dirs: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"DatasetLayout({storage.shown(self.data_dir)!r})"

    # -- where ----------------------------------------------------------------------------------------------------
    @property
    def dataset_dir(self) -> str:
        """<data_dir>/ast_dataset: one folder per repository."""
        return storage.join(self.data_dir, DATASET)

    @property
    def repos_dir(self) -> str:
        """<data_dir>/repos: the bare clones and the registry."""
        return storage.join(self.data_dir, REPOS)

    @property
    def registry(self) -> str:
        return storage.join(self.data_dir, REPOS, REGISTRY)

    @property
    def llm_cache(self) -> str:
        return storage.join(self.data_dir, LLM_CACHE)

    def clone_dir(self, repo: str) -> str:
        """The bare clone of a repository."""
        return storage.join(self.data_dir, REPOS, repo)

    def repo_dir(self, repo: str) -> str:
        """A repository's outputs: its commit folders, stats.json, llm_failures.jsonl."""
        return storage.join(self.data_dir, DATASET, repo)

    def stats_file(self, repo: str) -> str:
        return storage.join(self.data_dir, DATASET, repo, STATS)

    def failures_file(self, repo: str) -> str:
        return storage.join(self.data_dir, DATASET, repo, LLM_FAILURES)

    @property
    def license_db(self) -> str:
        """<data_dir>/repos/.licenseid.db: the SPDX licence texts indexed by the detector (pipelines/licenses.py)."""
        return storage.join(self.data_dir, REPOS, LICENSE_DB)

    def license_file(self, repo: str) -> str:
        """The repository's detected licence: {"spdx": <SPDX id> | null, "file": <licence file> | null, ...}."""
        return storage.join(self.data_dir, DATASET, repo, LICENSE_INFO)

    def dedup_file(self, repo: str) -> str:
        """The changes of the repository that duplicate an older one (pipelines/dedup.py)."""
        return storage.join(self.data_dir, DATASET, repo, DEDUP)

    def filtered_commits_file(self, repo: str) -> str:
        """The repository's commits dropped by the commit filters (pipelines/commit_filters.py)."""
        return storage.join(self.data_dir, DATASET, repo, FILTERED_COMMITS)

    def commit_dir(self, repo: str, number: int) -> str:
        return storage.join(self.data_dir, DATASET, repo, commit_name(number))

    def commit_file(self, repo: str, number: int, name: str) -> str:
        return storage.join(self.data_dir, DATASET, repo, commit_name(number), name)

    def local(self, location: str) -> Path:
        """A location of this layout as a local `Path`, for the code that writes files (atomically: temp file +
        rename) or hands them to libraries that want paths. The data folder is a local folder for now."""
        return Path(location)

    def local_commit_dir(self, repo: str, number: int) -> Path:
        """`local(commit_dir(repo, number))` in one step."""
        return Path(self.data_dir, DATASET, repo, commit_name(number))

    def local_commit_path(self, repo: str, number: int) -> str:
        """The same folder as plain text, for the per-commit loops of the planner and the workers (with `done_in`):
        a `Path` per commit made skipping a finished commit 2-3x slower (15 -> 45 us, measured on this history)."""
        repo_dir = self._local_repo_dirs.get(repo)
        if repo_dir is None:
            repo_dir = self._local_repo_dirs[repo] = str(self.local(self.repo_dir(repo)))
        return f"{repo_dir}/{commit_name(number)}"

    # -- what is there ----------------------------------------------------------------------------------------------
    def repos(self) -> list[str]:
        """The repositories with outputs (folders of ast_dataset/, not hidden), sorted by name; [] when none."""
        return sorted(
            name for name, is_dir in storage.list_dir(self.dataset_dir) if is_dir and not name.startswith(".")
        )

    def has_repo(self, repo: str) -> bool:
        return storage.is_dir(self.repo_dir(repo))

    def commits(self, repo: str) -> list[int]:
        """The numbers of a repository's commit folders, oldest first; [] when it has none."""
        numbers = [commit_number(name) for name, is_dir in storage.list_dir(self.repo_dir(repo)) if is_dir]
        return sorted(n for n in numbers if n is not None)

    def is_done(self, repo: str, number: int, stage: str) -> bool:
        """Whether commit `number` has every file `stage` writes (STAGE_FILES)."""
        folder = self.commit_dir(repo, number)
        return all(storage.exists(storage.join(folder, name)) for name in STAGE_FILES[stage])

    def read_stats(self, repo: str) -> dict[str, Any] | None:
        """The repository's stats.json: {} when there is none or it is unreadable (it is rewritten), None when it
        holds JSON that is not an object (not ours to rewrite)."""
        path = self.stats_file(repo)
        if not storage.exists(path):
            return {}
        try:
            stats = json.loads(storage.read_text(path))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return stats if isinstance(stats, dict) else None
