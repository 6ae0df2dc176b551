"""`hybrid repos …` and the pipeline commands through the real CLI entry points."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from hybrid.cli.config import load_config
from hybrid.core.errors import ConfigError, HybridError
from hybrid.main import main
from pipelines.repos import add_repo, first_parent_hashes, list_repos, remove_repo, update_repo
from tests.repo_builder import RepoBuilder, build_sample_repo


@pytest.fixture()
def src(tmp_path):
    build_sample_repo(tmp_path / "src")
    return tmp_path / "src"


def _state(data: Path):
    return sorted(str(p.relative_to(data)) for p in data.rglob("*")) if data.exists() else []


def test_add_list_remove(tmp_path, src, capsys):
    data = tmp_path / "data"
    assert main(["repos", "add", str(src), "--name", "sample", f"pipeline.data_dir={data}"]) == 0
    assert "added sample" in capsys.readouterr().out
    cfg = load_config([f"pipeline.data_dir={data}"])
    [entry] = list_repos(cfg.pipeline)
    assert (entry.name, entry.source, entry.default_branch) == ("sample", str(src.resolve()), "main")
    assert (data / "repos" / "sample" / "HEAD").exists() and not (data / "repos" / "sample" / ".git").exists()
    assert len(first_parent_hashes(entry, cfg.pipeline)) == 8
    assert main(["repos", "list", "--json", f"pipeline.data_dir={data}"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "sample"
    assert main(["repos", "remove", "sample", f"pipeline.data_dir={data}"]) == 0
    assert list_repos(cfg.pipeline) == [] and not (data / "repos" / "sample").exists()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize(
    "case", ["not_a_repo", "missing_path", "duplicate", "traversal", "slash", "unreachable", "empty_repo"]
)
def test_bad_adds_fail_with_one_line_and_change_nothing(case, tmp_path, src, capsys):
    data = tmp_path / "data"
    cfg = load_config([f"pipeline.data_dir={data}"])
    add_repo(str(src), "sample", cfg.pipeline)
    before = _state(data)
    (tmp_path / "plain").mkdir()
    RepoBuilder(tmp_path / "empty")
    args, message = {
        "not_a_repo": ([str(tmp_path / "plain")], "not a git repository"),
        "missing_path": ([str(tmp_path / "nope")], "no such path"),
        "duplicate": ([str(src), "--name", "sample"], "already registered"),
        "traversal": ([str(src), "--name", "../evil"], "repo name '../evil'"),
        "slash": ([str(src), "--name", "a/b"], "repo name 'a/b'"),
        "unreachable": ([f"http://127.0.0.1:{_closed_port()}/x.git", "--name", "remote"], "cannot clone"),
        "empty_repo": ([str(tmp_path / "empty")], f"{tmp_path / 'empty'}: the repository has no commits"),
    }[case]
    assert main(["repos", "add", *args, f"pipeline.data_dir={data}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert _state(data) == before
    assert not (tmp_path / "evil").exists()


def test_subfolder_of_a_repo_is_not_a_repo(tmp_path, src):
    cfg = load_config([f"pipeline.data_dir={tmp_path / 'data'}"])
    with pytest.raises(HybridError, match="not a git repository"):
        add_repo(str(src / "web"), None, cfg.pipeline)


def test_update_fetches_new_commits(tmp_path):
    rb = RepoBuilder(tmp_path / "src")
    rb.write("a.py", "def f():\n    return 1\n")
    rb.commit("one")
    cfg = load_config([f"pipeline.data_dir={tmp_path / 'data'}"])
    entry = add_repo(str(tmp_path / "src"), "grow", cfg.pipeline)
    rb.write("a.py", "def f():\n    return 2\n")
    rb.commit("two")
    assert update_repo("grow", cfg.pipeline) == 1
    assert len(first_parent_hashes(entry, cfg.pipeline)) == 2
    remove_repo("grow", cfg.pipeline)


def test_stage_commands_and_console_scripts(tmp_path, src, capsys):
    from hybrid.cli.pipeline import check_ast_coverage_main, cleanup_dataset_main, generate_ast_main

    data = tmp_path / "data"
    over = f"pipeline.data_dir={data}"
    assert main(["repos", "add", str(src), "--name", "sample", over]) == 0
    # options and positionals mix freely
    assert generate_ast_main(["sample", "--local", over, "--no-progress", "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "generate-ast" in out and "parse_error=1" in out
    assert json.loads((tmp_path / "s.json").read_text())["stages"]["generate-ast"]["counts"]["commits"] == 8
    assert main(["pipeline", "generate-ast-diffs", "--local", "sample", over]) == 0
    assert main(["pipeline", "generate-fim", "--local", over]) == 0
    assert check_ast_coverage_main([over]) == 0
    assert "python" in capsys.readouterr().out
    assert cleanup_dataset_main(["--fim", "--dry-run", over]) == 0
    assert "would remove: 8 fim_dataset.json" in capsys.readouterr().out
    assert main(["pipeline", "run", "--local", "nosuch", over]) == 2
    assert "repo 'nosuch': not registered" in capsys.readouterr().err
    assert main(["pipeline", "run", "--local", "--stages", "generate-nothing", over]) == 2
    assert "unknown stage 'generate-nothing'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, message",
    [
        ("pipeline.bogus=1", "pipeline.bogus: unknown key"),
        ("pipeline.num_workers=abc", "pipeline.num_workers"),
        ("pipeline.max_file_bytes=0", "pipeline.max_file_bytes"),
    ],
)
def test_bad_config_names_the_key(override, message, capsys):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config([override])
    assert main(["pipeline", "generate-ast", "--local", override]) == 2
    assert message in capsys.readouterr().err


def test_pipeline_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit):
        main(["pipeline", "--help"])
    out = capsys.readouterr().out
    for stage in (
        "run",
        "generate-ast",
        "generate-ast-diffs",
        "generate-fim",
        "cleanup-dataset",
        "check-ast-coverage",
        "generate-tasks",
        "generate-reasoning",
        "test-llm",
        "export",
    ):
        assert stage in out


def test_failed_add_leaves_no_folders(tmp_path, capsys):
    data = tmp_path / "fresh-data"
    (tmp_path / "plain").mkdir()
    assert main(["repos", "add", f"http://127.0.0.1:{_closed_port()}/x.git", f"pipeline.data_dir={data}"]) == 2
    assert not data.exists()


def test_rewritten_history_is_an_error_not_silent_mixing(tmp_path, capsys):
    rb = RepoBuilder(tmp_path / "src")
    rb.write("a.py", "def f():\n    return 1\n")
    rb.commit("one")
    data = tmp_path / "data"
    over = f"pipeline.data_dir={data}"
    assert main(["repos", "add", str(tmp_path / "src"), "--name", "r", over]) == 0
    assert main(["pipeline", "generate-ast", "--local", over]) == 0
    # the registered clone's history is replaced by another one
    assert main(["repos", "remove", "r", over]) == 0
    rb2 = RepoBuilder(tmp_path / "other")
    rb2.write("b.py", "def g():\n    return 2\n")
    rb2.commit("another first commit")
    assert main(["repos", "add", str(tmp_path / "other"), "--name", "r", over]) == 0
    capsys.readouterr()
    assert main(["pipeline", "generate-ast", "--local", over]) == 2
    assert "history rewritten?" in capsys.readouterr().err
    assert main(["pipeline", "generate-ast", "--local", "--force", over]) == 0
