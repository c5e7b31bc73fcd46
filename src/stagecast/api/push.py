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
"""

from __future__ import annotations

import weakref
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

PUSH = "stagecast.push"


class _BodyPush:
    """``push`` for one request: a chunk of the body written now, or False."""

    __slots__ = ("_cycle",)

    def __init__(self, cycle: RequestResponseCycle) -> None:
        # Weak: the cycle owns the scope that holds this writer.
        self._cycle = weakref.ref(cycle)

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
    """uvicorn's httptools protocol, with ``push`` in every request's scope."""

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle: Any = self.cycle
        if cycle is not None and cycle.scope is self.scope:
            self.scope[PUSH] = _BodyPush(cycle)
