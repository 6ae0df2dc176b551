"""pipelines/records.py writes the lines json.dumps(ensure_ascii=False) would, byte for byte."""

from __future__ import annotations

import json
import random

from pipelines.records import RecordEncoder

AWKWARD = [
    "",
    "plain",
    'quote " and \\ backslash',
    "tab\tnew\nline\r\x00\x1f\x7f",
    "é ü 中文 😀 \u2028\u2029",
    "\ufffd replaced",
    'fn f() {\n    println!("{}", x);\n}',
    "</script>",
    "a" * 5000,
]


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(AWKWARD) for _ in range(rng.randint(0, 4)))


def _decl(rng: random.Random) -> dict:
    start, size = rng.randint(0, 10**6), rng.randint(0, 10**4)
    return {
        "kind": rng.choice(["function", "method", "class"]),
        "name": _text(rng) or "f",
        "start_byte": start,
        "end_byte": start + size,
        "start_line": rng.randint(1, 10**5),
        "end_line": rng.randint(1, 10**5),
        "code": _text(rng),
    }


def test_lines_equal_json_dumps():
    rng = random.Random(0)
    enc = RecordEncoder(max_cached=5)  # small: the cache is emptied and refilled along the way
    for _ in range(2000):
        path, language, d = _text(rng) or "a.py", rng.choice(["python", "rust", None]), _decl(rng)
        assert (
            enc.ast_line(path, language, d)
            == json.dumps(
                {"id": f"{path}::{d['kind']}::{d['name']}", "file": path, "language": language, **d}, ensure_ascii=False
            )
            + "\n"
        )
        before, after = rng.choice([None, _decl(rng)]), rng.choice([None, _decl(rng)])
        old_file, status, ws = (
            rng.choice([None, _text(rng)]),
            rng.choice(["added", "modified", "deleted"]),
            rng.random() < 0.5,
        )
        meta = {
            "repo": "r",
            "commit_number": 3,
            "commit_hash": "ab" * 20,
            "date": "2026-01-01T00:00:00+00:00",
            "message": _text(rng),
        }

        def rng_range(x):
            return None if x is None else {k: x[k] for k in ("start_byte", "end_byte", "start_line", "end_line")}

        expected = {
            "id": f"{path}::{d['kind']}::{d['name']}",
            "file": path,
            "old_file": old_file,
            "language": language,
            "kind": d["kind"],
            "name": d["name"],
            "status": status,
            "whitespace_only": ws,
            "before_code": before["code"] if before else None,
            "after_code": after["code"] if after else None,
            "before_range": rng_range(before),
            "after_range": rng_range(after),
            "commit_metadata": meta,
        }
        got = enc.diff_line(
            path,
            old_file,
            language,
            d["kind"],
            d["name"],
            status,
            ws,
            before,
            after,
            json.dumps(meta, ensure_ascii=False),
        )
        assert got == json.dumps(expected, ensure_ascii=False) + "\n"
