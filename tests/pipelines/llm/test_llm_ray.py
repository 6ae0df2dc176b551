"""The LLM stages on the Ray Data actor pool: several actors, one rate limit for all of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from llm_helpers import API_KEY, MODEL, make_dataset
from pydantic import SecretStr

from hybrid.config.llm import LLMConfig
from pipelines.llm.runner import run_llm_stage
from pipelines.llm.settings import LLMSettings


def test_stages_on_ray_share_one_rate_limit(ray_session, server, tmp_path):
    data_dir = tmp_path / "data"
    make_dataset(data_dir, n_commits=14)
    server.latency = 0.05
    server.push("429", "500", "malformed_body")
    settings = LLMSettings(OPENAI_API_KEY=SecretStr(API_KEY), LLM_BASE_URL=server.base_url, LLM_MODEL_NAME=MODEL)
    cfg = LLMConfig(runner="ray", num_actors=2, requests_per_minute=600, burst_seconds=0.3, backoff_base_s=0.05)
    tasks = run_llm_stage("generate-tasks", cfg, settings, data_dir, [])
    assert (tasks.ok, tasks.failed) == (14, 0)
    assert len(tasks.worker_stats) == 2  # both actors did work ...
    reqs = server.chat_requests()
    assert len(reqs) == 14 + 3  # one per commit + 3 retried faults
    times = sorted(r.t for r in reqs)  # ... and together kept to 10 requests/s
    assert times[-1] - times[0] >= (len(times) - 1 - 3 - 1) / 10, times[-1] - times[0]
    for t in times:
        assert sum(t <= u < t + 1.0 for u in times) <= 10 + 3 + 1
    assert all(
        json.loads((data_dir / f"ast_dataset/demo/commit_{n}/task.json").read_text())["source"] == "llm"
        for n in range(14)
    )
    stats = json.loads((data_dir / "ast_dataset/demo/stats.json").read_text())
    assert stats["generate-tasks"]["retries"] == 3 and stats["generate-tasks"]["ok"] == 14
    # the key travelled to the actors as a SecretStr: it is in none of Ray's logs
    logs = Path(ray_session._private.worker._global_node.get_logs_dir_path())
    files = [p for p in logs.rglob("*") if p.is_file()]
    assert files and not [p for p in files if API_KEY.encode() in p.read_bytes()]


@pytest.mark.slow
def test_bench_llm_small(ray_session, tmp_path):
    from hybrid.main import main

    out = tmp_path / "bench.json"
    rc = main(["bench", "llm", "--commits", "12", "--functions", "2", "--rpm", "1200", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["items_lost"] == 0 and result["stages"]["generate-reasoning"]["items"] == 24
    assert result["max_10s_fraction"] <= 1.10 + 1e-9
    assert rc == (0 if result["targets_met"] else 1)
