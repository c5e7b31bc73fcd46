"""The server's body writer (``stagecast.api.push``) under a real uvicorn, as served."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from stagecast.api.push import PUSH, PushingHttpToolsProtocol
from stagecast.client import AsyncStagecast
from stagecast.config import Settings
from stagecast.server import build_config
from tests.conftest import GatewayFactory, no_leaks, role
from tests.peers.fake_upstream import FakeUpstream, Script, chunk, data, done
from tests.peers.servers import serve, wait_for
from tests.test_chat_stream import assert_protocol, text_of


class PushProbe:
    """An ASGI app that writes its body with ``push`` where it can, and notes each answer."""

    def __init__(self) -> None:
        self.answers: list[tuple[str, bool]] = []
        self.released = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        push = scope[PUSH]
        self.answers.append(("before start", push(b"too early")))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for piece in (b"one", b"two", b"three"):
            self.answers.append((piece.decode(), push(piece)))
        await send({"type": "http.response.body", "body": b"four", "more_body": False})
        self.answers.append(("after the end", push(b"too late")))
        self.released.set()


def get_until(sock: socket.socket, enough: Callable[[bytes], bool]) -> bytes:
    """Send a GET on ``sock`` and read the answer until ``enough`` says so."""
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    raw = b""
    while not enough(raw):
        piece = sock.recv(65536)
        assert piece, raw
        raw += piece
    return raw


def test_push_writes_chunks_of_a_started_body_and_nothing_else() -> None:
    probe = PushProbe()
    with serve(probe) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            raw = get_until(sock, lambda got: got.endswith(b"0\r\n\r\n"))
        assert probe.released.wait(10)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert body == b"3\r\none\r\n3\r\ntwo\r\n5\r\nthree\r\n4\r\nfour\r\n0\r\n\r\n"
    assert probe.answers == [
        ("before start", False),
        ("one", True),
        ("two", True),
        ("three", True),
        ("after the end", False),
    ]


class CloseProbe:
    """An ASGI app that watches for its client leaving through the writer, and notes it."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.first_watch: bool | None = None
        self.late_watch: bool | None = None
        self.noticed = threading.Event()
        self.go_on = threading.Event()
        self.released = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        push = scope[PUSH]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        self.first_watch = push.watch_close(self.on_close)
        push(b"first")
        await asyncio.to_thread(self.go_on.wait, 10)
        # The client is gone by now: a new watch is refused, not left waiting forever.
        self.late_watch = push.watch_close(self.on_close)
        self.released.set()

    def on_close(self) -> None:
        self.calls.append("closed")
        self.noticed.set()


def test_the_writer_tells_its_response_once_when_the_client_leaves() -> None:
    probe = CloseProbe()
    with serve(probe) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            get_until(sock, lambda got: b"first" in got)
        assert probe.noticed.wait(10), "the client's leaving was not reported"
        probe.go_on.set()
        assert probe.released.wait(10)
    assert probe.first_watch is True
    assert probe.late_watch is False
    assert probe.calls == ["closed"]


class AddressProbe:
    """An ASGI app that notes the scope's ``client`` and ``server`` and answers 204."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.seen.append((scope["client"], scope["server"]))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_the_scope_names_both_ends_of_the_connection(loop: str) -> None:
    probe = AddressProbe()
    with serve(probe, loop=loop) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            get_until(sock, lambda got: b"\r\n\r\n" in got)
            local = sock.getsockname()
    # As uvicorn's own protocol puts them: (host, port) of the client, then of the server.
    assert probe.seen == [(("127.0.0.1", local[1]), ("127.0.0.1", server.port))]


def test_stagecast_serve_uses_the_pushing_protocol() -> None:
    settings = Settings(models={"fake": role("http://127.0.0.1:9/v1")})
    assert build_config(settings).http is PushingHttpToolsProtocol


async def test_a_streamed_stage_is_pushed_once_its_reader_has_caught_up(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    """While the model is slow, the stage's reader is a pushed one; every event arrives."""
    gw = make_gateway(models={"fake": role(upstream.url)})
    steps = data(chunk({"role": "assistant", "content": ""}))
    for i in range(30):
        steps += data(chunk({"content": f" w{i}"}), delay=0.02)
    steps += data(chunk({}, finish="stop")) + done()
    upstream.enqueue(Script(steps))

    def pushed() -> bool:
        log = gw.state.hub._logs.get("pushed-stage")
        return bool(log is not None and log.pushers)

    arrived: list[float] = []
    events = []
    with no_leaks(gw):
        async with AsyncStagecast(gw.url) as client:
            watching = asyncio.ensure_future(asyncio.to_thread(wait_for, pushed, 10, 0.002))
            async with client.stream_chat(user_prompt="x", stage_id="pushed-stage") as stream:
                async for event in stream:
                    events.append(event)
                    arrived.append(time.monotonic())
            assert await watching, "the reader was never pushed to"
    assert_protocol(events, "pushed-stage")
    assert events[-1].event == "done"
    assert text_of(events) == "".join(f" w{i}" for i in range(30))
    # Each chunk went out as it was read, not when the stream ended: the model took at least
    # 30 x 20 ms, and so did the events' arrival.
    assert arrived[-1] - arrived[1] >= 0.4
