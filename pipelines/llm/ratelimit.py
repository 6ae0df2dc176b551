"""One rate limit (requests/min and tokens/min) for every request of a run, wherever it is sent from.

`RateLimiter` is a GCRA scheduler (the "generic cell rate algorithm" of ATM networks, also behind many API
gateways): each limit keeps a theoretical arrival time `tat`; a request may go when `now >= tat - burst`, and
then pushes `tat` by its cost / rate. Grants are handed out one at a time, in arrival order (a fair asyncio lock),
the moment they are allowed — no reservations in advance — so a `retry-after` pause set by any caller holds
back every request not yet granted. Because `tat` runs up to `burst` ahead of the clock while work is queued,
a pause shorter than `burst` costs no throughput, and any window of W seconds sees at most (W + burst) seconds'
worth of requests.

One class serves a single process (`RateLimiter(...)`) and a whole Ray actor pool (`start_limiter_actor`: the same
class as an async actor, whose handle the driver hands to every actor of the pool); `call` awaits either alike.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from dataclasses import dataclass


@dataclass
class LimiterStats:
    granted: int = 0
    tokens_reserved: float = 0.0
    pauses: int = 0
    paused_s: float = 0.0
    waited_s: float = 0.0


class RateLimiter:
    def __init__(self, requests_per_minute: float, tokens_per_minute: float, burst_seconds: float = 0.5):
        if requests_per_minute <= 0 or tokens_per_minute <= 0:
            raise ValueError("rate limits must be > 0")
        self.req_interval = 60.0 / requests_per_minute  # seconds per request
        self.tok_rate = tokens_per_minute / 60.0  # tokens per second
        self.burst = float(burst_seconds)
        now = time.monotonic()
        self.req_tat = now
        self.tok_tat = now
        self.paused_until = 0.0
        self.stats = LimiterStats()
        self._lock: asyncio.Lock | None = None

    def _earliest(self) -> float:
        return max(self.paused_until, self.req_tat - self.burst, self.tok_tat - self.burst)

    async def acquire(self, tokens: float) -> float:
        """Wait until one request costing about `tokens` may be sent; return the seconds waited."""
        if self._lock is None:
            self._lock = asyncio.Lock()  # created inside the running loop (Ray actors run their own)
        t0 = time.monotonic()
        async with self._lock:
            while True:
                now = time.monotonic()
                start = self._earliest()
                if start <= now:
                    break
                await asyncio.sleep(start - now)
            self.req_tat = max(self.req_tat, now) + self.req_interval
            self.tok_tat = max(self.tok_tat, now) + max(tokens, 0.0) / self.tok_rate
            self.stats.granted += 1
            self.stats.tokens_reserved += max(tokens, 0.0)
        waited = time.monotonic() - t0
        self.stats.waited_s += waited
        return waited

    def settle(self, reserved_tokens: float, used_tokens: float) -> None:
        """Correct the token account once the real usage is known (credit back an over-estimate)."""
        self.tok_tat += (used_tokens - reserved_tokens) / self.tok_rate
        self.stats.tokens_reserved += used_tokens - reserved_tokens

    def pause(self, seconds: float) -> None:
        """A server said retry-after: nobody sends before then."""
        until = time.monotonic() + max(seconds, 0.0)
        if until > self.paused_until:
            self.stats.paused_s += until - max(self.paused_until, time.monotonic())
            self.paused_until = until
        self.stats.pauses += 1


async def call(limiter, method: str, *args):
    """Call a `RateLimiter` method alike on the object in this process or on the handle of its Ray actor
    (`start_limiter_actor`)."""
    fn = getattr(limiter, method)
    if hasattr(fn, "remote"):
        return await fn.remote(*args)
    out = fn(*args)
    return await out if inspect.isawaitable(out) else out


def start_limiter_actor(requests_per_minute: float, tokens_per_minute: float, burst_seconds: float):
    """The run's one limiter as an async Ray actor (the same class; call after Ray is initialised). Every actor of
    the pool holds its handle, on a cluster too."""
    import ray

    actor = ray.remote(num_cpus=0, max_concurrency=10_000, max_restarts=-1)(RateLimiter)
    return actor.remote(requests_per_minute, tokens_per_minute, burst_seconds)
