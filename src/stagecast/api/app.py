"""``create_app(settings)``: the gateway as an ASGI app, with its state in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI

from stagecast._version import __version__
from stagecast.api.errors import install_error_handlers
from stagecast.api.routes import router as routes
from stagecast.backends.router import Router
from stagecast.config import Settings
from stagecast.hub.base import StreamHub
from stagecast.hub.memory import MemoryHub
from stagecast.stages.runs import StageManager
from stagecast.stages.toolchain import ToolPolicy, make_toolchain
from stagecast.tools.builtins import ToolHttp
from stagecast.tools.registry import ToolRegistry, build_registry

log = logging.getLogger(__name__)


@dataclass
class AppState:
    """Everything the routes share, created at startup and closed at shutdown."""

    settings: Settings
    router: Router
    hub: StreamHub
    stages: StageManager
    tools: ToolRegistry
    tool_http: ToolHttp


def make_hub(settings: Settings) -> StreamHub:
    """The memory hub, or the Redis hub when ``redis_url`` is set."""
    limits = {
        "ttl": settings.stage_ttl,
        "max_events": settings.max_stage_events,
        "max_bytes": settings.max_stage_bytes,
        "max_reader_lag": settings.max_reader_lag,
        "retry_ms": settings.retry_ms,
    }
    if settings.redis_url:
        from stagecast.hub.redis import RedisHub

        return RedisHub(settings.redis_url, **limits)  # type: ignore[arg-type]
    return MemoryHub(**limits)  # type: ignore[arg-type]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the gateway app; ``settings`` default to the environment and no file."""
    settings = settings or Settings()
    # Tool modules load now, so that a broken [tools] config fails at startup, not mid-stage.
    tool_http = ToolHttp.from_config(settings.tools)
    tools = build_registry(settings.tools, tool_http)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        router = Router(settings)
        hub = make_hub(settings)
        policy = ToolPolicy(
            tools, timeout=settings.tools.timeout, max_concurrency=settings.tools.max_concurrency
        )
        stages = StageManager(
            router=router, hub=hub, producers={"toolchain": make_toolchain(policy)}
        )
        state = AppState(
            settings=settings,
            router=router,
            hub=hub,
            stages=stages,
            tools=tools,
            tool_http=tool_http,
        )
        app.state.stagecast = state
        log.info("stagecast ready", extra={"roles": router.roles})
        try:
            yield
        finally:
            await state.stages.shutdown(settings.shutdown_grace)
            await hub.aclose()
            await router.aclose()
            await tool_http.aclose()

    app = FastAPI(
        title="stagecast",
        version=__version__,
        summary="A streaming gateway for LLM stages.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(routes)
    return app
