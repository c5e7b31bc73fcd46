"""Real Redis for tests: skipped when absent, a failure when STAGECAST_REQUIRE_SERVICES=1 (CI)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis URL, once it answers PING."""
    url = os.environ.get("STAGECAST_TEST_REDIS_URL") or DEFAULT_REDIS_URL
    try:
        with redis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=2, retry=Retry(NoBackoff(), 0)
        ) as client:
            client.ping()
    except (RedisError, OSError) as exc:
        reason = f"Redis not reachable at {url}: {exc}"
        if os.environ.get("STAGECAST_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted afterwards."""
    prefix = f"stagecast-test:{uuid.uuid4().hex}:"
    yield prefix
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
