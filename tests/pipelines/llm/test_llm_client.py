"""The async client against the real test server: validation, retries (429 + retry-after, 5xx, timeouts,
malformed bodies, invalid answers), failures, fatal errors, the cache and the rate limiter."""

from __future__ import annotations

import asyncio
import email.utils
import time

import pytest
from llm_helpers import API_KEY, MODEL
from pydantic import SecretStr

from hybrid.config.llm import LLMConfig
from pipelines.llm.cache import AnswerCache
from pipelines.llm.client import LLMClient, LLMFailure, LLMFatal, parse_retry_after
from pipelines.llm.ratelimit import RateLimiter
from pipelines.llm.settings import LLMSettings

MSG = [{"role": "user", "content": "Write tasks for `src/a.py::function::f`"}]


def make_client(server, tmp_path=None, key=API_KEY, rpm=6000, **cfg):
    settings = LLMSettings(OPENAI_API_KEY=SecretStr(key), LLM_BASE_URL=server.base_url, LLM_MODEL_NAME=MODEL)
    cfg = LLMConfig(**{"timeout_s": 2, "backoff_base_s": 0.01, "max_retries": 4, **cfg})
    limiter = RateLimiter(rpm, 1e9, cfg.burst_seconds)
    return LLMClient(settings, cfg, limiter, AnswerCache(tmp_path / "cache" if tmp_path else None), seed=0)


def run(coro):
    return asyncio.run(coro)


async def _ask(client, messages=MSG, schema="tasks"):
    try:
        return await client.ask(messages, schema)
    finally:
        await client.close()


def test_structured_request_validated_answer_and_usage(server):
    client = make_client(server)
    answer, cached = run(_ask(client))
    assert not cached and answer.tasks[0].function_ids == ["src/a.py::function::f"]
    (req,) = server.chat_requests()
    assert req.auth_ok and req.model == MODEL and req.schema_name == "tasks"
    assert client.stats.requests == 1 and client.stats.prompt_tokens > 0 and client.stats.completion_tokens > 0


def test_429_retry_after_holds_back_every_request(server):
    server.retry_after = 0.5
    client = make_client(server)
    server.push("429")

    async def both():
        first = asyncio.create_task(client.ask(MSG, "tasks"))
        while not client.stats.rate_limited:  # the 429 has come back: its pause now holds for the whole client
            await asyncio.sleep(0.01)
        second = asyncio.create_task(client.ask([{"role": "user", "content": "another prompt"}], "tasks"))
        await asyncio.gather(first, second)
        await client.close()

    run(both())
    reqs = server.chat_requests()
    assert [r.fault for r in reqs][0] == "429" and len(reqs) == 3
    # retry-after is a lower bound for both: the retry and the prompt asked while the pause held
    assert all(r.t - reqs[0].t >= 0.45 for r in reqs[1:]), [round(r.t - reqs[0].t, 3) for r in reqs]
    assert client.stats.rate_limited == 1 and client.stats.retries == 1


def test_5xx_timeouts_and_malformed_bodies_are_retried(server):
    client = make_client(server, timeout_s=0.5)
    server.push("500", "hang", "malformed_body")
    t0 = time.monotonic()
    answer, _ = run(_ask(client))
    assert answer.tasks and time.monotonic() - t0 >= 0.5  # waited for the hung request's timeout
    assert [r.fault for r in server.chat_requests()] == ["500", "hang", "malformed_body", "ok"]
    s = client.stats
    assert (s.server_errors, s.timeouts, s.retries, s.requests) == (2, 1, 3, 4)


def test_invalid_answers_are_asked_again_with_the_error(server):
    client = make_client(server, validation_retries=2)
    server.push("bad_json", "schema_mismatch")
    answer, _ = run(_ask(client))
    assert answer.tasks
    reqs = server.chat_requests()
    assert len(reqs) == 3
    assert "That answer was invalid: not JSON" in reqs[1].prompt_text()
    assert "schema mismatch" in reqs[2].prompt_text()


