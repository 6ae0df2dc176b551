"""The `llm` section: endpoint limits, concurrency, timeouts and retries for the LLM stages. (Issue 3.)

Secrets and the endpoint itself (`OPENAI_API_KEY`, `LLM_BASE_URL`, `LLM_MODEL_NAME`) come from the environment
or `.env` (pipelines/llm/settings.py), never from these files.
"""

from typing import Literal

from pydantic import Field

from hybrid.config.section import Section


class LLMConfig(Section):
    model: str = Field("gpt-4o-mini", min_length=1, description="model asked for when LLM_MODEL_NAME is unset")
    requests_per_minute: float = Field(60, gt=0, description="request rate limit across the whole actor pool")
    tokens_per_minute: float = Field(
        200_000, gt=0, description="token rate limit (prompt + completion) across the pool"
    )
    burst_seconds: float = Field(
        0.3,
        ge=0,
        le=10,
        description="how far ahead of the steady rate the limiter may run (catches up after a short pause); "
        "any 10-s window sees at most (10 + burst_seconds) seconds' worth of requests",
    )
    num_actors: int = Field(2, ge=1, le=256, description="actors in the Ray Data pool, each with one async client")
    actor_num_cpus: float = Field(0.25, gt=0, description="CPUs reserved per actor (the work is network-bound)")
    concurrency_per_actor: int = Field(8, ge=1, le=1024, description="requests in flight per actor")
    timeout_s: float = Field(60, gt=0, description="per-request timeout in seconds")
    max_retries: int = Field(6, ge=0, le=50, description="retries per request on 429, 5xx, timeouts, connection errors")
    circuit_breaker_failures: int = Field(
        8,
        ge=1,
        le=1000,
        description="stop the stage after this many connection failures in a row (the endpoint is "
        "down: failing fast beats retrying every item)",
    )
    backoff_base_s: float = Field(0.25, gt=0, description="first backoff on 5xx/timeouts; doubles, with full jitter")
    backoff_max_s: float = Field(16, gt=0, description="largest backoff between retries")
    max_retry_after_s: float = Field(120, gt=0, description="cap on a server's retry-after")
    validation_retries: int = Field(2, ge=0, le=10, description="re-asks when an answer fails JSON/schema validation")
    temperature: float = Field(0.2, ge=0, le=2, description="sampling temperature (part of the cache key)")
    context_tokens: int = Field(16_384, ge=1024, description="the model's context window in tokens")
    max_output_tokens: int = Field(1024, ge=64, description="max_tokens asked for per answer")
    chars_per_token: float = Field(3.5, gt=0, description="rough chars/token to size prompts without a tokenizer")
    max_chunks_per_commit: int = Field(8, ge=1, description="diff chunks per commit; the rest is cut and counted")
    max_code_chars: int = Field(12_000, ge=200, description="code shown per function in a reasoning prompt")
    max_tasks_per_commit: int = Field(10, ge=1, description="tasks kept per commit after merging chunks")
    runner: Literal["ray", "local"] = Field("ray", description="ray: Ray Data actor pool; local: one process")
