"""The per-commit stages of the structural pipeline, as steps of one shape (datatrove's `PipelineStep` is the model).

A `RangeStep` has a name (its command, `hybrid pipeline <name>`), a short key used in plans and stats, the output
file whose presence marks a commit done, its own `StageStats` (counts and drops by reason), and
`run(commit, out_dir)`. A `RangeWorker` (range_worker.py) holds the open repository and the parse cache and runs
the steps in order over the commits of a range. The steps, in order:

    AstExtractor       generate-ast        ast.jsonl, then commit_data.json (its presence marks the commit done)
    DeclarationDiffer  generate-ast-diffs  diff_ast.jsonl
    FimSampler         generate-fim        fim_dataset.json (from diff_ast.jsonl; attaches task.json / reasoning.json)

Every file is written atomically (no fsync: three files per commit, and fsync costs more than the parsing on some
disks), so a killed run leaves either the old state or the new one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

from hybrid.config.pipeline import PipelineConfig
from hybrid.core import layout
from hybrid.core.dedup_marks import load_marks
from hybrid.core.errors import HybridError
from hybrid.core.io import atomic_write, atomic_write_json, iter_jsonl, read_json
from pipelines.declarations import ParsedFile
from pipelines.fim import FimBuilder
from pipelines.languages import language_of
from pipelines.records import RecordEncoder, encode
from pipelines.secrets import count_keys, scrubber

_STATUS = {1: "added", 2: "deleted", 3: "modified", 4: "renamed", 5: "added", 8: "modified"}  # DeltaStatus


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_json(path, obj, indent=None, fsync=False, mkdir=False)


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, text, fsync=False, mkdir=False)


class StageStats:
    """Counts and drops by reason of one stage (merged across ranges and repos)."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.drops: Counter = Counter()
        self.by_language: dict[str, Counter] = {}

    def lang(self, language: str | None, key: str, n: int = 1) -> None:
        self.by_language.setdefault(language or "other", Counter())[key] += n

    def to_dict(self) -> dict:
        return {
            "counts": dict(self.counts),
            "drops": dict(self.drops),
            "by_language": {k: dict(v) for k, v in sorted(self.by_language.items())},
        }

    @staticmethod
    def merge(a: dict, b: dict) -> dict:
        out = {"counts": Counter(a.get("counts", {})), "drops": Counter(a.get("drops", {})), "by_language": {}}
        out["counts"].update(b.get("counts", {}))
        out["drops"].update(b.get("drops", {}))
        for src in (a.get("by_language", {}), b.get("by_language", {})):
            for lang, c in src.items():
                out["by_language"].setdefault(lang, Counter()).update(c)
        return {
            "counts": dict(out["counts"]),
            "drops": dict(out["drops"]),
            "by_language": {k: dict(v) for k, v in sorted(out["by_language"].items())},
        }


_SPECIAL_MODES = {0o160000: "submodule", 0o120000: "symlink"}  # gitlinks name a commit of another repo


