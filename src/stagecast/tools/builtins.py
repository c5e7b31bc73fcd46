"""The tools every gateway offers unless configured off: weather, plant care, geocoding, time
and arithmetic.

The network tools talk to Open-Meteo through one :class:`ToolHttp`, which owns a single shared
``aiohttp.ClientSession``. They need that instance, so :func:`builtin_tools` builds them as
closures over it: one set of tools per gateway (per ``ToolHttp``), no module-level state.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import aiohttp
from pydantic import Field

from stagecast.config import ToolsConfig
from stagecast.errors import ToolError
from stagecast.tools.calculator import MAX_EXPRESSION_LENGTH, evaluate
from stagecast.tools.registry import Tool, tool

Latitude = Annotated[
    float, Field(ge=-90, le=90, description="Latitude in decimal degrees (-90 to 90).")
]
Longitude = Annotated[
    float, Field(ge=-180, le=180, description="Longitude in decimal degrees (-180 to 180).")
]

CURRENT_FIELDS = (
    "temperature_2m,relative_humidity_2m,precipitation,rain,weather_code,wind_speed_10m"
)

# WMO weather interpretation codes, as documented by Open-Meteo.
WEATHER_CODES: dict[int, str] = {
    0: "clear sky",
    1: "mainly clear",
    2: "partly cloudy",
    3: "overcast",
    45: "fog",
    48: "depositing rime fog",
    51: "light drizzle",
    53: "moderate drizzle",
    55: "dense drizzle",
    56: "light freezing drizzle",
    57: "dense freezing drizzle",
    61: "slight rain",
    63: "moderate rain",
    65: "heavy rain",
    66: "light freezing rain",
    67: "heavy freezing rain",
    71: "slight snowfall",
    73: "moderate snowfall",
    75: "heavy snowfall",
    77: "snow grains",
    80: "slight rain showers",
    81: "moderate rain showers",
    82: "violent rain showers",
    85: "slight snow showers",
    86: "heavy snow showers",
    95: "thunderstorm",
    96: "thunderstorm with slight hail",
    99: "thunderstorm with heavy hail",
}

ParamValue = str | int | float


class ToolHttp:
    """The HTTP client of the builtin tools: one lazily created, shared ``ClientSession``.

    Every failure (HTTP error status, timeout, refused connection, a body that is not JSON)
    comes out of :meth:`get_json` as a :class:`ToolError` whose message a model can read.
    """

    def __init__(
        self,
        *,
        open_meteo_url: str = "https://api.open-meteo.com",
        geocoding_url: str = "https://geocoding-api.open-meteo.com",
        timeout: float = 10.0,
    ) -> None:
        self.open_meteo_url = open_meteo_url.rstrip("/")
        self.geocoding_url = geocoding_url.rstrip("/")
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    @classmethod
    def from_config(cls, config: ToolsConfig) -> ToolHttp:
        """A client with the URLs and ``http_timeout`` of the tools configuration."""
        return cls(
            open_meteo_url=config.open_meteo_url,
            geocoding_url=config.geocoding_url,
            timeout=config.http_timeout,
        )

    def _client(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ToolError("the tool HTTP client is closed (the gateway is shutting down)")
        # Created on first use because a ClientSession must be made inside the running loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": "stagecast-tools"},
            )
        return self._session

    async def get_json(self, url: str, params: Mapping[str, ParamValue]) -> Any:
        """GET ``url`` with query ``params`` and return the decoded JSON body."""
        host = urlsplit(url).netloc or url
        session = self._client()
        try:
            async with session.get(url, params=dict(params)) as response:
                if response.status >= 400:
                    reason = await _error_reason(response)
                    detail = f": {reason}" if reason else ""
                    raise ToolError(
                        f"{host} answered HTTP {response.status}{detail}",
                        retryable=response.status >= 500 or response.status == 429,
                    )
                try:
                    return await response.json(content_type=None)
                except ValueError as exc:
                    raise ToolError(f"{host} sent a response that is not JSON") from exc
        except TimeoutError as exc:
            raise ToolError(
                f"{host} did not answer within {self.timeout:g} s", retryable=True
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise ToolError(f"cannot connect to {host}: {exc.os_error}", retryable=True) from exc
        except aiohttp.ClientError as exc:
            raise ToolError(
                f"request to {host} failed: {type(exc).__name__}: {exc}", retryable=True
            ) from exc

    async def aclose(self) -> None:
        """Close the shared session; later requests fail with a :class:`ToolError`."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> ToolHttp:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def _error_reason(response: aiohttp.ClientResponse) -> str:
    """Open-Meteo explains errors as ``{"error": true, "reason": "..."}``; use it if present."""
    try:
        body = await response.json(content_type=None)
    except (ValueError, aiohttp.ClientError):
        return response.reason or ""
    if isinstance(body, dict) and isinstance(body.get("reason"), str):
        return str(body["reason"])
    return response.reason or ""


