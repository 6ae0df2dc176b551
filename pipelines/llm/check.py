"""`test-llm`: can the configured endpoint run the LLM stages? Checks, in order: the endpoint answers
(`GET /models`, advisory: not every server has it), the model completes a chat, structured output with a JSON
schema comes back valid, and how long a completion takes. Exit 0 only when the stages would work."""

from __future__ import annotations

import json
import statistics
import time

from hybrid.config.llm import LLMConfig
from pipelines.llm.client import Redactor
from pipelines.llm.schemas import PING_SCHEMA, PingAnswer
from pipelines.llm.settings import LLMSettings


async def check_endpoint(settings: LLMSettings, cfg: LLMConfig, n_requests: int = 3) -> tuple[bool, list[str]]:
    import openai
    from pydantic import ValidationError

    model = settings.model_name(cfg.model)
    redact = Redactor(
        settings.OPENAI_API_KEY.get_secret_value() if settings.OPENAI_API_KEY else None, settings.LLM_BASE_URL
    )
    client = openai.AsyncOpenAI(
        api_key=settings.api_key_value(), base_url=settings.LLM_BASE_URL or None, max_retries=1, timeout=cfg.timeout_s
    )
    lines = [
        f"endpoint  {settings.endpoint_text()}   model {model}   key {'set' if settings.OPENAI_API_KEY else 'not set'}"
    ]
    ok = True

    def err(e: Exception) -> str:
        status = getattr(e, "status_code", None)
        if status:  # the body is the server's text: never printed (it may echo the key); the status says enough
            return f"{type(e).__name__} (HTTP {status})"
        return redact(f"{type(e).__name__}: {getattr(e, 'message', None) or e}")  # the client's own words

    try:
        try:
            page = await client.models.list()
            ids = [m.id for m in page.data]
            listed = model in ids
            lines.append(
                f"[ok]   endpoint reachable, {len(ids)} model(s) listed"
                + ("" if listed else f"; {model!r} is not among them (the server may still serve it)")
            )
        except openai.AuthenticationError as e:
            lines.append(f"[FAIL] endpoint refused the key: {err(e)}")
            return False, lines + ["verdict: NOT READY - fix OPENAI_API_KEY"]
        except openai.APIConnectionError as e:
            lines.append(f"[FAIL] cannot reach the endpoint: {err(e)}")
            return False, lines + ["verdict: NOT READY - check LLM_BASE_URL and that the server runs"]
        except openai.APIError as e:
            lines.append(f"[warn] GET /models failed ({err(e)}); going on")

        latencies = []
        try:
            for _ in range(n_requests):
                t0 = time.monotonic()
                r = await client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": "Reply with the single word: pong"}],
                    max_tokens=16,
                    temperature=0,
                )
                latencies.append(time.monotonic() - t0)
            text = (r.choices[0].message.content or "").strip() if r.choices else ""
            # what the server said is never printed: it may echo the key or anything else
            lines.append(
                f"[ok]   model answers a chat ({len(text)} characters"
                f"{', pong' if text.lower().strip('.! ') == 'pong' else ''})"
            )
        except openai.APIError as e:
            lines.append(f"[FAIL] chat completion: {err(e)}")
            return False, lines + ["verdict: NOT READY - the model does not answer"]

        try:
            t0 = time.monotonic()
            r = await client.chat.completions.create(
                model=model,
                temperature=0,
                max_tokens=64,
                messages=[{"role": "user", "content": 'Answer as JSON: {"ok": true, "word": "pong"}'}],
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "ping", "schema": PING_SCHEMA, "strict": True},
                },
            )
            latencies.append(time.monotonic() - t0)
            content = r.choices[0].message.content or ""
            PingAnswer.model_validate(json.loads(content))
            lines.append("[ok]   structured output (response_format json_schema) returns valid JSON")
        except (openai.APIError, json.JSONDecodeError, ValidationError, IndexError) as e:
            ok = False
            if isinstance(e, openai.APIError):
                why = err(e)
            elif isinstance(e, json.JSONDecodeError):
                why = f"the answer is not JSON ({e.msg} at char {e.pos})"
            elif isinstance(e, ValidationError):
                first = e.errors()[0]
                where = ".".join(map(str, first["loc"])) or "<root>"
                why = f"the answer does not match the schema at {where}: {first['msg']}"
            else:
                why = "no choices in the answer"
            lines.append(f"[FAIL] structured output (json_schema): {redact(why)}")

        if latencies:
            in_flight = cfg.concurrency_per_actor * cfg.num_actors
            reachable = in_flight / statistics.median(latencies) * 60 >= cfg.requests_per_minute
            lines.append(
                f"[ok]   latency p50 {statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms "
                f"over {len(latencies)} request(s); at {in_flight} in flight the "
                f"configured {cfg.requests_per_minute:g} req/min "
                f"{'is reachable' if reachable else 'needs more concurrency'}"
            )
    finally:
        await client.close()
    lines.append("verdict: READY" if ok else "verdict: NOT READY - the stages need JSON-schema structured output")
    return ok, lines
