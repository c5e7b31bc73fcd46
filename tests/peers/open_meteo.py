"""A fake Open-Meteo (forecast and geocoding): a real aiohttp server on 127.0.0.1, port 0."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

BERLIN = {
    "id": 2950159,
    "name": "Berlin",
    "latitude": 52.52437,
    "longitude": 13.41053,
    "elevation": 74.0,
    "country_code": "DE",
    "timezone": "Europe/Berlin",
    "population": 3426354,
    "country": "Germany",
    "admin1": "Land Berlin",
}

MILD = {
    "time": "2025-05-01T12:00",
    "interval": 900,
    "temperature_2m": 18.4,
    "relative_humidity_2m": 55,
    "precipitation": 0.0,
    "rain": 0.0,
    "weather_code": 2,
    "wind_speed_10m": 11.2,
}


@dataclass
class FakeOpenMeteo:
    """Canned Open-Meteo answers; every request is recorded as (path, query)."""

    url: str = ""
    current: dict[str, Any] = field(default_factory=lambda: dict(MILD))
    places: dict[str, dict[str, Any]] = field(default_factory=lambda: {"berlin": BERLIN})
    status: int = 200
    hang: bool = False
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def forecast(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, dict(request.query)))
        if self.hang:
            await self.release.wait()
        if self.status != 200:
            return web.json_response(
                {"error": True, "reason": "the fake server is failing"}, status=self.status
            )
        return web.json_response(
            {
                "latitude": float(request.query["latitude"]),
                "longitude": float(request.query["longitude"]),
                "timezone": "GMT",
                "current_units": {"temperature_2m": "°C", "relative_humidity_2m": "%"},
                "current": self.current,
            }
        )

    async def search(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, dict(request.query)))
        if self.status != 200:
            return web.Response(status=self.status, text="Internal Server Error")
        hit = self.places.get(request.query.get("name", "").lower())
        body: dict[str, Any] = {"generationtime_ms": 0.5}
        if hit is not None:
            body["results"] = [hit]
        return web.json_response(body)


@pytest.fixture
async def open_meteo() -> AsyncIterator[FakeOpenMeteo]:
    """A fake Open-Meteo serving /v1/forecast and /v1/search on a port the OS picked."""
    fake = FakeOpenMeteo()
    app = web.Application()
    app.router.add_get("/v1/forecast", fake.forecast)
    app.router.add_get("/v1/search", fake.search)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(runner, sock)
        await site.start()
        fake.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        yield fake
    finally:
        fake.release.set()
        await runner.cleanup()
        sock.close()
