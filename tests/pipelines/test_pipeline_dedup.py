"""The dedup stage (pipelines/dedup.py) and the commit filters (pipelines/commit_filters.py): real git repositories,
the real pipeline, one run on the session's Ray."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from hybrid.cli.config import load_config
from hybrid.core.errors import ConfigError
from hybrid.data.export import ExportOptions, export_io_pairs
from pipelines.commit_filters import CommitFilter
from pipelines.dedup import CommitSigs, Signer, decide, exact_key, sign_commit
from pipelines.repos import add_repo
from pipelines.run import run_pipeline
from tests.repo_builder import RepoBuilder

PARSE = """def parse_items(text, separator):
    result = []
    for piece in text.split(separator):
        piece = piece.strip()
        if piece and not piece.startswith("#"):
            result.append(piece.lower())
    return result
"""
# the same function with its variables renamed and reformatted: a planted near-duplicate
PARSE_COPY = """def parse_items(text, sep):
    out = []
    for part in text.split(sep):
        part = part.strip()
        if part and not part.startswith("#"): out.append(part.lower())
    return out
"""
SCORE = """def score(values, weights):
    total = 0.0
    for value, weight in zip(values, weights):
        if weight > 0:
            total += value * weight
    return total / max(len(values), 1)
"""


def _cfg(tmp_path: Path, *overrides: str):
    return load_config([f"pipeline.data_dir={tmp_path / 'data'}", *overrides])


# -- commit filters -------------------------------------------------------------------------------------------------
def _commit(message="Add a parser for items", author="Ann", parents=1, files=("src/a.py",), diff=""):
    return {
        "message": message,
        "author": author,
        "parents": ["p"] * parents,
        "files": [{"path": p} for p in files],
        "diff": diff,
    }


BUMP_DIFF = """diff --git a/Cargo.toml b/Cargo.toml
--- a/Cargo.toml
+++ b/Cargo.toml
@@ -1,3 +1,3 @@
 [package]
