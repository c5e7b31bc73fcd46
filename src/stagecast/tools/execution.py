"""Running assembled tool calls: concurrently, bounded, and never raising.

Every way a call can fail (unknown or disabled tool, arguments that are not JSON or fail
validation, the tool raising, the tool running past its timeout) becomes a :class:`ToolOutcome`
with an ``error`` text the model reads in the synthesis step; a stage never crashes because of
a tool. Cancelling the caller cancels the calls still running.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic_core import to_jsonable_python

from stagecast.errors import ToolError
from stagecast.tools.assembly import AssembledCall
from stagecast.tools.registry import Tool, ToolRegistry

__all__ = ["ToolOutcome", "execute_calls", "parse_arguments"]

logger = logging.getLogger("stagecast.tools")

_INT64 = 2**63


@dataclass(slots=True)
class ToolOutcome:
    """What one call produced: a JSON-ready ``result``, or an ``error`` text (not both)."""

    id: str
    name: str
    arguments: str
    result: Any = None
    error: str | None = None
    duration_ms: float = 0.0

    @property
    def ok(self) -> bool:
        """The call succeeded."""
        return self.error is None

    def summary_value(self) -> Any:
        """The value for this call in a ``tool_summary``: the result or ``{"error": ...}``."""
        if self.error is not None:
            return {"error": self.error}
        return self.result

    def message(self) -> dict[str, Any]:
        """The OpenAI ``tool`` message that hands this outcome to the model for synthesis."""
        return {
            "role": "tool",
            "tool_call_id": self.id,
            "content": orjson.dumps(self.summary_value()).decode(),
        }

    def detail(self) -> dict[str, Any]:
        """Everything about the call, for logs, stage records and optional wire details."""
        return {
            "id": self.id,
            "name": self.name,
            "arguments": self.arguments,
            "result": self.result,
            "error": self.error,
            "duration_ms": self.duration_ms,
        }


async def execute_calls(
    registry: ToolRegistry,
    calls: Sequence[AssembledCall],
    *,
    allowed: set[str] | None = None,
    default_timeout: float = 15.0,
    max_concurrency: int = 8,
) -> list[ToolOutcome]:
    """Run ``calls`` concurrently (at most ``max_concurrency`` at once); outcomes in call order.

    ``allowed`` limits which registered tools this request may use (None: all). A tool's own
    ``timeout`` wins over ``default_timeout``. Never raises, except ``CancelledError`` when the
    caller is cancelled, after the running calls have been cancelled too.
    """
    if max_concurrency < 1:
        raise ValueError("max_concurrency must be at least 1")
    semaphore = asyncio.Semaphore(max_concurrency)

    async def run(call: AssembledCall) -> ToolOutcome:
        async with semaphore:
            return await _execute_one(registry, call, allowed, default_timeout)

    # TaskGroup: cancelling the caller cancels every call and waits for them to end.
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(run(call), name=f"tool:{call.name}") for call in calls]
    return [task.result() for task in tasks]


async def _execute_one(
    registry: ToolRegistry,
    call: AssembledCall,
    allowed: set[str] | None,
    default_timeout: float,
) -> ToolOutcome:
    started = time.perf_counter()
    outcome = ToolOutcome(id=call.id, name=call.name, arguments=call.arguments)
    try:
        tool = _find(registry, call.name, allowed)
        arguments = parse_arguments(call.arguments)
        outcome.result = _jsonable(await _invoke(tool, arguments, default_timeout))
    except ToolError as exc:
        outcome.error = exc.message
        logger.info("tool %s failed: %s", call.name, exc.message)
    except Exception as exc:
        outcome.error = f"{call.name} failed: {type(exc).__name__}: {exc}"
        logger.warning("tool %s raised", call.name, exc_info=True)
    outcome.duration_ms = (time.perf_counter() - started) * 1000.0
    return outcome


def _find(registry: ToolRegistry, name: str, allowed: set[str] | None) -> Tool[..., Any]:
    tool = registry.get(name)
    usable = [n for n in registry.names() if allowed is None or n in allowed]
    if tool is None:
        raise ToolError(
            f"there is no tool named {name!r}; available tools: {', '.join(usable) or '(none)'}",
            code="unknown_tool",
        )
    if allowed is not None and name not in allowed:
        raise ToolError(
            f"the tool {name!r} is not enabled for this request; "
            f"available tools: {', '.join(usable) or '(none)'}",
            code="unknown_tool",
        )
    return tool


async def _invoke(tool: Tool[..., Any], arguments: dict[str, Any], default_timeout: float) -> Any:
    seconds = tool.timeout if tool.timeout is not None else default_timeout
    deadline = asyncio.timeout(seconds)
    try:
        async with deadline:
            return await tool.invoke(arguments)
    except TimeoutError as exc:
        # Only our deadline is a timeout; a TimeoutError raised by the tool is its own failure.
        if deadline.expired():
            raise ToolError(
                f"the tool {tool.name!r} did not finish within {seconds:g} s",
                code="tool_timeout",
                retryable=True,
            ) from exc
        raise


def parse_arguments(text: str) -> dict[str, Any]:
    """Decode a call's arguments; empty means ``{}``. Anything but an object is a ToolError.

    Arguments encoded twice (a JSON string holding the JSON object) are decoded twice, since
    some models do that.
    """
    if not text.strip():
        return {}
    try:
        value = json.loads(text, strict=False)
        if isinstance(value, str):
            value = json.loads(value, strict=False) if value.strip() else {}
    except ValueError as exc:
        detail = (
            f"{exc.msg} at position {exc.pos}" if isinstance(exc, json.JSONDecodeError) else exc
        )
        raise ToolError(
            f"the arguments are not valid JSON ({detail}): {_clip(text)}",
            code="invalid_arguments",
        ) from exc
    if not isinstance(value, dict):
        raise ToolError(
            f"the arguments must be a JSON object, not {type(value).__name__}: {_clip(text)}",
            code="invalid_arguments",
        )
    return value


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _jsonable(value: Any) -> Any:
    """The result as plain JSON data that orjson (and so the wire) can carry."""
    data = to_jsonable_python(value, fallback=str)
    try:
        orjson.dumps(data)
    except TypeError:
        # orjson refuses integers beyond 64 bits; such exact numbers travel as text.
        return _portable(data)
    return data


def _portable(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _portable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_portable(v) for v in value]
    return str(value)
