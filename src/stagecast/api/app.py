"""``create_app(settings)``: the gateway as an ASGI app, with its state in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from stagecast._version import __version__
from stagecast.api.auth import KeyRing
from stagecast.api.errors import install_error_handlers
from stagecast.api.fastpath import STREAM_MODES, StreamFastPath
from stagecast.api.limits import Limits, MemoryRateLimiter, RateLimiter, RedisRateLimiter
from stagecast.api.middleware import RequestContext
from stagecast.api.routes import router as routes
from stagecast.api.ui import install_ui
from stagecast.backends.router import Router
from stagecast.config import Settings
from stagecast.hub.base import StreamHub
from stagecast.hub.memory import MemoryHub
from stagecast.metrics import Metrics
from stagecast.stages.runs import StageEnd, StageManager, stage_record
from stagecast.stages.toolchain import ToolPolicy, make_toolchain
from stagecast.store import RecordWriter, Store, StoreError, make_store
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
    keys: KeyRing
    limits: Limits
    metrics: Metrics
    store: Store
    records: RecordWriter


def make_hub(settings: Settings, metrics: Metrics | None = None) -> StreamHub:
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

        return RedisHub(settings.redis_url, prefix=settings.redis_prefix, **limits)  # type: ignore[arg-type]
    return MemoryHub(**limits, max_retained_bytes=settings.max_retained_bytes)  # type: ignore[arg-type]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the gateway app; ``settings`` default to the environment and no file."""
    settings = settings or Settings()
    # Checked now, so that a broken [tools] or [[api_keys]] fails at startup, not mid-stage.
    tool_http = ToolHttp.from_config(settings.tools)
    tools = build_registry(settings.tools, tool_http)
    keys = KeyRing(settings.api_keys)
    metrics = Metrics()
    rate: RateLimiter = (
        RedisRateLimiter(settings.redis_url, settings.redis_prefix)
        if settings.redis_url
        else MemoryRateLimiter()
    )
    limits = Limits(rate)
    store = make_store(settings.database_url, settings.database_path)
    records = RecordWriter(store)
    metrics.watch_records(records)

    def stage_ended(end: StageEnd) -> None:
        ctx = end.ctx
        stats = ctx.stats
        ttft = stats.first_token_at - stats.started_at if stats.first_token_at else None
        tools_done = [
            (str(d.get("name")), d.get("error") is None)
            for d in (end.outcome.tool_calls or [] if end.outcome else [])
        ]
        metrics.stage_ended(
            role=ctx.role,
            mode=ctx.mode,
            status=end.status,
            ttft=ttft,
            chunks=stats.chunks,
            error_code=end.error.code if end.error else None,
            tools=tools_done,
        )
        metrics.active_stages.dec()
        limits.release(ctx.owner)
        records.submit(stage_record(end))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await store.start()
        except StoreError as exc:
            # Streaming does not need the database: records wait in the writer until it is up.
            log.error("record store unavailable at startup", extra={"error": exc.message})
        await records.start()
        router = Router(settings)
        hub = make_hub(settings, metrics)
        policy = ToolPolicy(
            tools, timeout=settings.tools.timeout, max_concurrency=settings.tools.max_concurrency
        )
        stages = StageManager(
            router=router,
            hub=hub,
            producers={"toolchain": make_toolchain(policy)},
            on_end=stage_ended,
        )
        state = AppState(
            settings=settings,
            router=router,
            hub=hub,
            stages=stages,
            tools=tools,
            tool_http=tool_http,
            keys=keys,
            limits=limits,
            metrics=metrics,
            store=store,
            records=records,
        )
        app.state.stagecast = state
        log.info("stagecast ready", extra={"roles": router.roles, "auth": keys.enabled})
        try:
            yield
        finally:
            await state.stages.shutdown(settings.shutdown_grace)
            await hub.aclose()
            await router.aclose()
            await tool_http.aclose()
            await rate.aclose()
            await records.aclose(timeout=5.0)
            await store.aclose()

    app = _GatewayApp(
        max_body_bytes=settings.limits.max_body_bytes,
        cors_origins=settings.cors_origins,
        title="stagecast",
        version=__version__,
        summary="A streaming gateway for LLM stages.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(routes)
    install_ui(app)
    return app


class _GatewayApp(FastAPI):
    """FastAPI behind stagecast's own pure ASGI layers, outermost first:

    - ``RequestContext`` (request ids, the body bound); it sees the server's own ``send``,
      which streaming responses use for their body;
    - CORS, when origins are configured;
    - ``StreamFastPath``, which starts streamed stages without the framework's stack;
    - then Starlette's own middleware and the routes.
    """

    def __init__(self, *, max_body_bytes: int, cors_origins: list[str], **kwargs: Any) -> None:
        self._max_body_bytes = max_body_bytes
        self._cors_origins = cors_origins
        super().__init__(**kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A stage-streaming POST goes straight to the stack below: FastAPI's own entry would
        # first look for OpenTelemetry providers (environment lookups on every request), and
        # stagecast's metrics and logs already describe each stage.
        stack = self.middleware_stack
        if stack is not None and scope["type"] == "http" and scope["path"] in STREAM_MODES:
            if self.root_path:
                scope["root_path"] = self.root_path
            scope["app"] = self
            await stack(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def build_middleware_stack(self) -> ASGIApp:
        app: ASGIApp = StreamFastPath(super().build_middleware_stack(), self)
        if self._cors_origins:
            app = CORSMiddleware(
                app,
                allow_origins=self._cors_origins,
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "X-Request-Id"],
                expose_headers=["X-Stage-Id", "X-Request-Id"],
            )
        return RequestContext(app, max_body_bytes=self._max_body_bytes)