async def current_conditions(http: ToolHttp, latitude: float, longitude: float) -> dict[str, Any]:
    """Current weather at a point from Open-Meteo, as a compact dict with units in the keys."""
    data = await http.get_json(
        f"{http.open_meteo_url}/v1/forecast",
        {"latitude": latitude, "longitude": longitude, "current": CURRENT_FIELDS},
    )
    current = data.get("current") if isinstance(data, dict) else None
    if not isinstance(current, dict):
        raise ToolError("the weather service sent no current conditions")

    def number(key: str) -> float | None:
        value = current.get(key)
        return float(value) if isinstance(value, int | float) else None

    code = current.get("weather_code")
    code = code if isinstance(code, int) else None
    return {
        "latitude": data.get("latitude", latitude),
        "longitude": data.get("longitude", longitude),
        "time": current.get("time"),
        "timezone": data.get("timezone"),
        "temperature_c": number("temperature_2m"),
        "relative_humidity_pct": number("relative_humidity_2m"),
        "precipitation_mm": number("precipitation"),
        "rain_mm": number("rain"),
        "wind_speed_kmh": number("wind_speed_10m"),
        "weather_code": code,
        "conditions": WEATHER_CODES.get(code, "unknown") if code is not None else "unknown",
    }


def plant_care(conditions: Mapping[str, Any]) -> dict[str, Any]:
    """Deterministic gardening advice from current conditions (see :func:`current_conditions`).

    ``watering`` is ``skip``, ``water`` or ``check``; ``risks`` lists ``frost``, ``cold``,
    ``heat``, ``fungal`` and ``wind`` in that order when they apply.
    """
    temp = _num(conditions.get("temperature_c"), 15.0)
    humidity = _num(conditions.get("relative_humidity_pct"), 60.0)
    rain = max(_num(conditions.get("rain_mm"), 0.0), _num(conditions.get("precipitation_mm"), 0.0))
    wind = _num(conditions.get("wind_speed_kmh"), 0.0)

    risks: list[str] = []
    advice: list[str] = []
    if temp <= 0:
        risks.append("frost")
        advice.append("Frost: bring tender plants indoors or cover them with fleece overnight.")
    elif temp < 5:
        risks.append("cold")
        advice.append("Near freezing: protect frost-sensitive plants tonight.")
    if temp >= 35:
        risks.append("heat")
        advice.append(
            "Heat stress: water deeply in the early morning or evening and shade young plants."
        )
    elif temp >= 30:
        risks.append("heat")
        advice.append("Hot: check soil moisture daily and mulch to keep roots cool.")
    if humidity >= 85 and 10 <= temp <= 30:
        risks.append("fungal")
        advice.append(
            "High humidity: fungal disease risk; water the soil, not the leaves, "
            "and keep air moving between plants."
        )
    if wind >= 40:
        risks.append("wind")
        advice.append("Strong wind: stake tall plants and move pots to shelter.")

    if rain > 0:
        watering = "skip"
        advice.insert(0, "It is raining: skip watering today.")
    elif temp <= 0:
        watering = "skip"
        advice.append("Do not water while the soil may freeze.")
    elif temp >= 30 or (humidity < 40 and temp >= 15):
        watering = "water"
        if humidity < 40:
            advice.append("Dry air: water thoroughly, preferably in the morning.")
    else:
        watering = "check"
        advice.append("Water only where the top 2-3 cm of soil are dry.")

    return {"watering": watering, "risks": risks, "advice": advice}


