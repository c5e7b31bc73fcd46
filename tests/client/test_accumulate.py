"""StageAccumulator on hand-made events: the assembly rules a front end relies on."""

from __future__ import annotations

import json
from typing import Any

from stagecast.client import StageAccumulator, StageEvent, accumulate
from stagecast.protocol import ErrorResult, TextResult, ToolResultsResult, parse_payload

SID = "s-1"


class Events:
    """Builds a stage's events with increasing ids."""

    def __init__(self) -> None:
        self.items: list[StageEvent] = []

    def add(self, name: str, **fields: Any) -> StageEvent:
        raw = json.dumps({"stage_id": SID, **fields})
        event = StageEvent(len(self.items) + 1, name, parse_payload(name, raw), raw)
        self.items.append(event)
        return event

    def delta(self, name: str = "tool_completion_chunk", *, index: int = 0, **delta: Any) -> None:
        chunk = {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": [{"index": index, "delta": delta, "finish_reason": None}],
        }
        key = "chunk" if name == "chat_completion_chunk" else "tool_results"
        self.add(name, **{key: chunk})


def call(
    index: int, id: str | None = None, name: str | None = None, args: str | None = None
) -> dict[str, Any]:
    fn = {k: v for k, v in (("name", name), ("arguments", args)) if v is not None}
    out: dict[str, Any] = {"index": index, "function": fn}
    if id:
        out["id"], out["type"] = id, "function"
    return out


def test_calls_are_assembled_by_index_across_interleaved_pieces() -> None:
    ev = Events()
    ev.delta(content="Let me check. ")
    ev.delta(tool_calls=[call(0, "a", "get_", "")])
    ev.delta(tool_calls=[call(1, "b", "geocode", '{"city"')])
    ev.delta(tool_calls=[call(0, name="weather", args='{"latitude": 1,')])
    ev.delta(tool_calls=[call(1, args=': "Lisbon"}'), call(0, args=' "longitude": 2}')])
    acc = StageAccumulator()
    deltas = [acc.add(e) for e in ev.items]
    assert deltas[0].text == "Let me check. "
    assert [d.tool_calls for d in deltas[1:]] == [[0], [1], [0], [1, 0]]
    calls = acc.tool_calls
    assert [(c.id, c.name) for c in calls] == [("a", "get_weather"), ("b", "geocode")]
    assert calls[0].parsed_arguments() == {"latitude": 1, "longitude": 2}
    assert calls[1].parsed_arguments() == {"city": "Lisbon"}
    assert acc.status == "running"
    assert acc.result().ttft_s is not None


def test_summary_results_and_details_land_on_their_calls_and_close_the_round() -> None:
    ev = Events()
    ev.delta(tool_calls=[call(0, "a", "add", '{"a": 1, "b": 2}')])
    ev.delta(tool_calls=[call(1, "b", "explode", "{}")])
    ev.add(
        "tool_summary",
        tool_summary={"a": 3, "b": {"error": "boom"}},
        tool_calls=[
            {"id": "a", "name": "add", "arguments": '{"a": 1, "b": 2}', "result": 3},
            {"id": "b", "name": "explode", "arguments": "{}", "error": "boom", "duration_ms": 1},
        ],
        round=1,
    )
    ev.delta(tool_calls=[call(0, "c", "add", '{"a": 3, "b": 3}')])
    ev.add("tool_summary", tool_summary={"c": 6}, round=2)  # no details: a seed-era server
    ev.delta(content="3, then 6.")
    ev.add("done", usage={"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14})
    answer = accumulate(ev.items)
    assert [(c.round, c.index, c.id, c.result, c.error) for c in answer.tool_calls] == [
        (1, 0, "a", 3, None),
        (1, 1, "b", None, "boom"),
        (2, 0, "c", 6, None),
    ]
    assert answer.tool_results == {"a": 3, "b": {"error": "boom"}, "c": 6}
    assert answer.tools_called == ["add", "explode", "add"]
    assert answer.text == "3, then 6."
    assert answer.status == "done"
    assert answer.completion_tokens == 9
    assert isinstance(answer.to_result(), TextResult)


def test_a_detail_without_deltas_becomes_a_call() -> None:
    ev = Events()
    ev.add(
        "tool_summary",
        tool_summary={"x": 1},
        tool_calls=[{"id": "x", "name": "get_time", "arguments": "{}", "result": 1}],
    )
    ev.add("done")
    answer = accumulate(ev.items)
    assert [(c.id, c.name, c.result) for c in answer.tool_calls] == [("x", "get_time", 1)]
    result = answer.to_result()
    assert isinstance(result, ToolResultsResult) and result.tool_results == {"x": 1}


def test_reasoning_other_choices_and_errors() -> None:
    ev = Events()
    ev.delta("chat_completion_chunk", reasoning_content="hmm ")
    ev.delta("chat_completion_chunk", index=1, content="another answer")
    ev.delta("chat_completion_chunk", content="Yes")
    ev.add("error", error="model died", code="upstream_disconnected", retryable=True)
    answer = accumulate(ev.items)
    assert (answer.reasoning, answer.text) == ("hmm ", "Yes")
    assert (answer.status, answer.error, answer.error_code) == (
        "error",
        "model died",
        "upstream_disconnected",
    )
    result = answer.to_result()
    assert isinstance(result, ErrorResult) and result.retryable is True


def test_a_snapshot_does_not_change_with_later_events() -> None:
    ev = Events()
    ev.delta("chat_completion_chunk", content="a")
    ev.delta("chat_completion_chunk", content="b")
    acc = StageAccumulator()
    acc.add(ev.items[0])
    snapshot = acc.result()
    acc.add(ev.items[1])
    assert (snapshot.text, acc.text, acc.result().text) == ("a", "ab", "ab")
