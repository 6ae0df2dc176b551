"""Faults of the parts outside: git remotes, the LLM server, Ray, the disk (docs/reliability.md)."""

from __future__ import annotations

import json
import time

from tests.reliability.conftest import SECRET, assert_one_line_error, cli, closed_port, file_size_limit, run_main, tree
from tests.repo_builder import RepoBuilder, build_sample_repo


# -- git -----------------------------------------------------------------------------------------------------------
def test_unreachable_git_remote(tmp_path, capsys):
    data = tmp_path / "data"
    url = f"http://user:{SECRET}@127.0.0.1:{closed_port()}/x.git"
    rc, out, err = run_main(["repos", "add", url, f"pipeline.data_dir={data}"], capsys)
    assert_one_line_error(rc, err, "cannot clone", "http://127.0.0.1:")  # userinfo dropped
    assert tree(data) == {}


def test_credentials_in_a_url_are_never_stored(tmp_path, capsys):
    src = RepoBuilder(tmp_path / "src")
    src.write("a.py", "x = 1\n")
    src.commit("one")
    data = tmp_path / "data"
    rc, out, err = run_main(
        ["repos", "add", f"file://bob:{SECRET}@{src.path}", "--name", "s", f"pipeline.data_dir={data}"], capsys
    )
    assert rc == 0, err
    assert SECRET not in out + err
    for path, content in tree(data).items():
        assert SECRET.encode() not in content, f"the token was stored in {path}"
    assert json.loads((data / "repos" / "registry.json").read_text())[0]["source"] == f"file://{src.path}"
    rc, out, err = run_main(["repos", "list", "--json", f"pipeline.data_dir={data}"], capsys)
    assert rc == 0 and SECRET not in out


def test_old_registry_with_a_token_is_listed_redacted(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "repos").mkdir(parents=True)
    (data / "repos" / "registry.json").write_text(
        json.dumps(
            [{"name": "old", "source": f"https://bob:{SECRET}@[::1/x.git", "default_branch": "main", "added_at": "x"}]
        )
    )
    for argv in (["repos", "list", "--json"], ["repos", "list"]):
        rc, out, err = run_main([*argv, f"pipeline.data_dir={data}"], capsys)
        assert rc == 0 and SECRET not in out + err


# -- the LLM server --------------------------------------------------------------------------------------------------
def test_unreachable_llm_endpoint_trips_the_circuit_breaker(tmp_path):
    from tests.pipelines.llm.llm_helpers import make_dataset

    data = tmp_path / "data"
    make_dataset(data, n_commits=12)
    port = closed_port()
    t0 = time.monotonic()
    r = cli(
        "pipeline",
        "generate-tasks",
        f"pipeline.data_dir={data}",
        "llm.runner=local",
        "llm.circuit_breaker_failures=4",
        "llm.backoff_max_s=0.2",
        env={"LLM_BASE_URL": f"http://u:{SECRET}@127.0.0.1:{port}/v1", "OPENAI_API_KEY": SECRET},
        timeout=120,
    )
    assert_one_line_error(r.returncode, r.stderr, f"127.0.0.1:{port}", "unreachable", out=r.stdout)
    assert time.monotonic() - t0 < 60
    assert not list(data.rglob("task.json"))


def test_test_llm_never_prints_what_the_server_says(tmp_path):
    from hybrid.bench.chat_server import ChatServer

    with ChatServer() as server:
        server.answer = lambda body, schema: {"ok": True, "word": "pong"} if schema else f"pong, your key is {SECRET}"
        r = cli(
            "pipeline",
            "test-llm",
            "--requests",
            "1",
            env={"LLM_BASE_URL": server.base_url, "OPENAI_API_KEY": SECRET, "LLM_MODEL_NAME": "test-model"},
            timeout=60,
        )
    assert SECRET not in r.stdout + r.stderr
    assert "Traceback" not in r.stderr


def test_test_llm_error_bodies_are_not_printed(tmp_path):
    from hybrid.bench.chat_server import ChatServer

    with ChatServer() as server:
        server.push("500", "500", "500", "500")
        r = cli(
            "pipeline",
            "test-llm",
            "--requests",
            "1",
            env={"LLM_BASE_URL": server.base_url, "OPENAI_API_KEY": SECRET, "LLM_MODEL_NAME": "test-model"},
            timeout=60,
        )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "The server had an error" not in r.stdout and "HTTP 500" in r.stdout


# -- Ray -----------------------------------------------------------------------------------------------------------
def test_memory_stats_with_an_unreachable_ray_address():
    t0 = time.monotonic()
    r = cli("memory", "stats", env={"RAY_ADDRESS": f"127.0.0.1:{closed_port()}"}, timeout=120)
    assert_one_line_error(r.returncode, r.stderr, "RAY_ADDRESS=127.0.0.1", out=r.stdout)
    assert time.monotonic() - t0 < 30


# -- the disk ------------------------------------------------------------------------------------------------------
def test_disk_full_during_the_pipeline_keeps_finished_commits(tmp_path):
    src = tmp_path / "src"
    build_sample_repo(src)
    data = tmp_path / "data"
    assert cli("repos", "add", str(src), "--name", "s", f"pipeline.data_dir={data}").returncode == 0
    r = cli("pipeline", "generate-ast", "--local", f"pipeline.data_dir={data}", preexec_fn=file_size_limit(1500))
    last = assert_one_line_error(r.returncode, r.stderr, out=r.stdout)
    assert "too large" in last or "disk is full" in last
    for p in (data / "ast_dataset").rglob("*"):  # nothing half-written: every file there parses
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".jsonl":
            [json.loads(line) for line in p.read_text().splitlines()]
        assert not p.name.endswith(".tmp"), p
    assert cli("pipeline", "generate-ast", "--local", f"pipeline.data_dir={data}").returncode == 0  # space again
    clean = tmp_path / "clean"
    assert cli("repos", "add", str(src), "--name", "s", f"pipeline.data_dir={clean}").returncode == 0
    assert cli("pipeline", "generate-ast", "--local", f"pipeline.data_dir={clean}").returncode == 0
    assert tree(data / "ast_dataset").keys() == tree(clean / "ast_dataset").keys()
    for k, v in tree(clean / "ast_dataset").items():
        if k.endswith("ast.jsonl"):
            assert tree(data / "ast_dataset")[k] == v, k


def test_output_folder_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "data"
    blocker.write_text("not a folder")
    src = RepoBuilder(tmp_path / "src")
    src.write("a.py", "x = 1\n")
    src.commit("one")
    rc, out, err = run_main(["repos", "add", str(src.path), f"pipeline.data_dir={blocker}"], capsys)
    assert_one_line_error(rc, err, str(blocker))
    assert blocker.read_text() == "not a folder"


def test_training_output_dir_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "run"
    blocker.write_text("x")
    rc, out, err = run_main(
        ["train", "model=tiny_llama_hybrid", "train=tiny", f"data.train={tmp_path}", f"train.output_dir={blocker}"],
        capsys,
    )
    assert_one_line_error(rc, err, "train.output_dir", str(blocker))
