"""The builtin tools against a fake Open-Meteo (a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from stagecast.config import ToolsConfig
from stagecast.errors import ToolError
from stagecast.tools import (
    AssembledCall,
    Tool,
    ToolHttp,
    ToolRegistry,
    builtin_tools,
    execute_calls,
)
from stagecast.tools.builtins import CURRENT_FIELDS, plant_care

from .conftest import BERLIN, FakeOpenMeteo


def tools_of(http: ToolHttp) -> dict[str, Tool[..., Any]]:
    return {t.name: t for t in builtin_tools(http)}


def test_builtin_specs() -> None:
    tools = tools_of(ToolHttp())
    assert list(tools) == ["get_weather", "plant_care_advisor", "geocode", "get_time", "calculate"]
    latitude = tools["get_weather"].parameters["properties"]["latitude"]
    assert latitude["minimum"] == -90 and latitude["maximum"] == 90
    longitude = tools["plant_care_advisor"].parameters["properties"]["longitude"]
    assert longitude["minimum"] == -180 and longitude["maximum"] == 180
    assert tools["get_weather"].parameters["required"] == ["latitude", "longitude"]
    assert tools["get_time"].parameters["required"] == []
    assert all(t.description for t in tools.values())


def test_tool_http_from_config() -> None:
    http = ToolHttp.from_config(
        ToolsConfig(open_meteo_url="http://a.test/", geocoding_url="http://b.test", http_timeout=3)
    )
    assert (http.open_meteo_url, http.geocoding_url, http.timeout) == (
        "http://a.test",
        "http://b.test",
        3.0,
    )


async def test_get_weather(http: ToolHttp, open_meteo: FakeOpenMeteo) -> None:
    weather = await tools_of(http)["get_weather"].invoke({"latitude": 52.52, "longitude": 13.41})
    assert weather == {
        "latitude": 52.52,
        "longitude": 13.41,
        "time": "2025-05-01T12:00",
        "timezone": "GMT",
        "temperature_c": 18.4,
        "relative_humidity_pct": 55.0,
        "precipitation_mm": 0.0,
        "rain_mm": 0.0,
        "wind_speed_kmh": 11.2,
        "weather_code": 2,
        "conditions": "partly cloudy",
    }
    assert open_meteo.requests == [
        (
            "/v1/forecast",
            {"latitude": "52.52", "longitude": "13.41", "current": CURRENT_FIELDS},
        )
    ]


async def test_one_session_is_shared_by_all_requests(
    http: ToolHttp, open_meteo: FakeOpenMeteo
) -> None:
    tools = tools_of(http)
    await tools["get_weather"].invoke({"latitude": 1, "longitude": 2})
    session = http._session
    await tools["geocode"].invoke({"city": "Berlin"})
    assert session is not None and http._session is session
    assert len(open_meteo.requests) == 2


async def test_coordinates_out_of_range_never_reach_the_network(
    http: ToolHttp, open_meteo: FakeOpenMeteo
) -> None:
    with pytest.raises(ToolError, match=r"latitude: Input should be less than or equal to 90"):
        await tools_of(http)["get_weather"].invoke({"latitude": 95, "longitude": 0})
    with pytest.raises(ToolError, match=r"longitude: Input should be greater than or equal"):
        await tools_of(http)["plant_care_advisor"].invoke({"latitude": 0, "longitude": -181})
    assert open_meteo.requests == []


async def test_plant_care_advisor_end_to_end(http: ToolHttp, open_meteo: FakeOpenMeteo) -> None:
    open_meteo.current.update(temperature_2m=-2.5, relative_humidity_2m=70, rain=0.0)
    advice = await tools_of(http)["plant_care_advisor"].invoke({"latitude": 60, "longitude": 10})
    assert advice["conditions"]["temperature_c"] == -2.5
    assert advice["watering"] == "skip"
    assert advice["risks"] == ["frost"]
    assert any("Frost" in line for line in advice["advice"])


def conditions(**values: float) -> dict[str, Any]:
    base = {
        "temperature_c": 18.0,
        "relative_humidity_pct": 60.0,
        "precipitation_mm": 0.0,
        "rain_mm": 0.0,
        "wind_speed_kmh": 5.0,
    }
    return {**base, **values}


@pytest.mark.parametrize(
    ("values", "watering", "risks", "phrase"),
    [
        ({}, "check", [], "top 2-3 cm"),
        ({"rain_mm": 1.2}, "skip", [], "raining"),
        ({"precipitation_mm": 0.4}, "skip", [], "raining"),
        ({"temperature_c": -3}, "skip", ["frost"], "Frost"),
        ({"temperature_c": 0}, "skip", ["frost"], "Do not water"),
        ({"temperature_c": 3}, "check", ["cold"], "Near freezing"),
        ({"temperature_c": 37}, "water", ["heat"], "Heat stress"),
        ({"temperature_c": 31}, "water", ["heat"], "mulch"),
        ({"temperature_c": 22, "relative_humidity_pct": 30}, "water", [], "Dry air"),
        ({"temperature_c": 10, "relative_humidity_pct": 30}, "check", [], "top 2-3 cm"),
        ({"temperature_c": 20, "relative_humidity_pct": 92}, "check", ["fungal"], "fungal"),
        ({"temperature_c": 5, "relative_humidity_pct": 92}, "check", [], "top 2-3 cm"),
        ({"wind_speed_kmh": 55}, "check", ["wind"], "stake"),
        (
            {"temperature_c": 25, "relative_humidity_pct": 95, "rain_mm": 3, "wind_speed_kmh": 45},
            "skip",
            ["fungal", "wind"],
            "raining",
        ),
    ],
)
def test_plant_care_rules(
    values: dict[str, float], watering: str, risks: list[str], phrase: str
) -> None:
    advice = plant_care(conditions(**values))
    assert advice["watering"] == watering
    assert advice["risks"] == risks
    assert any(phrase in line for line in advice["advice"]), advice["advice"]
    assert plant_care(conditions(**values)) == advice  # deterministic


def test_plant_care_with_missing_values_falls_back_to_mild_assumptions() -> None:
    assert plant_care({}) == plant_care(conditions(temperature_c=15, relative_humidity_pct=60))


async def test_geocode_hit(http: ToolHttp, open_meteo: FakeOpenMeteo) -> None:
    place = await tools_of(http)["geocode"].invoke({"city": " Berlin "})
    assert place == {
        "name": "Berlin",
        "country": "Germany",
        "latitude": BERLIN["latitude"],
        "longitude": BERLIN["longitude"],
        "timezone": "Europe/Berlin",
    }
    assert open_meteo.requests == [
        ("/v1/search", {"name": "Berlin", "count": "1", "language": "en", "format": "json"})
    ]


async def test_geocode_miss(http: ToolHttp) -> None:
    with pytest.raises(ToolError, match="no place called 'Atlantis' was found"):
        await tools_of(http)["geocode"].invoke({"city": "Atlantis"})


async def test_http_error_status_is_a_tool_error(http: ToolHttp, open_meteo: FakeOpenMeteo) -> None:
    open_meteo.status = 500
    tools = tools_of(http)
    with pytest.raises(ToolError, match=r"answered HTTP 500: the fake server is failing") as info:
        await tools["get_weather"].invoke({"latitude": 1, "longitude": 2})
    assert info.value.retryable
    with pytest.raises(ToolError, match=r"answered HTTP 500: Internal Server Error"):
        await tools["geocode"].invoke({"city": "Berlin"})


async def test_refused_connection_is_a_tool_error(refused_url: str) -> None:
    async with ToolHttp(open_meteo_url=refused_url, geocoding_url=refused_url) as http:
        with pytest.raises(ToolError, match=r"cannot connect to 127\.0\.0\.1"):
            await tools_of(http)["get_weather"].invoke({"latitude": 1, "longitude": 2})
        with pytest.raises(ToolError, match=r"cannot connect to 127\.0\.0\.1"):
            await tools_of(http)["geocode"].invoke({"city": "Berlin"})


async def test_slow_server_is_a_tool_error(open_meteo: FakeOpenMeteo) -> None:
    open_meteo.hang = True
    async with ToolHttp(open_meteo_url=open_meteo.url, timeout=0.2) as http:
        with pytest.raises(ToolError, match=r"did not answer within 0\.2 s"):
            await tools_of(http)["get_weather"].invoke({"latitude": 1, "longitude": 2})


async def test_closed_client_refuses_new_requests(http: ToolHttp) -> None:
    await http.aclose()
    with pytest.raises(ToolError, match="closed"):
        await tools_of(http)["get_weather"].invoke({"latitude": 1, "longitude": 2})


async def test_failures_reach_the_model_through_execute_calls(
    http: ToolHttp, open_meteo: FakeOpenMeteo
) -> None:
    registry = ToolRegistry(builtin_tools(http))
    calls = [
        AssembledCall("c0", "geocode", '{"city": "Atlantis"}', 0),
        AssembledCall("c1", "geocode", '{"city": "Berlin"}', 1),
        AssembledCall("c2", "calculate", '{"expression": "2 ** 10 / 4"}', 2),
        AssembledCall("c3", "calculate", '{"expression": "1 / 0"}', 3),
    ]
    outcomes = await execute_calls(registry, calls)
    assert outcomes[0].error == "no place called 'Atlantis' was found"
    assert outcomes[1].result["name"] == "Berlin"
    assert outcomes[2].result == {"expression": "2 ** 10 / 4", "result": 256.0}
    assert outcomes[3].error == "division by zero in '1 / 0'"


async def test_get_time() -> None:
    get_time = tools_of(ToolHttp())["get_time"]
    before = dt.datetime.now(ZoneInfo("Asia/Tokyo"))
    now = await get_time.invoke({"timezone": "Asia/Tokyo"})
    after = dt.datetime.now(ZoneInfo("Asia/Tokyo"))
    assert now["timezone"] == "Asia/Tokyo"
    assert now["utc_offset"] == "+09:00"
    assert now["abbreviation"] == "JST"
    stamp = dt.datetime.fromisoformat(now["datetime"])
    assert before.replace(microsecond=0) <= stamp <= after
    assert now["date"] == stamp.date().isoformat()
    assert now["weekday"] == stamp.strftime("%A")
    utc = await get_time.invoke({})
    assert utc["timezone"] == "UTC" and utc["utc_offset"] == "+00:00"


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "", "../../etc/passwd", "Europe/"])
async def test_get_time_unknown_zone(zone: str) -> None:
    with pytest.raises(ToolError, match="unknown time zone"):
        await tools_of(ToolHttp())["get_time"].invoke({"timezone": zone})


async def test_calculate_tool() -> None:
    calculate = tools_of(ToolHttp())["calculate"]
    assert await calculate.invoke({"expression": "(2 + 3) * sqrt(16)"}) == {
        "expression": "(2 + 3) * sqrt(16)",
        "result": 20.0,
    }
    with pytest.raises(ToolError, match="too large"):
        await calculate.invoke({"expression": "9**9**9"})
    with pytest.raises(ToolError, match="expression: String should have at most 500"):
        await calculate.invoke({"expression": "1+" * 300 + "1"})
