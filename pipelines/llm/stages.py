"""What each LLM stage does for one commit: plan the work, ask, validate, merge, write atomically.

`TaskWork` writes `task.json` (one or more requests per commit: large diffs are chunked and the task lists
merged without duplicates); `ReasoningWork` writes `reasoning.json` (one request per changed function, given
only the tasks relevant to it). Both return a result row: what was written and, per item that could not be
answered, a failure record. Formats: docs/data-format.md.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hybrid.config.llm import LLMConfig
from hybrid.core import storage
from hybrid.core.dedup_marks import marks_in
from hybrid.core.errors import HybridError
from hybrid.core.io import atomic_write_json, json_text, jsonl_text, read_json, read_jsonl
from hybrid.core.layout import (
    COMMIT_DATA,
    DEDUP,
    DIFF_AST,
    FILTERED_COMMITS,
    LLM_FAILURES,
    REASONING,
    TASKS,
    DatasetLayout,
    commit_name,
    current_run,
)
from hybrid.core.layout import commit_number as parse_commit_number
from pipelines.llm.client import LLMClient, LLMFailure
from pipelines.llm.commit_messages import tasks_from_message
from pipelines.llm.prompts import chunk_diff, reasoning_messages, tasks_diff_budget, tasks_messages

OPERATION = {"added": "ADD", "modified": "UPDATE", "deleted": "DELETE"}
STAGES = ("generate-tasks", "generate-reasoning")
# what each stage reads in a commit folder, and the file it writes there
INPUTS = {
    "generate-tasks": (COMMIT_DATA, DIFF_AST, TASKS),
    "generate-reasoning": (COMMIT_DATA, DIFF_AST, TASKS, REASONING),
}
OUTPUT = {"generate-tasks": TASKS, "generate-reasoning": REASONING}
MARK_FILES = (DEDUP, FILTERED_COMMITS)  # beside the commit folders: what the dedup stage marked (dedup_marks)


# ------------------------------------------------------------------------------------------------- planning
def repo_names(layout: DatasetLayout, repos: list[str]) -> list[str]:
    """The named repositories (each must have outputs), else every one that has."""
    for name in repos:
        if not layout.has_repo(name):
            raise HybridError(
                f"{layout.repo_dir(name)}: no such repository in the dataset (run generate-ast first, "
                f"or check the name)"
            )
    if repos:
        return list(repos)
    if not storage.is_dir(layout.dataset_dir):
        raise HybridError(f"{layout.dataset_dir}: no dataset yet (run `hybrid pipeline generate-ast` first)")
    return layout.repos()


def commit_dirs(layout: DatasetLayout, repo: str) -> list[Path]:
    """The repository's commit folders, oldest first (local: the stages read and write files there)."""
    return [layout.local_commit_dir(repo, n) for n in layout.commits(repo)]


def commit_number(commit_dir: Path) -> int:
    number = parse_commit_number(commit_dir.name)
    if number is None:
        raise HybridError(f"{commit_dir}: not a commit folder")
    return number


def changed_functions(commit_dir: Path) -> tuple[list[dict], int]:
    """The diff records that get reasoning (unique ids, whitespace-only changes skipped) and how many were skipped.
    Changes the dedup stage marked (a filtered commit's, duplicates: hybrid/core/dedup_marks.py) are left out."""
    path = commit_dir / DIFF_AST
    if not path.exists():
        return [], 0
    marks, number = marks_in(commit_dir.parent), parse_commit_number(commit_dir.name)
    seen, out, skipped = set(), [], 0
    for record in read_jsonl(path):
        if not isinstance(record, dict) or "id" not in record or record.get("status") not in OPERATION:
            raise HybridError(f"{path}: record without a valid id/status (got keys {sorted(record)[:6]})")
        if record.get("whitespace_only"):
            skipped += 1
            continue
        if record["id"] in seen:
            continue
        seen.add(record["id"])
        if marks and number is not None and marks.reason(number, record["id"]):
            continue
        out.append(record)
    return out, skipped


def skipped_by_dedup(commit_dir: Path) -> bool:
    """Whether the dedup stage dropped the whole commit: a filtered commit, or one whose every change is a duplicate
    (no task is asked for it)."""
    marks, number = marks_in(commit_dir.parent), parse_commit_number(commit_dir.name)
    if not marks or number is None:
        return False
    if marks.commit_reason(number):
        return True
    return number in marks.commits_with_duplicates and not changed_functions(commit_dir)[0]


