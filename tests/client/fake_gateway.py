"""A scripted fake gateway: serves one stage's events and ends each connection as told.

It is a real HTTP server (uvicorn, port 0) so the SDK meets real drop shapes: a chunked body
cut off mid-frame, a clean close before the terminal event, refusals while "restarting",
a stage that expired, and a server that replays events the client already has. It records
every request (method, path, headers) it received.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from stagecast.protocol.sse import encode_frame
from tests.peers.servers import ServerThread


class CutMidBody(Exception):
    """Raised inside the app: uvicorn then drops the connection without ending the body."""


@dataclass
class Plan:
    """How one connection goes.

    ``send`` events after the client's position (``None``: all that remain), then ``end``:
    ``close`` ends the body cleanly, ``truncate`` sends half of the next frame and drops the
    connection (an incomplete chunked read). ``status`` answers with that HTTP error instead.
    ``replay`` starts from the first event whatever ``Last-Event-ID`` says; ``retry_ms``
    opens the body with a ``retry:`` block that carries no event.
    """

    send: int | None = None
    end: str = "close"
    status: int = 200
    replay: bool = False
    retry_ms: int | None = None


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class ScriptedGateway:
    """An ASGI app serving ``frames`` of stage ``stage_id`` by ``plans`` (one per request)."""

    stage_id: str
    frames: list[bytes]
    plans: list[Plan]
    requests: list[Request] = field(default_factory=list)
    url: str = ""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.requests.append(Request(scope["method"], scope["path"], headers))
        while (await receive()).get("more_body"):
            pass
        if scope["path"].endswith("/cancel"):
            await _json(send, 200, _receipt(self.stage_id))
            return
        plan = self.plans.pop(0) if self.plans else Plan()
        if plan.status != 200:
            await _json(send, plan.status, {"code": f"status_{plan.status}", "message": "no"})
            return
        after = 0 if plan.replay else int(headers.get("last-event-id", "0"))
        frames = self.frames[after:]
        if plan.send is not None:
            frames = frames[: plan.send]
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"x-stage-id", self.stage_id.encode()),
                ],
            }
        )
        if plan.retry_ms is not None:
            preamble = b"retry: %d\n\n" % plan.retry_ms
            await send({"type": "http.response.body", "body": preamble, "more_body": True})
        for frame in frames:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        if plan.end == "truncate":
            rest = self.frames[after + len(frames) :]
            if rest:
                half = rest[0][: len(rest[0]) // 2]
                await send({"type": "http.response.body", "body": half, "more_body": True})
            raise CutMidBody("scripted cut mid-body")
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _receipt(stage_id: str) -> dict[str, Any]:
    return {
        "stage_id": stage_id,
        "status_before": "running",
        "status_after": "cancelled",
        "cancel_requested": True,
        "upstream_aborted": True,
        "completion_tokens": 3,
        "tools_run": [],
        "a_future_field": "kept",
    }


async def _json(send: Any, status: int, body: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def chat_frames(stage_id: str, words: list[str], *, retry_ms: int = 20) -> list[bytes]:
    """A chat stage's frames: one chunk per word, then ``done``; ids 1..N."""
    frames = []
    for i, word in enumerate(words):
        chunk = {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
        }
        payload = json.dumps({"stage_id": stage_id, "chunk": chunk}).encode()
        frames.append(
            encode_frame(
                "chat_completion_chunk", payload, id=i + 1, retry=retry_ms if i == 0 else None
            )
        )
    done = json.dumps({"stage_id": stage_id, "finish_reason": "stop"}).encode()
    frames.append(encode_frame("done", done, id=len(words) + 1))
    return frames


@contextmanager
def scripted_gateway(
    stage_id: str, frames: list[bytes], plans: list[Plan]
) -> Iterator[ScriptedGateway]:
    """A running scripted gateway."""
    app = ScriptedGateway(stage_id, frames, list(plans))
    server = ServerThread(app, lifespan="off")
    server.start()
    app.url = server.url
    try:
        yield app
    finally:
        server.stop()
