"""A keep-alive HTTP/1.1 connection pool for streamed POSTs to one model server.

Every relayed token passes through here, so the body goes from the socket to its consumer
with no stream object in between: ``httptools`` (the C parser uvicorn also uses) parses the
response in ``data_received`` and hands each piece of body to a callback, synchronously.
There is no per-connection scan and no per-chunk coroutine: the consumer's callback runs on
the read itself, and only a consumer that waits for data has a future to wake.

Scope, on purpose: one request per connection at a time, ``Content-Length`` request bodies,
responses with ``Content-Length``, chunked or close-delimited bodies, plain TCP or TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from typing import cast

import httptools
import yarl

# Idle pooled connections older than this are closed rather than reused (servers drop them).
KEEPALIVE_S = 30.0
# The most response body kept when nobody consumes it (error answers).
MAX_BUFFERED_BODY = 64 * 1024


# What a closed connection holds instead of its parser (no callbacks; never fed).
_DETACHED_PARSER = httptools.HttpResponseParser(object())


class ConnectionLost(Exception):
    """The connection closed before the response was complete."""

    def __init__(self, detail: str, *, before_response: bool) -> None:
        super().__init__(detail)
        self.before_response = before_response


class MalformedResponse(Exception):
    """The server's answer is not HTTP/1.x."""


class Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the response now being read on it."""

    __slots__ = (
        "_body_size",
        "_parser",
        "_pool",
        "_waiter",
        "after_read",
        "body",
        "closed",
        "complete",
        "error",
        "headers_done",
        "held",
        "idle_since",
        "keep_alive",
        "loop",
        "received",
        "reused",
        "sink",
        "status",
        "transport",
    )

    def __init__(self, pool: Pool, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        # Held, not looked up: asyncio's lookup of the running loop costs a system call.
        self.loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.closed = False
        self.received = False
        self.error: BaseException | None = None
        # Where body bytes go; until a consumer is set they are kept (bounded) in ``body``.
        self.sink: Callable[[bytes], None] | None = None
        # While set, called at the end of every read (the consumer's end of a read).
        self.after_read: Callable[[], None] | None = None
        self.body: list[bytes] = []
        self._body_size = 0
        # Reading paused because too much body came before its consumer (see on_body).
        self.held = False
        self.idle_since = 0.0
        self.reused = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.error is None:
                self.error = MalformedResponse(f"malformed HTTP response: {exc}")
        if self.error is not None:
            self.abort()
            self.wake()
        elif self.complete:
            self.wake()
        after = self.after_read
        if after is not None:
            after()

    def eof_received(self) -> bool | None:
        return None  # close the transport: one response per connection at a time

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        if not self.complete and self.error is None:
            detail = str(exc) if exc is not None else "server closed the connection"
            self.error = ConnectionLost(detail, before_response=not self.received)
        self.wake()
        # The transport and the parser both hold this protocol: without the ways back, a
        # closed connection is freed when its last user lets go, not by a pass of the
        # garbage collector (a pause for every stream).
        self.transport = None
        self.sink = None
        self.after_read = None
        self._parser = _DETACHED_PARSER

    # httptools callbacks

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.headers_done = True
        self.wake()

    def on_body(self, body: bytes) -> None:
        if self.error is not None:
            return
        sink = self.sink
        if sink is None:
            if self.status >= 400:
                # An error's body: its first kilobytes are all that is read of it.
                if self._body_size < MAX_BUFFERED_BODY:
                    self.body.append(body)
                    self._body_size += len(body)
                return
            # A stream whose consumer is not attached yet: every byte is kept, and past the
            # bound the socket is not read until the consumer takes what is here.
            self.body.append(body)
            self._body_size += len(body)
            if self._body_size >= MAX_BUFFERED_BODY and not self.held:
                self.held = True
                self.pause()
            return
        try:
            sink(body)
        except BaseException as exc:  # handed to the waiting consumer, never lost
            self.error = exc

    def on_message_complete(self) -> None:
        # Read here: the parser forgets it once the message is over.
        self.keep_alive = self._parser.should_keep_alive()
        self.complete = True

    # for the request's owner

    def send(self, request: bytes) -> None:
        """Write one whole request."""
        assert self.transport is not None
        self.transport.write(request)

    async def wait(self) -> None:
        """Until something happens on the connection: headers, body, the end, or an error."""
        waiter = self.loop.create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    def wake(self) -> None:
        """Resume the consumer waiting in ``wait`` (if any)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, exc: BaseException) -> None:
        """Fail whoever waits on the response with ``exc`` and drop the connection."""
        if self.error is None:
            self.error = exc
        self.abort()
        self.wake()

    def pause(self) -> None:
        """Stop reading from the socket (the consumer is behind)."""
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        """Read from the socket again."""
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def abort(self) -> None:
        """Drop the connection now (the server sees it close and stops generating)."""
        if self.transport is not None and not self.closed:
            self.transport.abort()

    @property
    def reusable(self) -> bool:
        """True when the response was read to its end and the server keeps the connection."""
        return self.complete and self.error is None and not self.closed and self.keep_alive

    def reset(self) -> None:
        """Ready for the next request on this connection."""
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers_done = self.complete = self.received = self.keep_alive = False
        self.sink = None
        self.body = []
        self._body_size = 0


