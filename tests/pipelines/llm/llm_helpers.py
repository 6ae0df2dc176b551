"""Helpers for the LLM-stage tests: a small dataset written the way generate-ast / generate-ast-diffs write it
(docs/data-format.md)."""

from __future__ import annotations

import json
from pathlib import Path

API_KEY = "sk-test-Zq8vK3mN5pW7xY9r-do-not-log"
MODEL = "test-model"


def _record(repo, n, h, message, file, kind, name, status, before, after, whitespace_only=False):
    return {
        "id": f"{file}::{kind}::{name}",
        "file": file,
        "old_file": None,
        "language": "python",
        "kind": kind,
        "name": name,
        "status": status,
        "whitespace_only": whitespace_only,
        "before_code": before,
        "after_code": after,
        "before_range": None
        if before is None
        else {"start_byte": 0, "end_byte": len(before), "start_line": 1, "end_line": before.count("\n") + 1},
        "after_range": None
        if after is None
        else {"start_byte": 0, "end_byte": len(after), "start_line": 1, "end_line": after.count("\n") + 1},
        "commit_metadata": {
            "repo": repo,
            "commit_number": n,
            "commit_hash": h,
            "date": "2026-01-02T03:04:05+00:00",
            "message": message,
        },
    }


def write_commit(
    root: Path,
    repo: str,
    n: int,
    message: str,
    diff: str,
    records: list[dict],
    parents: int = 1,
    author: str = "Ada Lovelace",
) -> Path:
    d = root / "ast_dataset" / repo / f"commit_{n}"
    d.mkdir(parents=True, exist_ok=True)
    h = f"{n + 1:040x}"
    files = sorted({r["file"] for r in records}) or ["README.md"]
    (d / "commit_data.json").write_text(
        json.dumps(
            {
                "repo": repo,
                "commit_number": n,
                "commit_hash": h,
                "parents": [f"{n:040x}"] * parents,
                "author": author,
                "date": "2026-01-02T03:04:05+00:00",
                "message": message,
                "files": [
                    {"path": f, "old_path": None, "status": "modified", "language": "python", "binary": False}
                    for f in files
                ],
                "diff": diff,
            }
        )
    )
    with open(d / "diff_ast.jsonl", "w") as f:
        for r in records:
            r = dict(r)
            r["commit_metadata"] = {**r["commit_metadata"], "commit_number": n, "commit_hash": h, "message": message}
            f.write(json.dumps(r) + "\n")
    return d


def make_dataset(data_dir: Path, repo: str = "demo", n_commits: int = 4, big_diff_lines: int = 0) -> Path:
    """commit_0: adds two functions; commit_1: modifies one, deletes one, a whitespace-only change;
    commit_2: a merge commit; commit_3..: one modified function each. `big_diff_lines` makes commit_1's diff
    that many lines long (to force chunking)."""
    r = lambda *a, **k: _record(repo, 0, "", "", *a, **k)  # noqa: E731
    parse_v1 = "def parse(text):\n    return text.split(',')\n"
    parse_v2 = "def parse(text):\n    return [t.strip() for t in text.split(',') if t.strip()]\n"
    helper = "def helper(x):\n    return x * 2\n"
    write_commit(
        data_dir,
        repo,
        0,
        "Add CSV parser and helper",
        "diff --git a/src/csv.py b/src/csv.py\nnew file mode 100644\n--- /dev/null\n+++ b/src/csv.py\n@@ -0,0 +1,4 @@\n"
        + "".join("+" + ln + "\n" for ln in (parse_v1 + helper).splitlines()),
        [
            r("src/csv.py", "function", "parse", "added", None, parse_v1),
            r("src/csv.py", "function", "helper", "added", None, helper),
        ],
    )
    filler = "".join(f"+# padding line {i} {'x' * 60}\n" for i in range(big_diff_lines))
    write_commit(
        data_dir,
        repo,
        1,
        "Strip blanks in parse, drop helper\n\nhelper was unused.\n\nSigned-off-by: Ada <ada@example.com>",
        "diff --git a/src/csv.py b/src/csv.py\n--- a/src/csv.py\n+++ b/src/csv.py\n@@ -1,4 +1,2 @@\n def parse(text):\n"
        "-    return text.split(',')\n+    return [t.strip() for t in text.split(',') if t.strip()]\n"
        "-def helper(x):\n-    return x * 2\n"
        + (
            f"diff --git a/src/pad.py b/src/pad.py\n--- a/src/pad.py\n+++ b/src/pad.py\n@@ -1 +1,{big_diff_lines} @@\n"
            + filler
            if big_diff_lines
            else ""
        ),
        [
            r("src/csv.py", "function", "parse", "modified", parse_v1, parse_v2),
            r("src/csv.py", "function", "helper", "deleted", helper, None),
            r(
                "src/fmt.py",
                "function",
                "fmt",
                "modified",
                "def fmt(x):\n  return x\n",
                "def fmt(x):\n    return x\n",
                whitespace_only=True,
            ),
        ],
    )
    write_commit(data_dir, repo, 2, "Merge branch 'feature/csv' into main", "", [], parents=2)
    for n in range(3, n_commits):
        body = f"def step{n}(x):\n    return x + {n}\n"
        write_commit(
            data_dir,
            repo,
            n,
            f"Add step {n} to the pipeline (#{100 + n})",
            "diff --git a/src/steps.py b/src/steps.py\n--- a/src/steps.py\n+++ b/src/steps.py\n@@ -0,0 +1,2 @@\n"
            + "".join("+" + ln + "\n" for ln in body.splitlines()),
            [r("src/steps.py", "function", f"step{n}", "added", None, body)],
        )
    return data_dir / "ast_dataset" / repo
