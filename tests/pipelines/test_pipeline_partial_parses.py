"""Files with syntax errors that tree-sitter recovers from: the clean declarations stay, the broken ones are
dropped and counted (`decl_parse_error`), over real git histories (tests/repo_builder.py), in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybrid.cli.config import load_config
from pipelines.dataset_tools import ast_coverage
from pipelines.range_worker import RangeWorker
from pipelines.repos import add_repo
from pipelines.run import run_pipeline
from pipelines.synthetic import build_synthetic_rust_repo
from tests.repo_builder import RepoBuilder

STRUCTURAL = ["generate-ast", "generate-ast-diffs", "generate-fim"]

LIB_RS_V0 = """pub fn parse_args(args: &[String]) -> Option<String> {
    args.get(1).cloned()
}

pub fn run(path: &str) -> Result<usize, std::io::Error> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.len())
}

pub fn count_lines(path: &str) -> Result<usize, std::io::Error> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.lines().count())
}
"""
# `run` edited, `count_lines` rewritten with the 2015 `try!` macro, a new `read_all` with `try!`, a new `version`
LIB_RS_V1 = """pub fn parse_args(args: &[String]) -> Option<String> {
    args.get(1).cloned()
}

pub fn run(path: &str) -> Result<usize, std::io::Error> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.len() + 1)
}

pub fn count_lines(path: &str) -> Result<usize, std::io::Error> {
    let text = try!(std::fs::read_to_string(path));
    Ok(text.lines().count())
}

pub fn read_all(path: &str) -> Result<String, std::io::Error> {
    let text = try!(std::fs::read_to_string(path));
    Ok(text)
}

pub fn version() -> &'static str {
    "1.0"
}
"""
LIB_RS_V2 = LIB_RS_V1.replace("args.get(1).cloned()", "args.get(2).cloned()")
APP_PY_V0 = """def good(x):
    return x + 1


def fragile(x):
    return x * 2


def other():
    return 3
"""
# `good` edited, one syntax error inside `fragile`, a new `extra`
APP_PY_V1 = """def good(x):
    return x + 2


def fragile(x):
    return x *


def other():
    return 3


def extra():
    return 4
"""
APP_PY_V2 = APP_PY_V1.replace("return x *\n", "return x * 3\n").replace("return 3", "return 5")
STORE_PY_V0 = """class Store:
    def get(self, key):
        return self.items[key]

    def put(self, key, value):
        self.items[key] = value

    def size(self):
        return len(self.items)
