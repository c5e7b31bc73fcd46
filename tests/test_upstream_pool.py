"""The upstream HTTP/1.1 pool against a model server scripted at the socket level."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trustme

from stagecast.client import AsyncStagecast
from stagecast.protocol.sse import SSEDecoder
from tests.conftest import GatewayFactory, no_leaks, role
from tests.peers.raw_http import (
    Handler,
    RawServer,
    chunked_response,
    raw_server,
    sized_response,
    sse_body,
)
from tests.test_chat_stream import assert_protocol, collect, text_of

WORDS = ["pooled", " connections", " work"]


def serve_forever(response: bytes) -> Handler:
    """A handler answering every request on a connection with ``response``, keeping it open."""

    def handler(server: RawServer, index: int, sock: socket.socket) -> None:
        while server.read_request(sock) is not None:
            sock.sendall(response)

    return handler


async def stages(make_gateway: GatewayFactory, base_url: str, n: int = 1) -> list[Any]:
    """The events of ``n`` stages run one after another on a role served at ``base_url``."""
    gw = make_gateway(models={"raw": role(base_url)})
    runs = []
    with no_leaks(gw):
        async with AsyncStagecast(gw.url) as client:
            for _ in range(n):
                _, events = await collect(client, user_prompt="x")
                runs.append(events)
    return runs


async def test_sequential_stages_reuse_one_connection(make_gateway: GatewayFactory) -> None:
    with raw_server(serve_forever(sized_response(sse_body(WORDS)))) as server:
        for events in await stages(make_gateway, server.url, 3):
            assert_protocol(events)
            assert text_of(events) == "pooled connections work"
        assert server.requests == 3
        assert server.connections == 1


async def test_a_dropped_idle_connection_is_replaced(make_gateway: GatewayFactory) -> None:
    """The server closes a kept-alive connection as the next request arrives: one retry."""
    response = sized_response(sse_body(WORDS))

    def handler(server: RawServer, index: int, sock: socket.socket) -> None:
        if index == 0:
            assert server.read_request(sock) is not None
            sock.sendall(response)
            server.read_request(sock)  # the second request: hang up without an answer
            return
        while server.read_request(sock) is not None:
            sock.sendall(response)

    with raw_server(handler) as server:
        for events in await stages(make_gateway, server.url, 2):
            assert_protocol(events)
            assert events[-1].event == "done", events[-1]
            assert text_of(events) == "pooled connections work"
        assert server.connections == 2
        assert server.requests == 3


async def test_chunked_response_sent_byte_by_byte(make_gateway: GatewayFactory) -> None:
    response = chunked_response(sse_body(["every", " byte", " alone", " \u00e9t\u00e9"]))

    def handler(server: RawServer, index: int, sock: socket.socket) -> None:
        while server.read_request(sock) is not None:
            for i in range(len(response)):
                sock.sendall(response[i : i + 1])
                if i % 64 == 0:
                    time.sleep(0.001)

    with raw_server(handler) as server:
        for events in await stages(make_gateway, server.url, 2):
            assert_protocol(events)
            assert text_of(events) == "every byte alone \u00e9t\u00e9"
        # The chunked body ended cleanly, so its connection was kept for the second stage.
        assert server.connections == 1


async def test_body_ended_by_close_is_not_reused(make_gateway: GatewayFactory) -> None:
    body = sse_body(WORDS)

    def handler(server: RawServer, index: int, sock: socket.socket) -> None:
        if server.read_request(sock) is not None:
            head = (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
            )
            sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)

    with raw_server(handler) as server:
        for events in await stages(make_gateway, server.url, 2):
            assert_protocol(events)
            assert text_of(events) == "pooled connections work"
        assert server.connections == 2


async def test_an_answer_that_is_not_http_is_an_error_event(
    make_gateway: GatewayFactory,
) -> None:
    def handler(server: RawServer, index: int, sock: socket.socket) -> None:
        if server.read_request(sock) is not None:
            sock.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
            time.sleep(0.5)

    with raw_server(handler) as server:
        (events,) = await stages(make_gateway, server.url)
    assert_protocol(events)
    error: Any = events[-1].data
    assert events[-1].event == "error"
    assert error.code == "upstream_malformed", error
    assert "malformed HTTP response" in error.error


async def test_error_status_body_is_reported(make_gateway: GatewayFactory) -> None:
    body = b'{"error": {"message": "model is loading"}}'
    answer = (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )

    def handler(server: RawServer, index: int, sock: socket.socket) -> None:
        while server.read_request(sock) is not None:
            sock.sendall(answer)

    with raw_server(handler) as server:
        (events,) = await stages(make_gateway, server.url)
    error: Any = events[-1].data
    assert events[-1].event == "error"
    assert error.code == "upstream_status"
    assert "HTTP 503: model is loading" in error.error


def tls_handler(ctx: ssl.SSLContext, response: bytes) -> Handler:
    def handler(server: RawServer, index: int, sock: socket.socket) -> None:
        try:
            tls = ctx.wrap_socket(sock, server_side=True)
        except ssl.SSLError:
            return  # the gateway refused our certificate
        with tls:
            while server.read_request(tls) is not None:
                tls.sendall(response)

    return handler


async def test_https_model_server(
    make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    # The gateway trusts the system's CA bundle; SSL_CERT_FILE points it at another one.
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    with raw_server(tls_handler(server_ctx, sized_response(sse_body(WORDS)))) as server:
        for events in await stages(make_gateway, server.url.replace("http://", "https://"), 2):
            assert_protocol(events)
            assert text_of(events) == "pooled connections work"
        assert server.connections == 1


async def test_untrusted_certificate_is_refused(make_gateway: GatewayFactory) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(server_ctx)
    with raw_server(tls_handler(server_ctx, sized_response(sse_body(WORDS)))) as server:
        (events,) = await stages(make_gateway, server.url.replace("http://", "https://"))
    error: Any = events[-1].data
    assert events[-1].event == "error"
    assert error.code == "upstream_unreachable", error
    assert "CERTIFICATE_VERIFY_FAILED" in error.error
    assert server.requests == 0


async def test_fast_model_and_slow_client_lose_nothing(make_gateway: GatewayFactory) -> None:
    """The upstream read pauses while the client is far behind, instead of cutting it off."""
    words = [f" w{i}" for i in range(30_000)]
    response = sized_response(sse_body(words))
    with raw_server(serve_forever(response)) as server:
        gw = make_gateway(models={"raw": role(server.url)}, max_reader_lag=3_000)
        with no_leaks(gw):
            async with httpx.AsyncClient(base_url=gw.url, timeout=60) as http:
                async with http.stream("POST", "/stream/v1/chat", json={"user_prompt": "x"}) as r:
                    assert r.status_code == 200
                    raw = b""
                    async for piece in r.aiter_raw():
                        if not raw:
                            await asyncio.sleep(1.5)  # the model races ahead meanwhile
                        raw += piece
    events = [(e.event, e.data) for e in SSEDecoder().feed(raw)]
    assert events[-1][0] == "done", events[-1]
    text = "".join(
        (orjson.loads(d)["chunk"]["choices"] or [{}])[0].get("delta", {}).get("content") or ""
        for e, d in events
        if e == "chat_completion_chunk"
    )
    assert text == "".join(words)


def _dechunk(body: bytes) -> bytes:
    out = []
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out.append(rest[:size])
        body = rest[size + 2 :]
    return b"".join(out)


def _stalled_read(port: int, stall: float) -> bytes:
    """POST a stage, read nothing for ``stall`` seconds through a small window, then all."""
    body = b'{"user_prompt": "x"}'
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.connect(("127.0.0.1", port))
    with sock:
        sock.sendall(
            b"POST /stream/v1/chat HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        time.sleep(stall)
        raw = b""
        while not raw.endswith(b"0\r\n\r\n"):
            piece = sock.recv(1 << 20)
            if not piece:
                break
            raw += piece
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return _dechunk(rest)


async def test_a_stalled_client_holds_the_model_back_without_a_timeout(
    make_gateway: GatewayFactory,
) -> None:
    """The socket fills, the upstream is held for seconds, and its idle deadline waits."""
    words = [f" w{i}" for i in range(30_000)]
    with raw_server(serve_forever(sized_response(sse_body(words)))) as server:
        gw = make_gateway(
            models={"raw": role(server.url, first_token_timeout=1.0, idle_timeout=0.5)}
        )
        with no_leaks(gw):
            raw = await asyncio.to_thread(_stalled_read, gw.server.port, 2.0)
    events = [(e.event, e.data) for e in SSEDecoder().feed(raw)]
    assert events[-1][0] == "done", events[-1]
    assert sum(1 for e, _ in events if e == "chat_completion_chunk") == len(words) + 2
