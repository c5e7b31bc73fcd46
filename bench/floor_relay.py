"""The floor: a bare uvloop TCP splice between the load client and the mock upstream.

It parses nothing: every byte the client sends goes to a fresh upstream connection, every
byte of the answer comes back, and a close on either side closes the other. No gateway that
does any HTTP or SSE work can relay a chunk for less, so in the table it shows what this
machine itself charges for one more hop (two socket reads and writes, two wake-ups per chunk).

``python -m bench.floor_relay --upstream-port P`` prints ``READY <port>`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio

from bench.mock_upstream import raise_nofile_limit, serve_until_signal

HOST = "127.0.0.1"


class _Side(asyncio.Protocol):
    """One end of a spliced pair; what it reads is written to the other end."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.pending: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.pending.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.close()

    # Back-pressure: when the other end cannot take more, stop reading this one.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def pair(self, other: _Side) -> None:
        """Join two connected ends and flush what either read before the join."""
        self.peer, other.peer = other, self
        for side in (self, other):
            dest = side.peer
            assert dest is not None
            assert dest.transport is not None
            for data in side.pending:
                dest.transport.write(data)
            side.pending.clear()


class _Client(_Side):
    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self.upstream_port = upstream_port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, up = await loop.create_connection(_Side, HOST, self.upstream_port)
        except OSError:
            if self.transport is not None:
                self.transport.close()
            return
        if self.closed:
            up.transport.close()  # type: ignore[union-attr]
            return
        self.pair(up)


async def serve(upstream_port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Client(upstream_port), HOST, 0, backlog=8192, reuse_address=True
    )
    await serve_until_signal(server)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream-port", type=int, required=True)
    args = parser.parse_args(argv)
    raise_nofile_limit()
    import uvloop

    uvloop.run(serve(args.upstream_port))


if __name__ == "__main__":
    main()
