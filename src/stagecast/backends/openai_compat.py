"""Streaming client for OpenAI-compatible model servers over one pooled aiohttp session.

aiohttp rather than httpx: relaying many concurrent streams, httpx's connection pool scanned
every connection per chunk and cost about ten times the CPU (see DESIGN.md, "Backends").

Deadlines cost nothing per chunk: a watchdog timer wakes at the current deadline and, if the
stream has made progress since, re-arms itself; if not, it fails the pending read with an
``UpstreamTimeoutError``. A chunk only moves a float.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import yarl

from stagecast.backends.base import ChatCall, ChunkStream, ProbeResult, UpstreamChunk
from stagecast.config import ModelConfig
from stagecast.errors import (
    UpstreamConnectionError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)

log = logging.getLogger(__name__)

# A single SSE line from upstream may not exceed this (bounded memory against endless lines).
MAX_LINE_BYTES = 2 * 1024 * 1024


class _Watchdog:
    """Fails a pending read when the first-token, idle-gap or total deadline passes."""

    __slots__ = ("_handle", "_loop", "_reader", "deadline", "fired", "idle", "phase", "total_at")

    def __init__(self, reader: aiohttp.StreamReader, first_token: float, idle: float, total: float):
        self._loop = asyncio.get_running_loop()
        self._reader = reader
        now = self._loop.time()
        self.total_at = now + total
        self.idle = idle
        self.phase = "first_token"
        self.deadline = min(now + first_token, self.total_at)
        self.fired: UpstreamTimeoutError | None = None
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(self.deadline, self._check)

    def progress(self) -> None:
        """Note a chunk: the next deadline is one idle gap from now."""
        self.phase = "idle"
        self.deadline = min(self._loop.time() + self.idle, self.total_at)

    def _check(self) -> None:
        now = self._loop.time()
        if now < self.deadline:
            self._handle = self._loop.call_at(self.deadline, self._check)
            return
        self._handle = None
        phase = "total" if self.deadline >= self.total_at else self.phase
        what = {
            "first_token": "no first token",
            "idle": "no chunk",
            "total": "stream not finished",
        }[phase]
        limit = {"first_token": None, "idle": self.idle, "total": None}[phase]
        suffix = f" within {limit:g}s" if limit else " before the deadline"
        self.fired = UpstreamTimeoutError(f"model server timed out: {what}{suffix}", phase=phase)
        self._reader.set_exception(self.fired)

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
        # Parsed once: aiohttp would parse a string URL on every request.
        self._url = yarl.URL(self._base + "/chat/completions")
        self._session: aiohttp.ClientSession | None = None
        headers = {"Accept": "text/event-stream", "Content-Type": "application/json"}
        key = config.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._headers = headers

    @property
    def model_name(self) -> str:
        return self.config.model or "default"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout),
                # aiohttp refuses a line over twice this: the bound on one upstream SSE line.
                read_bufsize=MAX_LINE_BYTES // 2,
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
        cfg = self.config
        session = self._client()
        started = time.monotonic()
        try:
            async with asyncio.timeout(min(cfg.first_token_timeout, cfg.total_timeout)):
                resp = await session.post(self._url, data=self._body(call), headers=self._headers)
        except TimeoutError as exc:
            connecting = time.monotonic() - started < cfg.connect_timeout
            phase = "connect" if connecting else "first_token"
            raise UpstreamTimeoutError(
                f"model server {self._base} did not answer within {cfg.first_token_timeout:g}s",
                phase=phase,
            ) from exc
        except aiohttp.ClientError as exc:
            raise _map_client_error(exc, self._base) from exc
        reusable = False
        try:
            if resp.status >= 400:
                text = await _read_error_body(resp)
                raise UpstreamStatusError(
                    f"model server answered HTTP {resp.status}: {text[:300]}",
                    status=resp.status,
                    body=text,
                )
            remaining = cfg.total_timeout - (time.monotonic() - started)
            dog = _Watchdog(resp.content, cfg.first_token_timeout, cfg.idle_timeout, remaining)
            stream = _ChunkReader(resp, dog, self._base)
            try:
                yield stream
                reusable = stream.finished
            finally:
                dog.cancel()
        finally:
            if reusable:
                resp.release()
            else:
                # Closing (not releasing) drops the connection: that is how the model server
                # learns the client left and stops generating.
                resp.close()

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
        if self._session is not None:
            await self._session.close()
            self._session = None


class _ChunkReader:
    """Async iterator over the parsed chunks of one upstream SSE response.

    It takes whatever bytes have arrived (one read per network read, not one per line) and
    splits them into events itself; lines end at LF or CRLF. A line may not grow past
    MAX_LINE_BYTES, which bounds memory against a server that never sends a newline.
    """

    __slots__ = ("_base", "_buf", "_content", "_data", "_dog", "_ready", "finished")

    def __init__(self, resp: aiohttp.ClientResponse, dog: _Watchdog, base: str) -> None:
        self._content = resp.content
        self._dog = dog
        self._base = base
        self._buf = b""
        self._data: list[bytes] = []
        self._ready: deque[UpstreamChunk | None] = deque()
        self.finished = False

    def __aiter__(self) -> _ChunkReader:
        return self

    async def __anext__(self) -> UpstreamChunk:
        ready = self._ready
        while not ready:
            if self.finished:
                raise StopAsyncIteration
            try:
                piece = await self._content.readany()
            except UpstreamError:
                raise
            except aiohttp.ClientError as exc:
                raise _map_client_error(exc, self._base, mid_stream=True) from exc
            if not piece:
                raise UpstreamConnectionError(
                    "model server closed the stream before it finished",
                    code="upstream_disconnected",
                )
            self._feed(piece)
        item = ready.popleft()
        if item is None:
            await self._drain()
            raise StopAsyncIteration
        return item

    def _feed(self, piece: bytes) -> None:
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
                self._dispatch()
                if self.finished:
                    self._buf = b""
                    return
        self._buf = buf[start:]
        if len(self._buf) > MAX_LINE_BYTES:
            raise UpstreamProtocolError(
                f"model server sent an over-long line (more than {MAX_LINE_BYTES} bytes)"
            )

    def _dispatch(self) -> None:
        data = self._data
        payload = data[0] if len(data) == 1 else b"\n".join(data)
        self._data = []
        if payload == b"[DONE]":
            self.finished = True
            self._ready.append(None)
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
        self._dog.progress()
        self._ready.append(UpstreamChunk(parsed, payload))

    async def _drain(self) -> None:
        # Read the end of the body so the pooled connection can be reused.
        try:
            async with asyncio.timeout(1.0):
                while await self._content.readany():
                    pass
        except (TimeoutError, aiohttp.ClientError, UpstreamError):
            self.finished = False


async def _read_error_body(resp: aiohttp.ClientResponse) -> str:
    try:
        async with asyncio.timeout(2.0):
            raw = await resp.content.read(8192)
    except (TimeoutError, aiohttp.ClientError):
        return ""
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
