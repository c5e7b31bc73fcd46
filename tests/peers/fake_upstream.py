"""A scripted OpenAI-compatible model server: a real HTTP server for tests.

Tests queue replies (chunks at a pace, error statuses, stalls, cut connections, garbage); the
server records every request it received and when each client went away.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tests.peers.servers import ServerThread, wait_for


class ScriptedCut(Exception):
    """Raised inside the app to make the server drop the connection mid-response."""


@dataclass
class Step:
    kind: str  # "data" | "raw" | "sleep" | "cut"
    payload: bytes = b""
    seconds: float = 0.0


@dataclass
class Script:
    steps: list[Step] = field(default_factory=list)
    status: int = 200
    error_body: bytes = b""
    delay_headers: float = 0.0


@dataclass
class Recorded:
    path: str
    body: Any
    headers: dict[str, str]
    received_at: float
    finished_at: float | None = None
    disconnected_at: float | None = None


_counter = 0


def chunk(
    delta: dict[str, Any] | None = None,
    *,
    finish: str | None = None,
    usage: dict[str, int] | None = None,
    choices: list[dict[str, Any]] | None = None,
    model: str = "fake-model",
    **extra: Any,
) -> dict[str, Any]:
    """An OpenAI ``chat.completion.chunk`` object."""
    body: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
        "choices": choices
        if choices is not None
        else [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = usage
    body.update(extra)
    return body


def data(obj: Any, delay: float = 0.0) -> list[Step]:
    """A ``data:`` event (after an optional pause)."""
    steps = [Step("sleep", seconds=delay)] if delay else []
    steps.append(Step("data", json.dumps(obj).encode()))
    return steps


def done() -> list[Step]:
    return [Step("data", b"[DONE]")]


def text_script(
    pieces: list[str],
    *,
    pace: float = 0.0,
    first_delay: float = 0.0,
    finish: str = "stop",
    usage: bool = True,
    field_name: str = "content",
    model: str = "fake-model",
) -> Script:
    """Stream ``pieces`` as content deltas, ``pace`` seconds apart, then finish and [DONE]."""
    steps: list[Step] = []
    steps += data(chunk({"role": "assistant", field_name: ""}, model=model), first_delay)
    for piece in pieces:
        steps += data(chunk({field_name: piece}, model=model), pace)
    steps += data(chunk({}, finish=finish, model=model))
    if usage:
        n = len(pieces)
        steps += data(
            chunk(
                model=model,
                choices=[],
                usage={"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n},
            )
        )
    steps += done()
    return Script(steps)


def error_script(status: int, message: str = "scripted failure") -> Script:
    body = json.dumps({"error": {"message": message, "type": "fake_error"}}).encode()
    return Script(status=status, error_body=body)


class FakeUpstream:
    """The app and its recordings; ``url`` is the OpenAI base URL (ending in /v1)."""

    def __init__(self) -> None:
        self.scripts: deque[Script] = deque()
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self.server: ServerThread | None = None
        self.url = ""
        self.fallback: Script | None = None

    # --- test side -------------------------------------------------------------------
    def enqueue(self, *scripts: Script) -> None:
        self.scripts.extend(scripts)

    def chat_requests(self) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def wait_disconnected(self, index: int = -1, timeout: float = 10.0) -> Recorded:
        """Wait until request ``index`` saw its client leave; fail if it never does."""
        ok = wait_for(
            lambda: (
                bool(self.chat_requests())
                and self.chat_requests()[index].disconnected_at is not None
            ),
            timeout,
        )
        assert ok, "the upstream connection was not closed by the gateway"
        return self.chat_requests()[index]

    def wait_requests(self, n: int, timeout: float = 10.0) -> list[Recorded]:
        assert wait_for(lambda: len(self.chat_requests()) >= n, timeout), (
            f"expected {n} upstream requests, saw {len(self.chat_requests())}"
        )
        return self.chat_requests()

    # --- server side -----------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        record = Recorded(path, body, headers, time.monotonic())
        with self._lock:
            self.requests.append(record)
        if scope["method"] == "GET" and path.endswith("/models"):
            await _json(send, 200, {"object": "list", "data": [{"id": "fake-model"}]})
            record.finished_at = time.monotonic()
            return
        if not path.endswith("/chat/completions"):
            await _json(send, 404, {"error": {"message": f"no route {path}"}})
            return
        script = self.scripts.popleft() if self.scripts else self.fallback
        if script is None:
            await _json(send, 500, {"error": {"message": "no scripted reply queued"}})
            return
        gone = asyncio.Event()

        async def watch() -> None:
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    record.disconnected_at = time.monotonic()
                    gone.set()
                    return

        watcher = asyncio.ensure_future(watch())
        try:
            await self._play(script, send, gone, record)
        finally:
            watcher.cancel()

    async def _play(self, script: Script, send: Any, gone: asyncio.Event, record: Recorded) -> None:
        if script.delay_headers and await _sleep_or_gone(script.delay_headers, gone):
            return
        if script.status != 200:
            await send(
                {
                    "type": "http.response.start",
                    "status": script.status,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": script.error_body})
            record.finished_at = time.monotonic()
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for step in script.steps:
            if gone.is_set():
                return
            if step.kind == "sleep":
                if await _sleep_or_gone(step.seconds, gone):
                    return
            elif step.kind == "cut":
                raise ScriptedCut("scripted connection cut")
            else:
                frame = step.payload if step.kind == "raw" else b"data: " + step.payload + b"\n\n"
                try:
                    await send({"type": "http.response.body", "body": frame, "more_body": True})
                except OSError:
                    return
        if not gone.is_set():
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            record.finished_at = time.monotonic()


async def _sleep_or_gone(seconds: float, gone: asyncio.Event) -> bool:
    try:
        await asyncio.wait_for(gone.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def _json(send: Any, status: int, obj: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(obj).encode()})


@contextmanager
def fake_upstream() -> Iterator[FakeUpstream]:
    """A running fake model server."""
    app = FakeUpstream()
    server = ServerThread(app)
    server.start()
    app.server = server
    app.url = server.url + "/v1"
    try:
        yield app
    finally:
        server.stop()
