"""Streaming client for OpenAI-compatible model servers.

Streamed completions go over stagecast's own keep-alive HTTP/1.1 pool (``http1``): the
response body reaches the SSE splitter on the socket read itself, with no stream object in
between. (httpx's pool scanned every connection per chunk and cost about ten times the CPU;
aiohttp's stream reader cost a task switch and a buffer copy per chunk; see DESIGN.md,
"Backends".) Health probes use aiohttp.

Deadlines cost nothing per chunk: a watchdog timer wakes at the current deadline and, if the
stream has made progress since, re-arms itself; if not, it fails the pending read with an
``UpstreamTimeoutError``. A chunk only moves a float.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import yarl

from stagecast.backends.base import ChatCall, ChunkStream, ProbeResult, UpstreamChunk
from stagecast.backends.http1 import (
    Connection,
    ConnectionLost,
    MalformedResponse,
    Pool,
    request_head,
)
from stagecast.config import ModelConfig
from stagecast.errors import (
    UpstreamConnectionError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)

log = logging.getLogger(__name__)

_monotonic = time.monotonic

# A single SSE line from upstream may not exceed this (bounded memory against endless lines).
MAX_LINE_BYTES = 2 * 1024 * 1024


class _Watchdog:
    """Fails the response when the first-token, idle-gap or total deadline passes."""

    __slots__ = (
        "_conn",
        "_handle",
        "_loop",
        "fired",
        "first_at",
        "first_token",
        "held",
        "idle",
        "last",
        "total_at",
    )

    def __init__(self, conn: Connection, first_token: float, idle: float, total: float):
        self._loop = conn.loop
        self._conn = conn
        self.first_token = first_token
        # While the stage's readers hold the stream back, silence is not the server's.
        self.held = False
        now = self._loop.time()
        self.total_at = now + total
        self.first_at = now + first_token
        self.idle = idle
        # When the last chunk came (None: none yet); a chunk only moves this float.
        self.last: float | None = None
        self.fired: UpstreamTimeoutError | None = None
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(
            min(self.first_at, self.total_at), self._check
        )

    def progress(self) -> None:
        """Note progress (the readers let the stream go on): the next deadline is one idle
        gap from now. A chunk does the same by setting ``last`` directly."""
        self.last = _monotonic()

    def _check(self) -> None:
        now = self._loop.time()
        if self.held:
            self.last = now
        if self.last is None:
            phase, deadline = "first_token", self.first_at
        else:
            phase, deadline = "idle", self.last + self.idle
        if deadline >= self.total_at:
            phase, deadline = "total", self.total_at
        if now < deadline:
            self._handle = self._loop.call_at(deadline, self._check)
            return
        self._handle = None
        what = {
            "first_token": "no first token",
            "idle": "no chunk",
            "total": "stream not finished",
        }[phase]
        limit = {"first_token": self.first_token, "idle": self.idle, "total": None}[phase]
        suffix = f" within {limit:g}s" if limit else " before the deadline"
        self.fired = UpstreamTimeoutError(f"model server timed out: {what}{suffix}", phase=phase)
        self._conn.fail(self.fired)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class OpenAICompatBackend:
    """A role served by an OpenAI-compatible ``/v1/chat/completions`` endpoint."""

    def __init__(self, role: str, config: ModelConfig) -> None:
        if not config.base_url:
            raise ValueError("base_url is required")
        self.role = role
        self.config = config
        self._base = config.base_url.rstrip("/")
        self._url = yarl.URL(self._base + "/chat/completions")
        self._pool = Pool(self._url)
        # aiohttp only for the rare GET of a health probe.
        self._session: aiohttp.ClientSession | None = None
        headers = {"Accept": "text/event-stream", "Content-Type": "application/json"}
        key = config.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._headers = headers
        self._head = request_head("POST", self._url, self._pool.authority, headers)

    @property
    def model_name(self) -> str:
        return self.config.model or "default"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout),
            )
        return self._session

    def _body(self, call: ChatCall) -> bytes:
        body: dict[str, Any] = {
            "model": self.model_name,
            "messages": call.messages,
            "stream": True,
        }
        if self.config.stream_usage:
            body["stream_options"] = {"include_usage": True}
        if call.max_tokens is not None:
            body["max_tokens"] = call.max_tokens
        if call.temperature is not None:
            body["temperature"] = call.temperature
        if call.tools:
            body["tools"] = call.tools
            if call.tool_choice is not None:
                body["tool_choice"] = call.tool_choice
            if call.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = call.parallel_tool_calls
        body.update(call.extra)
        return orjson.dumps(body)

    @asynccontextmanager
    async def stream(self, call: ChatCall) -> AsyncIterator[ChunkStream]:
        body = self._body(call)
        # One exact-size copy of the whole request: the serialiser's own result carries
        # kilobytes of spare capacity, held for as long as the stream waits.
        request = b"%sContent-Length: %d\r\n\r\n%s" % (self._head, len(body), body)
        del body
        conn, dog = await self._request(request)
        reusable = False
        try:
            if conn.status >= 400:
                text = await _read_error_body(conn)
                raise UpstreamStatusError(
                    f"model server answered HTTP {conn.status}: {text[:300]}",
                    status=conn.status,
                    body=text,
                )
            stream = _ChunkReader(conn, dog, self._base)
            yield stream
            reusable = stream.finished
        finally:
            dog.cancel()
            conn.sink = None  # the connection no longer refers back to this stream's reader
            if reusable:
                self._pool.release(conn)
            else:
                # Dropping the connection is how the model server learns the client left
                # and stops generating.
                conn.abort()

    async def _request(self, request: bytes) -> tuple[Connection, _Watchdog]:
        """Send the request and wait for the response head; one retry on a stale connection.

        From the moment the request is sent, its watchdog holds the first-token and total
        deadlines (the response head counts as waiting for the first token).
        """
        cfg = self.config
        started = time.monotonic()
        for attempt in (1, 2):
            try:
                conn = await self._pool.acquire(cfg.connect_timeout)
            except TimeoutError:
                raise UpstreamTimeoutError(
                    f"could not connect to {self._base}: timed out", phase="connect"
                ) from None
            except OSError as exc:
                raise UpstreamConnectionError(
                    f"could not connect to model server {self._base}: {exc}"
                ) from exc
            remaining = cfg.total_timeout - (time.monotonic() - started)
            dog = _Watchdog(conn, cfg.first_token_timeout, cfg.idle_timeout, remaining)
            try:
                conn.send(request)
                while not conn.headers_done and conn.error is None:
                    await conn.wait()
            except BaseException:
                dog.cancel()
                conn.abort()
                raise
            if conn.headers_done:
                return conn, dog
            dog.cancel()
            err = conn.error
            conn.abort()
            if (
                attempt == 1
                and conn.reused
                and isinstance(err, ConnectionLost)
                and err.before_response
            ):
                continue  # the server had closed the idle connection: one fresh try
            raise _failure(err, self._base)
        raise AssertionError("unreachable")

    async def probe(self, timeout: float) -> ProbeResult:
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                async with self._client().get(self._base + "/models", headers=self._headers) as r:
                    await r.read()
                    ms = (time.monotonic() - started) * 1000
                    if r.status >= 400:
                        return ProbeResult(False, f"HTTP {r.status} from /models", ms)
                    return ProbeResult(True, "ok", ms)
        except TimeoutError:
            return ProbeResult(False, f"no answer within {timeout:g}s")
        except aiohttp.ClientError as exc:
            return ProbeResult(False, str(_map_client_error(exc, self._base)))

    async def aclose(self) -> None:
        await self._pool.aclose()
        if self._session is not None:
            await self._session.close()
            self._session = None


# Chunks queued for a consumer that pulls before the socket is paused.
MAX_QUEUED = 256


class _ChunkReader:
    """The parsed chunks of one upstream SSE response.

    The connection hands every piece of body to ``_feed`` as it is read; lines end at LF or
    CRLF; a line may not grow past MAX_LINE_BYTES. A consumer either pulls chunks
    (``async for``) or, with ``pump``, has a callback run for each chunk on the read itself,
    so that the relay costs no task switch per chunk.
    """

    __slots__ = (
        "_base",
        "_buf",
        "_conn",
        "_data",
        "_dog",
        "_handler",
        "_paused",
        "_ready",
        "_splice",
        "finished",
    )

    def __init__(self, conn: Connection, dog: _Watchdog, base: str) -> None:
        self._conn = conn
        self._dog = dog
        self._base = base
        self._buf = b""
        self._data: list[bytes] = []
        # Chunks read but not yet pulled (a list: a deque's first block alone is 600 bytes).
        self._ready: list[UpstreamChunk | None] = []
        self._handler: Callable[[UpstreamChunk], None] | None = None
        self._splice: Callable[[bytes], bool] | None = None
        self._paused = False
        self.finished = False
        early, conn.body = conn.body, []
        conn.sink = self._feed
        for piece in early:
            self._feed(piece)
        if conn.held:  # the body outran this reader's start: read on
            conn.held = False
            if not self._paused:
                conn.resume()

    def __aiter__(self) -> _ChunkReader:
        return self

    async def __anext__(self) -> UpstreamChunk:
        ready = self._ready
        conn = self._conn
        while not ready:
            if self.finished:
                raise StopAsyncIteration
            self._raise_if_cut()
            if self._paused:
                self._paused = False
                conn.resume()
            await conn.wait()
        item = ready.pop(0)
        if item is None:
            await self._drain()
            raise StopAsyncIteration
        return item

    def _raise_if_cut(self) -> None:
        """Raise if the response failed, or ended without ``[DONE]``."""
        conn = self._conn
        if conn.error is not None:
            raise _failure(conn.error, self._base)
        if conn.complete:
            raise _closed_early()

    def pause(self) -> None:
        """Stop reading from the model server until ``resume`` (readers are behind)."""
        self._dog.held = True
        self._conn.pause()

    def resume(self) -> None:
        """Read from the model server again."""
        self._dog.held = False
        self._dog.progress()
        if not self._paused:
            self._conn.resume()

    async def pump(
        self,
        handler: Callable[[UpstreamChunk], None],
        splice: Callable[[bytes], bool] | None = None,
        flush: Callable[[], None] | None = None,
    ) -> None:
        """Run ``handler`` on every chunk as it arrives, until the stream ends.

        ``splice``, if given, sees each chunk's bytes first, unparsed; when it returns True
        it has relayed the chunk, and the chunk is neither parsed nor handed to ``handler``.
        ``flush``, if given, runs at the end of every socket read that brought body.
        ``handler``'s and ``splice``'s exceptions end the stream and are raised here.
        """
        ready = self._ready
        while ready:
            item = ready.pop(0)
            if item is None:
                if flush is not None:
                    flush()
                await self._drain()
                return
            handler(item)
        if flush is not None:
            flush()
        if self._paused:
            self._paused = False
            self._conn.resume()
        self._handler = handler
        self._splice = splice
        conn = self._conn
        conn.after_read = flush
        try:
            while not self.finished:
                self._raise_if_cut()
                await conn.wait()
        finally:
            self._handler = None
            self._splice = None
            conn.after_read = None
        await self._drain()

    def _feed(self, piece: bytes) -> None:
        if self.finished:
            return
        if (
            not self._buf
            and not self._data
            and piece.startswith(b"data: ")
            and piece.find(b"\n") == len(piece) - 2
            and piece[-1] == 10
            and piece[-3] != 13
        ):
            # The common read: exactly one event of one data line; offered to the splice here
            # rather than through _dispatch (one call less per chunk).
            payload = piece[6:-2]
            splice = self._splice
            if splice is not None and splice(payload):
                # Relayed: a splice is only offered while a handler is pumping, so nothing
                # waits in ``_ready`` for a puller to be woken.
                self._dog.last = _monotonic()
                return
            self._parse(payload)
        else:
            self._split(piece)
        if self._handler is None and self._ready:
            if len(self._ready) > MAX_QUEUED and not self._paused:
                self._paused = True
                self._conn.pause()
            self._conn.wake()

    def _split(self, piece: bytes) -> None:
        buf = self._buf + piece if self._buf else piece
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            line = buf[start : end - 1] if end > start and buf[end - 1] == 13 else buf[start:end]
            start = end + 1
            if line:
                if line.startswith(b"data:"):
                    self._data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif self._data:
                data = self._data
                self._data = []
                self._dispatch(data[0] if len(data) == 1 else b"\n".join(data))
                if self.finished:
                    self._buf = b""
                    return
        self._buf = buf[start:]
        if len(self._buf) > MAX_LINE_BYTES:
            raise UpstreamProtocolError(
                f"model server sent an over-long line (more than {MAX_LINE_BYTES} bytes)"
            )

    def _dispatch(self, payload: bytes) -> None:
        # ``[DONE]`` never fits a splice template (a template starts with ``{``).
        splice = self._splice
        if splice is not None and splice(payload):
            self._dog.last = _monotonic()
        else:
            self._parse(payload)

    def _parse(self, payload: bytes) -> None:
        """Parse one event's data and hand the chunk on (or end the stream at ``[DONE]``)."""
        if payload == b"[DONE]":
            self.finished = True
            if self._handler is None:
                self._ready.append(None)
            self._conn.wake()
            return
        try:
            parsed = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise UpstreamProtocolError(
                f"model server sent a chunk that is not JSON: {payload[:120]!r}"
            ) from exc
        if not isinstance(parsed, dict):
            raise UpstreamProtocolError("model server sent a chunk that is not a JSON object")
        if "error" in parsed and "choices" not in parsed:
            raise _stream_error(parsed["error"])
        self._dog.last = _monotonic()
        handler = self._handler
        if handler is None:
            self._ready.append(UpstreamChunk(parsed, payload))
        else:
            handler(UpstreamChunk(parsed, payload))

    async def _drain(self) -> None:
        # Wait for the end of the body so the pooled connection can be reused.
        conn = self._conn
        if not conn.complete and conn.error is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    while not conn.complete and conn.error is None:
                        await conn.wait()
        if not conn.reusable:
            self.finished = False


