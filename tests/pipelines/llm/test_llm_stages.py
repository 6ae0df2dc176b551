"""generate-tasks / generate-reasoning end to end (in-process runner) against the real test server: outputs in
the documented formats, chunking and merging, per-operation prompts with only the relevant tasks, failures
recorded and retried, a killed run resumed without repeated calls, no-LLM behaviour, and the key never logged."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from llm_helpers import API_KEY, make_dataset

from hybrid.config.llm import LLMConfig
from hybrid.main import main
from pipelines.llm.runner import run_llm_stage
from pipelines.llm.settings import LLMSettings

FAST = [
    "llm.runner=local",
    "llm.requests_per_minute=6000",
    "llm.tokens_per_minute=100000000",
    "llm.backoff_base_s=0.01",
    "llm.timeout_s=2",
]


def cli(*args: str, data_dir: Path) -> int:
    return main(["pipeline", *args, f"pipeline.data_dir={data_dir}", *FAST])


def commit(data_dir: Path, n: int, repo: str = "demo") -> Path:
    return data_dir / "ast_dataset" / repo / f"commit_{n}"


def read(path: Path):
    return json.loads(path.read_text())


def test_generate_tasks_writes_task_json(llm_env, data_dir):
    assert cli("generate-tasks", data_dir=data_dir) == 0
    for n in range(4):
        task = read(commit(data_dir, n) / "task.json")
        assert list(task) == ["commit_number", "commit_hash", "source", "tasks"]
        assert task["commit_number"] == n and task["commit_hash"] == f"{n + 1:040x}" and task["source"] == "llm"
        assert task["tasks"] and task["tasks"][0]["id"] == "task_1"
        known = {json.loads(line)["id"] for line in (commit(data_dir, n) / "diff_ast.jsonl").read_text().splitlines()}
        assert all(set(t["function_ids"]) <= known and t["description"] for t in task["tasks"])
    assert read(commit(data_dir, 0) / "task.json")["tasks"][0]["function_ids"] == [
        "src/csv.py::function::parse",
        "src/csv.py::function::helper",
    ]
    reqs = llm_env.chat_requests()
    assert len(reqs) == 4 and all(r.schema_name == "tasks" for r in reqs)
    assert "<<<BEGIN DIFF" in reqs[0].prompt_text()  # repository text is fenced as data
    stats = read(data_dir / "ast_dataset" / "demo" / "stats.json")["generate-tasks"]
    assert stats["ok"] == 4 and stats["requests"] == 4 and stats["failed"] == 0
    # a rerun has nothing to do
    assert cli("generate-tasks", "--json", str(data_dir / "s.json"), data_dir=data_dir) == 0
    assert len(llm_env.chat_requests()) == 4
    assert read(data_dir / "s.json")["already_done"] == 4 and read(data_dir / "s.json")["commits"] == 0


def test_large_diff_is_chunked_and_tasks_merged_without_duplicates(llm_env, tmp_path):
    data_dir = tmp_path / "big"
    make_dataset(data_dir, n_commits=2, big_diff_lines=400)

    def answer(body, schema_name):
        text = body["messages"][-1]["content"]
        part = text.split("(part ", 1)[1].split(" of", 1)[0]
        return {
            "tasks": [
                {"description": "Make parse drop blank fields.", "function_ids": ["src/csv.py::function::parse"]},
                {
                    "description": "make parse drop  blank fields",
                    "function_ids": ["src/csv.py::function::helper", "made/up::function::x"],
                },
                {"description": f"Pad the module, part {part}.", "function_ids": []},
            ]
        }

    llm_env.answer = answer
    assert cli("generate-tasks", "llm.context_tokens=4096", "llm.max_output_tokens=256", data_dir=data_dir) == 0
    big = [r for r in llm_env.chat_requests() if "Strip blanks" in r.prompt_text()]
    assert len(big) >= 3  # 400 lines × ~80 chars over a ~12k-char prompt budget
    assert all(len(r.prompt_text()) < (4096 - 256) * 3.5 for r in big)
    tasks = read(commit(data_dir, 1) / "task.json")["tasks"]
    descriptions = [t["description"] for t in tasks]
    assert (
        descriptions[0] == "Make parse drop blank fields." and descriptions.count("Make parse drop blank fields.") == 1
    )
    assert tasks[0]["function_ids"] == [
        "src/csv.py::function::parse",
        "src/csv.py::function::helper",
    ]  # made-up id dropped
    assert len(tasks) == 1 + len(big) and [t["id"] for t in tasks] == [f"task_{i}" for i in range(1, len(tasks) + 1)]
    stats = read(data_dir / "ast_dataset" / "demo" / "stats.json")["generate-tasks"]
    assert stats["drops"]["unknown_function_id"] >= 1


def test_generate_reasoning_per_operation_with_relevant_tasks(llm_env, data_dir):
    (commit(data_dir, 1) / "task.json").write_text(
        json.dumps(
            {
                "commit_number": 1,
                "commit_hash": f"{2:040x}",
                "source": "llm",
                "tasks": [
                    {
                        "id": "task_1",
                        "description": "Ignore blank CSV fields",
                        "function_ids": ["src/csv.py::function::parse"],
                    },
                    {
                        "id": "task_2",
                        "description": "Remove dead helpers",
                        "function_ids": ["src/csv.py::function::helper"],
                    },
                    {"id": "task_3", "description": "Keep the module tidy", "function_ids": []},
                ],
            }
        )
    )
    assert cli("generate-reasoning", data_dir=data_dir) == 0
    entries = read(commit(data_dir, 1) / "reasoning.json")
    assert [(e["function_id"], e["operation_type"]) for e in entries] == [
        ("src/csv.py::function::parse", "UPDATE"),
        ("src/csv.py::function::helper", "DELETE"),
    ]  # whitespace-only skipped
    assert all(
        list(e) == ["function_id", "operation_type", "reasoning"] and e["reasoning"].startswith("I ") for e in entries
    )
    assert [e["operation_type"] for e in read(commit(data_dir, 0) / "reasoning.json")] == ["ADD", "ADD"]
    assert not (commit(data_dir, 2) / "reasoning.json").exists()  # the merge commit changed no function
    prompts = {
        r.prompt_text().split("Function: ")[1].split(" ")[0]: r.prompt_text()
        for r in llm_env.chat_requests()
        if "src/csv.py" in r.prompt_text() and "Ignore blank" in r.prompt_text() or "Remove dead" in r.prompt_text()
    }
    parse, helper = prompts["parse"], prompts["helper"]
    assert "Ignore blank CSV fields" in parse and "Remove dead helpers" not in parse and "Keep the module tidy" in parse
    assert "Remove dead helpers" in helper and "Ignore blank CSV fields" not in helper
    assert "You changed the function" in parse and "Before:" in parse and "After:" in parse
    assert "You removed the function" in helper and "After:" not in helper
    stats = read(data_dir / "ast_dataset" / "demo" / "stats.json")["generate-reasoning"]
    assert stats["drops"] == {"whitespace_only": 1} and stats["written"] == 5


def test_failures_are_recorded_then_retried_without_repeating_answers(llm_env, data_dir):
    llm_env.fault_rule = lambda body: "500" if "Function: helper" in body["messages"][-1]["content"] else None
    assert cli("generate-reasoning", "llm.max_retries=2", data_dir=data_dir) == 1  # exit 1: something failed
    failures = [
        json.loads(line) for line in (data_dir / "ast_dataset" / "demo" / "llm_failures.jsonl").read_text().splitlines()
    ]
    assert {(f["commit_number"], f["function_id"], f["reason"], f["attempts"]) for f in failures} == {
        (0, "src/csv.py::function::helper", "server_error", 3),
        (1, "src/csv.py::function::helper", "server_error", 3),
    }
    assert [e["function_id"] for e in read(commit(data_dir, 1) / "reasoning.json")] == ["src/csv.py::function::parse"]
    first_run = len(llm_env.chat_requests())
    llm_env.fault_rule = None
    assert cli("generate-reasoning", data_dir=data_dir) == 0
    again = llm_env.chat_requests()[first_run:]
    assert len(again) == 2 and all("Function: helper" in r.prompt_text() for r in again)
    assert [e["function_id"] for e in read(commit(data_dir, 1) / "reasoning.json")] == [
        "src/csv.py::function::parse",
        "src/csv.py::function::helper",
    ]
    assert not (data_dir / "ast_dataset" / "demo" / "llm_failures.jsonl").exists()


def test_killed_run_resumes_without_a_second_call(server, tmp_path):
    data_dir = tmp_path / "data"
    make_dataset(data_dir, n_commits=16)
    server.latency = 0.15
    env = {**os.environ, "OPENAI_API_KEY": API_KEY, "LLM_BASE_URL": server.base_url, "LLM_MODEL_NAME": "test-model"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hybrid",
            "pipeline",
            "generate-tasks",
            f"pipeline.data_dir={data_dir}",
            "llm.runner=local",
            "llm.concurrency_per_actor=2",
            "llm.requests_per_minute=6000",
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    cache = data_dir / "llm_cache"
    while len(list(cache.rglob("*.json"))) < 5 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    answered = {r.prompt_text() for r in server.chat_requests() if r.answered}
    first = len(server.chat_requests())
    cached_before = len(list((data_dir / "llm_cache").rglob("*.json")))
    done_before = sum((commit(data_dir, n) / "task.json").exists() for n in range(16))
    assert 5 <= cached_before < 16 and done_before < 16, "the run should have been killed part-way"
    assert len(answered) - cached_before <= 2  # at most the answers in flight at the kill were not yet cached

    settings = LLMSettings(OPENAI_API_KEY=API_KEY, LLM_BASE_URL=server.base_url, LLM_MODEL_NAME="test-model")
    totals = run_llm_stage(
        "generate-tasks", LLMConfig(runner="local", requests_per_minute=6000), settings, data_dir, []
    )
    second = server.chat_requests()[first:]
    # exactly the prompts without a cached answer are asked again; none of the cached ones
    assert len(second) == 16 - cached_before
    assert len([r for r in second if r.prompt_text() in answered]) <= len(answered) - cached_before
    assert totals.ok == 16 - done_before and totals.client_totals()["cached_answers"] == cached_before - done_before
    assert all((commit(data_dir, n) / "task.json").exists() for n in range(16))


def test_without_an_llm(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    data_dir = tmp_path / "data"
    make_dataset(data_dir)
    assert main(["pipeline", "generate-tasks", f"pipeline.data_dir={data_dir}"]) == 0
    t1 = read(commit(data_dir, 1) / "task.json")
    assert t1["source"] == "commit_message" and t1["tasks"] == [
        {"id": "task_1", "description": "Strip blanks in parse, drop helper", "function_ids": []}
    ]
    assert read(commit(data_dir, 2) / "task.json")["tasks"] == []  # a merge
    assert read(commit(data_dir, 3) / "task.json")["tasks"][0]["description"] == "Add step 3 to the pipeline"
    stats = read(data_dir / "ast_dataset" / "demo" / "stats.json")["generate-tasks"]
    assert stats["drops"] == {"merge": 1} and stats["source"] == "commit_message"
    capsys.readouterr()
    assert main(["pipeline", "generate-reasoning", f"pipeline.data_dir={data_dir}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs an LLM" in err[0] and "OPENAI_API_KEY" in err[0]
    assert main(["pipeline", "test-llm"]) == 1


def test_commit_message_tasks_are_upgraded_once_an_llm_is_configured(llm_env, data_dir):
    os.environ.pop("OPENAI_API_KEY")
    monkey_base = os.environ.pop("LLM_BASE_URL")
    assert cli("generate-tasks", data_dir=data_dir) == 0
    assert read(commit(data_dir, 0) / "task.json")["source"] == "commit_message"
    os.environ["OPENAI_API_KEY"], os.environ["LLM_BASE_URL"] = API_KEY, monkey_base
    assert cli("generate-tasks", data_dir=data_dir) == 0
    assert read(commit(data_dir, 0) / "task.json")["source"] == "llm"


def test_bad_input_names_the_file(llm_env, data_dir, capsys):
    (commit(data_dir, 3) / "diff_ast.jsonl").write_text('{"id": "a::function::b", "status": "added"}\nnot json\n')
    assert cli("generate-reasoning", data_dir=data_dir) == 2
    err = capsys.readouterr().err
    assert "commit_3/diff_ast.jsonl:2: not valid JSON" in err and len(err.strip().splitlines()) == 1
    assert main(["pipeline", "generate-tasks", "nosuchrepo", f"pipeline.data_dir={data_dir}"]) == 2
    assert "nosuchrepo" in capsys.readouterr().err
    # a broken commit_data.json fails that commit only; the others are done and the failure is recorded
    (commit(data_dir, 0) / "commit_data.json").write_text('{"repo": ')
    assert cli("generate-tasks", data_dir=data_dir) == 1
    f0, f3 = [json.loads(line) for line in (data_dir / "ast_dataset/demo/llm_failures.jsonl").read_text().splitlines()]
    assert f0["reason"] == "bad_input" and "commit_0/commit_data.json: line 1: not valid JSON" in f0["detail"]
    assert f3["reason"] == "bad_input" and "commit_3/diff_ast.jsonl:2: not valid JSON" in f3["detail"]
    assert all((commit(data_dir, n) / "task.json").exists() for n in (1, 2))


def test_key_never_in_logs_output_or_files(llm_env, data_dir, capsys, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    logging.getLogger("openai").setLevel(logging.DEBUG)
    llm_env.push("429", "500", "hang", "bad_json")
    assert cli("generate-tasks", "llm.timeout_s=0.5", data_dir=data_dir) == 0
    llm_env.fault_rule = lambda body: "500"
    assert cli("generate-reasoning", "llm.max_retries=1", data_dir=data_dir) == 1
    llm_env.fault_rule = None
    assert main(["pipeline", "test-llm"]) == 0
    os.environ["OPENAI_API_KEY"] = API_KEY + "-wrong"
    assert main(["pipeline", "test-llm"]) == 1
    assert cli("generate-reasoning", data_dir=data_dir) == 2  # 401: the run stops with one line
    out = capsys.readouterr()
    texts = [out.out, out.err, caplog.text] + [
        p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()
    ]
    assert "401" in out.err and "OPENAI_API_KEY" in out.err
    assert caplog.text  # the openai client did log (at DEBUG)
    for text in texts:
        assert API_KEY not in text and "Zq8vK3mN5pW7xY9r" not in text