def plan_tasks(commits: list[Path], force: bool, llm: bool) -> tuple[list[Path], int]:
    """Commits needing task.json; a commit-message task.json is redone once an LLM is configured."""
    todo, done = [], 0
    for c in commits:
        if not (c / COMMIT_DATA).exists() or skipped_by_dedup(c):
            continue
        out = c / TASKS
        if out.exists() and not force:
            try:
                source = read_json(out).get("source")
            except (HybridError, AttributeError):
                source = None  # unreadable: redo
            if source is not None and not (llm and source == "commit_message"):
                done += 1
                continue
        todo.append(c)
    return todo, done


def existing_reasoning(commit_dir: Path) -> dict[str, dict]:
    path = commit_dir / REASONING
    if not path.exists():
        return {}
    try:
        entries = read_json(path)
    except HybridError:
        return {}
    return (
        {e["function_id"]: e for e in entries if isinstance(e, dict) and "function_id" in e}
        if isinstance(entries, list)
        else {}
    )


def plan_reasoning(commits: list[Path], force: bool) -> tuple[list[Path], int]:
    todo, done = [], 0
    for c in commits:
        functions, _ = changed_functions(c)
        if not functions:
            continue
        have = {} if force else existing_reasoning(c)
        if all(f["id"] in have for f in functions):
            done += 1
        else:
            todo.append(c)
    return todo, done


# ------------------------------------------------------------------------------------------------- work
def _norm(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def merge_tasks(answers: list, known_ids: set[str], max_tasks: int) -> tuple[list[dict], int]:
    """Merge the task lists of a commit's chunks: same description (normalised) = one task with the union of
    function ids; ids the model invented are dropped (returned as a count)."""
    merged: dict[str, dict] = {}
    unknown = 0
    for answer in answers:
        for item in answer.tasks:
            description = " ".join(item.description.split())
            ids = []
            for fid in item.function_ids:
                if fid in known_ids:
                    ids.append(fid)
                else:
                    unknown += 1
            key = _norm(description)
            if not key:
                continue
            if key in merged:
                merged[key]["function_ids"] = list(dict.fromkeys(merged[key]["function_ids"] + ids))
            else:
                merged[key] = {"description": description, "function_ids": list(dict.fromkeys(ids))}
    tasks = list(merged.values())[:max_tasks]
    return [{"id": f"task_{i}", **t} for i, t in enumerate(tasks, 1)], unknown


def _failure(stage: str, commit_dir: Path, err: LLMFailure, function_id: str | None = None) -> dict:
    return {
        "stage": stage,
        "commit_number": commit_number(commit_dir),
        "function_id": function_id,
        "reason": err.reason,
        "detail": err.detail,
        "attempts": err.attempts,
    }


async def tasks_for_commit(commit_dir: Path, client: LLMClient, cfg: LLMConfig) -> dict:
    commit = read_json(commit_dir / COMMIT_DATA)
    functions, _ = changed_functions(commit_dir)
    chunks, truncated = chunk_diff(commit.get("diff") or "", tasks_diff_budget(cfg), cfg.max_chunks_per_commit)
    prompts = [tasks_messages(commit, functions, chunk, i, len(chunks), cfg) for i, chunk in enumerate(chunks, 1)]
    results = await asyncio.gather(*(client.ask(m, "tasks") for m in prompts), return_exceptions=True)
    drops: dict[str, int] = {"diff_truncated": int(truncated)} if truncated else {}
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, LLMFailure):
            raise r
    failed = [r for r in results if isinstance(r, LLMFailure)]
    if failed:  # answered chunks are cached: the retry only asks the failed ones
        return {
            "status": "failed",
            "written": 0,
            "failures": [_failure("generate-tasks", commit_dir, failed[0])],
            "drops": drops,
        }
    tasks, unknown = merge_tasks([r[0] for r in results], {f["id"] for f in functions}, cfg.max_tasks_per_commit)
    if unknown:
        drops["unknown_function_id"] = unknown
    atomic_write_json(
        commit_dir / TASKS,
        {
            "commit_number": commit.get("commit_number", commit_number(commit_dir)),
            "commit_hash": commit.get("commit_hash"),
            "source": "llm",
            "tasks": tasks,
        },
    )
    return {"status": "ok", "written": len(tasks), "failures": [], "drops": drops, "chunks": len(chunks)}


