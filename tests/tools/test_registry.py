"""@tool and ToolRegistry: schemas from typed functions, validation, loading, filtering."""

import asyncio
import threading
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field

from stagecast.config import ToolsConfig
from stagecast.errors import ConfigError, RequestError, ToolError
from stagecast.tools import Tool, ToolHttp, ToolRegistry, build_registry, tool

PACKAGE = __name__.rpartition(".")[0]
SAMPLE = f"{PACKAGE}.sample_tools"
BUILTINS = ["get_weather", "plant_care_advisor", "geocode", "get_time", "calculate"]


def _titles(schema: Any, path: str = "") -> list[str]:
    """Paths of every "title" keyword in a schema (property *names* "title" do not count)."""
    found: list[str] = []
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "title":
                found.append(path)
            elif key in ("properties", "$defs"):
                for name, sub in value.items():
                    found += _titles(sub, f"{path}/{key}/{name}")
            else:
                found += _titles(value, f"{path}/{key}")
    elif isinstance(schema, list):
        for i, item in enumerate(schema):
            found += _titles(item, f"{path}/{i}")
    return found


@tool
def add(
    a: Annotated[int, Field(description="The first number.")],
    b: int = Field(default=2, description="The second number."),
) -> int:
    """Add two numbers.

    This second paragraph is not part of the description.
    """
    return a + b


@tool(name="sleepy_echo", description="Echo after a pause.", timeout=2.5)
async def echo(text: str, pause: float = 0.0) -> str:
    await asyncio.sleep(pause)
    return text


class Point(BaseModel):
    title: str
    x: float
    y: float = 0.0


@tool
def describe_point(point: Point, json: str = "x", schema: int | None = None) -> str:
    """Describe a point."""
    return f"{point.title}@{point.x},{point.y} {json} {schema}"


def test_sync_tool_metadata_and_spec() -> None:
    assert isinstance(add, Tool)
    assert add.name == "add"
    assert add.description == "Add two numbers."
    assert add.is_async is False
    assert add.timeout is None
    assert add.parameters == {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "description": "The first number."},
            "b": {"type": "integer", "description": "The second number.", "default": 2},
        },
        "required": ["a"],
    }
    assert add.spec() == {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers.",
            "parameters": add.parameters,
        },
    }


def test_async_tool_with_explicit_name_description_and_timeout() -> None:
    assert echo.name == "sleepy_echo"
    assert echo.description == "Echo after a pause."
    assert echo.timeout == 2.5
    assert echo.is_async is True
    assert echo.parameters["required"] == ["text"]
    assert echo.parameters["properties"]["pause"] == {"type": "number", "default": 0.0}


def test_decorated_functions_stay_callable_as_before() -> None:
    assert add(1, 2) == 3
    assert add(a=4, b=5) == 9
    assert asyncio.run(echo("hi")) == "hi"
    assert add.__name__ == "add"
    assert add.__doc__ is not None and add.__doc__.startswith("Add two numbers.")


def test_schema_has_no_title_noise_but_keeps_a_property_named_title() -> None:
    params = describe_point.parameters
    assert _titles(params) == []
    assert params["$defs"]["Point"]["properties"]["title"] == {"type": "string"}
    assert set(params["properties"]) == {"point", "json", "schema"}
    assert params["required"] == ["point"]


async def test_invoke_validates_and_coerces_arguments() -> None:
    assert await add.invoke({"a": "40"}) == 42
    assert await add.invoke({"a": 1, "b": 1, "unexpected": True}) == 2
    assert await echo.invoke({"text": "x"}) == "x"
    text = await describe_point.invoke({"point": {"title": "p", "x": "1.5"}, "json": "j"})
    assert text == "p@1.5,0.0 j None"


async def test_invoke_names_the_bad_fields() -> None:
    with pytest.raises(ToolError) as info:
        await add.invoke({"b": "many"})
    assert info.value.code == "invalid_arguments"
    assert "a: Field required" in info.value.message
    assert "b: Input should be a valid integer" in info.value.message

    with pytest.raises(ToolError, match=r"point\.x"):
        await describe_point.invoke({"point": {"title": "p", "x": "east"}})

    with pytest.raises(ToolError, match="must be a JSON object"):
        await add.invoke([1, 2])  # type: ignore[arg-type]


