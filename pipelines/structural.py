"""The structural stages over one contiguous range of commits of one repository.

`process_range` is the unit of work — a Ray Data task in `pipeline run`, a plain call with `--local` and in
tests. A `RangeWorker` stays alive in its worker process between ranges and keeps an LRU parse cache keyed by
blob id, so a file is parsed once per version however many commits touch or follow it.

Per commit N (first-parent order, oldest first), in data/ast_dataset/<repo>/commit_<N>/:
    generate-ast        ast.jsonl, then commit_data.json (its presence marks the commit done)
    generate-ast-diffs  diff_ast.jsonl
    generate-fim        fim_dataset.json (from diff_ast.jsonl; attaches task.json / reasoning.json text)
Every file is written atomically, so a killed run leaves either the old state or the new one.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter, OrderedDict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pipelines.config import PipelineConfig
from pipelines.declarations import ParsedFile, parse_declarations, parse_tree, update_declarations
from pipelines.filters import content_drop_reason, path_drop_reason
from pipelines.languages import grammar_key, language_of

RANGE_STAGES = ("ast", "ast-diffs", "fim")
WORKER_KEY = "_worker"  # process_range's own numbers: CPU seconds, parse-cache hits, incremental parses  # per-commit stages this module runs, in order
OUTPUT_FILES = {"ast": "commit_data.json", "ast-diffs": "diff_ast.jsonl", "fim": "fim_dataset.json"}

_STATUS = {1: "added", 2: "deleted", 3: "modified", 4: "renamed", 5: "added", 8: "modified"}  # DeltaStatus
TREE_CACHE_SIZE = 256  # syntax trees kept per worker for incremental re-parsing (a tree is ~10x its source)


def commit_dir(data_dir: str | os.PathLike, repo: str, number: int) -> Path:
    return Path(data_dir) / "ast_dataset" / repo / f"commit_{number}"


def is_done(stage: str, out_dir: Path) -> bool:
    return (out_dir / OUTPUT_FILES[stage]).exists()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Temp file beside `path` + rename: a killed process leaves the old file or the new one, never half of
    one (a stray `.NAME.PID.tmp` at worst, which `cleanup-dataset --temp` removes). No fsync and no mkdir per
    file: this runs three times per commit, and fsync costs more than the parsing on some disks."""
    path = os.fspath(path)
    head, name = os.path.split(path)
    tmp = os.path.join(head, f".{name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


_encode = json.JSONEncoder(ensure_ascii=False).encode  # one encoder (json.dumps builds one per call); no indent:
                                                        # indenting takes json's slow pure-Python path


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, _encode(obj) + "\n")


def write_jsonl(path: str | os.PathLike, records: list[dict]) -> None:
    write_text_atomic(path, "".join(_encode(r) + "\n" for r in records))


