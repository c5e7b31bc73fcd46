"""Running the gateway under uvicorn, with a graceful SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
from types import FrameType

import uvicorn

from stagecast.api.app import create_app
from stagecast.api.auth import check_exposure
from stagecast.api.push import PushingHttpToolsProtocol
from stagecast.config import Settings
from stagecast.logs import configure_logging

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """On SIGTERM/SIGINT: stop taking stages, let runs finish within grace, end the rest."""

    draining: asyncio.Task[None] | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        tune_collector()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app = self.config.loaded_app
        state = getattr(getattr(_unwrap(app), "state", None), "stagecast", None)
        if state is None or self._loop is None or self.draining is not None or self.should_exit:
            super().handle_exit(sig, frame)
            return
        # Signal handlers run between bytecodes: hand the work to the loop properly.
        self._loop.call_soon_threadsafe(self._begin_drain, state, sig, frame)

    def _begin_drain(self, state: object, sig: int, frame: FrameType | None) -> None:
        if self.draining is None:
            log.info("shutting down: draining stages")
            self.draining = asyncio.get_running_loop().create_task(self._drain(state, sig, frame))

    async def _drain(self, state: object, sig: int, frame: FrameType | None) -> None:
        await state.stages.shutdown(state.settings.shutdown_grace)  # type: ignore[attr-defined]
        # Let attached readers receive the terminal events before connections close.
        await asyncio.sleep(0.2)
        super().handle_exit(sig, frame)


def tune_collector() -> None:
    """The garbage collector's settings for serving, once everything is loaded."""
    # Everything loaded at startup lives as long as the process: keep it out of the
    # collector's full passes, which otherwise show up as long tails in chunk latency.
    gc.freeze()
    # A relayed chunk allocates a few short-lived containers; collecting the young
    # generation every 700 of them was a few percent of the CPU per chunk.
    gc.set_threshold(20_000, 20, 20)


def _unwrap(app: object) -> object:
    while hasattr(app, "app") and not hasattr(app, "state"):
        app = app.app
    return app


def _level(name: str) -> int:
    # uvicorn's own "trace" is below DEBUG; an unknown name counts as INFO.
    level = logging.getLevelName(name.upper())
    return level if isinstance(level, int) else 5 if name.lower() == "trace" else logging.INFO


def build_config(settings: Settings) -> uvicorn.Config:
    """The uvicorn configuration for ``settings`` (uvloop when present, httptools)."""
    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="auto",
        # httptools, plus a synchronous writer for streamed bodies (``stagecast.api.push``).
        http=PushingHttpToolsProtocol,
        log_level=settings.log_level,
        # Access lines are logged at INFO: below that level, do not even format them.
        access_log=_level(settings.log_level) <= logging.INFO,
        # Our own JSON logging is configured by run_server; uvicorn must not replace it.
        log_config=None,
        timeout_graceful_shutdown=int(settings.shutdown_grace) + 5,
        lifespan="on",
    )


def run_server(settings: Settings) -> None:
    """Serve until SIGTERM; ``ConfigError`` if the settings are unsafe to serve."""
    check_exposure(settings)
    configure_logging(settings.log_level, settings.log_format)
    _Server(build_config(settings)).run()