-version = "0.24.0"
+version = "0.25.0"
diff --git a/Cargo.lock b/Cargo.lock
--- a/Cargo.lock
+++ b/Cargo.lock
@@ -5,1 +5,1 @@
-version = "0.24.0"
+version = "0.25.0"
"""


def test_commit_filters_name_one_reason_each(tmp_path):
    f = CommitFilter(_cfg(tmp_path).pipeline)
    assert f.reason(_commit()) is None
    assert f.reason(_commit(parents=2)) == "merge"
    assert f.reason(_commit("Merge pull request #4 from x/y")) == "merge"
    assert f.reason(_commit('Revert "Add a parser"\n\nThis reverts commit 1234567abc.')) == "revert"
    assert f.reason(_commit("Tidy up\n\nThis reverts commit deadbeef12.")) == "revert"
    assert f.reason(_commit(author="dependabot[bot]")) == "bot"
    assert f.reason(_commit("Bump serde from 1.0.1 to 1.0.2")) == "bot"
    assert f.reason(_commit(files=("Cargo.lock", "web/yarn.lock"))) == "lock_file_only"
    assert f.reason(_commit("Release 0.25", files=("Cargo.toml", "Cargo.lock"), diff=BUMP_DIFF)) == "version_bump"
    # a manifest change that is more than a version: kept
    more = BUMP_DIFF.replace('+version = "0.25.0"\n', '+version = "0.25.0"\n+serde = "1"\n', 1)
    assert f.reason(_commit("Release 0.25", files=("Cargo.toml", "Cargo.lock"), diff=more)) is None
    # a version bump that also touches code: kept
    assert f.reason(_commit("Release", files=("Cargo.toml", "src/a.rs"), diff=BUMP_DIFF)) is None


def test_commit_filters_are_configurable(tmp_path):
    cfg = _cfg(tmp_path, "pipeline.commit_filters=[revert]", "pipeline.bot_author_patterns=[^ci-user$]").pipeline
    f = CommitFilter(cfg)
    assert f.reason(_commit(parents=2)) is None  # merge is off
    assert f.reason(_commit('Revert "x"')) == "revert"
    cfg = _cfg(tmp_path, "pipeline.bot_author_patterns=[^ci-user$]").pipeline
    assert CommitFilter(cfg).reason(_commit(author="ci-user")) == "bot"
    assert CommitFilter(cfg).reason(_commit(author="dependabot[bot]")) is None
    assert CommitFilter(_cfg(tmp_path, "pipeline.commit_filters=[]").pipeline).reason(_commit(parents=2)) is None


@pytest.mark.parametrize(
    "override, key",
    [
        ("pipeline.dedup_threshold=1.5", "pipeline.dedup_threshold"),
        ("pipeline.commit_filters=[merges]", "pipeline.commit_filters"),
        ("pipeline.bot_author_patterns=['[bot']", "pipeline.bot_author_patterns"),
    ],
)
def test_bad_dedup_settings_are_one_line_naming_the_key(tmp_path, override, key):
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, override)
    assert key in str(e.value) and "\n" not in str(e.value)


# -- near-duplicates on signatures ---------------------------------------------------------------------------------
def _commit_dir(tmp_path: Path, n: int, records: list[tuple[str, str, str | None, str | None]], **commit) -> Path:
    d = tmp_path / f"commit_{n}"
    d.mkdir(parents=True)
    (d / "commit_data.json").write_text(json.dumps({**_commit(**commit), "commit_hash": f"h{n}"}))
    lines = [
        json.dumps({"id": fid, "status": st, "whitespace_only": False, "before_code": b, "after_code": a})
        for fid, st, b, a in records
    ]
    (d / "diff_ast.jsonl").write_text("".join(line + "\n" for line in lines))
    return d


def _decide(tmp_path, commits: dict[str, list[list]], threshold=0.7):
    filt, signer = CommitFilter(_cfg(tmp_path).pipeline), Signer()
    by_repo: dict[str, list[CommitSigs]] = {}
    for repo, history in commits.items():
        by_repo[repo] = []
        for n, records in enumerate(history):
            sig = sign_commit(_commit_dir(tmp_path / repo, n, records), n, filt, signer)
            assert sig is not None
            by_repo[repo].append(sig)
    return decide(by_repo, threshold)


def test_planted_near_duplicate_is_caught_and_distinct_changes_kept(tmp_path):
    bumped = PARSE.replace("piece.lower()", "piece.upper()")
    d = _decide(
        tmp_path,
        {
            "a": [
                [
                    ("a.py::function::parse_items", "added", None, PARSE),
                    ("a.py::function::score", "added", None, SCORE),
                ],
                # a later edit of the same function: another change, kept
                [("a.py::function::parse_items", "modified", PARSE, bumped)],
            ],
            "b": [
                # renamed variables + reformatted, in another repository and file
                [("lib/p.py::function::parse_items", "added", None, PARSE_COPY)],
                # the same edit as a's commit 1, whitespace changed: exact
                [("lib/p.py::function::parse_items", "modified", PARSE.replace("    ", "\t"), bumped)],
                # the same one-word edit in another function: not a duplicate
                [("lib/s.py::function::score", "modified", SCORE, SCORE.replace("0.0", "1.0"))],
            ],
        },
    )
    assert d.duplicates["a"] == []
    near, exact = d.duplicates["b"][0], d.duplicates["b"][1]
    assert near["reason"] == "near" and near["commit"] == 0 and near["similarity"] >= 0.7
    assert near["duplicate_of"] == {"repo": "a", "commit": 0, "function_id": "a.py::function::parse_items"}
    assert exact["reason"] == "exact" and exact["duplicate_of"]["commit"] == 1
    assert len(d.duplicates["b"]) == 2
    assert d.stats["b"]["drops"] == {"near": 1, "exact": 1} and d.stats["b"]["counts"]["records_kept"] == 1


def test_exact_key_ignores_whitespace_only():
    assert exact_key("added", None, "def f():\n    return 1\n") == exact_key("added", None, "def f():\n\treturn  1")
    assert exact_key("added", None, "def f(): return 1") != exact_key("deleted", "def f(): return 1", None)


# -- the fork pair, through the real pipeline and export -----------------------------------------------------------
def _fork_pair(tmp_path: Path) -> tuple[Path, Path]:
    a = RepoBuilder(tmp_path / "upstream")
    a.write("pkg/parse.py", PARSE)
    a.commit("Add the item parser")
    a.write("pkg/score.py", SCORE)
    a.commit("Add weighted scores")
    a.write("pkg/parse.py", PARSE.replace("piece.lower()", "piece.casefold()"))
    a.commit("Parse items case-insensitively")
    a.write("Cargo.lock", "# lock\n")
    a.commit("Refresh the lock file")
    fork = tmp_path / "fork"
    subprocess.run(["git", "clone", "-q", str(a.path), str(fork)], check=True, capture_output=True)
    b = RepoBuilder(fork)  # (re-initialising a clone keeps its history)
    b.write("pkg/extra.py", "def extra(n):\n    return [i * i for i in range(n) if i % 3]\n")
    b.commit("Add squares that skip multiples of three")
    b.write("pkg/score.py", SCORE.replace("max(len(values), 1)", "max(sum(weights), 1e-9)"))
    b.commit("Normalise scores by the weights")
    return a.path, fork


def _run_fork_pair(tmp_path: Path, *overrides: str, local: bool = True):
    up, fork = _fork_pair(tmp_path)
    cfg = _cfg(tmp_path, *overrides)
    add_repo(str(up), "upstream", cfg.pipeline)
    add_repo(str(fork), "fork", cfg.pipeline)
    summary = run_pipeline(["upstream", "fork"], cfg.pipeline, cfg.llm, local=local, progress=False)
    return cfg, summary


def _exported(tmp_path: Path, cfg, dedup: bool) -> list[dict]:
    out = tmp_path / ("io_dedup" if dedup else "io_plain")
    options = ExportOptions.from_config(cfg.pipeline, dedup=dedup)
    export_io_pairs(cfg.pipeline.data_dir, out, kinds=("fim",), validation_fraction=0, test_fraction=0, options=options)
    return [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]


def test_fork_pair_every_shared_change_is_exported_once(tmp_path):
    cfg, summary = _run_fork_pair(tmp_path)
    dedup = summary.stages["dedup"]
    # the fork's first four commits are the upstream's: all of their changes are exact duplicates
    assert dedup["drops"]["exact"] == 3 and dedup["drops"]["lock_file_only"] == 2
    marks = [json.loads(x) for x in (tmp_path / "data/ast_dataset/fork/dedup.jsonl").read_text().splitlines()]
    assert {(m["commit"], m["duplicate_of"]["repo"], m["duplicate_of"]["commit"]) for m in marks} == {
        (0, "upstream", 0),
        (1, "upstream", 1),
        (2, "upstream", 2),
    }
    assert summary.stages["generate-fim"]["drops"]["duplicate"] == 3
    records = _exported(tmp_path, cfg, dedup=True)
    outputs = Counter((r["function_id"], r["output"]) for r in records)
    assert max(outputs.values()) == 1, outputs.most_common(2)
    assert Counter(r["repo"] for r in records) == {"upstream": 3, "fork": 2}  # the fork's own two changes stay


def test_with_dedup_and_filters_off_nothing_is_marked_or_skipped(tmp_path):
    cfg, summary = _run_fork_pair(tmp_path, "pipeline.dedup=false", "pipeline.commit_filters=[]")
    assert summary.stages["dedup"]["counts"] == {"off": 2}
    assert not list((tmp_path / "data/ast_dataset").glob("*/dedup.jsonl"))
    assert "duplicate" not in summary.stages["generate-fim"]["drops"]
    assert len(_exported(tmp_path, cfg, dedup=False)) == 8  # every shared change twice


@pytest.mark.slow
def test_dedup_on_ray_marks_what_the_local_run_marks(ray_session, tmp_path):
    _run_fork_pair(tmp_path / "local")
    _, summary = _run_fork_pair(tmp_path / "ray", "pipeline.commits_per_task=2", local=False)
    assert summary.stages["dedup"]["drops"]["exact"] == 3
    for repo in ("upstream", "fork"):
        for name in ("dedup.jsonl", "filtered_commits.jsonl"):
            got = (tmp_path / "ray/data/ast_dataset" / repo / name).read_bytes()
            assert got == (tmp_path / "local/data/ast_dataset" / repo / name).read_bytes(), (repo, name)


# -- the one table at the end of `pipeline run` -------------------------------------------------------------------
def test_run_ends_with_one_table_of_kept_and_dropped_by_reason(tmp_path):
    from rich.console import Console

    from hybrid.cli.pipeline import summary_table

    _, summary = _run_fork_pair(tmp_path)
    console = Console(record=True, width=240)
    console.print(summary_table(summary))
    text = console.export_text()
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") > 3}
    assert list(rows) == [
        "generate-ast",
        "generate-ast-diffs",
        "dedup",
        "generate-tasks",
        "generate-reasoning",
        "generate-fim",
    ]
    dedup = [c.strip() for c in rows["dedup"].split("│")[1:-1]]
    assert dedup[1] == f"{summary.stages['dedup']['counts']['records_kept']} changes"
    assert dedup[2] == "3 changes" and dedup[3] == "exact=3, lock_file_only=2"  # (the lock-file commits: no change)
    fim = [c.strip() for c in rows["generate-fim"].split("│")[1:-1]]
    assert fim[1] == "5 samples" and "duplicate=3" in fim[3]


# -- `hybrid bench datagen --filters` -----------------------------------------------------------------------------
def test_bench_datagen_times_the_filters_on_and_off_side_by_side(tmp_path, capsys):
    from hybrid.main import main

    up, _ = _fork_pair(tmp_path)
    out = tmp_path / "bench.json"
    assert main(["bench", "datagen", str(up), "--no-ray", "--repeat", "1", "--filters", "--json", str(out)]) == 0
    row = json.loads(out.read_text())["filters"][0]
    assert row["commits"] == 4 and row["dropped"] == {"lock_file_only": 1}
    assert row["off_s"] > 0 and row["on_s"] > 0 and row["dedup_stage_s"] > 0 and "load_average" in row
    assert row["fim_samples_off"] == row["fim_samples_on"] == 3
    assert "with dedup, commit filters, scrubbing off vs on" in " ".join(capsys.readouterr().out.split())


def test_the_table_says_the_commits_once_and_the_secrets_scrubbed_as_one_count_never_cut():
    from types import SimpleNamespace

    from rich.console import Console

    from hybrid.cli.pipeline import summary_table

    ast = {"files_parsed": 9, "files": 12, "commits": 5, "secrets_email": 2, "secrets_url": 1}
    stages = {
        "generate-ast": {"counts": ast},
        "generate-fim": {"counts": {"samples": 4, "commits": 5}, "drops": {"duplicate": 1}},
    }
    console = Console(record=True, width=240)
    console.print(summary_table(SimpleNamespace(repos=["r"], seconds=1.0, stages=stages)))
    text = console.export_text()
    assert "pipeline: r (5 commits, 1.0 s)" in text and "commits=" not in text
    assert "files=12, secrets scrubbed=3" in text and "secrets_" not in text
    narrow = Console(record=True, width=80)  # a terminal's default: the other counts follow the table, whole
    ast["declarations_with_a_long_name"] = 123456
    narrow.print(summary_table(SimpleNamespace(repos=["r"], seconds=1.0, stages=stages), narrow.width))
    text = narrow.export_text()
    assert "…" not in text and "other counts" not in text and "by reason" not in text  # not columns
    lines = " ".join(text.split())
    assert "generate-ast: files=12, declarations_with_a_long_name=123,456, secrets scrubbed=3" in lines
    assert "generate-fim: dropped duplicate=1 " in lines + " " and "generate-fim: dropped duplicate=1;" not in lines
    stages["generate-fim"]["counts"]["commits"] = 4  # a stage that saw fewer commits says so in its row
    console.print(summary_table(SimpleNamespace(repos=["r"], seconds=1.0, stages=stages)))
    text = console.export_text()
    assert "(5 commits, 1.0 s)" in text and "commits=5" not in text and "commits=4" in text