class StageStats:
    """Counts and drops by reason of one stage (merged across ranges and repos)."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.drops: Counter = Counter()
        self.by_language: dict[str, Counter] = {}

    def lang(self, language: str | None, key: str, n: int = 1) -> None:
        self.by_language.setdefault(language or "other", Counter())[key] += n

    def to_dict(self) -> dict:
        return {"counts": dict(self.counts), "drops": dict(self.drops),
                "by_language": {k: dict(v) for k, v in sorted(self.by_language.items())}}

    @staticmethod
    def merge(a: dict, b: dict) -> dict:
        out = {"counts": Counter(a.get("counts", {})), "drops": Counter(a.get("drops", {})), "by_language": {}}
        out["counts"].update(b.get("counts", {}))
        out["drops"].update(b.get("drops", {}))
        for src in (a.get("by_language", {}), b.get("by_language", {})):
            for lang, c in src.items():
                out["by_language"].setdefault(lang, Counter()).update(c)
        return {"counts": dict(out["counts"]), "drops": dict(out["drops"]),
                "by_language": {k: dict(v) for k, v in sorted(out["by_language"].items())}}


_SPECIAL_MODES = {0o160000: "submodule", 0o120000: "symlink"}  # gitlinks name a commit of another repo


class FileChange:
    __slots__ = ("path", "old_path", "status", "old_id", "new_id", "language", "special")

    def __init__(self, path, old_path, status, old_id, new_id, special=None):
        self.path, self.old_path, self.status = path, old_path, status
        self.old_id, self.new_id = old_id, new_id
        self.language = language_of(path)
        self.special = special  # "submodule" / "symlink": no blob to parse


class CommitContext:
    """One commit and its changes against its first parent (computed once, shared by the stages)."""

    def __init__(self, repo, number: int, commit) -> None:
        self.number, self.commit = number, commit
        self.parent = commit.parents[0] if commit.parents else None
        if self.parent is None:
            self.diff = commit.tree.diff_to_tree(swap=True)
        else:
            self.diff = repo.diff(self.parent, commit)
        self.diff.find_similar()  # renames
        self.changes = []
        for d in self.diff.deltas:
            status = _STATUS.get(int(d.status), "modified")
            old_path = d.old_file.path if status == "renamed" else None
            path = d.old_file.path if status == "deleted" else d.new_file.path
            old_id = str(d.old_file.id) if status != "added" else None
            new_id = str(d.new_file.id) if status != "deleted" else None
            special = _SPECIAL_MODES.get(d.new_file.mode) or _SPECIAL_MODES.get(d.old_file.mode)
            self.changes.append(FileChange(path, old_path, status, old_id, new_id, special))

    def metadata(self, repo_name: str) -> dict:
        c = self.commit
        tz = timezone(timedelta(minutes=c.commit_time_offset))
        return {"repo": repo_name, "commit_number": self.number, "commit_hash": str(c.id),
                "date": datetime.fromtimestamp(c.commit_time, tz).isoformat(), "message": c.message}


class RangeWorker:
    """Holds an open repository and the parse cache of one worker process."""

    verify_incremental = False  # tests: check every incremental update against a fresh parse

    def __init__(self, repo_name: str, repo_path: str, cfg: PipelineConfig) -> None:
        import pygit2

        self.repo_name, self.repo_path, self.cfg = repo_name, repo_path, cfg
        self.repo = pygit2.Repository(repo_path)
        self.cache: OrderedDict[tuple[str, str], ParsedFile | str] = OrderedDict()
        self.trees: OrderedDict[tuple[str, str], tuple[object, bytes]] = OrderedDict()
        self.path_info: dict[str, tuple[str | None, str | None]] = {}  # path -> (path drop reason, language)
        self.cache_hits = self.cache_misses = self.incremental = 0
        self.warm_before = False  # set while generate-ast runs together with generate-ast-diffs
        self._seen_before: set = set()

    # -- parsing ------------------------------------------------------------------------------------------
    def parse(self, blob_id: str, path: str, prev_id: str | None = None) -> ParsedFile | str:
        """The declarations of a blob at `path`, or the reason it is not parsed (parse_error included).
        `prev_id`: the blob this one replaced; when its tree is cached the parse is incremental."""
        by_path = self.path_info.get(path)
        if by_path is None:
            by_path = self.path_info[path] = (path_drop_reason(path, self.cfg), language_of(path))
        reason, language = by_path
        if reason:
            return reason
        key = (blob_id, grammar_key(path, language) if language else "")
        hit = self.cache.get(key)
        if hit is not None:
            self.cache.move_to_end(key)
            self.cache_hits += 1
            return hit
        self.cache_misses += 1
        data = self.repo[blob_id].data
        result: ParsedFile | str | None = content_drop_reason(path, data, self.cfg)
        if result is None:
            old = self.trees.get((prev_id, key[1])) if prev_id else None
            hunks = None
            if old is not None:
                import pygit2

                patch = pygit2.Patch.create_from(old[1], data, context_lines=0)
                hunks = [(h.old_start, h.old_lines, h.new_start, h.new_lines) for h in patch.hunks]
            tree, edit = parse_tree(data, key[1], *(old or (None, None)), hunks=hunks)
            old_parsed = self.cache.get((prev_id, key[1])) if edit else None
            if isinstance(old_parsed, ParsedFile):
                self.incremental += 1
                parsed = update_declarations(data, key[1], tree, old_parsed, old[0], old[1], edit)
                if self.verify_incremental:
                    fresh = parse_declarations(data, key[1])
                    assert fresh == parsed, f"incremental declarations differ for {path} {blob_id}"
            else:
                parsed = parse_declarations(data, key[1], tree)
            result = "parse_error" if parsed.has_error else parsed
            self.trees[key] = (tree, data)
            if len(self.trees) > TREE_CACHE_SIZE:
                self.trees.popitem(last=False)
        if self.cfg.parse_cache_size:
            self.cache[key] = result
            if len(self.cache) > self.cfg.parse_cache_size:
                self.cache.popitem(last=False)
        return result

    # -- generate-ast -------------------------------------------------------------------------------------
    def do_ast(self, ctx: CommitContext, out_dir: Path, stats: StageStats) -> None:
        records, files = [], []
        for ch in ctx.changes:
            entry = {"path": ch.path, "old_path": ch.old_path, "status": ch.status, "language": ch.language,
                     "binary": False, "skipped": None, "declarations": 0}
            blob_id = ch.new_id if ch.status != "deleted" else None
            if ch.special and blob_id is not None:
                entry["skipped"] = ch.special
                stats.counts["files"] += 1
                stats.drops[ch.special] += 1
                stats.lang(ch.language, ch.special)
            elif blob_id is not None:
                if self.warm_before and ch.old_id and (ch.old_id, ch.path) not in self._seen_before:
                    # generate-ast-diffs needs the old version anyway: parsing it first lets the new one be
                    # an incremental re-parse even at the start of a range (a cold cache)
                    self._seen_before.add((ch.old_id, ch.path))
                    self.parse(ch.old_id, ch.old_path or ch.path)
                result = self.parse(blob_id, ch.path, ch.old_id)
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
                    for d in result.declarations:
                        records.append({"id": f"{ch.path}::{d['kind']}::{d['name']}", "file": ch.path,
                                        "language": ch.language, **d})
                    stats.lang(ch.language, "declarations", len(result.declarations))
            files.append(entry)
        stats.counts["commits"] += 1
        stats.counts["declarations"] += len(records)
        diff_text = ctx.diff.patch or ""
        truncated = len(diff_text.encode("utf-8", "replace")) > self.cfg.max_diff_bytes
        if truncated:
            diff_text = diff_text.encode("utf-8", "replace")[: self.cfg.max_diff_bytes].decode("utf-8", "ignore")
            stats.counts["diffs_truncated"] += 1
        c = ctx.commit
        meta = ctx.metadata(self.repo_name)
        commit_data = {"repo": self.repo_name, "commit_number": ctx.number, "commit_hash": str(c.id),
                       "parents": [str(p) for p in c.parent_ids], "author": c.author.name, "date": meta["date"],
                       "message": c.message, "files": files, "diff": diff_text, "diff_truncated": truncated}
        write_jsonl(f"{out_dir}/ast.jsonl", records)
        write_json(f"{out_dir}/commit_data.json", commit_data)  # last: marks the commit done

    # -- generate-ast-diffs -------------------------------------------------------------------------------
    def do_ast_diffs(self, ctx: CommitContext, out_dir: Path, stats: StageStats) -> None:
        records = []
        meta = ctx.metadata(self.repo_name)
        for ch in ctx.changes:
            if ch.special or (ch.language is None and path_drop_reason(ch.path, self.cfg) is None):
                continue  # not source: nothing to diff (counted by generate-ast)
            old_path = ch.old_path or ch.path
            before = self.parse(ch.old_id, old_path) if ch.old_id else None
            after = self.parse(ch.new_id, ch.path, ch.old_id) if ch.new_id else None
            reason = next((r for r in (before, after) if isinstance(r, str)), None)
            stats.counts["files"] += 1
            if reason:
                stats.drops[reason] += 1
                stats.lang(ch.language, reason)
                continue
            before_decls = {(d["kind"], d["name"]): d for d in (before.declarations if before else [])}
            after_decls = {(d["kind"], d["name"]): d for d in (after.declarations if after else [])}
            base = {"file": ch.path, "old_file": ch.old_path, "language": ch.language}
            for key, a in after_decls.items():
                b = before_decls.get(key)
                if b is None:
                    status, ws = "added", False
                elif b["code"] == a["code"]:
                    continue
                else:
                    status = "modified"
                    ws = "".join(b["code"].split()) == "".join(a["code"].split())
                records.append(_diff_record(base, key, status, ws, b, a, meta))
            for key, b in before_decls.items():
                if key not in after_decls:
                    records.append(_diff_record(base, key, "deleted", False, b, None, meta))
        for r in records:
            stats.counts[r["status"]] += 1
            stats.counts["whitespace_only"] += r["whitespace_only"]
        stats.counts["commits"] += 1
        stats.counts["records"] += len(records)
        write_jsonl(f"{out_dir}/diff_ast.jsonl", records)

    # -- generate-fim -------------------------------------------------------------------------------------
    def do_fim(self, ctx: CommitContext, out_dir: Path, stats: StageStats) -> None:
        from hybrid.utils.io import read_json, read_jsonl
        from pipelines.fim import FimBuilder

        diff_path = out_dir / "diff_ast.jsonl"
        if not diff_path.exists():
            stats.drops["no_diff_ast"] += 1  # run generate-ast-diffs first; this commit stays to do
            return
        records = read_jsonl(diff_path)
        tasks = read_json(out_dir / "task.json") if (out_dir / "task.json").exists() else None
        reasoning = read_json(out_dir / "reasoning.json") if (out_dir / "reasoning.json").exists() else None
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
            ch = changes.get(r["file"])
            if ch is None or ch.new_id is None or ch.special:
                stats.drops["file_not_in_commit"] += 1
                continue
            if ch.path not in per_file_cache:
                per_file_cache[ch.path] = builder.file_context(self.repo, ch.old_id, ch.new_id, ch.path)
            sample, reason = builder.build(per_file_cache[ch.path], r)
            if reason:
                stats.drops[reason] += 1
                continue
            sample.update({"id": f"{r['id']}#0", "function_id": r["id"], "repo": self.repo_name,
                           "commit_number": ctx.number, "commit_hash": str(ctx.commit.id), "file": r["file"],
                           "language": r["language"], "kind": r["kind"],
                           "operation_type": "ADD" if r["status"] == "added" else "UPDATE",
                           "task": _task_text(tasks, r["id"]), "reasoning": _reasoning_text(reasoning, r["id"])})
            samples.append({k: sample[k] for k in _FIM_KEYS})
        stats.counts["commits"] += 1
        stats.counts["samples"] += len(samples)
        stats.counts["with_task"] += sum(s["task"] is not None for s in samples)
        stats.counts["with_reasoning"] += sum(s["reasoning"] is not None for s in samples)
        write_json(out_dir / "fim_dataset.json", samples)


_FIM_KEYS = ("id", "function_id", "repo", "commit_number", "commit_hash", "file", "language", "kind",
             "operation_type", "fim_prefix", "fim_middle", "fim_suffix", "middle_start_line", "middle_end_line",
             "widened", "task", "reasoning")


def _range(d: dict | None) -> dict | None:
    if d is None:
        return None
    return {k: d[k] for k in ("start_byte", "end_byte", "start_line", "end_line")}


def _diff_record(base: dict, key: tuple[str, str], status: str, ws: bool, before: dict | None,
                 after: dict | None, meta: dict) -> dict:
    kind, name = key
    file = base["file"]
    return {"id": f"{file}::{kind}::{name}", **base, "kind": kind, "name": name, "status": status,
            "whitespace_only": ws, "before_code": before["code"] if before else None,
            "after_code": after["code"] if after else None, "before_range": _range(before),
            "after_range": _range(after), "commit_metadata": meta}


def _task_text(tasks: Any, function_id: str) -> str | None:
    if not isinstance(tasks, dict):
        return None
    texts = [t.get("description", "") for t in tasks.get("tasks", []) or []
             if isinstance(t, dict) and (not t.get("function_ids") or function_id in t.get("function_ids", []))]
    texts = [t for t in texts if t]
    return "\n".join(texts) if texts else None


def _reasoning_text(reasoning: Any, function_id: str) -> str | None:
    if not isinstance(reasoning, list):
        return None
    texts = [r.get("reasoning", "") for r in reasoning if isinstance(r, dict) and r.get("function_id") == function_id]
    texts = [t for t in texts if t]
    return "\n".join(texts) if texts else None


_WORKERS: dict[tuple[str, str], RangeWorker] = {}


def get_worker(repo_name: str, repo_path: str, cfg: PipelineConfig) -> RangeWorker:
    """The worker of this process for a repo (kept between ranges so its parse cache stays warm)."""
    key = (repo_path, cfg.model_dump_json())
    worker = _WORKERS.get(key)
    if worker is None:
        if len(_WORKERS) > 8:
            _WORKERS.clear()
        worker = _WORKERS[key] = RangeWorker(repo_name, repo_path, cfg)
    return worker


def process_range(repo_name: str, repo_path: str, numbers: list[int], hashes: list[str], stages: list[str],
                  cfg: PipelineConfig, force: bool = False) -> dict:
    """Run `stages` (a subset of RANGE_STAGES, run in that order) on commits `numbers` (contiguous, oldest
    first) with the given hashes. Returns {stage: StageStats dict} with `skipped_done` counts, and under
    WORKER_KEY the range's CPU seconds and parse-cache numbers."""
    import pygit2

    unknown = [s for s in stages if s not in RANGE_STAGES]
    if unknown:
        raise ValueError(f"unknown range stages {unknown}")
    ordered = [s for s in RANGE_STAGES if s in stages]
    cpu0 = time.process_time()
    worker = get_worker(repo_name, repo_path, cfg)
    worker.warm_before = "ast" in ordered and "ast-diffs" in ordered
    worker._seen_before.clear()
    counters0 = (worker.cache_hits, worker.cache_misses, worker.incremental)
    all_stats = {s: StageStats() for s in ordered}
    for number, commit_hash in zip(numbers, hashes):
        out_str = f"{cfg.data_dir}/ast_dataset/{repo_name}/commit_{int(number)}"
        todo = [s for s in ordered if force or not os.path.exists(f"{out_str}/{OUTPUT_FILES[s]}")]
        for s in ordered:
            if s not in todo:
                all_stats[s].counts["skipped_done"] += 1
        if not todo:
            continue
        commit = worker.repo.get(commit_hash)
        if commit is None or not isinstance(commit, pygit2.Commit):
            raise ValueError(f"{repo_path}: no commit {commit_hash}")
        ctx = CommitContext(worker.repo, int(number), commit)
        out_dir = Path(out_str)
        out_dir.mkdir(parents=True, exist_ok=True)
        for s in todo:
            {"ast": worker.do_ast, "ast-diffs": worker.do_ast_diffs, "fim": worker.do_fim}[s](ctx, out_dir,
                                                                                            all_stats[s])
    result = {s: st.to_dict() for s, st in all_stats.items()}
    hits, misses, incremental = (now - before for now, before in
                                 zip((worker.cache_hits, worker.cache_misses, worker.incremental), counters0))
    result[WORKER_KEY] = {"cpu_s": time.process_time() - cpu0, "cache_hits": hits, "cache_misses": misses,
                          "incremental_parses": incremental}
    return result
