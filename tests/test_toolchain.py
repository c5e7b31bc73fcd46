"""Tool stages (modes 3-6) through a real gateway, for every tool-call dialect we meet."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from stagecast.client import AsyncStagecast, StageEvent
from tests import stage_tools
from tests.conftest import Gateway, GatewayFactory, no_leaks, role
from tests.peers.fake_upstream import FakeUpstream, Script, Step, chunk, data, done, text_script
from tests.peers.open_meteo import FakeOpenMeteo
from tests.test_chat_stream import assert_protocol

TOOLS_CONFIG = {"modules": ["tests.stage_tools"], "builtins": True, "timeout": 5.0}


@pytest.fixture
def tool_gateway(make_gateway: GatewayFactory, upstream: FakeUpstream) -> Gateway:
    return make_gateway(models={"fake": role(upstream.url)}, tools=TOOLS_CONFIG)


def script(deltas: list[dict[str, Any]], finish: str = "tool_calls") -> Script:
    steps: list[Step] = []
    for delta in deltas:
        steps += data(chunk(delta))
    steps += data(chunk({}, finish=finish))
    return Script(steps + done())


def tc(
    index: int | None = None,
    id: str | None = None,
    name: str | None = None,
    args: str | None = None,
) -> dict[str, Any]:
    call: dict[str, Any] = {}
    if index is not None:
        call["index"] = index
    if id is not None:
        call["id"] = id
        call["type"] = "function"
    fn: dict[str, Any] = {}
    if name is not None:
        fn["name"] = name
    if args is not None:
        fn["arguments"] = args
    call["function"] = fn
    return call


# Each dialect asks for add(a=2, b=3) and add(a=10, b=-4).
DIALECTS: dict[str, Callable[[], Script]] = {
    "openai_interleaved": lambda: script(
        [
            {"role": "assistant", "content": None, "tool_calls": [tc(0, "call_a", "add", "")]},
            {"tool_calls": [tc(1, "call_b", "add", "")]},
            {"tool_calls": [tc(0, args='{"a": ')]},
            {"tool_calls": [tc(1, args='{"a": 10, ')]},
            {"tool_calls": [tc(0, args='2, "b": 3}')]},
            {"tool_calls": [tc(1, args='"b": -4}')]},
        ]
    ),
    "llama_cpp_repeated_id": lambda: script(
        [
            {
                "tool_calls": [tc(0, "call_a", "add", '{"a": 2,')],
                "function_call": {"name": "add", "arguments": '{"a": 2,'},
            },
            {
                "tool_calls": [tc(0, "call_a", "add", ' "b": 3}')],
                "function_call": {"name": "add", "arguments": ' "b": 3}'},
            },
            {"tool_calls": [tc(1, "call_b", "add", '{"a": 10, "b": -4}')]},
        ]
    ),
    "ollama_index_zero": lambda: script(
        [
            {"tool_calls": [tc(0, "call_a", "add", '{"a": 2, "b": 3}')]},
            {"tool_calls": [tc(0, "call_b", "add", '{"a": 10, "b": -4}')]},
        ]
    ),
    "ollama_no_index": lambda: script(
        [
            {
                "tool_calls": [
                    tc(None, None, "add", '{"a": 2, "b": 3}'),
                    tc(None, None, "add", '{"a": 10, "b": -4}'),
                ]
            },
        ]
    ),
    "cumulative_snapshots": lambda: script(
        [
            {"tool_calls": [tc(0, "call_a", "add", '{"a": 2')]},
            {"tool_calls": [tc(0, "call_a", "add", '{"a": 2, "b"')]},
            {"tool_calls": [tc(0, "call_a", "add", '{"a": 2, "b": 3}')]},
            {"tool_calls": [tc(1, "call_b", "add", '{"a": 10, "b": -4}')]},
        ]
    ),
    "qwen_json_content": lambda: script(
        [
            {"content": '[{"name": "add", '},
            {"content": '"arguments": {"a": 2, "b": 3}}, '},
            {"content": '{"name": "add", "arguments": {"a": 10, "b": -4}}]'},
        ],
        finish="stop",
    ),
    "hermes_tags": lambda: script(
        [
            {"content": "<tool_call>\n"},
            {"content": '{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool'},
            {"content": '_call>\n<tool_call>{"name": "add", "arguments": {"a": 10, "b": -4}}'},
            {"content": "</tool_call>"},
        ],
        finish="stop",
    ),
}


def relayed_calls(events: list[StageEvent]) -> list[dict[str, Any]]:
    """Rebuild calls from the relayed tool_calls deltas, as a front end would."""
    calls: dict[int, dict[str, Any]] = {}
    for e in events:
        if e.event != "tool_completion_chunk":
            continue
        for choice in json.loads(e.raw)["tool_results"]["choices"]:
            for d in choice["delta"].get("tool_calls") or []:
                call = calls.setdefault(d["index"], {"id": None, "name": "", "arguments": ""})
                if d.get("id"):
                    assert call["id"] is None, "id repeated on a later delta"
                    call["id"] = d["id"]
                fn = d.get("function") or {}
                call["name"] += fn.get("name") or ""
                call["arguments"] += fn.get("arguments") or ""
    return [calls[i] for i in sorted(calls)]


def relayed_text(events: list[StageEvent]) -> str:
    out = []
    for e in events:
        if e.event == "tool_completion_chunk":
            for choice in json.loads(e.raw)["tool_results"]["choices"]:
                out.append(choice["delta"].get("content") or "")
    return "".join(out)


async def run_stream(client: AsyncStagecast, **body: Any) -> list[StageEvent]:
    async with client.stream_toolchain(raise_on_error=False, **body) as stream:
        return [e async for e in stream]


@pytest.mark.parametrize("dialect", list(DIALECTS))
async def test_tool_call_and_synthesis_streamed(
    tool_gateway: Gateway, upstream: FakeUpstream, dialect: str
) -> None:
    upstream.enqueue(DIALECTS[dialect](), text_script(["5 and ", "6."]))
    with no_leaks(tool_gateway):
        async with AsyncStagecast(tool_gateway.url) as client:
            events = await run_stream(
                client, user_prompt="add things", synthesis=True, tools=["add"], stage_id="t1"
            )
    assert_protocol(events, "t1")
    kinds = [e.event for e in events]
    assert kinds.count("tool_summary") == 1
    summary_at = kinds.index("tool_summary")
    before, after = events[:summary_at], events[summary_at + 1 :]
    calls = relayed_calls(before)
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        ("add", {"a": 2, "b": 3}),
        ("add", {"a": 10, "b": -4}),
    ]
    assert relayed_text(before) == "", "text that was a tool call must not show as answer"
    summary = events[summary_at].data.tool_summary  # type: ignore[union-attr]
    assert summary == {calls[0]["id"]: 5, calls[1]["id"]: 6}
    assert relayed_text(after) == "5 and 6."
    assert events[-1].event == "done"
    # The synthesis call carries the assistant's calls and one tool message per call.
    first, second = upstream.wait_requests(2)
    assert [t["function"]["name"] for t in first.body["tools"]] == ["add"]
    msgs = second.body["messages"]
    assert msgs[-3]["role"] == "assistant"
    assert [c["id"] for c in msgs[-3]["tool_calls"]] == [calls[0]["id"], calls[1]["id"]]
    assert [(m["role"], m["tool_call_id"], m["content"]) for m in msgs[-2:]] == [
        ("tool", calls[0]["id"], "5"),
        ("tool", calls[1]["id"], "6"),
    ]
    assert "tools" not in second.body, "the last round offers no tools"


@pytest.mark.parametrize("dialect", ["openai_interleaved", "qwen_json_content"])
async def test_tool_call_only_modes(
    tool_gateway: Gateway, upstream: FakeUpstream, dialect: str
) -> None:
    upstream.enqueue(DIALECTS[dialect](), DIALECTS[dialect]())
    async with AsyncStagecast(tool_gateway.url) as client:
        events = await run_stream(client, user_prompt="x", tools=["add"])
        result = await client.complete_toolchain(user_prompt="x", tools=["add"], stage_id="c1")
    assert_protocol(events)
    assert [e.event for e in events][-2:] == ["tool_summary", "done"]
    assert sorted(events[-2].data.tool_summary.values()) == [5, 6]  # type: ignore[union-attr]
    assert result["type"] == "tool_results"
    assert result["stage_id"] == "c1"
    assert sorted(result["tool_results"].values()) == [5, 6]
    assert len(upstream.chat_requests()) == 2  # no synthesis calls


async def test_completion_with_synthesis_returns_text(
    tool_gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(DIALECTS["openai_interleaved"](), text_script(["Sum: 5, 6"]))
    async with AsyncStagecast(tool_gateway.url) as client:
        result = await client.complete_toolchain(user_prompt="x", synthesis=True)
    assert result == {
        "stage_id": result["stage_id"],
        "type": "text",
        "text": "Sum: 5, 6",
        "usage": result["usage"],
        "finish_reason": "stop",
    }


async def test_no_tool_call_in_tool_only_mode_is_an_error(
    tool_gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(text_script(["I will not use tools."]), text_script(["Just an answer."]))
    async with AsyncStagecast(tool_gateway.url) as client:
        events = await run_stream(client, user_prompt="x")
        answered = await run_stream(client, user_prompt="x", synthesis=True)
    assert events[-1].event == "error"
    assert events[-1].data.code == "no_tool_call"  # type: ignore[union-attr]
    assert events[-1].data.error.startswith("No tools called.")  # type: ignore[union-attr]
    assert answered[-1].event == "done"
    assert relayed_text(answered) == "Just an answer."
    assert "tool_summary" not in [e.event for e in answered]


async def test_parallel_calls_run_concurrently(
    tool_gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(
        script(
            [
                {"tool_calls": [tc(0, "m1", "meet", '{"who": "ana"}')]},
                {"tool_calls": [tc(1, "m2", "meet", '{"who": "bo"}')]},
            ]
        )
    )
    async with AsyncStagecast(tool_gateway.url) as client:
        events = await run_stream(client, user_prompt="x", tools=["meet"])
    summary = events[-2].data.tool_summary  # type: ignore[union-attr]
    assert summary == {"m1": "ana met", "m2": "bo met"}


async def test_tool_failures_become_results_and_synthesis_still_runs(
    tool_gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(
        script(
            [
                {"tool_calls": [tc(0, "bad_args", "add", '{"a": "two", "b": 3}')]},
                {"tool_calls": [tc(1, "unknown", "teleport", '{"to": "mars"}')]},
                {"tool_calls": [tc(2, "raises", "explode", '{"reason": "test"}')]},
                {"tool_calls": [tc(3, "slow", "dawdle", "{}")]},
                {"tool_calls": [tc(4, "not_json", "add", '{"a": 1,')]},
            ]
        ),
        text_script(["Some tools failed."]),
    )
    async with AsyncStagecast(tool_gateway.url) as client:
        events = await run_stream(client, user_prompt="x", synthesis=True)
    assert_protocol(events)
    summary_event = next(e for e in events if e.event == "tool_summary")
    summary: dict[str, Any] = summary_event.data.tool_summary  # type: ignore[union-attr]
    assert set(summary) == {"bad_args", "unknown", "raises", "slow", "not_json"}
    assert all("error" in v for v in summary.values()), summary
    assert "a" in summary["bad_args"]["error"]
    assert "teleport" in summary["unknown"]["error"]
    assert "exploded: test" in summary["raises"]["error"]
    assert "0.5" in summary["slow"]["error"] or "timed out" in summary["slow"]["error"]
    details = {d.id: d for d in summary_event.data.tool_calls}  # type: ignore[union-attr]
    assert details["raises"].name == "explode" and details["raises"].error
    assert relayed_text(events).endswith("Some tools failed.")
    assert events[-1].event == "done"
    tool_msgs = [m for m in upstream.chat_requests()[1].body["messages"] if m["role"] == "tool"]
    assert len(tool_msgs) == 5


async def test_max_tool_rounds_three_with_two_tool_rounds(
    tool_gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(
        script([{"tool_calls": [tc(0, "r1", "add", '{"a": 1, "b": 1}')]}]),
        script([{"tool_calls": [tc(0, "r2", "add", '{"a": 2, "b": 2}')]}]),
        text_script(["Two rounds: 2 then 4."]),
    )
    async with AsyncStagecast(tool_gateway.url) as client:
        events = await run_stream(client, user_prompt="x", synthesis=True, max_tool_rounds=3)
    summaries = [e.data for e in events if e.event == "tool_summary"]
    assert [s.tool_summary for s in summaries] == [{"r1": 2}, {"r2": 4}]  # type: ignore[union-attr]
    assert [s.round for s in summaries] == [1, 2]  # type: ignore[union-attr]
    assert relayed_text(events).endswith("Two rounds: 2 then 4.")
    reqs = upstream.chat_requests()
    assert len(reqs) == 3
    assert all("tools" in r.body for r in reqs)  # rounds remained, so tools stayed on offer


async def test_round_limit_is_enforced(tool_gateway: Gateway, upstream: FakeUpstream) -> None:
    # The model keeps asking; with max_tool_rounds=2 the third call offers no tools, and calls
    # it makes anyway are not run.
    upstream.enqueue(
        script([{"tool_calls": [tc(0, "r1", "add", '{"a": 1, "b": 1}')]}]),
        script([{"tool_calls": [tc(0, "r2", "add", '{"a": 2, "b": 2}')]}]),
        script([{"content": "final"}, {"tool_calls": [tc(0, "r3", "add", '{"a": 3, "b": 3}')]}]),
    )
    async with AsyncStagecast(tool_gateway.url) as client:
        events = await run_stream(client, user_prompt="x", synthesis=True, max_tool_rounds=2)
    assert [e.event for e in events].count("tool_summary") == 2
    assert events[-1].event == "done"
    last = upstream.chat_requests()[2]
    assert "tools" not in last.body
    assert "r3" not in json.dumps([e.raw for e in events if e.event == "tool_summary"])


async def test_unknown_tool_or_choice_is_422(tool_gateway: Gateway) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=tool_gateway.url) as http:
        r1 = await http.post("/stream/v1/toolchain", json={"user_prompt": "x", "tools": ["nope"]})
        r2 = await http.post(
            "/stream/v1/toolchain", json={"user_prompt": "x", "tool_choice": "teleport"}
        )
    assert r1.status_code == 422 and "nope" in r1.json()["message"]
    assert r2.status_code == 422 and "teleport" in r2.json()["message"]


async def test_named_tool_choice_is_sent_upstream(
    tool_gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(DIALECTS["openai_interleaved"]())
    async with AsyncStagecast(tool_gateway.url) as client:
        await run_stream(client, user_prompt="x", tool_choice="add", parallel_tool_calls=True)
    body = upstream.chat_requests()[0].body
    assert body["tool_choice"] == {"type": "function", "function": {"name": "add"}}
    assert body["parallel_tool_calls"] is True


async def test_cancel_during_tools_cancels_them(
    tool_gateway: Gateway, upstream: FakeUpstream
) -> None:
    stage_tools.STARTED.clear()
    upstream.enqueue(script([{"tool_calls": [tc(0, "w", "wait_forever", "{}")]}]))
    async with AsyncStagecast(tool_gateway.url) as client:
        async with client.stream_toolchain(user_prompt="x", stage_id="tc-cancel") as stream:
            it = aiter(stream)
            await anext(it)
            assert stage_tools.STARTED.wait(10)
            receipt = await client.cancel("tc-cancel")
            rest = [e async for e in it]
    assert rest[-1].event == "cancel"
    assert receipt["status_after"] == "cancelled"
    assert receipt["upstream_aborted"] is False


async def test_tools_listing(tool_gateway: Gateway) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=tool_gateway.url) as http:
        data = (await http.get("/v1/tools")).json()["data"]
    by_name = {t["name"]: t for t in data}
    assert {"get_weather", "plant_care_advisor", "geocode", "get_time", "calculate", "add"} <= set(
        by_name
    )
    assert by_name["add"]["parameters"]["required"] == ["a", "b"]
    assert by_name["meet"]["parameters"]["properties"]["who"]["description"] == (
        "Who arrives at the meeting."
    )


async def test_weather_and_plant_care_for_a_city(
    make_gateway: GatewayFactory, upstream: FakeUpstream, open_meteo: FakeOpenMeteo
) -> None:
    gw = make_gateway(
        models={"fake": role(upstream.url)},
        tools={"open_meteo_url": open_meteo.url, "geocoding_url": open_meteo.url},
    )
    where = '{"latitude": 52.52437, "longitude": 13.41053}'
    upstream.enqueue(
        script([{"tool_calls": [tc(0, "geo", "geocode", '{"city": "Berlin"}')]}]),
        script(
            [
                {"tool_calls": [tc(0, "wx", "get_weather", where)]},
                {"tool_calls": [tc(1, "plant", "plant_care_advisor", where)]},
            ]
        ),
        text_script(["Mild in Berlin; water lightly."]),
    )
    async with AsyncStagecast(gw.url) as client:
        events = await run_stream(
            client,
            user_prompt="How should I care for my basil in Berlin today?",
            synthesis=True,
            max_tool_rounds=2,
        )
    assert_protocol(events)
    rounds = [e.data.tool_summary for e in events if e.event == "tool_summary"]  # type: ignore[union-attr]
    assert rounds[0]["geo"]["latitude"] == pytest.approx(52.52437)
    assert rounds[1]["wx"]["temperature_c"] == pytest.approx(18.4) or "18.4" in json.dumps(
        rounds[1]["wx"]
    )
    assert "error" not in rounds[1]["plant"]
    assert relayed_text(events).endswith("Mild in Berlin; water lightly.")
    paths = sorted(p for p, _ in open_meteo.requests)
    assert paths == ["/v1/forecast", "/v1/forecast", "/v1/search"]
