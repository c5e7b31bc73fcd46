"""The async client: typed events from a stage stream, resumed when the connection drops.

A stage runs on the gateway, not on the connection, so a dropped connection loses nothing:
the stream reconnects to ``GET /stream/v1/stages/{id}`` with ``Last-Event-ID`` and carries on
from the next event. Every way a connection can end early counts as a drop: a reset, a
truncated chunked body, a read timeout, or a clean close before the terminal event.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any

import httpx
from pydantic import ValidationError

from stagecast.client.accumulate import EventDelta, StageAccumulator
from stagecast.client.errors import (
    StageCancelledError,
    StagecastConnectionError,
    StagecastHTTPError,
    StagecastProtocolError,
    StageError,
    StreamDroppedError,
)
from stagecast.client.models import CancelReceipt, StageAnswer, StageEvent
from stagecast.protocol.events import (
    EVENT_TYPES,
    TERMINAL_EVENTS,
    CancelPayload,
    ErrorPayload,
    parse_payload,
)
from stagecast.protocol.sse import ServerSentEvent, SSEDecoder

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_RETRY_MS = 1000
# Longest wait between two reconnection attempts, however long the backoff has grown.
MAX_RETRY_DELAY = 30.0
# Statuses a resume may meet while a gateway restarts or a load balancer fails over.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class StageStream:
    """An open stage stream: iterate it for ``StageEvent`` s; it resumes after a drop.

    Use it as ``async with``; it closes its connection on exit. Events come exactly once
    and in order, across reconnections. The answer accumulated so far is ``answer()``;
    ``final()`` reads to the end and returns it.

    ``raise_on_error``: after the ``error`` event is yielded, iteration raises ``StageError``.
    ``raise_on_cancel``: likewise ``StageCancelledError`` after a ``cancel`` event.
    """

    def __init__(
        self,
        client: AsyncStagecast,
        request: httpx.Request,
        *,
        stage_id: str | None = None,
        last_event_id: int = 0,
        max_resumes: int,
        retry_ms: int,
        raise_on_error: bool,
        raise_on_cancel: bool = False,
    ) -> None:
        self._client = client
        self._request = request
        self.stage_id = stage_id
        self.last_event_id = last_event_id
        self.max_resumes = max_resumes
        #: Delay before reconnecting, in ms; the gateway's ``retry:`` field replaces it.
        self.retry_ms = retry_ms
        #: Successful reconnections so far.
        self.resumes = 0
        #: The terminal event, once it has arrived.
        self.terminal: StageEvent | None = None
        self._raise_on_error = raise_on_error
        self._raise_on_cancel = raise_on_cancel
        self._accumulator = StageAccumulator(stage_id)
        self._pending: deque[tuple[StageEvent, EventDelta]] = deque()
        #: What the event last returned by iteration added to the answer (for renderers).
        self.last_delta = EventDelta()
        self._response: httpx.Response | None = None
        self._chunks: AsyncIterator[bytes] | None = None
        self._decoder = SSEDecoder()
        self._connected_once = False
        self._closed = False
        self._finished = False
        # Reconnections in a row that brought no new event; reset by every new event.
        self._failures = 0
        self._drop_cause: BaseException | None = None

    # --- lifecycle ---------------------------------------------------------------------
    async def __aenter__(self) -> StageStream:
        if not self._connected_once:
            await self._connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection. The stage itself goes on or stops by its ``on_disconnect``."""
        self._closed = True
        await self._disconnect()

    # --- iteration ---------------------------------------------------------------------
    def __aiter__(self) -> StageStream:
        return self

    async def __anext__(self) -> StageEvent:
        while not self._pending:
            if self.terminal is not None or self._closed:
                await self._disconnect()
                self._finish()
                raise StopAsyncIteration
            await self._fill()
        event, self.last_delta = self._pending.popleft()
        return event

    async def final(self) -> StageAnswer:
        """Read the rest of the stream and return the accumulated answer.

        Raises ``StageError`` (or ``StageCancelledError``) as iteration would.
        """
        async for _ in self:
            pass
        return self.answer()

    def answer(self) -> StageAnswer:
        """The answer accumulated from the events received so far."""
        answer = self._accumulator.result()
        answer.resumes = self.resumes
        if answer.stage_id is None:
            answer.stage_id = self.stage_id
        return answer

    @property
    def accumulator(self) -> StageAccumulator:
        """The live accumulator (renderers read growing tool calls from it)."""
        return self._accumulator

    def _finish(self) -> None:
        # Raise once: a second loop over a finished stream just ends.
        if self._finished:
            return
        self._finished = True
        term = self.terminal
        if term is None:
            return
        data = term.data
        if isinstance(data, ErrorPayload) and self._raise_on_error:
            raise StageError(data.stage_id, data.error, data.code, data.retryable)
        if isinstance(data, CancelPayload) and self._raise_on_cancel:
            raise StageCancelledError(data.stage_id, data.reason)

    # --- reading and reconnecting ------------------------------------------------------
    async def _fill(self) -> None:
        """Read once from the connection (reconnecting first if it dropped)."""
        if self._chunks is None:
            await self._connect()
            return
        try:
            raw = await self._chunks.__anext__()
        except StopAsyncIteration:
            # A clean end of the body before the terminal event is a drop too.
            self._drop_cause = None
            await self._disconnect()
            return
        except (httpx.TransportError, httpx.StreamError) as exc:
            # After aclose() from another task this ends the loop; otherwise it is a drop.
            self._drop_cause = exc
            await self._disconnect()
            return
        for sse in self._decoder.feed(raw):
            self._take(sse)
        # Read after feeding: a ``retry:`` may come in a block of its own, with no event.
        if self._decoder.retry is not None:
            self.retry_ms = self._decoder.retry

    def _take(self, sse: ServerSentEvent) -> None:
        if self.terminal is not None:
            return  # nothing may follow a terminal event
        try:
            event_id = int(sse.id) if sse.id else 0
        except ValueError:
            event_id = 0
        if event_id and event_id <= self.last_event_id:
            return  # replayed after a reconnection: already delivered
        if event_id:
            self.last_event_id = event_id
        self._failures = 0
        if sse.event not in EVENT_TYPES:
            return  # an event a newer gateway added: not ours to interpret
        try:
            payload = parse_payload(sse.event, sse.data)
        except ValidationError as exc:
            raise StagecastProtocolError(
                f"invalid {sse.event!r} payload in event {event_id}: {exc}"
            ) from exc
        event = StageEvent(event_id, sse.event, payload, sse.data)
        if self.stage_id is None:
            self.stage_id = payload.stage_id
        delta = self._accumulator.add(event)
        if event.event in TERMINAL_EVENTS:
            self.terminal = event
        self._pending.append((event, delta))

    async def _connect(self) -> None:
        if not self._connected_once:
            # The first request is not retried: a POST may have started a stage already.
            self._accumulator.started = time.monotonic()
            await self._open(self._request)
            self._connected_once = True
            return
        await self._resume()

    async def _resume(self) -> None:
        while True:
            if self.stage_id is None:
                raise self._dropped("the gateway did not say the stage id")
            if self._failures >= self.max_resumes:
                raise self._dropped(f"gave up after {self._failures} reconnection attempts")
            self._failures += 1
            await asyncio.sleep(self._delay())
            request = self._client.resume_request(self.stage_id, self.last_event_id)
            try:
                await self._open(request)
            except StagecastConnectionError as exc:
                self._drop_cause = exc
                continue
            except StagecastHTTPError as exc:
                if exc.status in RETRY_STATUSES:
                    self._drop_cause = exc
                    continue
                self._drop_cause = exc
                raise self._dropped(f"resuming failed: {exc}") from exc
            self.resumes += 1
            return

    def _delay(self) -> float:
        """Seconds to wait before the next attempt: ``retry:``, doubled per failed attempt."""
        base = self.retry_ms / 1000
        return min(base * 2.0 ** (self._failures - 1), max(base, MAX_RETRY_DELAY))

    def _dropped(self, why: str) -> StreamDroppedError:
        cause = f" ({self._drop_cause!r})" if self._drop_cause is not None else ""
        error = StreamDroppedError(
            f"stage stream {self.stage_id or '?'} dropped after event {self.last_event_id} "
            f"and could not resume: {why}{cause}",
            stage_id=self.stage_id,
            last_event_id=self.last_event_id,
            resumes=self.resumes,
        )
        error.__cause__ = self._drop_cause
        return error

    async def _open(self, request: httpx.Request) -> None:
        response = await self._client._send(request, stream=True)
        if response.status_code >= 400:
            with contextlib.suppress(httpx.HTTPError):
                await response.aread()
            await response.aclose()
            raise http_error(response)
        self._response = response
        self._chunks = response.aiter_bytes()
        self._decoder = SSEDecoder()
        self.stage_id = response.headers.get("x-stage-id", self.stage_id)

    async def _disconnect(self) -> None:
        chunks, response = self._chunks, self._response
        self._chunks = self._response = None
        # Close the byte iterator before the response, so no async generator is left to
        # the garbage collector (it might finalise it on a loop that is gone).
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(httpx.HTTPError, RuntimeError):
                await aclose()
        if response is not None:
            with contextlib.suppress(httpx.HTTPError):
                await response.aclose()


