"""Chat stages through a real gateway server, read with the SDK, against a fake model server."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from stagecast.client import AsyncStagecast, StagecastHTTPError, StageError, StageEvent
from tests import seed_events
from tests.conftest import Gateway, GatewayFactory, no_leaks, role
from tests.peers.fake_upstream import FakeUpstream, data, done, text_script

SEED_MODELS: dict[str, Any] = {
    "chat_completion_chunk": seed_events.ChatCompletionStreamPayload,
    "tool_completion_chunk": seed_events.ToolCompletionStreamPayload,
    "tool_summary": seed_events.ToolSummaryStreamPayload,
    "done": seed_events.DonePayload,
    "cancel": seed_events.CancelPayload,
    "error": seed_events.ErrorPayload,
}


def assert_protocol(events: list[StageEvent], stage_id: str | None = None) -> None:
    """Seed models parse every event; ids strictly increase; exactly one terminal, last."""
    assert events, "no events"
    ids = [e.id for e in events]
    assert ids == sorted(set(ids)) and ids[0] >= 1, f"ids not strictly increasing: {ids}"
    terminals = [e for e in events if e.event in ("done", "cancel", "error")]
    assert len(terminals) == 1 and terminals[0] is events[-1]
    for event in events:
        payload = SEED_MODELS[event.event].model_validate_json(event.raw)
        if stage_id is not None:
            assert payload.stage_id == stage_id


async def collect(client: AsyncStagecast, **body: Any) -> tuple[str, list[StageEvent]]:
    events: list[StageEvent] = []
    async with client.stream_chat(raise_on_error=False, **body) as stream:
        async for event in stream:
            events.append(event)
    assert stream.stage_id is not None
    return stream.stage_id, events


def text_of(events: list[StageEvent]) -> str:
    out = []
    for e in events:
        if e.event == "chat_completion_chunk":
            for c in e.data.chunk.choices:  # type: ignore[union-attr]
                out.append(c.delta.content or "")
    return "".join(out)


async def test_chat_stream_relays_chunks_then_done(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(text_script(["Hel", "lo", ", world"]))
    async with AsyncStagecast(gateway.url) as client:
        stage_id, events = await collect(client, user_prompt="hi", stage_id="stage-1")
    assert stage_id == "stage-1"
    assert_protocol(events, "stage-1")
    assert text_of(events) == "Hello, world"
    assert events[-1].event == "done"
    assert events[-1].data.usage.completion_tokens == 3  # type: ignore[union-attr]
    assert events[-1].data.finish_reason == "stop"  # type: ignore[union-attr]
    [req] = upstream.chat_requests()
    assert req.body["stream"] is True
    assert req.body["model"] == "fake-model"
    assert req.body["messages"] == [{"role": "user", "content": "hi"}]


async def test_response_headers_and_first_frame(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(text_script(["a"]))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.post("/stream/v1/chat", json={"user_prompt": "x"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-accel-buffering"] == "no"
    stage_id = r.headers["x-stage-id"]
    assert len(stage_id) == 32  # generated UUID (hex)
    assert r.text.startswith("id: 1\nevent: chat_completion_chunk\nretry: ")
    assert r.text.count("retry:") == 1
    assert f'"stage_id":"{stage_id}"' in r.text


async def test_seed_request_fields_are_honoured(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(text_script(["ok"]))
    body = {
        "stage_id": "seed-1",
        "system_prompt": "You are terse.",
        "user_prompt": "Plan a trip",
        "model_container": "fake",
        "stream": True,
        "synthesis": False,
        "prompts": ["Use tools when useful.", "Summarise."],
        "max_tokens": [64, 128],
        "temperature": [0.2, 0.7],
    }
    async with AsyncStagecast(gateway.url) as client:
        _, events = await collect(client, **body)
    assert_protocol(events, "seed-1")
    [req] = upstream.chat_requests()
    assert req.body["max_tokens"] == 64
    assert req.body["temperature"] == 0.2
    assert req.body["messages"][0] == {
        "role": "system",
        "content": "You are terse.\n\nUse tools when useful.",
    }
    assert req.body["messages"][-1] == {"role": "user", "content": "Plan a trip"}


async def test_messages_and_model_alias(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    gw = make_gateway(models={"a": role(upstream.url), "b": role(upstream.url, model="other")})
    upstream.enqueue(text_script(["ok"]))
    history = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    async with AsyncStagecast(gw.url) as client:
        _, events = await collect(client, model="b", messages=history)
    assert_protocol(events)
    [req] = upstream.chat_requests()
    assert req.body["model"] == "other"
    assert req.body["messages"] == history


async def test_completion_route_returns_the_seed_text_shape(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(text_script(["The answer", " is 42."]))
    async with AsyncStagecast(gateway.url) as client:
        result = await client.complete_chat(user_prompt="q", stage_id="c-1")
    assert result["stage_id"] == "c-1"
    assert result["type"] == "text"
    assert result["text"] == "The answer is 42."
    assert result["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "give user_prompt or a non-empty messages list"),
        ({"user_prompt": "x", "max_tokens": [1, 2, 3]}, "max_tokens"),
        ({"user_prompt": "x", "temperature": [5, 0]}, "temperature.0"),
        ({"user_prompt": "x", "stage_id": "bad id!"}, "stage_id"),
        ({"user_prompt": "x", "max_token": 5}, "max_token: unknown field"),
        ({"user_prompt": "x", "reasoning": "loud"}, "reasoning"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ],
)
async def test_invalid_body_is_422_naming_the_field(
    gateway: Gateway, body: dict[str, Any], field: str
) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        for path in ("/stream/v1/chat", "/completion/v1/chat"):
            r = await http.post(path, json=body)
            assert r.status_code == 422, r.text
            assert r.json()["code"] == "invalid_request"
            assert field in r.json()["message"]


async def test_unknown_role_is_404_listing_roles(gateway: Gateway) -> None:
    async with AsyncStagecast(gateway.url) as client:
        with pytest.raises(StagecastHTTPError) as info:
            await collect(client, user_prompt="x", model_container="nope")
    assert info.value.status == 404
    assert info.value.code == "unknown_role"
    assert "fake" in info.value.message


async def test_models_and_health(make_gateway: GatewayFactory, upstream: FakeUpstream) -> None:
    from tests.peers.servers import closed_port_url

    gw = make_gateway(
        models={"up": role(upstream.url), "down": role(closed_port_url())},
        default_model="up",
        health_timeout=1.0,
    )
    async with AsyncStagecast(gw.url) as client:
        models = await client.models()
        health = await client.health()
    assert [m["id"] for m in models] == ["up", "down"]
    assert [m["default"] for m in models] == [True, False]
    assert health["status"] == "degraded"
    assert health["backends"]["up"]["ok"] is True
    assert health["backends"]["down"]["ok"] is False
    assert "could not connect" in health["backends"]["down"]["detail"]


async def test_reasoning_is_separated_from_the_answer(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    # <think> tags split across chunks, then a reasoning field: all become reasoning_content.
    upstream.enqueue(text_script(["<thi", "nk>Let me", " think</th", "ink>The answer."]))
    upstream.enqueue(text_script(["Step one."], field_name="reasoning"))
    upstream.enqueue(text_script(["<think>hmm</think>Yes."]))
    upstream.enqueue(text_script(["<think>hmm</think>Yes."]))
    async with AsyncStagecast(gateway.url) as client:
        _, tagged = await collect(client, user_prompt="q")
        _, field = await collect(client, user_prompt="q")
        inline = await client.complete_chat(user_prompt="q", reasoning="inline")
        hidden = await client.complete_chat(user_prompt="q", reasoning="hidden")
    assert_protocol(tagged)
    assert text_of(tagged) == "The answer."
    reasoning = "".join(
        c.delta.reasoning_content or ""  # type: ignore[attr-defined]
        for e in tagged
        if e.event == "chat_completion_chunk"
        for c in e.data.chunk.choices  # type: ignore[union-attr]
        if hasattr(c.delta, "reasoning_content")
    )
    assert reasoning == "Let me think"
    assert "<think>" not in json.dumps([e.raw for e in tagged])
    raw = [json.loads(e.raw) for e in field if e.event == "chat_completion_chunk"]
    deltas = [c["delta"] for r in raw for c in r["chunk"]["choices"]]
    assert any(d.get("reasoning_content") == "Step one." for d in deltas)
    assert not any("reasoning" in d for d in deltas)
    assert inline["text"] == "<think>hmm</think>Yes."
    assert hidden["text"] == "Yes."
    assert "reasoning" not in hidden


async def test_chunks_missing_fields_are_completed(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    # Some servers leave out id/created/object or choice index: relayed chunks are still valid.
    from tests.peers.fake_upstream import Script

    steps = data({"choices": [{"delta": {"content": "bare"}}]}) + data(
        {"model": "m", "choices": [{"delta": {}, "finish_reason": "stop"}]}
    )
    upstream.enqueue(Script(steps + done()))
    async with AsyncStagecast(gateway.url) as client:
        _, events = await collect(client, user_prompt="q")
    assert_protocol(events)
    assert text_of(events) == "bare"


async def test_sdk_raises_error_events(gateway: Gateway, upstream: FakeUpstream) -> None:
    from tests.peers.fake_upstream import error_script

    upstream.enqueue(error_script(400, "context length exceeded"))

    async def drain() -> None:
        async with client.stream_chat(user_prompt="x") as stream:
            async for _ in stream:
                pass

    async with AsyncStagecast(gateway.url) as client:
        with pytest.raises(StageError) as info:
            await drain()
    assert info.value.code == "upstream_status"
    assert info.value.retryable is False
    assert "context length exceeded" in info.value.message


async def test_usage_chunk_without_choices_is_relayed(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(text_script(["x"], usage=True))
    with no_leaks(gateway):
        async with AsyncStagecast(gateway.url) as client:
            _, events = await collect(client, user_prompt="q")
    usage_chunks = [
        e
        for e in events
        if e.event == "chat_completion_chunk" and not e.data.chunk.choices  # type: ignore[union-attr]
    ]
    assert len(usage_chunks) == 1
    assert usage_chunks[0].data.chunk.usage.total_tokens == 8  # type: ignore[union-attr]
