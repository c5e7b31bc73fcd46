"""Per-key limits: concurrent stages and a request-rate token bucket.

The rate bucket lives in Redis when the Redis hub is in use, so it holds across replicas;
otherwise in memory. Concurrent stages are counted per process.
"""

from __future__ import annotations

import math
import time
from typing import Any, Protocol

from stagecast.api.auth import Principal
from stagecast.errors import RequestError


class TooManyRequestsError(RequestError):
    """A key is over its rate or its concurrent-stage limit."""

    code = "rate_limited"
    status_code = 429

    def __init__(self, message: str, *, retry_after: float, code: str = "rate_limited") -> None:
        super().__init__(message, code=code, retryable=True)
        self.retry_after = max(1, math.ceil(retry_after))


class RateLimiter(Protocol):
    """Takes one token from a key's bucket, or says how long until one is free."""

    async def acquire(self, key: str, rate_per_minute: float, burst: int) -> float:
        """0 if allowed, else seconds to wait."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class MemoryRateLimiter:
    """Token buckets in this process."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    async def acquire(self, key: str, rate_per_minute: float, burst: int) -> float:
        rate = rate_per_minute / 60.0
        now = time.monotonic()
        tokens, stamp = self._buckets.get(key, (float(burst), now))
        tokens = min(float(burst), tokens + (now - stamp) * rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / rate

    async def aclose(self) -> None:
        return None


# One atomic step of a token bucket stored in a Redis hash {tokens, ts}; returns the wait in
# milliseconds (0 when a token was taken). Time comes from the Redis server, so every replica
# agrees on it.
_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - ts) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate) + 1000)
return wait
"""


class RedisRateLimiter:
    """Token buckets in Redis, shared by every replica."""

    def __init__(self, url: str, prefix: str = "stagecast:") -> None:
        import redis.asyncio as redis

        self._redis: Any = redis.Redis.from_url(url)
        self._script = self._redis.register_script(_BUCKET)
        self._prefix = prefix

    async def acquire(self, key: str, rate_per_minute: float, burst: int) -> float:
        per_ms = rate_per_minute / 60_000.0
        wait_ms = await self._script(keys=[f"{self._prefix}rate:{key}"], args=[per_ms, burst])
        return float(wait_ms) / 1000.0

    async def aclose(self) -> None:
        await self._redis.aclose()


class Limits:
    """The per-key checks a new stage goes through."""

    def __init__(self, rate: RateLimiter) -> None:
        self.rate = rate
        self._live: dict[str, int] = {}

    async def admit(self, principal: Principal) -> None:
        """Raise 429 if the key is over a limit; otherwise count one more live stage."""
        cfg = principal.config
        if cfg is None or principal.key_id is None:
            return
        if cfg.rate_per_minute is not None:
            wait = await self.rate.acquire(principal.key_id, cfg.rate_per_minute, cfg.burst)
            if wait > 0:
                raise TooManyRequestsError(
                    f"API key {principal.key_id!r} is over its rate of "
                    f"{cfg.rate_per_minute:g} requests per minute",
                    retry_after=wait,
                )
        if cfg.max_concurrent_stages is not None:
            live = self._live.get(principal.key_id, 0)
            if live >= cfg.max_concurrent_stages:
                raise TooManyRequestsError(
                    f"API key {principal.key_id!r} already runs {live} stages, its limit",
                    retry_after=1,
                    code="too_many_stages",
                )
            self._live[principal.key_id] = live + 1

    def release(self, key_id: str | None) -> None:
        """A stage admitted by :meth:`admit` for ``key_id`` ended."""
        if key_id is None or key_id not in self._live:
            return
        left = self._live[key_id] - 1
        if left > 0:
            self._live[key_id] = left
        else:
            del self._live[key_id]
