"""A mock OpenAI-compatible model server that is never the bottleneck of the benchmark.

A raw asyncio protocol (run on uvloop) with a minimal HTTP/1.1 parser: no framework runs per
request or per chunk. Every chunk of a stream is one ``%``-format of a template made when the
stream starts (about 330 bytes of ``data: {...}\\n\\n`` in chunked transfer encoding); the only
bytes that change are its sequence number and the ``CLOCK_MONOTONIC`` nanoseconds at which it
was written, so a client on the same host measures each chunk's delivery latency exactly.

Stream parameters ride in the last message's content, so they pass through any gateway:
``bench sid=<stream id> n=<chunks> iv=<ms between chunks, 0 = flat out> delay=<ms before the
first chunk>``. Chunk ``i`` (from 0) is due at ``start + delay + i * iv`` on the loop clock:
absolute times, so a late timer never shifts the chunks after it.

When a peer closes a connection while a stream on it is unfinished, the server logs the stream
id and the time; the runner reads that log from ``GET /_bench/closes`` to measure how long a
gateway takes to close its upstream request after its own client left. ``GET /_bench/stats``
counts streams and connections; ``POST /_bench/abort`` ends every running stream.

Run: ``python -m bench.mock_upstream [--port 0]``; it prints ``READY <port>`` when listening.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import resource
import signal
import socket
import sys
import time
from typing import Any, cast

import orjson

log = logging.getLogger("bench.mock_upstream")

# The size of one ``data: {...}\n\n`` event, as the issue asks (a typical token chunk of a
# real server with id, model, fingerprint and logprobs fields is 250-400 bytes).
EVENT_BYTES = 330
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 4 * 1024 * 1024
# Bounds, so that a malformed request can never make an endless stream.
MAX_CHUNKS = 1_000_000
MAX_DELAY_MS = 600_000.0
# Flat-out streams write this many chunks per loop turn, so that one stream cannot starve the
# others (and the pause_writing signal is honoured between batches).
FLAT_BATCH = 16

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"\r\n"
)


def _chunked(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _json_response(status: int, obj: Any, *, close: bool = False) -> bytes:
    body = orjson.dumps(obj)
    reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found"}.get(status, b"Error")
    extra = b"Connection: close\r\n" if close else b""
    return b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status,
        reason,
        len(body),
        extra,
        body,
    )


class StreamParams:
    """What one streamed request asks of the mock (parsed from the last message)."""

    __slots__ = ("delay_ms", "interval_ms", "n", "sid", "usage")

    def __init__(self, body: bytes) -> None:
        self.sid = "anon"
        self.n = 10
        self.interval_ms = 20.0
        self.delay_ms = 0.0
        self.usage = False
        text = ""
        try:
            obj = orjson.loads(body)
            messages = obj.get("messages") or []
            content = messages[-1].get("content") if messages else ""
            if isinstance(content, list):  # content parts
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            text = content if isinstance(content, str) else ""
            options = obj.get("stream_options") or {}
            self.usage = bool(options.get("include_usage"))
        except (orjson.JSONDecodeError, AttributeError, TypeError, IndexError):
            pass
        for token in text.split():
            key, sep, value = token.partition("=")
            if not sep:
                continue
            try:
                if key == "sid":
                    self.sid = value[:64]
                elif key == "n":
                    self.n = max(0, min(int(value), MAX_CHUNKS))
                elif key == "iv":
                    self.interval_ms = max(0.0, float(value))
                elif key == "delay":
                    self.delay_ms = max(0.0, min(float(value), MAX_DELAY_MS))
            except ValueError:
                continue


class MockStats:
    """Counters and the close log, shared by every connection of one server."""

    def __init__(self) -> None:
        self.connections: set[MockConnection] = set()
        self.active = 0
        self.started = 0
        self.finished = 0
        self.aborted = 0
        self.chunks = 0
        self.idle_closes = 0
        # (stream id, CLOCK_MONOTONIC ns when the peer's close was seen, chunks sent, phase)
        self.closes: list[tuple[str, int, int, str]] = []

    def snapshot(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "connections": len(self.connections),
            "started": self.started,
            "finished": self.finished,
            "aborted": self.aborted,
            "chunks": self.chunks,
            "idle_closes": self.idle_closes,
            "pending_closes": len(self.closes),
        }


class _Stream:
    """One streamed response in progress on a connection."""

    __slots__ = ("conn", "fmt", "handle", "id_json", "interval", "n", "params", "seq", "start")

    def __init__(self, conn: MockConnection, params: StreamParams, start: float) -> None:
        self.conn = conn
        self.params = params
        self.n = params.n
        self.seq = 1
        self.start = start + params.delay_ms / 1000.0
        self.interval = params.interval_ms / 1000.0
        self.handle: asyncio.Handle | None = None
        self.id_json = orjson.dumps(f"chatcmpl-{params.sid}")
        self.fmt = self._template()

    def _prefix(self) -> bytes:
        """``{"id":...,"object":...,"created":...,"model":...,`` shared by every chunk."""
        return (
            b'{"id":' + self.id_json + b',"object":"chat.completion.chunk","created":%d,'
            b'"model":"mock","system_fingerprint":"fp_bench",' % int(time.time())
        )

    def _template(self) -> bytes:
        # The marker is fixed width, so the chunk length, and with it the chunked-encoding
        # size line, is the same for every chunk of the stream: one %-format per chunk.
        head = self._prefix() + b'"choices":[{"index":0,"delta":{"content":"'
        tail = b'"},"logprobs":null,"finish_reason":null}]}'
        marker = b"s=%06d t=%019d "
        fixed = len(b"data: ") + len(head) + len(marker % (0, 0)) + len(tail) + 2
        filler = (b"lorem ipsum dolor sit amet " * 16)[: max(8, EVENT_BYTES - fixed)]
        event_len = fixed + len(filler)
        return b"".join(
            [
                b"%x\r\n" % event_len,
                b"data: ",
                head.replace(b"%", b"%%"),
                marker,
                filler,
                tail,
                b"\n\n\r\n",
            ]
        )

    def chunk(self) -> bytes:
        """The next content chunk, stamped with the time it is handed to the socket."""
        data = self.fmt % (self.seq, time.monotonic_ns())
        self.seq += 1
        return data

    def ending(self) -> bytes:
        """The finish chunk, the usage chunk when asked for, ``[DONE]`` and the last chunk."""
        prefix = self._prefix()
        finish = b'"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}'
        parts = [_chunked(b"data: " + prefix + finish + b"\n\n")]
        if self.params.usage:
            usage = (
                b'"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":%d,'
                b'"total_tokens":%d}}' % (self.n, self.n + 12)
            )
            parts.append(_chunked(b"data: " + prefix + usage + b"\n\n"))
        parts.append(_chunked(b"data: [DONE]\n\n"))
        parts.append(b"0\r\n\r\n")
        return b"".join(parts)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


class MockConnection(asyncio.Protocol):
    """One client connection: parses requests, streams responses, logs the peer's close."""

    def __init__(self, stats: MockStats, loop: asyncio.AbstractEventLoop) -> None:
        self.stats = stats
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.stream: _Stream | None = None
        self.paused = False
        self.close_after = False
        self.gone = False
        self.aborting = False

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stats.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.stream is None:
            self._parse()

    def eof_received(self) -> bool:
        self._peer_closed()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.aborting:
            self._peer_closed()
        self.gone = True
        self.stats.connections.discard(self)
        if self.stream is not None:
            self._drop_stream()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        st = self.stream
        if st is not None and st.interval == 0 and st.handle is None and st.seq > 0:
            st.handle = self.loop.call_soon(self._flat)

    # -- requests ------------------------------------------------------------------------

    def _parse(self) -> None:
        while self.stream is None and not self.gone:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD_BYTES:
                    self._reply(_json_response(400, {"error": "head too large"}, close=True))
                return
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            try:
                method, target, _version = lines[0].split(" ", 2)
            except ValueError:
                self._reply(_json_response(400, {"error": "bad request line"}, close=True))
                return
            length = 0
            close = False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value.strip() or 0)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            if length > MAX_BODY_BYTES:
                self._reply(_json_response(400, {"error": "body too large"}, close=True))
                return
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            self.close_after = close
            self._dispatch(method, target.split("?", 1)[0], body)

    def _dispatch(self, method: str, path: str, body: bytes) -> None:
        stats = self.stats
        if method == "POST" and path.endswith("/chat/completions"):
            self._start(StreamParams(body))
        elif method == "GET" and path.endswith("/models"):
            data = [{"id": "mock", "object": "model", "owned_by": "bench"}]
            self._reply(_json_response(200, {"object": "list", "data": data}))
        elif method == "GET" and path in ("/health", "/v1/health"):
            self._reply(_json_response(200, {"status": "ok"}))
        elif method == "GET" and path == "/_bench/stats":
            self._reply(_json_response(200, stats.snapshot()))
        elif method == "GET" and path == "/_bench/closes":
            closes, stats.closes = stats.closes, []
            self._reply(_json_response(200, {"closes": closes}))
        elif method == "POST" and path == "/_bench/abort":
            self._reply(_json_response(200, {"aborted": abort_all(stats, keep=self)}))
        else:
            self._reply(_json_response(404, {"error": f"no route {method} {path}"}))

    def _reply(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)
        if self.close_after or b"Connection: close" in data[:200]:
            self.transport.close()
            self.gone = True

    # -- streaming -----------------------------------------------------------------------

    def _start(self, params: StreamParams) -> None:
        assert self.transport is not None
        st = _Stream(self, params, self.loop.time())
        self.stream = st
        self.stats.active += 1
        self.stats.started += 1
        self.transport.write(SSE_HEAD)
        if st.n == 0:
            self._finish()
        elif st.interval == 0:
            st.handle = self.loop.call_at(st.start, self._flat)
        else:
            st.handle = self.loop.call_at(st.start, self._tick)

    def _tick(self) -> None:
        st = self.stream
        if st is None or self.gone:
            return
        st.handle = None
        assert self.transport is not None
        self.transport.write(st.chunk())
        self.stats.chunks += 1
        if st.seq > st.n:
            self._finish()
            return
        # Absolute schedule: chunk i is due at start + i * interval, however late this one was.
        st.handle = self.loop.call_at(st.start + (st.seq - 1) * st.interval, self._tick)

    def _flat(self) -> None:
        st = self.stream
        if st is None or self.gone:
            return
        st.handle = None
        transport = self.transport
        assert transport is not None
        for _ in range(FLAT_BATCH):
            if self.paused:
                return  # resume_writing schedules the next batch
            transport.write(st.chunk())
            self.stats.chunks += 1
            if st.seq > st.n:
                self._finish()
                return
        st.handle = self.loop.call_soon(self._flat)

    def _finish(self) -> None:
        st = self.stream
        assert st is not None
        assert self.transport is not None
        self.transport.write(st.ending())
        self.stream = None
        self.stats.active -= 1
        self.stats.finished += 1
        if self.close_after:
            self.transport.close()
            self.gone = True
        elif self.buf:
            self._parse()

    def _drop_stream(self) -> None:
        st = self.stream
        if st is not None:
            st.cancel()
            self.stream = None
            self.stats.active -= 1
            self.stats.aborted += 1

    def _peer_closed(self) -> None:
        """Log a close by the peer once; only unfinished streams matter to the benchmark."""
        if self.gone:
            return
        self.gone = True
        now = time.monotonic_ns()
        st = self.stream
        if st is None:
            self.stats.idle_closes += 1
            return
        sent = st.seq - 1
        phase = "first_token" if sent == 0 else "streaming"
        self.stats.closes.append((st.params.sid, now, sent, phase))
        log.debug("peer closed stream %s after %d chunks (%s)", st.params.sid, sent, phase)
        self._drop_stream()

    def abort(self) -> None:
        """End this connection from our side (not logged as a peer close)."""
        self.aborting = True
        self.gone = True
        self._drop_stream()
        if self.transport is not None:
            self.transport.abort()


