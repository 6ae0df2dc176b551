"""hybrid/core/layout.py: the one place that spells the pipeline's data folder, on a real folder tree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybrid.core import layout as L
from hybrid.core.layout import DatasetLayout, commit_name, commit_number, done_in


def test_the_locations_are_the_seeds_layout(tmp_path):
    lay = DatasetLayout(tmp_path / "data")
    d = str(tmp_path / "data")
    assert lay.dataset_dir == f"{d}/ast_dataset"
    assert lay.repos_dir == f"{d}/repos"
    assert lay.registry == f"{d}/repos/registry.json"
    assert lay.clone_dir("r") == f"{d}/repos/r"
    assert lay.llm_cache == f"{d}/llm_cache"
    assert lay.repo_dir("r") == f"{d}/ast_dataset/r"
    assert lay.stats_file("r") == f"{d}/ast_dataset/r/stats.json"
    assert lay.failures_file("r") == f"{d}/ast_dataset/r/llm_failures.jsonl"
    assert lay.commit_dir("r", 7) == f"{d}/ast_dataset/r/commit_7"
    assert lay.commit_file("r", 7, L.FIM) == f"{d}/ast_dataset/r/commit_7/fim_dataset.json"
    assert lay.local_commit_dir("r", 7) == Path(d, "ast_dataset", "r", "commit_7")
    assert lay.local(lay.commit_dir("r", 7)) == lay.local_commit_dir("r", 7)
    assert lay.local_commit_path("r", 7) == str(lay.local_commit_dir("r", 7)) == lay.commit_dir("r", 7)
    assert lay.local_commit_path("s", 0) == f"{d}/ast_dataset/s/commit_0"  # (a repo dir cached per name)
    # a relative data folder stays relative, as `pipeline.data_dir=data` always wrote it
    assert DatasetLayout("data").commit_dir("r", 0) == "data/ast_dataset/r/commit_0"
    assert DatasetLayout("data/").repo_dir("r") == "data/ast_dataset/r"


@pytest.mark.parametrize(
    "name, number",
    [
        ("commit_0", 0),
        ("commit_7", 7),
        ("commit_1234", 1234),
        ("commit_", None),
        ("commit_x", None),
        ("commit_-1", None),
        ("commit_01", None),
        ("commit_1 ", None),
        ("commit_1\n", None),
        ("commit_²", None),
        ("commit_١", None),
        ("Commit_1", None),
        ("stats.json", None),
    ],
)
def test_one_parse_rule_for_commit_folders(name, number):
    assert commit_number(name) == number
    if number is not None:
        assert commit_name(number) == name


def _tree(tmp_path: Path) -> DatasetLayout:
    lay = DatasetLayout(tmp_path / "data")
    for n in (0, 2, 10, 11):
        lay.local_commit_dir("b", n).mkdir(parents=True)
    lay.local_commit_dir("a", 0).mkdir(parents=True)
    root = Path(lay.dataset_dir)
    (root / ".hidden").mkdir()
    (root / "a-file").write_text("")
    repo = Path(lay.repo_dir("b"))
    (repo / "commit_3").write_text("a file, not a folder")
    for odd in ("commit_01", "commit_x", "other"):
        (repo / odd).mkdir()
    return lay


def test_repositories_and_commits_are_listed_in_order(tmp_path):
    lay = _tree(tmp_path)
    assert lay.repos() == ["a", "b"]
    assert lay.commits("b") == [0, 2, 10, 11]  # by number (a name sort would put 10 before 2)
    assert lay.commits("missing") == []
    assert lay.has_repo("b") and not lay.has_repo("missing")
    assert DatasetLayout(tmp_path / "nothing").repos() == []


def test_the_done_rule(tmp_path):
    lay = _tree(tmp_path)
    folder = lay.local_commit_dir("b", 2)
    assert not lay.is_done("b", 2, "generate-ast") and not done_in(folder, "generate-ast")
    (folder / L.COMMIT_DATA).write_text("{}")
    # the marker alone is not enough: a deleted ast.jsonl is redone
    assert not lay.is_done("b", 2, "generate-ast") and not done_in(folder, "generate-ast")
    (folder / L.AST).write_text("")
    assert lay.is_done("b", 2, "generate-ast") and done_in(folder, "generate-ast")
    assert not lay.is_done("b", 2, "generate-fim")
    (folder / L.FIM).write_text("[]")
    assert lay.is_done("b", 2, "generate-fim") and done_in(lay.local_commit_path("b", 2), "generate-fim")
    assert L.STAGE_FILES["generate-ast"][-1] == L.COMMIT_DATA  # written last: it marks the commit done
    assert set(L.COMMIT_FILES) == {f for files in L.STAGE_FILES.values() for f in files}


def test_read_stats(tmp_path):
    lay = _tree(tmp_path)
    path = Path(lay.stats_file("b"))
    assert lay.read_stats("b") == {}
    path.write_text(json.dumps({"generate-ast": {"counts": {"commits": 4}}}))
    assert lay.read_stats("b") == {"generate-ast": {"counts": {"commits": 4}}}
    path.write_text("{not json")
    assert lay.read_stats("b") == {}  # unreadable: rewritten by the next run
    path.write_bytes(b"\xff\xfe")
    assert lay.read_stats("b") == {}
    path.write_text("[1, 2]")
    assert lay.read_stats("b") is None  # JSON, not ours: left alone
