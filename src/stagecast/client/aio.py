"""The async client: typed events from a stage stream, resumed when the connection drops."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

from stagecast.protocol.events import TERMINAL_EVENTS, SSEPayload, parse_payload
from stagecast.protocol.sse import SSEDecoder

DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True, slots=True)
class StageEvent:
    """One event of a stage: its id (sequence number), name and parsed payload."""

    id: int
    event: str
    data: SSEPayload
    raw: str


class StageStream:
    """An open stage stream; iterate it for events. Resumes after a dropped connection.

    ``raise_on_error``: an ``error`` event is raised as ``StageError`` after it is yielded.
    """

    def __init__(
        self,
        client: AsyncStagecast,
        request: httpx.Request,
        *,
        max_resumes: int,
        raise_on_error: bool,
    ) -> None:
        self._client = client
        self._request = request
        self._max_resumes = max_resumes
        self._raise = raise_on_error
        self.stage_id: str | None = None
        self.last_event_id = 0
        self.retry_ms = 1000
        self.resumes = 0
        self.terminal: StageEvent | None = None
        self._response: httpx.Response | None = None

    async def __aenter__(self) -> StageStream:
        await self._open(self._request)
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection (the stage itself goes on or is cancelled by its policy)."""
        if self._response is not None:
            await self._response.aclose()
            self._response = None

    async def _open(self, request: httpx.Request) -> None:
        response = await self._client.http.send(request, stream=True)
        if response.status_code >= 400:
            await response.aread()
            await response.aclose()
            raise _http_error(response)
        self._response = response
        self.stage_id = response.headers.get("x-stage-id", self.stage_id)

    def __aiter__(self) -> AsyncIterator[StageEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[StageEvent]:
        if self._response is None:
            await self._open(self._request)
        while True:
            assert self._response is not None
            decoder = SSEDecoder()
            try:
                async for raw in self._response.aiter_raw():
                    for sse in decoder.feed(raw):
                        event = StageEvent(
                            int(sse.id or 0),
                            sse.event,
                            parse_payload(sse.event, sse.data),
                            sse.data,
                        )
                        self.last_event_id = event.id
                        if decoder.retry is not None:
                            self.retry_ms = decoder.retry
                        if event.event in TERMINAL_EVENTS:
                            self.terminal = event
                        yield event
                        if self.terminal is not None:
                            await self.aclose()
                            self._check_terminal()
                            return
            except (httpx.TransportError, httpx.StreamError):
                pass
            await self.aclose()
            # The connection dropped before the terminal event: resume where we were.
            if self.stage_id is None or self.resumes >= self._max_resumes:
                raise ConnectionError(
                    f"stage stream dropped after event {self.last_event_id} and could not resume"
                )
            self.resumes += 1
            await asyncio.sleep(self.retry_ms / 1000)
            await self._open(self._client.resume_request(self.stage_id, self.last_event_id))

    def _check_terminal(self) -> None:
        from stagecast.client.errors import StageError

        term = self.terminal
        if term is not None and term.event == "error" and self._raise:
            data: Any = term.data
            raise StageError(data.stage_id, data.error, data.code, data.retryable)


class AsyncStagecast:
    """Async client for a stagecast gateway."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 600.0,
        max_resumes: int = 5,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = (base_url or os.environ.get("STAGECAST_URL") or DEFAULT_URL).rstrip("/")
        key = api_key or os.environ.get("STAGECAST_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = http or httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10.0),
        )
        self.max_resumes = max_resumes

    async def __aenter__(self) -> AsyncStagecast:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self.http.aclose()

    def _stream(self, path: str, body: dict[str, Any], raise_on_error: bool) -> StageStream:
        request = self.http.build_request(
            "POST", path, json=body, headers={"Accept": "text/event-stream"}
        )
        return StageStream(
            self, request, max_resumes=self.max_resumes, raise_on_error=raise_on_error
        )

    def stream_chat(self, *, raise_on_error: bool = True, **body: Any) -> StageStream:
        """Start a streamed chat stage; use as ``async with`` and iterate the events."""
        return self._stream("/stream/v1/chat", body, raise_on_error)

    def stream_toolchain(self, *, raise_on_error: bool = True, **body: Any) -> StageStream:
        """Start a streamed tool stage (tool call, optional synthesis)."""
        return self._stream("/stream/v1/toolchain", body, raise_on_error)

    def resume_request(self, stage_id: str, last_event_id: int) -> httpx.Request:
        """The request that resumes ``stage_id`` after ``last_event_id``."""
        return self.http.build_request(
            "GET",
            f"/stream/v1/stages/{stage_id}",
            headers={"Accept": "text/event-stream", "Last-Event-ID": str(last_event_id)},
        )

    def attach(
        self, stage_id: str, last_event_id: int = 0, *, raise_on_error: bool = True
    ) -> StageStream:
        """Attach to a running or retained stage, replaying after ``last_event_id``."""
        stream = StageStream(
            self,
            self.resume_request(stage_id, last_event_id),
            max_resumes=self.max_resumes,
            raise_on_error=raise_on_error,
        )
        stream.stage_id = stage_id
        stream.last_event_id = last_event_id
        return stream

    async def complete_chat(self, **body: Any) -> dict[str, Any]:
        """Run a chat stage and return the seed's JSON result."""
        return await self._json("POST", "/completion/v1/chat", body)

    async def complete_toolchain(self, **body: Any) -> dict[str, Any]:
        """Run a tool stage and return its JSON result."""
        return await self._json("POST", "/completion/v1/toolchain", body)

    async def cancel(self, stage_id: str) -> dict[str, Any]:
        """Cancel a stage; returns the receipt."""
        return await self._json("POST", f"/stream/v1/stages/{stage_id}/cancel", None)

    async def models(self) -> list[dict[str, Any]]:
        """The roles the gateway serves."""
        data = await self._json("GET", "/v1/models", None)
        return list(data["data"])

    async def health(self) -> dict[str, Any]:
        """The gateway's health report."""
        return await self._json("GET", "/healthz", None, ok=(200, 503))

    async def _json(
        self, method: str, path: str, body: Any, ok: tuple[int, ...] = (200,)
    ) -> dict[str, Any]:
        response = await self.http.request(method, path, json=body)
        if response.status_code not in ok:
            raise _http_error(response)
        result: dict[str, Any] = response.json()
        return result


def _http_error(response: httpx.Response) -> Exception:
    from stagecast.client.errors import StagecastHTTPError

    try:
        body = response.json()
    except ValueError:
        body = {"message": response.text}
    if not isinstance(body, dict):
        body = {"message": str(body)}
    return StagecastHTTPError(response.status_code, body)