def tasks_from_commit_message(commit_dir: Path, max_tasks: int) -> tuple[int, str | None]:
    """No LLM: task.json from the cleaned commit message. Returns (tasks written, drop reason)."""
    commit = read_json(commit_dir / COMMIT_DATA)
    tasks, reason = tasks_from_message(
        commit.get("message") or "", commit.get("author") or "", len(commit.get("parents") or []), max_tasks
    )
    atomic_write_json(
        commit_dir / TASKS,
        {
            "commit_number": commit.get("commit_number", commit_number(commit_dir)),
            "commit_hash": commit.get("commit_hash"),
            "source": "commit_message",
            "tasks": tasks,
        },
    )
    return len(tasks), reason


def commit_tasks(commit_dir: Path, max_tasks: int) -> list[dict]:
    """The commit's tasks: task.json if there is one, else the cleaned commit message (not written)."""
    path = commit_dir / TASKS
    if path.exists():
        data = read_json(path)
        if isinstance(data, dict) and isinstance(data.get("tasks"), list):
            return data["tasks"]
    commit = read_json(commit_dir / COMMIT_DATA) if (commit_dir / COMMIT_DATA).exists() else {}
    return tasks_from_message(
        commit.get("message") or "", commit.get("author") or "", len(commit.get("parents") or []), max_tasks
    )[0]


def relevant_tasks(function_id: str, tasks: list[dict]) -> list[dict]:
    """Tasks that name this function, plus tasks about the whole commit (no function ids)."""
    return [t for t in tasks if function_id in (t.get("function_ids") or []) or not t.get("function_ids")]


async def reasoning_for_commit(commit_dir: Path, client: LLMClient, cfg: LLMConfig, force: bool = False) -> dict:
    functions, skipped = changed_functions(commit_dir)
    tasks = commit_tasks(commit_dir, cfg.max_tasks_per_commit)
    have = {} if force else existing_reasoning(commit_dir)
    todo = [f for f in functions if f["id"] not in have]

    async def one(record: dict):
        op = OPERATION[record["status"]]
        answer, _ = await client.ask(
            reasoning_messages(record, op, relevant_tasks(record["id"], tasks), cfg), "reasoning"
        )
        return {"function_id": record["id"], "operation_type": op, "reasoning": answer.reasoning.strip()}

    results = await asyncio.gather(*(one(f) for f in todo), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, LLMFailure):
            raise r
    new = {r["function_id"]: r for r in results if isinstance(r, dict)}
    failures = [
        _failure("generate-reasoning", commit_dir, r, f["id"])
        for f, r in zip(todo, results)
        if isinstance(r, LLMFailure)
    ]
    entries = [new.get(f["id"]) or have.get(f["id"]) for f in functions]
    entries = [e for e in entries if e is not None]
    if new:  # successes are kept even when others failed; the next run asks only for the missing ones
        atomic_write_json(commit_dir / REASONING, entries)
    status = "ok" if not failures else ("partial" if new or have else "failed")
    return {
        "status": status,
        "written": len(new),
        "failures": failures,
        "drops": {"whitespace_only": skipped} if skipped else {},
    }


def read_failures(layout: DatasetLayout, repo: str) -> list[dict]:
    """The repository's `llm_failures.jsonl` (on object storage: from the stage's local view, `local_view`)."""
    path = layout.local(layout.failures_file(repo))
    if not path.exists():
        return []
    try:
        return [r for r in read_jsonl(path) if isinstance(r, dict)]
    except HybridError:
        return []


def write_failures(
    layout: DatasetLayout, repo: str, stage: str, failures: list[dict], view: DatasetLayout | None = None
) -> None:
    """Replace this stage's entries in `<repo>/llm_failures.jsonl` with this run's failures (the other stage's
    entries read from `view`, the stage's local view of the data folder, when it has one)."""

    kept = [r for r in read_failures(view or layout, repo) if r.get("stage") != stage]
    rows = kept + sorted(failures, key=lambda r: (r["commit_number"], r.get("function_id") or ""))
    if rows:  # (the bytes atomic_write_jsonl writes)
        storage.write_text(layout.failures_file(repo), jsonl_text(rows))
    else:
        storage.remove_file(layout.failures_file(repo))


