import json

import pytest

from hybrid.core.errors import HybridError
from hybrid.core.io import read_jsonl
from hybrid.data.export import export_io_pairs, fim_input
from hybrid.data.tokenizer import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, TASK


def fim(repo, n, fid, middle, task=None):
    return {
        "id": f"{fid}#0",
        "function_id": fid,
        "repo": repo,
        "commit_number": n,
        "commit_hash": "0" * 40,
        "file": "a.py",
        "language": "python",
        "kind": "function",
        "operation_type": "ADD",
        "fim_prefix": f"def {fid}():\n",
        "fim_middle": middle,
        "fim_suffix": "\n",
        "task": task,
        "reasoning": None,
    }


def make_dataset(root, repos):
    """repos: {repo: [[fim records of commit 0], [commit 1], ...]}; commit 1 also gets a reasoning.json."""
    for repo, commits in repos.items():
        for n, recs in enumerate(commits):
            d = root / "ast_dataset" / repo / f"commit_{n}"
            d.mkdir(parents=True)
            (d / "fim_dataset.json").write_text(json.dumps(recs))
            if recs:
                fid = recs[0]["function_id"]
                (d / "reasoning.json").write_text(
                    json.dumps([{"function_id": fid, "operation_type": "UPDATE", "reasoning": f"I changed {fid}."}])
                )
                (d / "diff_ast.jsonl").write_text(
                    json.dumps({"id": fid, "before_code": "old", "after_code": "new"}) + "\n"
                )
                (d / "task.json").write_text(
                    json.dumps(
                        {
                            "commit_number": n,
                            "commit_hash": "0" * 40,
                            "source": "llm",
                            "tasks": [{"id": "task_1", "description": f"Improve {fid}", "function_ids": [fid]}],
                        }
                    )
                )


def test_time_split_keeps_functions_in_one_split(tmp_path):
    # ten commits; f0 is edited again in the last commit, so it must stay in train with its first version
    commits = [[fim("r", n, f"f{n}", f"return {n}")] for n in range(10)]
    commits[9].append(fim("r", 9, "f0", "return 'edited'"))
    make_dataset(tmp_path / "data", {"r": commits})
    res = export_io_pairs(tmp_path / "data", tmp_path / "out", validation_fraction=0.1, test_fraction=0.1)
    assert res.split_by == "time"
    splits = {s: read_jsonl(tmp_path / "out" / f"{s}.jsonl") for s in ("train", "validation", "test")}
    assert {k: len(v) for k, v in splits.items()} == res.sizes
    assert sum(res.sizes.values()) == 10 + 1 + 10  # 11 FIM + 10 reasoning
    fns = {s: {r["function_id"] for r in v} for s, v in splits.items()}
    assert not (fns["train"] & fns["test"]) and not (fns["train"] & fns["validation"])
    assert not (fns["validation"] & fns["test"])
    assert "f0" in fns["train"] and "f9" in fns["test"] and "f8" in fns["validation"]
    assert max(r["commit_number"] for r in splits["train"] if r["function_id"] != "f0") < 8
    rec = next(r for r in splits["test"] if r["kind"] == "fim")
    assert rec["input"] == f"{TASK}Improve f9\n{FIM_PREFIX}def f9():\n{FIM_SUFFIX}\n{FIM_MIDDLE}"
    assert rec["output"] == "return 9" and rec["repo"] == "r" and rec["commit_number"] == 9
    why = next(r for r in splits["test"] if r["kind"] == "reasoning")
    assert why["output"] == "I changed f9." and "Before:\nold" in why["input"] and "After:\nnew" in why["input"]
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["sizes"] == res.sizes


def test_repo_split_with_three_repos(tmp_path):
    make_dataset(tmp_path / "data", {name: [[fim(name, 0, f"{name}_f", "x = 1")]] for name in ("a", "b", "c", "d")})
    res = export_io_pairs(tmp_path / "data", tmp_path / "out", kinds=("fim",))
    assert res.split_by == "repository"
    repos = {
        s: {r["repo"] for r in read_jsonl(tmp_path / "out" / f"{s}.jsonl")} for s in ("train", "validation", "test")
    }
    assert all(repos.values()) and not (repos["train"] & repos["test"]) and not (repos["validation"] & repos["test"])


def test_no_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(HybridError, match="ast_dataset: no such folder"):
        export_io_pairs(tmp_path / "data", tmp_path / "out")


def test_export_command(tmp_path, capsys):
    """The `export` subcommand as `hybrid pipeline` registers it (through register_export)."""
    import argparse

    from hybrid.cli import run_command
    from hybrid.cli.pipeline import add_export_parser as register_export

    make_dataset(tmp_path / "data", {"r": [[fim("r", n, f"f{n}", "pass")] for n in range(5)]})
    parser = argparse.ArgumentParser()
    register_export(parser.add_subparsers())
    args = parser.parse_args(
        ["export", f"pipeline.data_dir={tmp_path / 'data'}", "--output-dir", str(tmp_path / "io"), "--kinds", "fim"]
    )
    assert run_command(args.func, args) == 0
    assert "train 3, validation 1, test 1" in capsys.readouterr().out
    args = parser.parse_args(["export", f"pipeline.data_dir={tmp_path / 'data'}", "--kinds", "fim,poems"])
    assert run_command(args.func, args) == 2
    assert "unknown kind(s) poems" in capsys.readouterr().err
    assert fim_input("p", "s") == f"{FIM_PREFIX}p{FIM_SUFFIX}s{FIM_MIDDLE}"