async def test_sync_tools_run_in_a_worker_thread() -> None:
    @tool
    def where() -> int:
        """Which thread runs me."""
        return threading.get_ident()

    assert await where.invoke({}) != threading.get_ident()


async def test_positional_only_parameters_are_passed_positionally() -> None:
    @tool
    def div(a: float, b: float, /) -> float:
        """Divide."""
        return a / b

    assert div.parameters["required"] == ["a", "b"]
    assert await div.invoke({"a": 9, "b": 3}) == 3.0


def test_bad_definitions_are_refused_when_decorating() -> None:
    def varargs(*numbers: int) -> int:
        return sum(numbers)

    def fine() -> None:
        """Fine."""

    with pytest.raises(TypeError, match=r"\*args"):
        tool(varargs)
    with pytest.raises(ValueError, match="tool name"):
        tool(name="has spaces")(fine)
    with pytest.raises(ValueError, match="timeout"):
        tool(timeout=0)(fine)


def test_function_without_docstring_or_parameters() -> None:
    @tool
    def ping() -> str:
        return "pong"

    assert ping.description == ""
    assert ping.parameters == {"type": "object", "properties": {}, "required": []}


def test_registry_lookup_specs_and_describe() -> None:
    registry = ToolRegistry([add, echo])
    assert registry.names() == ["add", "sleepy_echo"]
    assert registry.get("add") is add
    assert registry.get("missing") is None
    assert "add" in registry and len(registry) == 2
    assert [s["function"]["name"] for s in registry.specs()] == ["add", "sleepy_echo"]
    assert registry.specs(["sleepy_echo"]) == [echo.spec()]
    assert registry.describe() == [
        {"name": t.name, "description": t.description, "parameters": t.parameters}
        for t in (add, echo)
    ]
    with pytest.raises(RequestError, match=r"unknown tool.*nope.*available: add, sleepy_echo"):
        registry.specs(["nope"])


def test_registering_twice_is_harmless_but_a_name_clash_is_an_error() -> None:
    registry = ToolRegistry([add])
    registry.register(add)
    assert registry.names() == ["add"]

    @tool(name="add")
    def other_add(a: int) -> int:
        return a

    with pytest.raises(ConfigError, match="two tools are named 'add'"):
        registry.register(other_add)


def test_load_module_registers_every_module_level_tool() -> None:
    registry = ToolRegistry()
    assert registry.load_module(SAMPLE) == ["shout", "count_words"]
    assert registry.names() == ["shout", "count_words"]
    counted = registry.get("count_words")
    assert counted is not None and counted.timeout == 3.0 and counted.is_async
    shout = registry.get("shout")
    assert shout is not None
    assert shout.parameters["properties"]["text"]["description"] == "What to shout."


def test_load_module_failures_are_config_errors() -> None:
    registry = ToolRegistry()
    with pytest.raises(ConfigError, match=r"cannot import tool module '.*no_such_module'"):
        registry.load_module(f"{PACKAGE}.no_such_module")
    with pytest.raises(ConfigError, match="broken on purpose"):
        registry.load_module(f"{PACKAGE}.broken_tools")
    with pytest.raises(ConfigError, match="defines no tools"):
        registry.load_module("json")
    assert registry.names() == []


async def test_build_registry_builtins_modules_and_enabled() -> None:
    async with ToolHttp(timeout=1.0) as http:
        everything = build_registry(ToolsConfig(modules=[SAMPLE]), http)
        assert everything.names() == [*BUILTINS, "shout", "count_words"]

        only_modules = build_registry(ToolsConfig(builtins=False, modules=[SAMPLE]), http)
        assert only_modules.names() == ["shout", "count_words"]

        enabled = build_registry(
            ToolsConfig(modules=[SAMPLE], enabled=["shout", "calculate"]), http
        )
        assert enabled.names() == ["calculate", "shout"]

        with pytest.raises(ConfigError, match=r"unknown tool.*warp_drive.*available: get_weather"):
            build_registry(ToolsConfig(enabled=["warp_drive"]), http)
