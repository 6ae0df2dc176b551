"""The `dedup` stage: commit filters, and exact and near-duplicate changes across commits, branches, forks and
repositories, marked before generate-tasks so that no LLM call is spent on a duplicate.

Two passes, as datatrove's MinHash deduplication does them:
1. signatures (Ray Data tasks over contiguous ranges of commits of each repository, `pipeline.num_workers` at once):
   per commit the commit filter (pipelines/commit_filters.py) on commit_data.json, and per changed declaration of
   diff_ast.jsonl an exact key — sha1 of its status and whitespace-normalised before/after code — and MinHash
   signatures (datasketch; 5-gram token shingles, 112 permutations as datatrove's 14 bands x 8 rows);
2. one pass on the driver over the signatures (448 bytes a change), repositories in the order given, commits oldest
   first: a change whose exact key was seen, or whose LSH candidates hold one at estimated Jaccard similarity
   >= `pipeline.dedup_threshold`, is a duplicate of that older one, which is kept. So the oldest occurrence wins and
   a rerun writes the same bytes.

What is compared is the change, not the declaration: for a modified declaration the changed lines with three
tokens of context each side, salted with its name (a later edit of the same function is another change, not a
duplicate of the first; the same one-line fix in two different functions is two changes). An added declaration is
compared by its code, a deleted one by its old code. Local names are renamed canonically first (`canonical`), so a
copy with renamed variables and another layout is a near duplicate.

Per repository the stage writes (hybrid/core/layout.py) `dedup.jsonl` — one line per duplicate: {function_id,
commit, reason: exact|near, duplicate_of: {repo, commit, function_id}, similarity} — and `filtered_commits.jsonl`
— {commit, commit_hash, reason}. generate-tasks, generate-reasoning, generate-fim and export skip what they list
(hybrid/core/dedup_marks.py). With `pipeline.dedup` off and no commit filters the stage removes them, and nothing
is skipped.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import json
import pickle
import re
import shutil
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybrid.config.pipeline import PipelineConfig
from hybrid.core import storage
from hybrid.core.dedup_marks import Marks, load_marks
from hybrid.core.errors import HybridError
from hybrid.core.io import read_json
from hybrid.core.layout import COMMIT_DATA, DIFF_AST, DatasetLayout, commit_name, current_run
from hybrid.core.ray_utils import init_ray, task_slots
from pipelines.commit_filters import CommitFilter

STAGE = "dedup"
SHINGLE = 5  # tokens per shingle (datatrove's MinHash config: 5-grams)
NUM_PERM = 112  # datatrove: 14 buckets x 8 hashes
SEED = 1
MIN_NEAR_SHINGLES = 3  # fewer shingles than this: too little text for a similarity estimate, exact matching only
CONTEXT_TOKENS = 3  # unchanged tokens kept each side of a changed run of tokens
TOKEN_RE = re.compile(r"\w+|[^\w\s]")
# Words of the eight languages that are not names: kept as they are by `canonical`
_KEYWORD_TEXT = (
    "if else elif for while do loop return def fn func function let mut const var val class struct enum impl "
    "trait interface type pub public private protected static final void new this self Self super true false True "
    "False null nil None in not and or is match case switch default break continue try except catch finally raise "
    "throw throws import from use package mod as with yield async await lambda where extends implements go defer "
    "select chan map range unsafe ref move dyn typeof instanceof delete sizeof union goto"
)
KEYWORDS = frozenset(_KEYWORD_TEXT.split())
_STATUSES = ("added", "modified", "deleted")  # of diff_ast.jsonl records


# ------------------------------------------------------------------------------------------------- what is compared
def normalised(code: str | None) -> str:
    return " ".join((code or "").split())


def exact_key(status: str, before: str | None, after: str | None) -> str:
    """The exact-duplicate key of a change: its status and its code with whitespace normalised."""
    text = f"{status}\0{normalised(before)}\0{normalised(after)}"
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def change_tokens(status: str, before: str | None, after: str | None) -> list[str]:
    """The tokens a change is compared by: the code of an added declaration, the old code of a deleted one marked
    `-`, and for a modified one each changed run of lines (whitespace-normalised; tokens of removed lines marked
    `-`, of added ones `+`) with CONTEXT_TOKENS of context each side, runs separated by `|` (its name is mixed into
    every shingle: `change_salt`). Whitespace is not a token, so re-indenting changes nothing here; local names
    are `canonical`, so renaming them changes nothing either. For a modified declaration only the names of its new
    side are renamed: a name the change removes stays as it is, so a revert does not read like the change it
    undoes. (Lines, not tokens, are diffed: a token-level difflib took 2/3 of the stage's time.)"""
    if status == "added":
        return canonical(TOKEN_RE.findall(after or ""))
    if status == "deleted":
        return ["-" + t for t in canonical(TOKEN_RE.findall(before or ""))]
    a, b = _lines(before), _lines(after)
    words: list[str] = []
    marks: list[str] = []
    # the lines both sides start and end with are not diffed (difflib's search is the costly part)
    head = 0
    while head < min(len(a), len(b)) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < min(len(a), len(b)) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    matcher = difflib.SequenceMatcher(None, a[head : len(a) - tail], b[head : len(b) - tail], autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            continue
        i1, i2, j1, j2 = i1 + head, i2 + head, j1 + head, j2 + head
        ctx_before = TOKEN_RE.findall(a[i1 - 1])[-CONTEXT_TOKENS:] if i1 else []
        removed = TOKEN_RE.findall(" ".join(a[i1:i2]))
        added = TOKEN_RE.findall(" ".join(b[j1:j2]))
        ctx_after = TOKEN_RE.findall(a[i2])[:CONTEXT_TOKENS] if i2 < len(a) else []
        words += ["|", *ctx_before, *removed, *added, *ctx_after]
        marks += [""] * (1 + len(ctx_before)) + ["-"] * len(removed) + ["+"] * len(added) + [""] * len(ctx_after)
    return [m + w for m, w in zip(marks, canonical(words, marks))]


def _lines(code: str | None) -> list[str]:
    return [line for line in (" ".join(raw.split()) for raw in (code or "").splitlines()) if line]


def canonical(words: list[str], marks: list[str] | None = None) -> list[str]:
    """Local names renamed `v0`, `v1`, … in order of first appearance, so a copy with its variables renamed reads the
    same (a type-2 clone). A local name is an identifier that is not a keyword, not capitalised (types, classes,
    enum variants and constants say what the code is), not an attribute or method (after `.`) and not called
    (before `(`). With `marks` (a modified declaration's change), only the names on its new side (unmarked context
    and `+` tokens) are renamed: a name the change removes stays as it is."""
    last = len(words) - 1
    keywords = KEYWORDS
    names: dict[str, str] = {}
    local = [False] * len(words)
    for i, w in enumerate(words):
        if (
            w.isidentifier()
            and not w[0].isupper()
            and w not in keywords
            and not (i and words[i - 1] == ".")
            and not (i < last and words[i + 1] == "(")
        ):
            local[i] = True
            if w not in names and (marks is None or marks[i] != "-"):
                names[w] = f"v{len(names)}"
    return [names.get(w, w) if is_local else w for w, is_local in zip(words, local)]


def change_salt(status: str, name: str) -> int:
    """Mixed into every shingle of a modified declaration (its name): the same edit in another declaration is
    another change. Added and deleted declarations are compared by their code alone (a moved and renamed copy is
    a duplicate)."""
    return zlib.crc32(name.encode("utf-8", "surrogatepass")) if status == "modified" else 0


_TOKEN_HASHES: dict[str, int] = {}


def _token_hash(token: str) -> int:
    h = _TOKEN_HASHES.get(token)
    if h is None:
        if len(_TOKEN_HASHES) > 1 << 20:
            _TOKEN_HASHES.clear()
        h = _TOKEN_HASHES[token] = zlib.crc32(token.encode("utf-8", "surrogatepass"))
    return h


def shingle_hashes(tokens: list[str], salt: int = 0):
    """The distinct SHINGLE-grams of a token list (the whole list when it is shorter) as 32-bit hashes: a hash per
    token (cached), combined per window with numpy. datasketch mixes these again (fmix) before its permutations;
    hashing each shingle's text with its default sha1 took a third of the signing time."""
    import numpy as np

    if not tokens:
        return np.zeros(0, np.uint32)
    get = _TOKEN_HASHES.get
    ids = np.array([get(t) or _token_hash(t) for t in tokens], np.uint64)
    k = min(SHINGLE, len(ids))
    n = len(ids) - k + 1
    h = np.full(n, salt, np.uint64)
    for j in range(k):  # (uint64 arithmetic wraps)
        h = h * np.uint64(1_000_003) + ids[j : j + n]
    h ^= h >> np.uint64(29)
    return np.unique((h & np.uint64(0xFFFFFFFF)).astype(np.uint32))


class Signer:
    """MinHash signatures with one set of permutations (made once per process: datasketch draws them per object)."""

    def __init__(self) -> None:
        from datasketch import MinHash

        self._minhash = MinHash
        self._perms = MinHash(num_perm=NUM_PERM, seed=SEED).permutations

    def sign(self, hashes) -> bytes:
        """The signature of a set of shingle hashes (`shingle_hashes`; they are hashed already: `hashfunc=int`)."""
        m = self._minhash(num_perm=NUM_PERM, seed=SEED, hashfunc=int, permutations=self._perms, scheme="affine32")
        m.update_batch(hashes.tolist())
        return m.hashvalues.tobytes()


def similarity(a: bytes, b: bytes) -> float:
    """Estimated Jaccard similarity of two signatures (the share of equal hash values; datasketch's `jaccard`)."""
    import numpy as np

    return float(np.mean(np.frombuffer(a, np.uint32) == np.frombuffer(b, np.uint32)))


@dataclass
class ChangeSig:
    function_id: str
    exact: str
    change: bytes | None  # None: too short for near matching
    status: str


@dataclass
class CommitSigs:
    number: int
    commit_hash: str
    filtered: str | None
    records: int
    changes: list[ChangeSig] = field(default_factory=list)


def sign_commit(commit_dir: Path, number: int, filt: CommitFilter, signer: Signer | None) -> CommitSigs | None:
    """The filter reason and the change signatures of one commit folder (None when generate-ast-diffs has not run
    there; `signer` None: exact keys only)."""
    diff_path = commit_dir / DIFF_AST
    if not diff_path.exists() or not (commit_dir / COMMIT_DATA).exists():
        return None
    commit = read_json(commit_dir / COMMIT_DATA)
    if not isinstance(commit, dict):
        raise HybridError(f"{commit_dir / COMMIT_DATA}: expected a JSON object")
    records = []
    for lineno, line in enumerate(diff_path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise HybridError(f"{diff_path}:{lineno}: not JSON ({e.msg}); rerun generate-ast-diffs --force") from None
        if not isinstance(r, dict) or not isinstance(r.get("id"), str) or r.get("status") not in _STATUSES:
            raise HybridError(f"{diff_path}:{lineno}: a record without a valid id/status")
        if not r.get("whitespace_only"):
            records.append(r)
    out = CommitSigs(number, str(commit.get("commit_hash") or ""), filt.reason(commit), len(records))
    if out.filtered:
        return out  # its changes are dropped whatever they are: no signatures needed
    for r in records:
        status, before, after = r["status"], r.get("before_code"), r.get("after_code")
        change = None
        if signer is not None:
            sh = shingle_hashes(change_tokens(status, before, after), change_salt(status, str(r.get("name") or "")))
            if len(sh) >= MIN_NEAR_SHINGLES:
                change = signer.sign(sh)
        out.changes.append(ChangeSig(r["id"], exact_key(status, before, after), change, status))
    return out


# ------------------------------------------------------------------------------------------------- pass 1: Ray tasks
def _sign_row(row: dict) -> dict:
    """The Ray Data map function: one range of commits in, their signatures out (pickled: bytes and small lists)."""
    cfg = PipelineConfig.model_validate_json(row["cfg"])
    filt, signer = CommitFilter(cfg), Signer() if cfg.dedup else None
    layout = DatasetLayout(cfg.data_dir)
    t0 = time.process_time()
    numbers = [int(n) for n in row["numbers"]]
    staging, own = layout.workspace(row["repo"], str(row["run"])) if layout.staged else (None, False)
    try:
        if staging is not None:  # object storage: the range's two files per commit fetched here first, all at once
            present = {int(n): names for n, names in json.loads(row["present"]).items()}
            layout.fetch_commit_files(row["repo"], present, staging)  # (in a run, those not in its workspace)
            folders = [staging / commit_name(n) for n in numbers]
        else:
            folders = [layout.local_commit_dir(row["repo"], n) for n in numbers]
        sigs = [sign_commit(folder, n, filt, signer) for folder, n in zip(folders, numbers)]
    except HybridError as e:
        return {"repo": row["repo"], "first": numbers[0], "payload": b"", "error": str(e), "cpu_s": 0.0}
    finally:
        if staging is not None and own:
            shutil.rmtree(staging, ignore_errors=True)
    payload = pickle.dumps([s for s in sigs if s is not None], protocol=pickle.HIGHEST_PROTOCOL)
    cpu = time.process_time() - t0
    return {"repo": row["repo"], "first": int(row["numbers"][0]), "payload": payload, "error": "", "cpu_s": cpu}


def _ranges(numbers: list[int], parts: int, most: int) -> list[list[int]]:
    if not numbers:
        return []
    n = max(parts, -(-len(numbers) // most))
    size = -(-len(numbers) // n)
    return [numbers[i : i + size] for i in range(0, len(numbers), size)]


def signatures(repos: list[str], cfg: PipelineConfig, local: bool) -> tuple[dict[str, list[CommitSigs]], float]:
    """{repo: its commits' signatures, oldest first} and the CPU seconds the signing took (all workers)."""
    cfg = cfg.model_copy(update={"num_workers": task_slots(cfg.num_workers, local)})
    layout = DatasetLayout(cfg.data_dir)
    worker_cfg = cfg.model_copy(update={"data_dir": storage.at(cfg.data_dir).absolute(cfg.data_dir)}).model_dump_json()
    rows = []
    for repo in repos:
        listing = layout.listing(repo) if layout.staged else {}  # object storage: what each range fetches
        for numbers in _ranges(layout.commits(repo), cfg.num_workers, cfg.commits_per_task):
            wanted = {n: [f for f in (COMMIT_DATA, DIFF_AST) if f in listing.get(n, ())] for n in numbers}
            present = wanted if layout.staged else {}
            row = {"repo": repo, "numbers": numbers, "cfg": worker_cfg, "present": json.dumps(present)}
            rows.append({**row, "run": current_run() if layout.staged else ""})  # (layout.py run_scope)
    outs: list[dict] = []
    if local or len(rows) <= 1:
        outs = [_sign_row(r) for r in rows]
    elif rows:
        import ray

        init_ray()
        ray.data.DataContext.get_current().op_resource_reservation_enabled = False  # (as pipelines/run.py)
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        outs = list(ds.map(_sign_row, compute=ray.data.TaskPoolStrategy(size=cfg.num_workers)).iter_rows())
    errors = [o["error"] for o in outs if o["error"]]
    if errors:
        raise HybridError(errors[0] + (f" (and {len(errors) - 1} more ranges failed)" if len(errors) > 1 else ""))
    by_repo: dict[str, list[CommitSigs]] = {r: [] for r in repos}
    for o in sorted(outs, key=lambda o: (repos.index(o["repo"]), o["first"])):
        by_repo[o["repo"]] += pickle.loads(o["payload"])
    return by_repo, sum(float(o["cpu_s"]) for o in outs)


# ------------------------------------------------------------------------------------------------- pass 2: the driver
@dataclass
class Decisions:
    duplicates: dict[str, list[dict]]  # repo -> dedup.jsonl lines
    filtered: dict[str, list[dict]]  # repo -> filtered_commits.jsonl lines
    stats: dict[str, dict]  # repo -> {"counts", "drops"}


def decide(by_repo: dict[str, list[CommitSigs]], threshold: float, near: bool = True) -> Decisions:
    """Mark duplicates: every change against the kept ones before it (repositories in `by_repo`'s order, commits
    oldest first). Deterministic: the same signatures give the same marks."""
    from datasketch import LeanMinHash, MinHashLSH

    # Candidates are checked against the signatures afterwards, so a false candidate costs a comparison and a
    # missed one a duplicate: weigh misses 9:1 when picking the bands (datasketch's optimiser).
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM, weights=(0.1, 0.9)) if near else None
    exact: dict[str, tuple[str, int, str]] = {}
    kept: dict[int, tuple[tuple[str, int, str], ChangeSig]] = {}
    out = Decisions({}, {}, {})
    for repo, commits in by_repo.items():
        dups, filtered = out.duplicates.setdefault(repo, []), out.filtered.setdefault(repo, [])
        counts, drops = Counter(), Counter()
        for c in commits:
            counts["commits"] += 1
            counts["records"] += c.records
            if c.filtered:
                filtered.append({"commit": c.number, "commit_hash": c.commit_hash, "reason": c.filtered})
                drops[c.filtered] += 1
                counts["records_in_filtered_commits"] += c.records
                continue
            for ch in c.changes:
                here = (repo, c.number, ch.function_id)
                match: tuple[str, tuple[str, int, str], float] | None = None
                if ch.exact in exact and not _nested(exact[ch.exact], here):
                    match = ("exact", exact[ch.exact], 1.0)
                elif lsh is not None and ch.change is not None:
                    match = _near(lsh, kept, ch, threshold, here)
                if match is not None:
                    reason, (orig_repo, orig_commit, orig_fid), sim = match
                    dups.append(
                        {
                            "function_id": ch.function_id,
                            "commit": c.number,
                            "reason": reason,
                            "duplicate_of": {"repo": orig_repo, "commit": orig_commit, "function_id": orig_fid},
                            "similarity": round(sim, 4),
                        }
                    )
                    drops[reason] += 1
                    continue
                counts["records_kept"] += 1
                exact.setdefault(ch.exact, here)
                if lsh is not None and ch.change is not None:
                    key = len(kept)
                    kept[key] = (here, ch)
                    lsh.insert(key, LeanMinHash(seed=SEED, hashvalues=_values(ch.change), scheme="affine32"))
        counts["commits_kept"] = counts["commits"] - len(filtered)
        counts["records_dropped"] = counts["records"] - counts["records_kept"]  # duplicates + filtered commits
        out.stats[repo] = {"counts": dict(counts), "drops": dict(drops)}
    return out


def _values(sig: bytes):
    import numpy as np

    return np.frombuffer(sig, np.uint32)


def _nested(a: tuple[str, int, str], b: tuple[str, int, str]) -> bool:
    """Two records of one commit and one file: a class and its changed method, say — two views of one edit (the
    pipeline keeps both), not a duplicate."""
    return a[:2] == b[:2] and a[2].split("::", 1)[0] == b[2].split("::", 1)[0]


def _near(
    lsh, kept: dict, ch: ChangeSig, threshold: float, here: tuple[str, int, str]
) -> tuple[str, tuple[str, int, str], float] | None:
    from datasketch import LeanMinHash

    best: tuple[float, int] | None = None
    for key in lsh.query(LeanMinHash(seed=SEED, hashvalues=_values(ch.change), scheme="affine32")):
        origin, other = kept[key]
        if _nested(origin, here):
            continue
        sim = similarity(ch.change, other.change)
        if sim < threshold:
            continue
        if ch.status != other.status:
            continue  # a modification is no duplicate of an addition or a deletion
        if best is None or (sim, -key) > (best[0], -best[1]):
            best = (sim, key)
    if best is None:
        return None
    return "near", kept[best[1]][0], best[0]


# ------------------------------------------------------------------------------------------------- the stage
def run_dedup(repos: list[str], cfg: PipelineConfig, force: bool = False, local: bool = False) -> dict:
    """The `dedup` stage of `hybrid pipeline run` over the named repositories (in this order; each must have
    outputs). Returns {"counts", "drops", "per_repo", "timing"} (pipelines/run.py writes each repository's stats
    into its stats.json) and writes each repository's dedup.jsonl and
    filtered_commits.jsonl (or removes them when dedup and the commit filters are off)."""
    layout = DatasetLayout(cfg.data_dir)
    repos = [r for r in repos if layout.has_repo(r)]
    if not cfg.dedup and not cfg.commit_filters:
        for repo in repos:
            for location in (layout.dedup_file(repo), layout.filtered_commits_file(repo)):
                storage.remove_file(location)
        return {"counts": {"off": 1}, "drops": {}, "per_repo": {r: {"counts": {"off": 1}, "drops": {}} for r in repos}}
    t0 = time.perf_counter()
    # datasketch imports scipy (0.5-1 s here): the driver's LSH pass needs it, so import it while the workers sign
    importer = threading.Thread(target=importlib.import_module, args=("datasketch",), daemon=True)
    importer.start()
    by_repo, cpu_s = signatures(repos, cfg, local)
    importer.join()
    t1 = time.perf_counter()
    decisions = decide(by_repo, cfg.dedup_threshold, near=cfg.dedup)
    for repo in repos:
        dups, filtered = decisions.duplicates[repo], decisions.filtered[repo]
        storage.write_text(layout.dedup_file(repo), "".join(json.dumps(d) + "\n" for d in dups))
        storage.write_text(layout.filtered_commits_file(repo), "".join(json.dumps(d) + "\n" for d in filtered))
    counts: Counter = Counter()
    drops: Counter = Counter()
    for st in decisions.stats.values():
        counts.update(st["counts"])
        drops.update(st["drops"])
    timing = {"sign_s": round(t1 - t0, 3), "sign_cpu_s": round(cpu_s, 3), "lsh_s": round(time.perf_counter() - t1, 3)}
    return {"counts": dict(counts), "drops": dict(drops), "per_repo": decisions.stats, "timing": timing}


# ------------------------------------------------------------------------------------------------- export's hook
def drop_marked_and_repeated(
    layout: DatasetLayout, records: Iterable[dict[str, Any]], skipped: Counter, across_repos: bool = True
) -> list[dict]:
    """Export's dedup: records the dedup stage marked (as in the pipeline), and with `across_repos` the repeats
    of a record with the same kind, input and output in the exported repositories (the first, in export order, is
    kept). Each dropped record is counted in `skipped` (`duplicate`, `filtered_commit`, `duplicate_across_repos`)."""
    marks: dict[str, Marks] = {}
    seen: set[str] = set()
    out = []
    for rec in records:
        repo = str(rec.get("repo"))
        if repo not in marks:
            marks[repo] = load_marks(layout, repo)
        reason = marks[repo].reason(int(rec.get("commit_number", -1)), str(rec.get("function_id")))
        if reason:
            skipped[reason] += 1
            continue
        if not across_repos:
            out.append(rec)
            continue
        key = hashlib.sha1(f"{rec.get('kind')}\0{rec['input']}\0{rec['output']}".encode("utf-8", "surrogatepass"))
        digest = key.hexdigest()
        if digest in seen:
            skipped["duplicate_across_repos"] += 1
            continue
        seen.add(digest)
        out.append(rec)
    return out
