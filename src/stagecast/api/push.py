"""Writing a streamed body from the producer's callback, without the ASGI ``send`` coroutine.

A stage's events are made on the upstream socket's read. The plain ASGI way to deliver one is
to wake the streaming response's task, which then awaits ``send``: a future, a task step, a
generator resume and a coroutine per event and per reader. Under ``stagecast serve`` the
server's HTTP protocol offers a synchronous writer instead, in the request scope under
``PUSH``: ``push(body)`` writes one piece of the chunked body at once and returns True, or
returns False (and writes nothing) when the connection cannot take it now (the client is
gone, the response is over, or the socket's buffer is full). The caller then falls back to
``send``, which waits for the buffer to drain as ASGI does.

Only streamed bodies are pushed: the writer works only once the response has started with
chunked transfer encoding.

The writer also tells its response when the client leaves (``watch_close``): a streaming
response then needs no task of its own waiting on ``receive`` for the disconnect.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

PUSH = "stagecast.push"


class BodyPush:
    """``push`` for one request: a chunk of the body written now, or False."""

    __slots__ = ("_cycle", "_on_close")

    def __init__(self, cycle: RequestResponseCycle) -> None:
        # Weak: the cycle owns the scope that holds this writer.
        self._cycle = weakref.ref(cycle)
        self._on_close: Callable[[], None] | None = None

    def watch_close(self, callback: Callable[[], None] | None) -> bool:
        """Call ``callback`` once if the client's connection closes before the response is
        complete (``None`` stops watching). False, and nothing watched, if it is gone
        already: then the caller must treat the client as gone now."""
        cycle = self._cycle()
        if callback is not None and (cycle is None or cycle.disconnected):
            return False
        self._on_close = callback
        return True

    def _closed(self) -> None:
        callback, self._on_close = self._on_close, None
        if callback is not None:
            callback()

    def __call__(self, body: bytes) -> bool:
        cycle = self._cycle()
        if (
            cycle is None
            or cycle.disconnected
            or cycle.response_complete
            or not cycle.response_started
            or not cycle.chunked_encoding
            or cycle.flow.write_paused
        ):
            return False
        cycle.transport.write(b"%x\r\n%b\r\n" % (len(body), body))
        return True


class PushingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with ``push`` in every request's scope, and the
    connection's addresses taken from what the transport already knows."""

    # The writer of the request now being answered, told when the connection closes.
    _push: BodyPush | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # As uvicorn's, except for the addresses: it asks the transport for its socket,
        # which on uvloop builds a socket object and makes a system call for each address,
        # per connection. Both transports (uvloop's and asyncio's) keep the addresses they
        # learned when the connection was accepted under "sockname" and "peername".
        self.connections.add(self)
        self.transport = transport
        self.flow = FlowControl(transport)
        self.server = _address(transport.get_extra_info("sockname"))
        client = _address(transport.get_extra_info("peername"))
        self.client = (client[0], client[1]) if client and client[1] is not None else None
        self.scheme = "https" if transport.get_extra_info("sslcontext") else "http"
        if self.logger.level <= TRACE_LOG_LEVEL:
            prefix = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection made", prefix)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle: Any = self.cycle
        if cycle is not None and cycle.scope is self.scope:
            self.scope[PUSH] = self._push = BodyPush(cycle)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        push, self._push = self._push, None
        cycle: Any = self.cycle
        if push is not None and cycle is not None and cycle.disconnected:
            push._closed()


def _address(info: object) -> tuple[str, int | None] | None:
    """A socket address as uvicorn puts it in the scope: ``(host, port)`` for IP (the first
    two fields of an IPv6 address), ``(path, None)`` for a Unix socket."""
    if isinstance(info, tuple | list) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    if isinstance(info, str):
        return (info, None)
    return None
