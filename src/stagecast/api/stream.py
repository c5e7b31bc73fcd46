"""The streaming response: a pure ASGI app that tails a stage's log onto the socket.

No ``BaseHTTPMiddleware`` and no per-chunk framework work: frames are already encoded in the
hub, and several ready frames go out in one write. Until the reader has caught up, the
request's own task writes them; from then on, under ``stagecast serve``, the in-process hub
writes new frames with the server's ``push`` in the loop turn they were made, and hands them
back to this task only when the socket cannot take them. The server's writer also says when
the client leaves (elsewhere a second task listens on ``receive`` for it). When the last
reader of a stage leaves and the stage's policy is ``on_disconnect = "cancel"``, the run is
cancelled (on whichever replica owns it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from stagecast.api.middleware import RAW_SEND
from stagecast.api.push import PUSH, BodyPush
from stagecast.hub.base import Push, ReaderLagError, StageNotFoundError, StreamHub
from stagecast.metrics import Metrics
from stagecast.protocol.sse import encode_comment

log = logging.getLogger(__name__)

KEEPALIVE = encode_comment("keep-alive")


class StageEventStream(Response):
    """ASGI response that relays one stage's events from ``after`` onwards.

    A ``Response`` subclass only so routes may return it; it sends its own messages.
    """

    def __init__(
        self,
        hub: StreamHub,
        stage_id: str,
        *,
        after: int = 0,
        heartbeat: float = 15.0,
        cancel_on_leave: bool = True,
        headers: dict[str, str] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.status_code = 200
        self.background = None
        self.hub = hub
        self.stage_id = stage_id
        self.after = after
        self.heartbeat = heartbeat
        self.cancel_on_leave = cancel_on_leave
        self.sse_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
            (b"x-stage-id", stage_id.encode()),
        ]
        for key, value in (headers or {}).items():
            self.sse_headers.append((key.lower().encode(), value.encode()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.sse_headers})
        # After the start (which the middleware stack sees), the body goes to the server
        # directly: nothing in the stack needs to see each event.
        send = scope.get(RAW_SEND, send)
        push = scope.get(PUSH)
        await self.hub.attach(self.stage_id)
        if self.metrics is not None:
            self.metrics.active_streams.inc()
        # The body is written by this task, which is interrupted when the client leaves:
        # the server's writer says so (under ``stagecast serve``), or else a second task
        # listening on ``receive``.
        this = asyncio.current_task()
        assert this is not None
        on_leave = _Leaving(this)
        watcher: asyncio.Task[None] | None = None
        if not isinstance(push, BodyPush):
            watcher = asyncio.ensure_future(_wait_disconnect(receive))
            watcher.add_done_callback(on_leave)
        elif not push.watch_close(on_leave):
            on_leave()  # gone before the first event
        outcome = "gone"
        try:
            outcome = await self._write(send, push)
        except asyncio.CancelledError:
            if not on_leave.left:
                raise
            this.uncancel()
        finally:
            on_leave.writing = False
            if watcher is not None:
                watcher.cancel()
            elif isinstance(push, BodyPush):
                push.watch_close(None)
            # Only a client that left counts as leaving: a reader closed for lagging will
            # come back with Last-Event-ID.
            await self._leave(client_left=outcome == "gone")
            if self.metrics is not None:
                self.metrics.active_streams.dec()
        if outcome != "gone":
            with contextlib.suppress(OSError):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _write(self, send: Send, push: Push | None) -> str:
        """Relay frames; returns ``ended`` (terminal sent), ``lagged`` or ``gone``.

        Frames are written here, by this task, until the reader has caught up; from then on
        the hub writes each new frame with ``push`` (when the server offers it), and gives
        them back to this task only when the connection cannot take them at once.
        """
        frames = self.hub.tail(self.stage_id, self.after, heartbeat=self.heartbeat, push=push)
        try:
            async for batch in frames:
                await send(
                    {"type": "http.response.body", "body": batch or KEEPALIVE, "more_body": True}
                )
        except ReaderLagError:
            log.info("reader fell behind; closing", extra={"stage_id": self.stage_id})
            return "lagged"
        except StageNotFoundError:
            return "ended"
        except OSError:
            return "gone"
        return "ended"

    async def _leave(self, *, client_left: bool) -> None:
        try:
            remaining = await self.hub.detach(self.stage_id)
            if client_left and remaining == 0 and self.cancel_on_leave:
                await self.hub.request_cancel(self.stage_id)
        except Exception:
            log.exception("could not detach reader", extra={"stage_id": self.stage_id})


class _Leaving:
    """Called when the client leaves (by the server's writer, or by the task listening on
    ``receive``): while the response is still being written, its task is cancelled. An
    object, not a closure, as it lives as long as the stream (a closure, its cells and their
    tuple are each an object the garbage collector walks, for every live stream)."""

    __slots__ = ("left", "task", "writing")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        self.writing = True
        self.left = False

    def __call__(self, _: object = None) -> None:
        if self.writing:
            self.left = True
            self.task.cancel()


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
