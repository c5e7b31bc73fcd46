"""execute_calls: concurrency, bounds, cancellation, and every failure as a readable outcome."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field

from stagecast.errors import ToolError
from stagecast.tools import AssembledCall, ToolOutcome, ToolRegistry, execute_calls, tool


def call(name: str, arguments: Any = "{}", index: int = 0) -> AssembledCall:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return AssembledCall(id=f"call_{name}_{index}", name=name, arguments=text, index=index)


@tool
def add(a: int, b: Annotated[int, Field(ge=0)] = 0) -> int:
    """Add."""
    return a + b


@tool
async def fail(kind: str) -> None:
    """Fail in the way asked."""
    if kind == "tool_error":
        raise ToolError("the city is not known")
    if kind == "timeout_inside":
        raise TimeoutError("the backend of this tool timed out")
    raise ValueError("bad value")


@tool(timeout=0.05)
async def stuck() -> None:
    """Never finishes."""
    await asyncio.Event().wait()


class Reading(BaseModel):
    value: float
    unit: str


@tool
def odd_results(kind: str) -> Any:
    """Return values that are not plain JSON."""
    if kind == "model":
        return Reading(value=1.5, unit="C")
    if kind == "big":
        return {"n": 2**100, "items": (1, 2)}
    return {1, 2} if kind == "set" else object()


REGISTRY = ToolRegistry([add, fail, stuck, odd_results])


async def test_results_come_back_in_call_order() -> None:
    calls = [call("add", {"a": 1, "b": 2}, 0), call("add", {"a": 5}, 1)]
    outcomes = await execute_calls(REGISTRY, calls)
    assert [(o.id, o.name, o.result, o.error) for o in outcomes] == [
        ("call_add_0", "add", 3, None),
        ("call_add_1", "add", 5, None),
    ]
    assert all(o.ok and o.duration_ms >= 0 for o in outcomes)
    assert outcomes[0].arguments == '{"a": 1, "b": 2}'


async def test_empty_arguments_mean_no_arguments_and_double_encoding_is_undone() -> None:
    @tool
    def ping() -> str:
        """Ping."""
        return "pong"

    registry = ToolRegistry([ping, add])
    outcomes = await execute_calls(
        registry, [call("ping", ""), call("add", json.dumps(json.dumps({"a": 2})))]
    )
    assert [o.result for o in outcomes] == ["pong", 2]


@pytest.mark.parametrize(
    ("the_call", "expected"),
    [
        (call("nope"), "there is no tool named 'nope'; available tools: add, fail, stuck"),
        (call("add", '{"a": 1'), "the arguments are not valid JSON"),
        (call("add", "[1, 2]"), "the arguments must be a JSON object, not list"),
        (call("add", {"b": -1}), "a: Field required; b: Input should be greater than or equal"),
        (call("add", {"a": "one"}), "a: Input should be a valid integer"),
        (call("fail", {"kind": "tool_error"}), "the city is not known"),
        (call("fail", {"kind": "boom"}), "fail failed: ValueError: bad value"),
        (call("fail", {"kind": "timeout_inside"}), "TimeoutError: the backend of this tool"),
        (call("stuck"), "the tool 'stuck' did not finish within 0.05 s"),
    ],
)
async def test_every_failure_is_an_outcome_the_model_can_read(
    the_call: AssembledCall, expected: str
) -> None:
    [outcome] = await execute_calls(REGISTRY, [the_call])
    assert outcome.result is None
    assert outcome.error is not None
    assert expected in outcome.error
    assert outcome.summary_value() == {"error": outcome.error}
    message = outcome.message()
    assert message["role"] == "tool" and message["tool_call_id"] == the_call.id
    assert json.loads(message["content"]) == {"error": outcome.error}


async def test_tools_outside_allowed_are_refused() -> None:
    [outcome] = await execute_calls(REGISTRY, [call("add", {"a": 1})], allowed={"fail"})
    assert outcome.error == (
        "the tool 'add' is not enabled for this request; available tools: fail"
    )


async def test_default_timeout_applies_to_tools_without_their_own() -> None:
    @tool
    async def slow() -> None:
        """Never finishes."""
        await asyncio.Event().wait()

    [outcome] = await execute_calls(ToolRegistry([slow]), [call("slow")], default_timeout=0.05)
    assert outcome.error == "the tool 'slow' did not finish within 0.05 s"


async def test_one_failure_does_not_affect_the_others() -> None:
    calls = [call("stuck", "{}", 0), call("add", {"a": 2}, 1), call("fail", {"kind": "x"}, 2)]
    outcomes = await execute_calls(REGISTRY, calls)
    assert [o.ok for o in outcomes] == [False, True, False]
    assert outcomes[1].result == 2


async def test_results_are_made_json_ready() -> None:
    calls = [call("odd_results", {"kind": k}, i) for i, k in enumerate(["model", "big", "set"])]
    outcomes = await execute_calls(REGISTRY, calls)
    assert outcomes[0].result == {"value": 1.5, "unit": "C"}
    assert outcomes[1].result == {"n": str(2**100), "items": [1, 2]}
    assert sorted(outcomes[2].result) == [1, 2]
    for outcome in outcomes:
        assert json.loads(outcome.message()["content"]) == outcome.result
    [opaque] = await execute_calls(REGISTRY, [call("odd_results", {"kind": "object"})])
    assert isinstance(opaque.result, str) and opaque.result.startswith("<object object")


async def test_async_calls_run_concurrently() -> None:
    # Each tool can only finish once the other has started: sequential execution would make
    # both time out instead.
    first_started, second_started = asyncio.Event(), asyncio.Event()

    @tool
    async def first() -> str:
        """A."""
        first_started.set()
        await second_started.wait()
        return "first"

    @tool
    async def second() -> str:
        """B."""
        second_started.set()
        await first_started.wait()
        return "second"

    outcomes = await execute_calls(
        ToolRegistry([first, second]), [call("first"), call("second")], default_timeout=30
    )
    assert [(o.result, o.error) for o in outcomes] == [("first", None), ("second", None)]


async def test_sync_calls_run_concurrently_in_threads() -> None:
    barrier = threading.Barrier(2, timeout=30)

    @tool
    def meet(who: str) -> str:
        """Wait at the barrier for the other call."""
        barrier.wait()
        return who

    outcomes = await execute_calls(
        ToolRegistry([meet]), [call("meet", {"who": "a"}, 0), call("meet", {"who": "b"}, 1)]
    )
    assert [o.result for o in outcomes] == ["a", "b"]


async def test_max_concurrency_bounds_running_calls() -> None:
    running = 0
    peak = 0

    @tool
    async def busy() -> None:
        """Count how many run at once."""
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        for _ in range(5):
            await asyncio.sleep(0)
        running -= 1

    calls = [call("busy", "{}", i) for i in range(7)]
    outcomes = await execute_calls(ToolRegistry([busy]), calls, max_concurrency=2)
    assert all(o.ok for o in outcomes)
    assert peak == 2


async def test_cancelling_the_caller_cancels_running_tools() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    @tool
    async def forever() -> None:
        """Run until cancelled."""
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = asyncio.create_task(
        execute_calls(ToolRegistry([forever]), [call("forever")], default_timeout=60)
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set()


def test_outcome_summary_and_message_on_success() -> None:
    outcome = ToolOutcome(id="c1", name="add", arguments='{"a": 1}', result={"sum": 1})
    assert outcome.summary_value() == {"sum": 1}
    assert outcome.message() == {"role": "tool", "tool_call_id": "c1", "content": '{"sum":1}'}
    assert outcome.detail() == {
        "id": "c1",
        "name": "add",
        "arguments": '{"a": 1}',
        "result": {"sum": 1},
        "error": None,
        "duration_ms": 0.0,
    }