def _closed_early() -> UpstreamConnectionError:
    return UpstreamConnectionError(
        "model server closed the stream before it finished", code="upstream_disconnected"
    )


def _failure(err: BaseException | None, base: str) -> BaseException:
    """What a consumer raises for a failed response."""
    if isinstance(err, ConnectionLost):
        if err.before_response:
            return UpstreamConnectionError(
                f"model server {base} closed the connection without answering: {err}",
                code="upstream_disconnected",
            )
        return UpstreamConnectionError(
            f"connection to model server {base} was cut: {err}", code="upstream_disconnected"
        )
    if isinstance(err, MalformedResponse):
        return UpstreamProtocolError(f"model server {base} sent {err}")
    if err is None:
        return _closed_early()
    return err


async def _read_error_body(conn: Connection) -> str:
    try:
        async with asyncio.timeout(2.0):
            while not conn.complete and conn.error is None:
                await conn.wait()
    except TimeoutError:
        pass
    raw = b"".join(conn.body)[:8192]
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace").strip()
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
    return raw.decode("utf-8", "replace").strip()


def _stream_error(err: Any) -> UpstreamError:
    message = err.get("message") if isinstance(err, dict) else str(err)
    return UpstreamStatusError(f"model server reported an error: {message}", status=502)


def _map_client_error(
    exc: aiohttp.ClientError, base: str, *, mid_stream: bool = False
) -> UpstreamError:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamTimeoutError(f"could not connect to {base}: timed out", phase="connect")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamConnectionError(f"could not connect to model server {base}: {exc.os_error}")
    if mid_stream or isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return UpstreamConnectionError(
            f"connection to model server {base} was cut: {exc}", code="upstream_disconnected"
        )
    return UpstreamConnectionError(f"model server {base} failed: {exc}")