def _text_path(path: str) -> str:
    """A path as valid UTF-8 text: git paths are bytes, and pygit2 hands a non-UTF-8 one over with surrogate
    escapes that no UTF-8 writer accepts (sharkdp/bat has `tests/examples/test-invalid-utf8-\\xc3(.rs`); the
    bad bytes become U+FFFD."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class FileChange:
    __slots__ = ("path", "old_path", "status", "old_id", "new_id", "language", "special", "patch", "_hunks")

    def __init__(self, path, old_path, status, old_id, new_id, special=None, patch=None):
        self.path, self.old_path, self.status = path, old_path, status
        self.old_id, self.new_id = old_id, new_id
        self.language = language_of(path)
        self.special = special  # "submodule" / "symlink": no blob to parse
        self.patch = patch  # the pygit2.Patch of this file in the commit's diff
        self._hunks = None

    def hunks(self) -> list[tuple[int, int, int, int]]:
        """(old_start, old_lines, new_start, new_lines) of the commit diff's hunks for this file (3 lines of
        context): the edits an incremental re-parse applies to the old tree. Read on first use."""
        if self._hunks is None:
            self._hunks = [
                (h.old_start, h.old_lines, h.new_start, h.new_lines)
                for h in (self.patch.hunks if self.patch is not None else ())
            ]
        return self._hunks


class CommitContext:
    """One commit and its changes against its first parent (computed once, shared by the stages)."""

    def __init__(self, repo, number: int, commit) -> None:
        self.number, self.commit = number, commit
        self._metadata: dict | None = None
        self.parent = commit.parents[0] if commit.parents else None
        if self.parent is None:
            self.diff = commit.tree.diff_to_tree(swap=True)
        else:
            self.diff = repo.diff(self.parent, commit)
        self.diff.find_similar()  # renames
        # One patch per file, made once: its text is the commit's unified diff (commit_data.json) and its hunks
        # are the edits of the incremental re-parse (no second diff of the two blobs).
        self.patches = list(self.diff)
        self.changes = []
        for patch in self.patches:
            d = patch.delta
            status = _STATUS.get(int(d.status), "modified")
            old_path = _text_path(d.old_file.path) if status == "renamed" else None
            path = _text_path(d.old_file.path if status == "deleted" else d.new_file.path)
            old_id = str(d.old_file.id) if status != "added" else None
            new_id = str(d.new_file.id) if status != "deleted" else None
            special = _SPECIAL_MODES.get(d.new_file.mode) or _SPECIAL_MODES.get(d.old_file.mode)
            self.changes.append(FileChange(path, old_path, status, old_id, new_id, special, patch))

    def patch_text(self) -> str:
        """The unified diff of the commit (the same text as pygit2's `Diff.patch`)."""
        return "".join([p.text or "" for p in self.patches])

    def metadata(self, repo_name: str) -> dict:
        """The commit's `commit_metadata` (made once per commit: every step of the pass reads it)."""
        if self._metadata is None:
            c = self.commit
            tz = timezone(timedelta(minutes=c.commit_time_offset))
            self._metadata = {
                "repo": repo_name,
                "commit_number": self.number,
                "commit_hash": str(c.id),
                "date": datetime.fromtimestamp(c.commit_time, tz).isoformat(),
                "message": c.message,
            }
        return dict(self._metadata)


class Worker(Protocol):
    """What a step gets from the range worker that runs it (pipelines/range_worker.py)."""

    repo: Any  # the open pygit2.Repository
    repo_name: str
    cfg: PipelineConfig
    encoder: RecordEncoder  # the JSON lines of ast.jsonl and diff_ast.jsonl
    prefetch_old: bool  # generate-ast parses each old version first (see RangeWorker)
    prefetched: set[tuple[str, str]]

    def parse(
        self, blob_id: str, path: str, prev_id: str | None = None, hunks: Callable[[], list] | None = None
    ) -> ParsedFile | str: ...

    def path_facts(self, path: str) -> tuple[str | None, str | None]: ...


class RangeStep:
    """One per-commit stage: `run(commit, out_dir)` writes `output` (and anything before it) for one commit and
    counts what it did and dropped in `self.stats`."""

    name = ""  # the command: `hybrid pipeline <name>`
    key = ""  # short name in plans and per-range stats
    output = ""  # the file whose presence marks a commit done
    reads: tuple[str, ...] = ()  # the files of the commit folder it reads, when there (fetched first on object storage)

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.cfg = worker.cfg
        self.stats = StageStats()

    def is_done(self, out_dir: str | Path) -> bool:
        return layout.done_in(out_dir, self.name)

    def scrub(self, text: str) -> str:
        """`text` with its secrets and e-mail addresses replaced (pipelines/secrets.py), counted in this step's
        stats as `secrets_<kind>`; unchanged when `pipeline.scrub_secrets` is off."""
        if not self.cfg.scrub_secrets or not text:
            return text
        out, counts = scrubber().scrub(text)
        if counts:
            self.stats.counts.update(count_keys(counts))
        return out

    def scrub_decl(self, d: dict | None) -> dict | None:
        """A declaration with its code scrubbed: a copy when that changes it (the parse cache keeps the original)."""
        if d is None or not self.cfg.scrub_secrets:
            return d
        code = self.scrub(d["code"])
        return d if code == d["code"] else {**d, "code": code}

    def run(self, commit: CommitContext, out_dir: Path) -> None:
        raise NotImplementedError


class AstExtractor(RangeStep):
    """Declarations of every file version the commit touched (ast.jsonl) and the commit itself (commit_data.json)."""

    name, key, output = "generate-ast", "ast", layout.COMMIT_DATA

    def run(self, ctx: CommitContext, out_dir: Path) -> None:
        stats, worker = self.stats, self.worker
        lines, files = [], []
        ast_line = worker.encoder.ast_line
        for ch in ctx.changes:
            entry = {
                "path": ch.path,
                "old_path": ch.old_path,
                "status": ch.status,
                "language": ch.language,
                "binary": False,
                "skipped": None,
                "declarations": 0,
            }
            blob_id = ch.new_id if ch.status != "deleted" else None
            if ch.special and blob_id is not None:
                entry["skipped"] = ch.special
                stats.counts["files"] += 1
                stats.drops[ch.special] += 1
                stats.lang(ch.language, ch.special)
            elif blob_id is not None:
                if worker.prefetch_old and ch.old_id and (ch.old_id, ch.path) not in worker.prefetched:
                    # generate-ast-diffs needs the old version anyway: parsing it first lets the new one be
                    # an incremental re-parse even at the start of a range (a cold cache)
                    worker.prefetched.add((ch.old_id, ch.path))
                    worker.parse(ch.old_id, ch.old_path or ch.path)
                result = worker.parse(blob_id, ch.path, ch.old_id, ch.hunks)
                entry["binary"] = result == "binary"
                stats.counts["files"] += 1
                if isinstance(result, str):
                    entry["skipped"] = result
                    stats.drops[result] += 1
                    stats.lang(ch.language, result)
                else:
                    stats.counts["files_parsed"] += 1
                    stats.lang(ch.language, "files_parsed")
                    entry["declarations"] = len(result.declarations)
                    if result.has_error:  # parsed with recovered syntax errors: the broken declarations go
                        entry["declarations_dropped"] = len(result.broken)
                        stats.counts["files_recovered"] += 1
                        stats.lang(ch.language, "files_recovered")
                        if result.broken:
                            stats.drops["decl_parse_error"] += len(result.broken)
                            stats.lang(ch.language, "decl_parse_error", len(result.broken))
                    lines += [ast_line(ch.path, ch.language, self.scrub_decl(d)) for d in result.declarations]
                    stats.lang(ch.language, "declarations", len(result.declarations))
            files.append(entry)
        stats.counts["commits"] += 1
        stats.counts["declarations"] += len(lines)
        diff_text, over = ctx.patch_text(), False
        if self.cfg.scrub_secrets:
            # scrubbed before the cut below, so a secret the cut ends inside is still whole when it is found; a
            # diff far over the limit only as far as the cut can reach (whole lines: scrubbing works on lines)
            cap = 2 * self.cfg.max_diff_bytes
            if len(diff_text) > cap:
                diff_text, over = diff_text[: diff_text.find("\n", cap) + 1 or len(diff_text)], True
            diff_text = self.scrub(diff_text)
        # (a character is at most 4 bytes in UTF-8: most diffs need no encoding to know they fit)
        truncated = over or (
            len(diff_text) * 4 > self.cfg.max_diff_bytes
            and len(diff_text.encode("utf-8", "replace")) > self.cfg.max_diff_bytes
        )
        if truncated:
            diff_text = diff_text.encode("utf-8", "replace")[: self.cfg.max_diff_bytes].decode("utf-8", "ignore")
            stats.counts["diffs_truncated"] += 1
        c = ctx.commit
        meta = ctx.metadata(worker.repo_name)
        commit_data = {
            "repo": worker.repo_name,
            "commit_number": ctx.number,
            "commit_hash": str(c.id),
            "parents": [str(p) for p in c.parent_ids],
            "author": c.author.name,
            "date": meta["date"],
            "message": self.scrub(c.message),
            "files": files,
            "diff": diff_text,
            "diff_truncated": truncated,
        }
        write_text(f"{out_dir}/{layout.AST}", "".join(lines))
        write_text(f"{out_dir}/{layout.COMMIT_DATA}", encode(commit_data) + "\n")  # last: marks the commit done


class DeclarationDiffer(RangeStep):
    """Added / modified / deleted declarations of the commit (diff_ast.jsonl)."""

    name, key, output = "generate-ast-diffs", "ast-diffs", layout.DIFF_AST

    def run(self, ctx: CommitContext, out_dir: Path) -> None:
        stats, worker = self.stats, self.worker
        lines = []
        metadata = ctx.metadata(worker.repo_name)
        if self.cfg.scrub_secrets:
            metadata["message"] = self.scrub(metadata["message"])
        meta = encode(metadata)
        diff_line = worker.encoder.diff_line
        scrub = self.scrub_decl
        for ch in ctx.changes:
            if ch.special or (ch.language is None and worker.path_facts(ch.path)[0] is None):
                continue  # not source: nothing to diff (counted by generate-ast)
            old_path = ch.old_path or ch.path
            before = worker.parse(ch.old_id, old_path) if ch.old_id else None
            after = worker.parse(ch.new_id, ch.path, ch.old_id, ch.hunks) if ch.new_id else None
            reason = next((r for r in (before, after) if isinstance(r, str)), None)
            stats.counts["files"] += 1
            if reason:
                stats.drops[reason] += 1
                stats.lang(ch.language, reason)
                continue
            before_decls = {(d["kind"], d["name"]): d for d in (before.declarations if before else [])}
            after_decls = {(d["kind"], d["name"]): d for d in (after.declarations if after else [])}
            file, old_file, language = ch.path, ch.old_path, ch.language
            broken = 0  # changes not reported because a side of the declaration holds a syntax error
            for key, a in after_decls.items():
                b = before_decls.get(key)
                if b is None:
                    if before is not None and before.has_error and _hidden_by_errors(key, a, before):
                        broken += 1
                        continue
                    status, ws = "added", False
                elif b["code"] == a["code"]:
                    continue
                else:
                    status = "modified"
                    ws = "".join(b["code"].split()) == "".join(a["code"].split())
                lines.append(diff_line(file, old_file, language, *key, status, ws, scrub(b), scrub(a), meta))
                stats.counts[status] += 1
                stats.counts["whitespace_only"] += ws
            for key, b in before_decls.items():
                if key not in after_decls:
                    if after is not None and after.has_error and _hidden_by_errors(key, b, after):
                        broken += 1
                        continue
                    lines.append(diff_line(file, old_file, language, *key, "deleted", False, scrub(b), None, meta))
                    stats.counts["deleted"] += 1
                    stats.counts["whitespace_only"] += False
            if (before is not None and before.broken) or (after is not None and after.broken):
                broken += _broken_changes(before, after, before_decls, after_decls)
            if broken:
                stats.drops["decl_parse_error"] += broken
                stats.lang(ch.language, "decl_parse_error", broken)
        stats.counts["commits"] += 1
        stats.counts["records"] += len(lines)
        write_text(f"{out_dir}/{layout.DIFF_AST}", "".join(lines))


class FimSampler(RangeStep):
    """Fill-in-the-middle samples of the commit's added and modified declarations (fim_dataset.json)."""

    name, key, output = "generate-fim", "fim", layout.FIM
    reads = (layout.DIFF_AST, layout.TASKS, layout.REASONING)

    def __init__(self, worker: Worker) -> None:
        super().__init__(worker)
        # the dedup stage's marks (pipelines/dedup.py): changes of filtered commits and duplicates get no sample
        self.marks = load_marks(layout.DatasetLayout(self.cfg.data_dir), worker.repo_name)

    def run(self, ctx: CommitContext, out_dir: Path) -> None:
        stats, worker = self.stats, self.worker
        diff_path = out_dir / layout.DIFF_AST
        if not diff_path.exists():
            stats.drops["no_diff_ast"] += 1  # run generate-ast-diffs first; this commit stays to do
            return
        records = []
        for lineno, r in iter_jsonl(diff_path):
            missing = [k for k in _DIFF_KEYS if not isinstance(r, dict) or k not in r]
            if missing:
                raise HybridError(
                    f"{diff_path}:{lineno}: record lacks {', '.join(missing)}; rerun "
                    f"`hybrid pipeline generate-ast-diffs --force` to rewrite it"
                )
            records.append(r)
        tasks = read_json(out_dir / layout.TASKS) if (out_dir / layout.TASKS).exists() else None
        reasoning = read_json(out_dir / layout.REASONING) if (out_dir / layout.REASONING).exists() else None
        builder = FimBuilder(self.cfg)
        changes = {ch.path: ch for ch in ctx.changes}
        samples = []
        per_file_cache: dict[str, Any] = {}
        for r in records:
            if r["status"] == "deleted":
                continue
            stats.counts["candidates"] += 1
            if r["whitespace_only"]:
                stats.drops["whitespace_only"] += 1
                continue
            skip = self.marks.reason(ctx.number, r["id"]) if self.marks else None
            if skip:
                stats.drops[skip] += 1
                continue
            ch = changes.get(r["file"])
            if ch is None or ch.new_id is None or ch.special:
                stats.drops["file_not_in_commit"] += 1
                continue
            if ch.path not in per_file_cache:
                per_file_cache[ch.path] = builder.file_context(worker.repo, ch.old_id, ch.new_id, ch.path)
            sample, reason = builder.build(per_file_cache[ch.path], r)
            if reason:
                stats.drops[reason] += 1
                continue
            if sample.get("secrets"):
                stats.counts.update(count_keys(sample["secrets"]))
            sample.update(
                {
                    "id": f"{r['id']}#0",
                    "function_id": r["id"],
                    "repo": worker.repo_name,
                    "commit_number": ctx.number,
                    "commit_hash": str(ctx.commit.id),
                    "file": r["file"],
                    "language": r["language"],
                    "kind": r["kind"],
                    "operation_type": "ADD" if r["status"] == "added" else "UPDATE",
                    "task": _task_text(tasks, r["id"]),
                    "reasoning": _reasoning_text(reasoning, r["id"]),
                }
            )
            samples.append({k: sample[k] for k in _FIM_KEYS})
        stats.counts["commits"] += 1
        stats.counts["samples"] += len(samples)
        stats.counts["with_task"] += sum(s["task"] is not None for s in samples)
        stats.counts["with_reasoning"] += sum(s["reasoning"] is not None for s in samples)
        write_json(out_dir / layout.FIM, samples)


def _hidden_by_errors(key: tuple[str, str], decl: dict, other: ParsedFile) -> bool:
    """Whether a declaration missing on the `other` side (which has syntax errors) may just be hidden there:
    broken (its code holds an error), or its code still stands in the other version, where tree-sitter folded
    it into the part it could not parse. Such a declaration is not reported as added or deleted."""
    if any((d["kind"], d["name"]) == key for d in other.broken):
        return True
    return other.source is not None and decl["code"].encode("utf-8") in other.source


def _broken_changes(before: ParsedFile | None, after: ParsedFile | None, before_decls: dict, after_decls: dict) -> int:
    """Changes of broken declarations (an error on either side) that are not reported: a broken declaration
    that is new, gone or edited, and not already counted as hiding a clean one (_hidden_by_errors)."""
    before_broken = {(d["kind"], d["name"]): d["code"] for d in (before.broken if before else [])}
    after_broken = {(d["kind"], d["name"]): d["code"] for d in (after.broken if after else [])}
    n = 0
    for key, code in after_broken.items():
        if key in before_decls:
            continue  # counted with the clean side (_hidden_by_errors)
        if before_broken.get(key) != code:
            n += 1  # new, or edited while broken
    for key in before_broken:
        if key not in after_broken and key not in after_decls:
            n += 1  # gone while broken
    return n


STEPS: tuple[type[RangeStep], ...] = (AstExtractor, DeclarationDiffer, FimSampler)  # in the order they run
STEP_KEYS = tuple(s.key for s in STEPS)
OUTPUT_FILES = {s.key: s.output for s in STEPS}
# Every file whose presence a finished commit needs (hybrid/core/layout.py's done rule, by step key)
DONE_FILES = {s.key: layout.STAGE_FILES[s.name] for s in STEPS}
_DIFF_KEYS = ("id", "file", "status", "whitespace_only", "language", "kind")


_FIM_KEYS = (
    "id",
    "function_id",
    "repo",
    "commit_number",
    "commit_hash",
    "file",
    "language",
    "kind",
    "operation_type",
    "fim_prefix",
    "fim_middle",
    "fim_suffix",
    "middle_start_line",
    "middle_end_line",
    "widened",
    "task",
    "reasoning",
)


def _task_text(tasks: Any, function_id: str) -> str | None:
    if not isinstance(tasks, dict):
        return None
    texts = [
        t.get("description", "")
        for t in tasks.get("tasks", []) or []
        if isinstance(t, dict) and (not t.get("function_ids") or function_id in t.get("function_ids", []))
    ]
    texts = [t for t in texts if t]
    return "\n".join(texts) if texts else None


def _reasoning_text(reasoning: Any, function_id: str) -> str | None:
    if not isinstance(reasoning, list):
        return None
    texts = [r.get("reasoning", "") for r in reasoning if isinstance(r, dict) and r.get("function_id") == function_id]
    texts = [t for t in texts if t]
    return "\n".join(texts) if texts else None