def _num(value: Any, default: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return default


def current_time(timezone: str) -> dict[str, Any]:
    """The current date and time in an IANA time zone; an unknown zone is a ToolError."""
    name = timezone.strip()
    try:
        zone = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        # ValueError/OSError: names such as "../x" or "" that are not even valid keys.
        raise ToolError(
            f"unknown time zone {timezone!r}; use an IANA name such as 'Europe/Paris' or 'UTC'"
        ) from exc
    now = dt.datetime.now(zone)
    offset = now.strftime("%z")
    return {
        "timezone": name,
        "datetime": now.isoformat(timespec="seconds"),
        "date": now.date().isoformat(),
        "time": now.strftime("%H:%M:%S"),
        "weekday": now.strftime("%A"),
        "utc_offset": f"{offset[:3]}:{offset[3:]}" if offset else "+00:00",
        "abbreviation": now.tzname(),
    }


def builtin_tools(http: ToolHttp) -> list[Tool[..., Any]]:
    """The builtin tools, bound to ``http`` for their network calls."""

    @tool
    async def get_weather(latitude: Latitude, longitude: Longitude) -> dict[str, Any]:
        """Get the current weather (temperature, humidity, precipitation, wind) at a location."""
        return await current_conditions(http, latitude, longitude)

    @tool
    async def plant_care_advisor(latitude: Latitude, longitude: Longitude) -> dict[str, Any]:
        """Give plant care advice (watering, frost, heat, fungal risk) from the current weather
        at a location."""
        conditions = await current_conditions(http, latitude, longitude)
        return {"conditions": conditions, **plant_care(conditions)}

    @tool
    async def geocode(
        city: Annotated[
            str, Field(min_length=1, max_length=200, description="A city or place name.")
        ],
    ) -> dict[str, Any]:
        """Find the coordinates, country and time zone of a city or place by name."""
        data = await http.get_json(
            f"{http.geocoding_url}/v1/search",
            {"name": city.strip(), "count": 1, "language": "en", "format": "json"},
        )
        results = data.get("results") if isinstance(data, dict) else None
        if not results or not isinstance(results, list) or not isinstance(results[0], dict):
            raise ToolError(f"no place called {city!r} was found")
        hit = results[0]
        return {
            "name": hit.get("name"),
            "country": hit.get("country"),
            "latitude": hit.get("latitude"),
            "longitude": hit.get("longitude"),
            "timezone": hit.get("timezone"),
        }

    @tool
    def get_time(
        timezone: Annotated[
            str, Field(description="An IANA time zone such as 'Europe/Paris'.")
        ] = "UTC",
    ) -> dict[str, Any]:
        """Get the current date and time in a time zone."""
        # Sync on purpose: the first use of a zone reads a file, so it runs in a worker thread.
        return current_time(timezone)

    @tool
    def calculate(
        expression: Annotated[
            str,
            Field(
                min_length=1,
                max_length=MAX_EXPRESSION_LENGTH,
                description="An arithmetic expression, e.g. '(2 + 3) * sqrt(16) / 7'.",
            ),
        ],
    ) -> dict[str, Any]:
        """Evaluate an arithmetic expression (+ - * / // % **, parentheses, sqrt, abs, round,
        min, max, log, sin, cos, pi, e)."""
        return {"expression": expression, "result": evaluate(expression)}

    return [get_weather, plant_care_advisor, geocode, get_time, calculate]
