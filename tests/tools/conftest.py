"""Fixtures of the tools tests: a fake Open-Meteo server (a real HTTP server on 127.0.0.1,
port 0) and a ToolHttp pointed at it."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from stagecast.tools import ToolHttp
from tests.peers.open_meteo import BERLIN, MILD, FakeOpenMeteo, open_meteo

__all__ = ["BERLIN", "MILD", "FakeOpenMeteo", "open_meteo"]


@pytest.fixture
async def http(open_meteo: FakeOpenMeteo) -> AsyncIterator[ToolHttp]:
    """A ToolHttp whose Open-Meteo and geocoding URLs both point at the fake server."""
    client = ToolHttp(open_meteo_url=open_meteo.url, geocoding_url=open_meteo.url, timeout=5.0)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A URL on 127.0.0.1 where nothing listens: the port stays bound, so no one else can."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()