class Pool:
    """Keep-alive connections to one origin, reused newest first."""

    def __init__(self, url: yarl.URL) -> None:
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"not an http(s) URL: {url}")
        self.host = url.host
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if url.scheme == "https" else None
        )
        default = (url.scheme == "https" and self.port == 443) or self.port == 80
        raw_host = url.raw_host or self.host
        self.authority: str = raw_host if default else f"{raw_host}:{self.port}"
        # Insertion-ordered: popitem() hands out the most recently used connection.
        self._idle: dict[Connection, None] = {}
        self._open: set[Connection] = set()

    async def acquire(self, connect_timeout: float) -> Connection:
        """An idle connection, or a new one within ``connect_timeout`` (TimeoutError)."""
        now = time.monotonic()
        while self._idle:
            conn, _ = self._idle.popitem()
            if not conn.closed and now - conn.idle_since < KEEPALIVE_S:
                conn.reused = True
                return conn
            conn.abort()
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(connect_timeout):
            _, conn = await loop.create_connection(
                lambda: Connection(self, loop),
                self.host,
                self.port,
                ssl=self.ssl,
                server_hostname=self.host if self.ssl else None,
            )
        self._open.add(conn)
        return conn

    def release(self, conn: Connection) -> None:
        """Back to the pool if it can carry another request; closed otherwise."""
        if conn.reusable:
            conn.reset()
            now = conn.idle_since = time.monotonic()
            self._idle[conn] = None
            # The oldest idle connection comes first: close those kept too long.
            while self._idle:
                oldest = next(iter(self._idle))
                if now - oldest.idle_since < KEEPALIVE_S:
                    break
                del self._idle[oldest]
                oldest.abort()
        else:
            conn.abort()

    def forget(self, conn: Connection) -> None:
        """A connection closed: never hand it out again."""
        self._idle.pop(conn, None)
        self._open.discard(conn)

    async def aclose(self) -> None:
        """Close every connection, idle or busy."""
        for conn in list(self._open):
            with contextlib.suppress(Exception):
                conn.abort()
        self._idle.clear()
        self._open.clear()
        # Let the transports run connection_lost before the loop goes away.
        await asyncio.sleep(0)


def request_head(method: str, url: yarl.URL, authority: str, headers: dict[str, str]) -> bytes:
    """The request line and headers, up to the blank line, without Content-Length."""
    lines = [f"{method} {url.raw_path_qs} HTTP/1.1", f"Host: {authority}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")
