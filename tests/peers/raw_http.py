"""A model server at the socket level: each test scripts what goes over each connection.

For what an ASGI server will not do on request: reuse a connection and then drop it, answer
byte by byte, end a body by closing, or send something that is not HTTP at all.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import orjson

from tests.peers.fake_upstream import chunk

Handler = Callable[["RawServer", int, socket.socket], None]


class RawServer:
    """Counts connections and requests; ``handler(server, index, sock)`` runs each connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests = 0
        self._lock = threading.Lock()
        outer = self

        class _Handle(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with outer._lock:
                    index = outer.connections
                    outer.connections += 1
                sock = self.request
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with suppress(OSError):
                    outer.handler(outer, index, sock)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handle)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def read_request(self, sock: socket.socket) -> bytes | None:
        """One whole request (head and Content-Length body), or None at end of stream."""
        buf = b""
        while b"\r\n\r\n" not in buf:
            piece = sock.recv(65536)
            if not piece:
                return None
            buf += piece
        head, _, body = buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            piece = sock.recv(65536)
            if not piece:
                return None
            body += piece
        with self._lock:
            self.requests += 1
        return head

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def raw_server(handler: Handler) -> Iterator[RawServer]:
    """A running ``RawServer``."""
    server = RawServer(handler)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def sse_body(words: list[str]) -> bytes:
    """A whole chat completion stream: one chunk per word, a finish chunk, then [DONE]."""
    frames = [chunk({"role": "assistant", "content": ""})]
    frames += [chunk({"content": w}) for w in words]
    frames.append(chunk({}, finish="stop"))
    body = b"".join(b"data: " + orjson.dumps(f) + b"\n\n" for f in frames)
    return body + b"data: [DONE]\n\n"


def sized_response(body: bytes) -> bytes:
    """A keep-alive response with a Content-Length."""
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    return head + body


def chunked_response(body: bytes) -> bytes:
    """A keep-alive response in chunked transfer encoding, one HTTP chunk per SSE frame."""
    out = [
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    ]
    for frame in body.split(b"\n\n"):
        if frame:
            piece = frame + b"\n\n"
            out.append(b"%x\r\n%s\r\n" % (len(piece), piece))
    out.append(b"0\r\n\r\n")
    return b"".join(out)