class AsyncStagecast:
    """Async client for a stagecast gateway.

    ``base_url`` defaults to ``$STAGECAST_URL`` (then ``http://127.0.0.1:8000``) and
    ``api_key`` to ``$STAGECAST_API_KEY``; the key is sent as ``Authorization: Bearer``.
    ``max_resumes`` bounds the reconnection attempts in a row that bring no new event;
    ``retry_ms`` is the first reconnection delay until the gateway sends its own ``retry:``.
    Pass ``http`` to use your own ``httpx.AsyncClient`` (you then close it yourself).
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 600.0,
        max_resumes: int = 5,
        retry_ms: int = DEFAULT_RETRY_MS,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = (base_url or os.environ.get("STAGECAST_URL") or DEFAULT_URL).rstrip("/")
        key = api_key or os.environ.get("STAGECAST_API_KEY")
        # Sent with every request rather than set on the client, so a caller's own
        # httpx client gets them too.
        self._headers: dict[str, str] = {"Authorization": f"Bearer {key}"} if key else {}
        self._owns_http = http is None
        self.http = http or httpx.AsyncClient(
            base_url=self.base_url, timeout=httpx.Timeout(timeout, connect=10.0)
        )
        self.max_resumes = max_resumes
        self.retry_ms = retry_ms

    async def __aenter__(self) -> AsyncStagecast:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (unless it was passed in)."""
        if self._owns_http:
            await self.http.aclose()

    # --- streams -----------------------------------------------------------------------
    def stream_chat(
        self, *, raise_on_error: bool = True, raise_on_cancel: bool = False, **body: Any
    ) -> StageStream:
        """Start a streamed chat stage; use as ``async with`` and iterate the events.

        ``body`` takes the fields of ``StageRequest`` (``user_prompt``, ``system_prompt``,
        ``messages``, ``model_container``, ``max_tokens``, ``stage_id``, ``on_disconnect``...).
        Set ``on_disconnect="continue"`` if a dropped connection must not stop the stage.
        """
        return self._post_stream("/stream/v1/chat", body, raise_on_error, raise_on_cancel)

    def stream_toolchain(
        self, *, raise_on_error: bool = True, raise_on_cancel: bool = False, **body: Any
    ) -> StageStream:
        """Start a streamed tool stage: tool-call deltas, ``tool_summary``, synthesis text.

        Besides the chat fields, ``body`` takes ``tools``, ``tool_choice``, ``synthesis``
        and ``max_tool_rounds``.
        """
        return self._post_stream("/stream/v1/toolchain", body, raise_on_error, raise_on_cancel)

    def attach(
        self,
        stage_id: str,
        last_event_id: int = 0,
        *,
        raise_on_error: bool = True,
        raise_on_cancel: bool = False,
    ) -> StageStream:
        """Attach to a running or retained stage, replaying the events after ``last_event_id``."""
        return StageStream(
            self,
            self.resume_request(stage_id, last_event_id),
            stage_id=stage_id,
            last_event_id=last_event_id,
            max_resumes=self.max_resumes,
            retry_ms=self.retry_ms,
            raise_on_error=raise_on_error,
            raise_on_cancel=raise_on_cancel,
        )

    async def collect_chat(self, *, raise_on_error: bool = True, **body: Any) -> StageAnswer:
        """Stream a chat stage to its end and return the accumulated answer."""
        async with self.stream_chat(raise_on_error=raise_on_error, **body) as stream:
            return await stream.final()

    async def collect_toolchain(self, *, raise_on_error: bool = True, **body: Any) -> StageAnswer:
        """Stream a tool stage to its end and return the accumulated answer."""
        async with self.stream_toolchain(raise_on_error=raise_on_error, **body) as stream:
            return await stream.final()

    def resume_request(self, stage_id: str, last_event_id: int) -> httpx.Request:
        """The request that resumes ``stage_id`` after ``last_event_id``."""
        return self.http.build_request(
            "GET",
            f"/stream/v1/stages/{stage_id}",
            headers={
                **self._headers,
                "Accept": "text/event-stream",
                "Last-Event-ID": str(last_event_id),
            },
        )

    def _post_stream(
        self, path: str, body: Mapping[str, Any], raise_on_error: bool, raise_on_cancel: bool
    ) -> StageStream:
        request = self.http.build_request(
            "POST",
            path,
            json=dict(body),
            headers={**self._headers, "Accept": "text/event-stream"},
        )
        return StageStream(
            self,
            request,
            stage_id=body.get("stage_id"),
            max_resumes=self.max_resumes,
            retry_ms=self.retry_ms,
            raise_on_error=raise_on_error,
            raise_on_cancel=raise_on_cancel,
        )

    # --- JSON routes -------------------------------------------------------------------
    async def complete_chat(self, **body: Any) -> dict[str, Any]:
        """Run a chat stage on the completion route; returns the seed's JSON result.

        That is ``{"stage_id", "type": "text", "text", ...}``; a failed stage raises
        ``StagecastHTTPError`` with the gateway's error ``code``.
        """
        return await self._json("POST", "/completion/v1/chat", body)

    async def complete_toolchain(self, **body: Any) -> dict[str, Any]:
        """Run a tool stage on the completion route; returns the seed's JSON result.

        ``{"type": "tool_results", "tool_results": {...}}`` without synthesis,
        ``{"type": "text", ...}`` with it.
        """
        return await self._json("POST", "/completion/v1/toolchain", body)

    async def cancel(self, stage_id: str) -> CancelReceipt:
        """Cancel a stage (idempotent) and return the gateway's receipt.

        The gateway answers once the stage has ended, so the receipt says how it ended.
        """
        return CancelReceipt.model_validate(
            await self._json("POST", f"/stream/v1/stages/{stage_id}/cancel", None)
        )

    async def models(self) -> list[dict[str, Any]]:
        """The roles the gateway serves (``id``, ``kind``, ``model``, ``default``)."""
        data = await self._json("GET", "/v1/models", None)
        return list(data["data"])

    async def tools(self) -> list[dict[str, Any]]:
        """The tools stages may use: name, description and argument schema."""
        data = await self._json("GET", "/v1/tools", None)
        return list(data["data"])

    async def health(self) -> dict[str, Any]:
        """The gateway's health report (also when it says it is degraded)."""
        return await self._json("GET", "/healthz", None, ok=(200, 503))

    async def _json(
        self, method: str, path: str, body: Any, ok: tuple[int, ...] = (200,)
    ) -> dict[str, Any]:
        request = self.http.build_request(method, path, json=body, headers=self._headers)
        response = await self._send(request)
        if response.status_code not in ok:
            raise http_error(response)
        try:
            result = response.json()
        except ValueError as exc:
            raise StagecastProtocolError(f"{method} {path}: the answer is not JSON") from exc
        if not isinstance(result, dict):
            raise StagecastProtocolError(f"{method} {path}: expected a JSON object")
        return result

    async def _send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        """Send, translating httpx's transport errors into the SDK's own."""
        try:
            return await self.http.send(request, stream=stream)
        except httpx.TransportError as exc:
            raise StagecastConnectionError(
                f"cannot reach the gateway at {self.base_url}: {exc!r}"
            ) from exc


def http_error(response: httpx.Response) -> StagecastHTTPError:
    """The SDK exception for an HTTP error response (its JSON body, when it has one)."""
    try:
        body = response.json()
    except (ValueError, httpx.ResponseNotRead):
        try:
            body = {"message": response.text}
        except httpx.ResponseNotRead:
            body = {"message": response.reason_phrase}
    if not isinstance(body, dict):
        body = {"message": str(body)}
    return StagecastHTTPError(response.status_code, body)
