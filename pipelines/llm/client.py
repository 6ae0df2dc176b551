"""One async OpenAI-compatible client with many requests in flight, a shared rate limit, retries and a cache.

`LLMClient.ask(messages, schema_name)` returns a validated pydantic answer or raises `LLMFailure` with a short
reason. Transport faults are retried here (the openai client's own retries are off so that every attempt passes
the shared limiter): 429 honours `retry-after-ms` / `retry-after` for the whole pool, 5xx, timeouts and
connection errors back off exponentially with full jitter. An answer that is not JSON for the schema is asked
again with the validation error (up to `validation_retries` times). 401/403/404 abort the run (`LLMFatal`):
every other request would fail the same way.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from dataclasses import dataclass, field, fields

from pydantic import BaseModel, ValidationError

from hybrid.config.llm import LLMConfig
from hybrid.core.redact import redact_text
from pipelines.llm.cache import AnswerCache, cache_key
from pipelines.llm.ratelimit import call
from pipelines.llm.schemas import SCHEMAS
from pipelines.llm.settings import LLMSettings


class LLMFailure(Exception):
    """One item could not be answered; `reason` is a short code (`rate_limited`, `server_error`, `timeout`,
    `invalid_answer`, `bad_request` …), `detail` a one-line explanation (secrets redacted)."""

    def __init__(self, reason: str, detail: str = "", attempts: int = 0):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail, self.attempts = reason, detail, attempts


class LLMFatal(Exception):
    """The endpoint refuses every request (bad key, unknown model, wrong URL): stop the run."""


@dataclass
class ClientStats:
    requests: int = 0  # HTTP attempts sent
    answered: int = 0  # validated answers (from the endpoint)
    cached_answers: int = 0  # answers served from the cache
    retries: int = 0
    rate_limited: int = 0
    server_errors: int = 0
    timeouts: int = 0
    connection_errors: int = 0
    invalid_answers: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    reasons: dict = field(default_factory=dict)

    def snapshot(self) -> dict:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}

    @classmethod
    def counter_names(cls) -> list[str]:
        """The numeric counters (what a run's summary adds up over the actors)."""
        return [f.name for f in fields(cls) if f.type in ("int", "float", int, float)]


def parse_retry_after(headers, cap: float) -> float | None:
    """Seconds from `retry-after-ms` (OpenAI's), else `retry-after` (seconds or an HTTP date); None if absent."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return min(max(float(value) / 1000.0, 0.0), cap)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return min(max(float(value), 0.0), cap)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            return min(max(when.timestamp() - time.time(), 0.0), cap)
        except (TypeError, ValueError):
            return None


class Redactor:
    """Hides the key and the credentials of the endpoint's URL (and of any URL) in a message, then cuts it."""

    def __init__(self, secret: str | None, *urls: str | None):
        self.secret = secret if secret and secret != "not-needed" and len(secret) >= 4 else None
        self.urls = [u for u in urls if u]

    def __call__(self, text: str) -> str:
        text = redact_text(" ".join(str(text).split()), *self.urls)
        return (text.replace(self.secret, "***") if self.secret else text)[:300]


class LLMClient:
    def __init__(self, settings: LLMSettings, cfg: LLMConfig, limiter, cache: AnswerCache, seed: int | None = None):
        from openai import AsyncOpenAI

        self.cfg = cfg
        self.model = settings.model_name(cfg.model)
        self.limiter = limiter
        self.cache = cache
        self.stats = ClientStats()
        self.redact = Redactor(
            settings.OPENAI_API_KEY.get_secret_value() if settings.OPENAI_API_KEY else None, settings.LLM_BASE_URL
        )
        self._client = AsyncOpenAI(
            api_key=settings.api_key_value(),
            base_url=settings.LLM_BASE_URL or None,
            max_retries=0,
            timeout=cfg.timeout_s,
        )
        self._sem = asyncio.Semaphore(cfg.concurrency_per_actor)
        self._rng = random.Random(seed)
        self.endpoint = settings.endpoint_text()  # redacted
        self._unreachable_in_a_row = 0  # the circuit breaker: connection failures since the last answer

    def _unreachable(self) -> None:
        """A request could not reach the endpoint. After `circuit_breaker_failures` in a row (no answer of any
        kind between them) the endpoint is down: stop the run instead of retrying every item."""
        self._unreachable_in_a_row += 1
        self._check_breaker()

    def _check_breaker(self) -> None:
        if self._unreachable_in_a_row >= self.cfg.circuit_breaker_failures:
            raise LLMFatal(
                f"{self.endpoint}: unreachable ({self._unreachable_in_a_row} connection failures in a row); "
                f"check LLM_BASE_URL and that the server runs (`hybrid pipeline test-llm`)"
            )

    async def close(self) -> None:
        await self._client.close()

    # ------------------------------------------------------------------------------------------------ public
    async def ask(self, messages: list[dict], schema_name: str) -> tuple[BaseModel, bool]:
        """The validated answer and whether it came from the cache."""
        schema, model_cls = SCHEMAS[schema_name]
        key = cache_key(self.model, messages, schema, self.cfg.temperature, self.cfg.max_output_tokens)
        cached = self.cache.get(key)
        if cached is not None:
            try:
                answer = model_cls.model_validate(cached)
                self.stats.cached_answers += 1
                return answer, True
            except ValidationError:
                pass  # stale or foreign entry: ask again
        convo = list(messages)
        attempts = 0
        last_error = ""
        for round_ in range(self.cfg.validation_retries + 1):
            content, usage, n = await self._complete(convo, schema_name, schema)
            attempts += n
            try:
                data = json.loads(content)
                answer = model_cls.model_validate(data)
            except json.JSONDecodeError as e:
                last_error = f"not JSON ({e.msg} at char {e.pos})"
            except ValidationError as e:
                first = e.errors()[0]
                last_error = f"schema mismatch at {'.'.join(str(p) for p in first['loc']) or '<root>'}: {first['msg']}"
            else:
                self.stats.answered += 1
                self.cache.put(key, answer.model_dump(mode="json"), self.model, usage)
                return answer, False
            self.stats.invalid_answers += 1
            if round_ < self.cfg.validation_retries:
                self.stats.retries += 1
                convo = [
                    *messages,
                    {"role": "assistant", "content": content[:4000]},
                    {
                        "role": "user",
                        "content": f"That answer was invalid: {last_error}. Reply again with only "
                        "a JSON object that matches the schema.",
                    },
                ]
        self._fail("invalid_answer")
        raise LLMFailure("invalid_answer", self.redact(last_error), attempts)

    # ------------------------------------------------------------------------------------------------ internals
    def _fail(self, reason: str) -> None:
        self.stats.failures += 1
        self.stats.reasons[reason] = self.stats.reasons.get(reason, 0) + 1

    def _backoff(self, retry: int) -> float:
        return self._rng.uniform(0, min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * (2**retry)))

    def _estimate_tokens(self, messages: list[dict]) -> float:
        chars = sum(len(m.get("content") or "") for m in messages)
        return chars / self.cfg.chars_per_token + self.cfg.max_output_tokens

    async def _complete(self, messages: list[dict], schema_name: str, schema: dict) -> tuple[str, dict, int]:
        """Send one completion (retrying transport faults); returns (content, usage, attempts)."""
        import openai

        response_format = {
            "type": "json_schema",
            "json_schema": {"name": schema_name, "schema": schema, "strict": True},
        }
        reason, detail = "", ""
        for attempt in range(self.cfg.max_retries + 1):
            self._check_breaker()  # tripped by another request while this one waited
            if attempt:
                self.stats.retries += 1
            delay = 0.0
            estimate = self._estimate_tokens(messages)
            async with self._sem:
                await call(self.limiter, "acquire", estimate)
                self.stats.requests += 1
                t0 = time.monotonic()
                try:
                    response = await self._client.chat.completions.create(
                        model=self.model,
                        messages=messages,
                        response_format=response_format,
                        temperature=self.cfg.temperature,
                        max_tokens=self.cfg.max_output_tokens,
                    )
                except openai.RateLimitError as e:
                    self._unreachable_in_a_row = 0
                    self.stats.rate_limited += 1
                    reason, detail = "rate_limited", f"HTTP 429: {self.redact(e.message)}"
                    retry_after = parse_retry_after(e.response.headers, self.cfg.max_retry_after_s)
                    delay = retry_after if retry_after is not None else self._backoff(attempt)
                    await call(self.limiter, "pause", delay)  # the whole pool holds back, not only this request
                    await call(self.limiter, "settle", estimate, 0)
                    continue
                except openai.APITimeoutError:
                    self.stats.timeouts += 1
                    reason, detail = "timeout", f"no answer within {self.cfg.timeout_s:g} s"
                    delay = self._backoff(attempt)
                except openai.APIConnectionError as e:
                    self.stats.connection_errors += 1
                    reason, detail = "connection_error", self.redact(str(e.__cause__ or e))
                    delay = self._backoff(attempt)
                    self._unreachable()
                except openai.APIStatusError as e:
                    self._unreachable_in_a_row = 0
                    status = e.status_code
                    if status in (401, 403):
                        raise LLMFatal(
                            f"the endpoint refused the API key (HTTP {status}); check OPENAI_API_KEY"
                        ) from None
                    if status == 404:
                        raise LLMFatal(
                            f"HTTP 404 from the endpoint: unknown model {self.model!r} or wrong "
                            f"LLM_BASE_URL ({self.redact(e.message)})"
                        ) from None
                    if status >= 500 or status in (408, 409):
                        self.stats.server_errors += 1
                        await call(self.limiter, "settle", estimate, 0)  # nothing was generated: give the tokens back
                        reason, detail = "server_error", f"HTTP {status}: {self.redact(e.message)}"
                        delay = self._backoff(attempt)
                    else:
                        self._fail("bad_request")
                        raise LLMFailure(
                            "bad_request", f"HTTP {status}: {self.redact(e.message)}", attempt + 1
                        ) from None
                except (openai.APIResponseValidationError, ValueError) as e:  # a body that is not JSON
                    self.stats.server_errors += 1
                    reason, detail = "malformed_response", self.redact(f"{type(e).__name__}: {e}")
                    delay = self._backoff(attempt)
                except (LLMFatal, LLMFailure):
                    raise
                except Exception as e:  # anything else the transport raises: retried, then recorded, never lost
                    self.stats.connection_errors += 1
                    reason, detail = "transport_error", self.redact(f"{type(e).__name__}: {e}")
                    delay = self._backoff(attempt)
                else:
                    self._unreachable_in_a_row = 0
                    self.stats.latency_s += time.monotonic() - t0
                    usage = getattr(response, "usage", None)
                    prompt_tokens = getattr(usage, "prompt_tokens", 0) or 0
                    completion_tokens = getattr(usage, "completion_tokens", 0) or 0
                    self.stats.prompt_tokens += prompt_tokens
                    self.stats.completion_tokens += completion_tokens
                    if usage is not None:
                        await call(self.limiter, "settle", estimate, prompt_tokens + completion_tokens)
                    choices = getattr(response, "choices", None)
                    if isinstance(response, str) or not choices or choices[0].message is None:
                        reason, detail = "malformed_response", "no choices in the response"
                        delay = self._backoff(attempt)
                    else:
                        # an answer cut short (finish_reason "length") fails validation and is asked again
                        content = choices[0].message.content or ""
                        return (
                            content,
                            {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
                            attempt + 1,
                        )
            if delay > 0 and attempt < self.cfg.max_retries:
                await asyncio.sleep(delay)
        self._fail(reason)
        raise LLMFailure(reason, detail, self.cfg.max_retries + 1)