"""
# an unclosed bracket in `put`: tree-sitter folds the next method into the broken one
STORE_PY_V1 = STORE_PY_V0.replace("self.items[key] = value", "self.items[key] = [value,")


def _cfg(data_dir: Path):
    return load_config([f"pipeline.data_dir={data_dir}"])


def _read(data_dir: Path, repo: str, n: int, name: str):
    path = data_dir / "ast_dataset" / repo / f"commit_{n}" / name
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in path.read_text().splitlines()]
    return json.loads(path.read_text())


def _diffs(data_dir: Path, repo: str, n: int) -> list[tuple[str, str]]:
    return [(r["id"], r["status"]) for r in _read(data_dir, repo, n, "diff_ast.jsonl")]


@pytest.fixture(scope="module")
def recovered(tmp_path_factory):
    root = tmp_path_factory.mktemp("partial")
    rb = RepoBuilder(root / "src")
    rb.write("src/lib.rs", LIB_RS_V0)
    rb.write("app.py", APP_PY_V0)
    rb.write("store.py", STORE_PY_V0)
    rb.commit("clean versions")
    rb.write("src/lib.rs", LIB_RS_V1)
    rb.write("app.py", APP_PY_V1)
    rb.commit("edit good and run; break fragile; try! in count_lines and read_all")
    rb.write("src/lib.rs", LIB_RS_V2)
    rb.write("app.py", APP_PY_V2)
    rb.write("store.py", STORE_PY_V1)
    rb.commit("fix fragile, edit other and parse_args; an unclosed bracket in Store.put")
    cfg = _cfg(root / "data")
    add_repo(str(root / "src"), "partial", cfg.pipeline)
    RangeWorker.verify_incremental = True  # every incremental parse is checked against a fresh one
    try:
        summary = run_pipeline(["partial"], cfg.pipeline, cfg.llm, local=True, progress=False, stages=STRUCTURAL)
    finally:
        RangeWorker.verify_incremental = False
    return root / "data", summary


def test_the_clean_functions_next_to_try_and_a_syntax_error_are_found(recovered):
    data_dir, summary = recovered
    assert _diffs(data_dir, "partial", 1) == [
        ("app.py::function::good", "modified"),
        ("app.py::function::extra", "added"),
        ("src/lib.rs::function::run", "modified"),
        ("src/lib.rs::function::version", "added"),
    ]
    ast = {r["id"] for r in _read(data_dir, "partial", 1, "ast.jsonl")}
    assert ast == {
        "app.py::function::good",
        "app.py::function::other",
        "app.py::function::extra",
        "src/lib.rs::function::parse_args",
        "src/lib.rs::function::run",
        "src/lib.rs::function::version",
    }
    files = {f["path"]: f for f in _read(data_dir, "partial", 1, "commit_data.json")["files"]}
    assert files["src/lib.rs"]["skipped"] is None and files["src/lib.rs"]["declarations"] == 3
    assert files["src/lib.rs"]["declarations_dropped"] == 2  # count_lines, read_all
    assert files["app.py"]["declarations_dropped"] == 1  # fragile
    fim = {s["function_id"] for s in _read(data_dir, "partial", 1, "fim_dataset.json")}
    assert fim == {
        "app.py::function::good",
        "app.py::function::extra",
        "src/lib.rs::function::run",
        "src/lib.rs::function::version",
    }


def test_broken_declarations_are_counted_not_reported(recovered):
    data_dir, summary = recovered
    # commit 2: the fixed `fragile` had no clean version before (not "added"); `Store.size` sits inside the
    # broken `Store.put` now (not "deleted"); the clean edits next to them are found
    assert _diffs(data_dir, "partial", 2) == [
        ("app.py::function::other", "modified"),
        ("src/lib.rs::function::parse_args", "modified"),
    ]
    ast, diffs = summary.stages["generate-ast"], summary.stages["generate-ast-diffs"]
    # generate-ast: count_lines + read_all + fragile (commit 1), count_lines + read_all (2), Store + Store.put (2)
    assert ast["drops"] == {"decl_parse_error": 7}
    assert ast["counts"]["files_recovered"] == 4 and "parse_error" not in ast["drops"]
    # generate-ast-diffs: count_lines, read_all, fragile (1); fragile, Store, Store.put, Store.size (2)
    assert diffs["drops"] == {"decl_parse_error": 7}
    assert ast["by_language"]["rust"]["decl_parse_error"] == 4


def test_coverage_tells_clean_recovered_and_unusable_files_apart(recovered):
    data_dir, _ = recovered
    cov = ast_coverage(_cfg(data_dir).pipeline)["partial"]
    assert cov["rust"] == {"parsed": 1, "recovered": 2, "declarations": 9, "declarations_dropped": 4}
    assert cov["python"] == {"parsed": 3, "recovered": 2, "declarations": 15, "declarations_dropped": 3}


def test_a_file_with_nothing_clean_left_is_still_a_parse_error(tmp_path):
    rb = RepoBuilder(tmp_path / "src")
    rb.write("ok.py", "def ok():\n    return 1\n")
    rb.write("broken.py", "def broken(:\n    pass\n")
    rb.commit("one clean, one unusable")
    cfg = _cfg(tmp_path / "data")
    add_repo(str(tmp_path / "src"), "unusable", cfg.pipeline)
    s = run_pipeline(["unusable"], cfg.pipeline, cfg.llm, local=True, progress=False, stages=STRUCTURAL)
    assert s.stages["generate-ast"]["drops"] == {"parse_error": 1}
    files = {f["path"]: f for f in _read(tmp_path / "data", "unusable", 0, "commit_data.json")["files"]}
    assert files["broken.py"] == {
        "path": "broken.py",
        "old_path": None,
        "status": "added",
        "language": "python",
        "binary": False,
        "skipped": "parse_error",
        "declarations": 0,
    }
    assert "declarations_dropped" not in files["ok.py"]  # clean files' entries are as they always were


def test_incremental_parsing_matches_fresh_parsing_through_syntax_errors(tmp_path):
    """Old and broken Rust (`try!`, unclosed parentheses) comes and goes over a history; error recovery can
    reshape the tree far from an edit, and every incremental update is still compared with a fresh parse."""
    repo = build_synthetic_rust_repo(tmp_path / "syn", 150, seed=7, syntax_errors=0.02)
    cfg = _cfg(tmp_path / "data")
    add_repo(str(repo), "syn", cfg.pipeline)
    RangeWorker.verify_incremental = True
    try:
        s = run_pipeline(
            ["syn"], cfg.pipeline, cfg.llm, local=True, progress=False, stages=["generate-ast", "generate-ast-diffs"]
        )
    finally:
        RangeWorker.verify_incremental = False
    assert s.worker["incremental_parses"] > 100
    assert s.stages["generate-ast"]["counts"]["files_recovered"] > 50
    assert s.stages["generate-ast"]["drops"]["decl_parse_error"] > 50