def update_stats(layout: DatasetLayout, repo: str, stage: str, stats: dict) -> None:
    """Set this stage's entry in `<repo>/stats.json` (other stages' entries are kept)."""
    current = layout.read_stats(repo)
    if current is None:
        return  # not ours to rewrite
    current[stage] = stats
    storage.write_text(layout.stats_file(repo), json_text(current))  # (the bytes atomic_write_json writes)


# ------------------------------------------------------------------------------------------------- object storage
@contextmanager
def local_view(layout: DatasetLayout, repos: list[str], stage: str) -> Iterator[DatasetLayout]:
    """The data folder the stage plans on: the folder itself, or — on object storage — a local copy of what the stage
    reads (each commit's inputs, the dedup marks, llm_failures.jsonl; fetched several at once, removed after).
    Workers get a commit's inputs in their row (`commit_row`) and upload what they write (`StagedCommit`)."""
    if not layout.staged:
        yield layout
        return
    wanted = set(INPUTS[stage]) | set(MARK_FILES) | {LLM_FAILURES}
    if stage == "generate-reasoning":  # commit_data.json only where there is no task.json (`commit_tasks`)
        keep = lambda name, names: name in wanted and not (name == COMMIT_DATA and TASKS in names)  # noqa: E731
    else:
        keep = lambda name, names: name in wanted  # noqa: E731
    into = layout.staging_dir(stage)
    try:
        yield layout.fetch_dataset(repos, into, keep, current_run())
    finally:
        shutil.rmtree(into, ignore_errors=True)


def marks_by_commit(view: DatasetLayout, repo: str) -> dict[int, dict[str, bytes]]:
    """{commit number: {name: the lines of that `MARK_FILES` file naming the commit}} from the local view (valid:
    planning read them already): what a worker needs of the dedup marks, in the commit's row."""
    found: dict[int, dict[str, bytes]] = {}
    for name in MARK_FILES:
        path = Path(view.local(view.repo_dir(repo)), name)
        for line in path.read_bytes().splitlines(keepends=True) if path.is_file() else []:
            if line.strip():
                marks = found.setdefault(int(json.loads(line)["commit"]), {})
                marks[name] = marks.get(name, b"") + line
    return found


def commit_row(layout: DatasetLayout, repo: str, commit_dir: Path, stage: str, marks: dict[str, bytes]) -> dict:
    """On object storage, what a worker needs of one commit, in its row: the commit folder's location, its input
    files (read from the local view's `commit_dir`) and its dedup marks (from `marks_by_commit`)."""
    number = commit_number(commit_dir)
    files = {n: (commit_dir / n).read_bytes() for n in INPUTS[stage] if (commit_dir / n).is_file()}
    return {
        "data_dir": layout.data_dir,
        "dest": layout.commit_dir(repo, number),
        "number": number,
        "files": pickle.dumps((files, marks), protocol=pickle.HIGHEST_PROTOCOL),
        "run": current_run(),  # (the `pipeline run` whose node-local copies get the output: layout.py run_scope)
    }


class StagedCommit:
    """A worker's local copy of one commit of a row from `commit_row` (in this machine's cache), and the upload of
    the stage's output when it changed; the copy is removed on exit."""

    def __init__(self, row: dict, stage: str) -> None:
        self.dest, self.stage, self.run = str(row["dest"]), stage, str(row["run"])
        self.files, marks = pickle.loads(row["files"])
        self.layout, self.repo, self.number = DatasetLayout(str(row["data_dir"])), str(row["repo"]), int(row["number"])
        self.root = self.layout.staging_dir(self.repo)
        self.commit_dir = self.root / commit_name(self.number)
        self.commit_dir.mkdir()
        for name, data in self.files.items():
            (self.commit_dir / name).write_bytes(data)
        for name, data in marks.items():
            (self.root / name).write_bytes(data)

    def upload(self) -> None:
        """The stage's output at the commit folder's location, when the stage wrote a new one (one PUT)."""
        name = OUTPUT[self.stage]
        path = self.commit_dir / name
        if path.is_file() and path.read_bytes() != self.files.get(name):
            storage.write_bytes(storage.join(self.dest, name), path.read_bytes())
            self.layout.keep_written(self.repo, self.number, [path], self.run)  # (for generate-fim in this run)

    def shown(self, text: str) -> str:
        """A message about the local copy as one about the commit folder's location."""
        return text.replace(str(self.commit_dir), storage.shown(self.dest))

    def __enter__(self) -> StagedCommit:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
