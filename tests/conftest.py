"""Shared fixtures: a clean environment, the fake model server, and gateways under uvicorn."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings

from stagecast.api.app import create_app
from stagecast.config import ModelConfig, Settings
from tests.peers.fake_upstream import FakeUpstream, fake_upstream
from tests.peers.open_meteo import open_meteo
from tests.peers.servers import ServerThread, serve
from tests.peers.services import redis_prefix, redis_url

# Fixtures defined elsewhere and shared by every test module.
__all__ = ["open_meteo", "redis_prefix", "redis_url"]

KEEP_ENV = {"STAGECAST_REQUIRE_SERVICES"}

# CI runs the property tests with many more examples than a developer's quick run.
hypothesis_settings.register_profile("ci", max_examples=1000, deadline=None)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's STAGECAST_* settings never leak into a test."""
    for key in list(os.environ):
        if (
            key.startswith("STAGECAST_")
            and key not in KEEP_ENV
            and not key.startswith("STAGECAST_TEST_")
        ):
            monkeypatch.delenv(key)


def require_services() -> bool:
    """True in CI: a missing Redis or PostgreSQL is then a failure, not a skip."""
    return os.environ.get("STAGECAST_REQUIRE_SERVICES") == "1"


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with fake_upstream() as fake:
        yield fake


def role(base_url: str, **overrides: Any) -> ModelConfig:
    """An OpenAI-compatible role with short, test-friendly timeouts."""
    values: dict[str, Any] = {
        "kind": "openai",
        "base_url": base_url,
        "model": "fake-model",
        "connect_timeout": 2.0,
        "first_token_timeout": 5.0,
        "idle_timeout": 5.0,
        "total_timeout": 30.0,
        "retries": 0,
    }
    values.update(overrides)
    return ModelConfig(**values)


class Gateway:
    """A gateway app served by uvicorn in a thread; ``state`` is its lifespan state."""

    def __init__(self, server: ServerThread, app: Any) -> None:
        self.server = server
        self.app = app
        self.url = server.url

    @property
    def state(self) -> Any:
        return self.app.state.stagecast


GatewayFactory = Callable[..., Gateway]


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[GatewayFactory]:
    """Start gateways: ``make_gateway(models={...}, heartbeat_interval=...)``; ``http=`` serves
    one with another uvicorn HTTP protocol than ``stagecast serve``'s."""
    with ExitStack() as stack:

        def factory(*, http: Any = None, **settings: Any) -> Gateway:
            # Stage records go to a file of this test, never to the working directory.
            settings.setdefault("database_path", str(tmp_path / f"records-{uuid.uuid4().hex}.db"))
            app = create_app(Settings(**settings))
            server = stack.enter_context(serve(app, http=http))
            return Gateway(server, app)

        yield factory


@pytest.fixture
def gateway(make_gateway: GatewayFactory, upstream: FakeUpstream) -> Gateway:
    """A gateway whose default role ``fake`` is the fake upstream."""
    return make_gateway(models={"fake": role(upstream.url)})


@contextmanager
def no_leaks(gw: Gateway) -> Iterator[None]:
    """Assert that no stage run is left when the block ends."""
    yield
    from tests.peers.servers import wait_for

    assert wait_for(lambda: not gw.state.stages.runs, 10), (
        f"runs left behind: {list(gw.state.stages.runs)}"
    )