def abort_all(stats: MockStats, keep: MockConnection | None = None) -> int:
    """Abort every connection with a stream in progress; returns how many."""
    victims = [c for c in stats.connections if c.stream is not None and c is not keep]
    for conn in victims:
        conn.abort()
    return len(victims)


def raise_nofile_limit() -> int:
    """Raise the soft open-files limit to the hard one (5,000 streams need 5,000 sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
    return soft


def check_loopback(host: str) -> None:
    """Refuse anything but a loopback address: the benchmark never leaves this machine."""
    if host == "localhost":
        return
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"refusing to bind {host}: only loopback addresses are allowed")


async def serve_until_signal(server: asyncio.Server) -> None:
    """Print ``READY <port>``, serve until SIGTERM or SIGINT, then stop listening."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write(f"READY {server.sockets[0].getsockname()[1]}\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        server.close()


async def serve(host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT; print ``READY <port>`` once listening."""
    loop = asyncio.get_running_loop()
    stats = MockStats()
    server = await loop.create_server(
        lambda: MockConnection(stats, loop), host, port, backlog=8192, reuse_address=True
    )
    try:
        await serve_until_signal(server)
    finally:
        for conn in list(stats.connections):
            conn.abort()


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    check_loopback(args.host)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    raise_nofile_limit()
    try:
        import uvloop
    except ImportError:  # still correct on plain asyncio, only slower
        asyncio.run(serve(args.host, args.port))
    else:
        uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
