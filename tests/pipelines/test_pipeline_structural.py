"""The structural stages over a real git history (tests/repo_builder.py), called in-process (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybrid.cli.config import load_config
from hybrid.core.errors import HybridError
from pipelines.dataset_tools import ast_coverage, cleanup_dataset
from pipelines.repos import add_repo
from pipelines.run import run_pipeline
from pipelines.steps import DeclarationDiffer
from tests.repo_builder import build_sample_repo

STRUCTURAL = ["generate-ast", "generate-ast-diffs", "generate-fim"]  # (pipeline run also has the LLM stages)


def _cfg(data_dir: Path, *more: str):
    return load_config([f"pipeline.data_dir={data_dir}", *more])


def _read(data_dir: Path, n: int, name: str, repo: str = "sample"):
    path = data_dir / "ast_dataset" / repo / f"commit_{n}" / name
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in path.read_text().splitlines()]
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """The sample repo registered and run through every stage once; returns (data_dir, hashes, summary)."""
    root = tmp_path_factory.mktemp("structural")
    hashes = build_sample_repo(root / "src")
    cfg = _cfg(root / "data")
    add_repo(str(root / "src"), "sample", cfg.pipeline)
    summary = run_pipeline(["sample"], cfg.pipeline, cfg.llm, local=True, progress=False, stages=STRUCTURAL)
    return root / "data", hashes, summary


def test_commit_numbers_follow_first_parent_history(sample):
    data_dir, hashes, _ = sample
    commits = sorted((data_dir / "ast_dataset" / "sample").glob("commit_*"))
    assert len(commits) == len(hashes) == 8  # the merged feature commit is not a commit of its own
    for n, h in hashes.items():
        cd = _read(data_dir, n, "commit_data.json")
        assert cd["commit_hash"] == h and cd["commit_number"] == n
    merge = _read(data_dir, 6, "commit_data.json")
    assert merge["parents"][0] == hashes[5] and len(merge["parents"]) == 2
    assert [(f["path"], f["status"]) for f in merge["files"]] == [("lib/vec.c", "modified")]
    assert "-    if (v > 10)\n+    if (v >= 10)" in merge["diff"]


def test_ast_records(sample):
    data_dir, _, _ = sample
    ast = _read(data_dir, 1, "ast.jsonl")
    assert [r["id"] for r in ast] == [
        "lib/vec.c::struct::vec",
        "lib/vec.c::function::vec_len",
        "lib/vec.c::function::clamp",
        "lib/widget.cpp::class::ui.Widget",
        "lib/widget.cpp::method::ui.Widget.draw",
        "lib/widget.cpp::method::ui.Widget.size",
        "src/Main.java::class::Main",
        "src/Main.java::method::Main.main",
        "src/Main.java::method::Main.greet",
        "tools.py::function::outer",
        "tools.py::function::outer.inner",
        "web/types.ts::interface::Shape",
        "web/types.ts::enum::Color",
        "web/types.ts::class::Circle",
        "web/types.ts::method::Circle.constructor",
        "web/types.ts::method::Circle.area",
        "web/util.js::function::total",
        "web/util.js::class::Cart",
        "web/util.js::method::Cart.add",
        "web/util.js::function::double",
    ]
    outer = next(r for r in ast if r["name"] == "outer")
    assert outer["code"].startswith("@functools.lru_cache(maxsize=None)\ndef outer(n):")
    assert (outer["start_line"], outer["end_line"], outer["language"]) == (4, 8, "python")
    src = (Path(data_dir).parent / "src" / "tools.py").read_bytes()
    assert src[outer["start_byte"] : outer["end_byte"]].decode() == outer["code"]


def test_diff_statuses(sample):
    data_dir, _, _ = sample
    got = {
        n: [(r["id"], r["status"], r["whitespace_only"], r["old_file"]) for r in _read(data_dir, n, "diff_ast.jsonl")]
        for n in (2, 3, 5, 6, 7)
    }
    assert got[2] == [
        ("app.py::class::Parser", "modified", False, None),
        ("app.py::method::Parser.parse", "modified", False, None),
        ("app.py::function::helper", "added", False, None),
        ("app.py::function::old", "deleted", False, None),
        ("src/main.rs::function::run", "modified", True, None),
    ]
    assert got[3] == [("cmd/server.go::method::Server.Start", "modified", False, "server.go")]
    assert got[5] == [
        ("src/Main.java::class::Main", "modified", False, None),
        ("src/Main.java::method::Main.farewell", "added", False, None),
    ]
    assert got[6] == [("lib/vec.c::function::clamp", "modified", False, None)]
    assert got[7] == [
        (f"web/types.ts::{k}", "deleted", False, None)
        for k in (
            "interface::Shape",
            "enum::Color",
            "class::Circle",
            "method::Circle.constructor",
            "method::Circle.area",
        )
    ]
    parse = next(r for r in _read(data_dir, 2, "diff_ast.jsonl") if r["name"] == "Parser.parse")
    assert "text.split()" in parse["before_code"] and 'text.split(",")' in parse["after_code"]
    assert parse["commit_metadata"]["commit_number"] == 2
    old = next(r for r in _read(data_dir, 2, "diff_ast.jsonl") if r["name"] == "old")
    assert old["after_code"] is None and old["after_range"] is None and old["before_range"]["start_line"] == 4
    assert _read(data_dir, 4, "diff_ast.jsonl") == []  # every file of commit 4 is dropped by a filter


def test_fim_middles(sample):
    data_dir, _, _ = sample
    fim = {
        s["function_id"]: s
        for n in range(8)
        for s in _read(data_dir, n, "fim_dataset.json")
        if s["commit_number"] == n and n in (2, 3, 5, 6)
    }
    parse = fim["app.py::method::Parser.parse"]
    assert parse["fim_middle"] == '        tokens = text.split(",")\n'
    assert parse["operation_type"] == "UPDATE" and parse["commit_number"] == 2
    assert parse["fim_prefix"].endswith("    def parse(text):\n")
    assert parse["fim_suffix"].startswith("        return tokens\n")
    assert fim["app.py::function::helper"]["fim_middle"] == "def helper(x):\n    return x * 2\n"
    assert fim["app.py::function::helper"]["operation_type"] == "ADD"
    assert fim["cmd/server.go::method::Server.Start"]["fim_middle"] == "\treturn listen(s.addr)\n"
    # the added blank line before the new method is not part of the class's middle
    assert (
        fim["src/Main.java::class::Main"]["fim_middle"]
        == '    static String farewell(String name) {\n        return "bye " + name;\n    }\n'
    )
    # only the `if` line changed: the middle is widened to the whole if statement (AST-FIM)
    clamp = fim["lib/vec.c::function::clamp"]
    assert clamp["fim_middle"] == "    if (v >= 10)\n        return 10;\n" and clamp["widened"]
    assert "src/main.rs::function::run" not in fim  # whitespace-only changes make no sample
    for s in fim.values():
        assert s["task"] is None and s["reasoning"] is None


def test_prefix_middle_suffix_rebuild_the_file(sample):
    data_dir, _, _ = sample
    for s in _read(data_dir, 2, "fim_dataset.json"):
        assert s["file"] == "app.py"
        text = (Path(data_dir).parent / "src" / "app.py").read_text()  # the working tree is at the last commit
        assert s["fim_prefix"] + s["fim_middle"] + s["fim_suffix"] == text


def test_drop_counts(sample):
    _, _, summary = sample
    ast = summary.stages["generate-ast"]
    assert ast["drops"] == {
        "not_source": 1,
        "binary": 2,
        "lock_file": 1,
        "too_large": 1,
        "parse_error": 1,
        "generated": 1,
        "non_utf8": 1,
        "vendored": 1,
        "minified": 1,
    }
    assert ast["counts"]["commits"] == 8 and ast["counts"]["files_parsed"] == 14
    assert ast["counts"]["declarations"] == 51
    diffs = summary.stages["generate-ast-diffs"]["counts"]
    assert (diffs["added"], diffs["modified"], diffs["deleted"], diffs["whitespace_only"]) == (34, 6, 6, 1)
    fim = summary.stages["generate-fim"]
    assert fim["drops"] == {"whitespace_only": 1} and fim["counts"]["samples"] == 39
    stats = json.loads((summary_dir := sample[0] / "ast_dataset" / "sample" / "stats.json").read_text())
    assert stats["generate-ast"]["drops"]["binary"] == 2, summary_dir


def test_coverage_per_language(sample):
    data_dir, _, _ = sample
    cov = ast_coverage(_cfg(data_dir).pipeline)["sample"]
    assert cov["python"] == {
        "parsed": 3,
        "declarations": 10,
        "skipped:too_large": 1,
        "parse_error": 1,
        "skipped:generated": 1,
        "skipped:non_utf8": 1,
    }
    assert cov["javascript"] == {"parsed": 1, "declarations": 4, "skipped:vendored": 1, "skipped:minified": 1}
    assert cov["other"] == {"skipped:not_source": 1, "skipped:binary": 2, "skipped:lock_file": 1}
    assert set(cov) == {"c", "cpp", "go", "java", "javascript", "other", "python", "rust", "typescript"}


def test_rerun_skips_finished_commits_and_force_redoes_them(sample, tmp_path):
    data_dir, _, _ = sample
    cfg = _cfg(data_dir)
    before = _read(data_dir, 2, "diff_ast.jsonl")
    again = run_pipeline(["sample"], cfg.pipeline, cfg.llm, local=True, progress=False, stages=STRUCTURAL)
    for name in ("generate-ast", "generate-ast-diffs", "generate-fim"):  # (other stages may be registered)
        st = again.stages[name]
        assert st["counts"].get("skipped_done") == 8 and st["counts"].get("commits", 0) == 0
    forced = run_pipeline(
        ["sample"], cfg.pipeline, cfg.llm, local=True, progress=False, force=True, stages=["generate-ast-diffs"]
    )
    assert (
        list(forced.stages) == ["generate-ast-diffs"] and forced.stages["generate-ast-diffs"]["counts"]["commits"] == 8
    )
    assert _read(data_dir, 2, "diff_ast.jsonl") == before


def test_resume_after_an_interrupted_run(tmp_path, monkeypatch):
    hashes = build_sample_repo(tmp_path / "src")
    clean, broken = _cfg(tmp_path / "clean"), _cfg(tmp_path / "broken", "pipeline.commits_per_task=3")
    for cfg in (clean, broken):
        add_repo(str(tmp_path / "src"), "sample", cfg.pipeline)
    run_pipeline(["sample"], clean.pipeline, clean.llm, local=True, progress=False)

    real = DeclarationDiffer.run

    def killed_at_commit_5(self, ctx, out_dir):
        if ctx.number == 5:
            # what a kill leaves behind: a temp file that never got renamed
            (out_dir / ".diff_ast.jsonl.x1y2.tmp").write_text('{"half": ')
            raise KeyboardInterrupt
        return real(self, ctx, out_dir)

    monkeypatch.setattr(DeclarationDiffer, "run", killed_at_commit_5)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(["sample"], broken.pipeline, broken.llm, local=True, progress=False)
    assert (tmp_path / "broken/ast_dataset/sample/commit_5/commit_data.json").exists()
    assert not (tmp_path / "broken/ast_dataset/sample/commit_5/diff_ast.jsonl").exists()
    monkeypatch.setattr(DeclarationDiffer, "run", real)

    resumed = run_pipeline(["sample"], broken.pipeline, broken.llm, local=True, progress=False)
    assert resumed.stages["generate-ast"]["counts"]["skipped_done"] == 6  # commits 0-5 were finished
    assert resumed.stages["generate-ast-diffs"]["counts"]["commits"] == 3  # 5, 6, 7
    for n in range(len(hashes)):
        for name in ("commit_data.json", "ast.jsonl", "diff_ast.jsonl", "task.json", "fim_dataset.json"):
            got, want = (tmp_path / f"{run}/ast_dataset/sample/commit_{n}/{name}" for run in ("broken", "clean"))
            if name == "task.json" and not want.exists():  # a commit the dedup stage filtered (the merge) has none
                assert not got.exists(), (n, name)
                continue
            assert got.read_bytes() == want.read_bytes(), (n, name)
    # the resumed run removed the temp file the kill left beside the diff it redid
    assert not (tmp_path / "broken/ast_dataset/sample/commit_5/.diff_ast.jsonl.x1y2.tmp").exists()
    stray = tmp_path / "broken/ast_dataset/sample/commit_2/.fim_dataset.json.x1y2.tmp"  # in a finished commit
    stray.write_text("[")
    assert cleanup_dataset(broken.pipeline, [], temp=True) == {"temp files": 1} and not stray.exists()


def test_fim_attaches_tasks_and_reasoning(tmp_path):
    build_sample_repo(tmp_path / "src")
    cfg = _cfg(tmp_path / "data")
    add_repo(str(tmp_path / "src"), "sample", cfg.pipeline)
    run_pipeline(
        ["sample"], cfg.pipeline, cfg.llm, local=True, progress=False, stages=["generate-ast", "generate-ast-diffs"]
    )
    c2 = tmp_path / "data/ast_dataset/sample/commit_2"
    (c2 / "task.json").write_text(
        json.dumps(
            {
                "commit_number": 2,
                "commit_hash": "x",
                "source": "llm",
                "tasks": [
                    {
                        "id": "task_1",
                        "description": "Split on commas.",
                        "function_ids": ["app.py::method::Parser.parse"],
                    },
                    {"id": "task_2", "description": "Tidy up.", "function_ids": []},
                ],
            }
        )
    )
    (c2 / "reasoning.json").write_text(
        json.dumps(
            [{"function_id": "app.py::function::helper", "operation_type": "ADD", "reasoning": "I added a helper."}]
        )
    )
    run_pipeline(["sample"], cfg.pipeline, cfg.llm, local=True, progress=False, stages=["generate-fim"])
    fim = {s["function_id"]: s for s in json.loads((c2 / "fim_dataset.json").read_text())}
    assert fim["app.py::method::Parser.parse"]["task"] == "Split on commas.\nTidy up."
    assert fim["app.py::function::helper"]["task"] == "Tidy up."
    assert fim["app.py::function::helper"]["reasoning"] == "I added a helper."
    assert fim["app.py::method::Parser.parse"]["reasoning"] is None
    # cleanup-dataset touches only what it is asked to, and --dry-run nothing
    assert cleanup_dataset(cfg.pipeline, ["tasks", "reasoning"], dry_run=True) == {"task.json": 1, "reasoning.json": 1}
    assert (c2 / "task.json").exists()
    assert cleanup_dataset(cfg.pipeline, ["tasks", "reasoning"]) == {"task.json": 1, "reasoning.json": 1}
    assert not (c2 / "task.json").exists() and (c2 / "fim_dataset.json").exists()
    with pytest.raises(HybridError, match="say what to remove"):
        cleanup_dataset(cfg.pipeline, [])


def test_fim_without_diffs_leaves_the_commit_to_do(tmp_path):
    build_sample_repo(tmp_path / "src")
    cfg = _cfg(tmp_path / "data")
    add_repo(str(tmp_path / "src"), "sample", cfg.pipeline)
    s = run_pipeline(["sample"], cfg.pipeline, cfg.llm, local=True, progress=False, stages=["generate-fim"])
    assert s.stages["generate-fim"]["drops"] == {"no_diff_ast": 8}
    assert not list((tmp_path / "data/ast_dataset/sample").glob("commit_*/fim_dataset.json"))


def test_size_bounds_are_configurable(tmp_path):
    build_sample_repo(tmp_path / "src")
    cfg = _cfg(tmp_path / "data", "pipeline.max_file_bytes=300", "pipeline.fim_max_middle_lines=2")
    add_repo(str(tmp_path / "src"), "sample", cfg.pipeline)
    s = run_pipeline(["sample"], cfg.pipeline, cfg.llm, local=True, progress=False)
    assert s.stages["generate-ast"]["drops"]["too_large"] > 1
    assert s.stages["generate-fim"]["drops"]["middle_too_large"] > 0
    for path in (tmp_path / "data/ast_dataset/sample").glob("commit_*/fim_dataset.json"):
        for sample in json.loads(path.read_text()):
            assert sample["fim_middle"].count("\n") <= 2


def test_a_corrupt_task_file_is_one_clear_error_and_the_rest_is_done(tmp_path):
    build_sample_repo(tmp_path / "src")
    cfg = _cfg(tmp_path / "data", "pipeline.commits_per_task=4")
    add_repo(str(tmp_path / "src"), "sample", cfg.pipeline)
    run_pipeline(
        ["sample"], cfg.pipeline, cfg.llm, local=True, progress=False, stages=["generate-ast", "generate-ast-diffs"]
    )
    bad = tmp_path / "data/ast_dataset/sample/commit_2/task.json"
    bad.write_text('{"tasks": [')
    with pytest.raises(HybridError, match=r"commit_2/task\.json: line 1: not valid JSON"):
        run_pipeline(["sample"], cfg.pipeline, cfg.llm, local=True, progress=False, stages=["generate-fim"])
    done = sorted(p.parent.name for p in (tmp_path / "data/ast_dataset/sample").glob("commit_*/fim_dataset.json"))
    assert done == ["commit_0", "commit_1", "commit_4", "commit_5", "commit_6", "commit_7"]


def test_submodules_and_symlinks_are_counted_not_parsed(tmp_path):
    from tests.repo_builder import RepoBuilder

    rb = RepoBuilder(tmp_path / "src")
    rb.write("a.py", "def f():\n    return 1\n")
    rb.commit("one")
    # a gitlink (submodule entry) naming a commit that is not in this repository, and a symlink to a .py file
    rb.git("update-index", "--add", "--cacheinfo", f"160000,{'1' * 40},third/lib.py")
    (tmp_path / "src" / "link.py").symlink_to("a.py")
    rb.git("add", "link.py")
    rb.git("commit", "-q", "-m", "submodule and symlink")
    cfg = _cfg(tmp_path / "data")
    add_repo(str(tmp_path / "src"), "sub", cfg.pipeline)
    s = run_pipeline(["sub"], cfg.pipeline, cfg.llm, local=True, progress=False, stages=STRUCTURAL)
    assert s.stages["generate-ast"]["drops"] == {"submodule": 1, "symlink": 1}
    files = json.loads((tmp_path / "data/ast_dataset/sub/commit_1/commit_data.json").read_text())["files"]
    assert {f["path"]: f["skipped"] for f in files} == {"link.py": "symlink", "third/lib.py": "submodule"}


def test_a_file_name_that_is_not_utf8_is_written_with_replacement_characters(tmp_path):
    """git paths are bytes (sharkdp/bat has `tests/examples/test-invalid-utf8-\\xc3(.rs`): the run goes on and
    every output stays valid UTF-8 JSON."""
    from tests.repo_builder import RepoBuilder

    rb = RepoBuilder(tmp_path / "src")
    rb.write("ok.rs", "fn ok() {}\n")
    (tmp_path / "src").joinpath(b"bad-\xc3(.rs".decode("utf-8", "surrogateescape")).write_bytes(b"fn bad() {}\n")
    rb.commit("a file whose name is not UTF-8")
    cfg = _cfg(tmp_path / "data")
    add_repo(str(tmp_path / "src"), "raw", cfg.pipeline)
    s = run_pipeline(["raw"], cfg.pipeline, cfg.llm, local=True, progress=False, stages=STRUCTURAL)
    assert s.stages["generate-ast"]["counts"]["files_parsed"] == 2
    files = json.loads((tmp_path / "data/ast_dataset/raw/commit_0/commit_data.json").read_text(encoding="utf-8"))
    assert sorted(f["path"] for f in files["files"]) == ["bad-\ufffd(.rs", "ok.rs"]
    ids = [r["id"] for r in _read(tmp_path / "data", 0, "diff_ast.jsonl", repo="raw")]
    assert ids == ["bad-\ufffd(.rs::function::bad", "ok.rs::function::ok"]