def test_failure_after_retries_names_the_reason(server):
    client = make_client(server, max_retries=2)
    server.push("500", "500", "500")
    with pytest.raises(LLMFailure) as e:
        run(_ask(client))
    assert e.value.reason == "server_error" and e.value.attempts == 3 and "HTTP 500" in e.value.detail
    client2 = make_client(server, validation_retries=1)
    server.push("truncated", "bad_json")
    with pytest.raises(LLMFailure) as e:
        run(_ask(client2, [{"role": "user", "content": "x"}]))
    assert e.value.reason == "invalid_answer"


def test_wrong_key_or_model_is_fatal_without_the_key(server):
    client = make_client(server, key="sk-wrong-key-123456")
    with pytest.raises(LLMFatal) as e:
        run(_ask(client))
    assert "401" in str(e.value) and "sk-wrong" not in str(e.value)
    settings = LLMSettings(OPENAI_API_KEY=SecretStr(API_KEY), LLM_BASE_URL=server.base_url, LLM_MODEL_NAME="nope")
    client = LLMClient(settings, LLMConfig(), RateLimiter(6000, 1e9), AnswerCache(None))
    with pytest.raises(LLMFatal, match="404.*'nope'"):
        run(_ask(client))


def test_cache_answers_without_a_request(server, tmp_path):
    run(_ask(make_client(server, tmp_path)))
    client = make_client(server, tmp_path)
    answer, cached = run(_ask(client))
    assert cached and answer.tasks and len(server.chat_requests()) == 1 and client.stats.cached_answers == 1
    # another model or another prompt is another key
    run(_ask(make_client(server, tmp_path), [{"role": "user", "content": "other"}]))
    assert len(server.chat_requests()) == 2


def test_parse_retry_after():
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}, 60) == 0.25
    assert parse_retry_after({"retry-after": "2"}, 60) == 2.0
    assert parse_retry_after({"retry-after": "500"}, 60) == 60  # capped
    date = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 3 <= parse_retry_after({"retry-after": date}, 60) <= 6
    assert parse_retry_after({}, 60) is None and parse_retry_after({"retry-after": "soon"}, 60) is None


def test_rate_limiter_spacing_burst_and_pause():
    limiter = RateLimiter(requests_per_minute=1200, tokens_per_minute=1e9, burst_seconds=0.25)  # 20/s

    async def go():
        times = []

        async def one():
            await limiter.acquire(10)
            times.append(time.monotonic())

        await asyncio.gather(*(one() for _ in range(30)))
        t_pause = time.monotonic()
        limiter.pause(0.3)
        await asyncio.gather(*(one() for _ in range(5)))
        return sorted(times), t_pause

    times, t_pause = run(asyncio.wait_for(go(), 60))  # a stuck limiter fails here, not at pytest's timeout
    first = times[:30]
    # steady 20/s after a burst of at most 0.25 s worth (5 requests, +1 for the first): lower bounds and counts
    # per window only, which a busy machine (late wake-ups) cannot break
    assert first[-1] - first[0] >= 1.0 and limiter.stats.granted == 35
    for i, t in enumerate(first):
        window = [u for u in first if t <= u < t + 0.5]
        assert len(window) <= 10 + 5 + 1, (i, len(window))
    assert all(t >= t_pause + 0.29 for t in times[30:])


def test_rate_limiter_tokens_per_minute():
    limiter = RateLimiter(requests_per_minute=1e6, tokens_per_minute=60_000, burst_seconds=0)  # 1000 tokens/s

    async def go():
        t0 = time.monotonic()
        for _ in range(4):
            await limiter.acquire(250)
        due = limiter.tok_tat  # when the tokens reserved so far are spent: the next request goes then
        limiter.settle(250, 0)  # the last one used nothing: its tokens are credited back
        credited = limiter.tok_tat
        await limiter.acquire(250)
        return t0, due, credited, time.monotonic()

    # on the limiter's own clock, not wall time (a busy machine wakes a sleeper late, never early)
    t0, due, credited, t5 = run(go())
    assert due - t0 >= 1.0 - 1e-6  # 4×250 tokens at 1000/s
    assert due - credited == pytest.approx(0.25)  # the 250 credited back: the next request may go 0.25 s sooner
    assert t5 >= credited  # and not before
