"""The SDK against a real gateway: cancel receipts, typed errors, accumulated answers, auth."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from stagecast.client import (
    AsyncStagecast,
    CancelReceipt,
    StageCancelledError,
    Stagecast,
    StagecastConnectionError,
    StagecastHTTPError,
    StageError,
    StageStream,
)
from stagecast.protocol import ErrorResult, TextResult, ToolResultsResult
from tests.client.fake_gateway import Plan, chat_frames, scripted_gateway
from tests.conftest import Gateway, GatewayFactory, role
from tests.peers.fake_upstream import FakeUpstream, Script, Step, chunk, data, text_script
from tests.peers.servers import closed_port_url
from tests.test_toolchain import DIALECTS, TOOLS_CONFIG, script, tc

WORDS = [f"w{i} " for i in range(40)]


@pytest.fixture
def tool_gateway(make_gateway: GatewayFactory, upstream: FakeUpstream) -> Gateway:
    return make_gateway(models={"fake": role(upstream.url)}, tools=TOOLS_CONFIG)


def cut_script() -> Script:
    return Script(data(chunk({"content": "par"})) + [Step("cut")])


async def read_names(stream: StageStream, into: list[str]) -> None:
    """Read ``stream`` to its end, noting event names as they come."""
    async with stream:
        async for event in stream:
            into.append(event.event)


async def cancel_after_first_event(
    client: AsyncStagecast, stream: StageStream, stage_id: str
) -> None:
    async with stream:
        await anext(stream)
        await client.cancel(stage_id)
        async for _ in stream:
            pass


# --- cancel ----------------------------------------------------------------------------
async def test_cancel_returns_a_typed_receipt(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(text_script(WORDS, pace=0.1))
    async with AsyncStagecast(gateway.url) as client:
        async with client.stream_chat(user_prompt="x", stage_id="stop-1") as stream:
            first = await anext(stream)
            receipt = await client.cancel("stop-1")
            rest = [e async for e in stream]
    assert first.event == "chat_completion_chunk"
    assert isinstance(receipt, CancelReceipt)
    assert receipt.stage_id == "stop-1"
    assert (receipt.status_before, receipt.status_after) == ("running", "cancelled")
    assert receipt.cancel_requested is True
    assert receipt.upstream_aborted is True
    assert receipt.completion_tokens is not None and receipt.completion_tokens >= 1
    assert receipt["status_after"] == "cancelled"  # dict-style access still works
    assert rest[-1].event == "cancel"
    assert stream.answer().status == "cancelled"
    upstream.wait_disconnected(0)


def test_sync_cancel_returns_a_typed_receipt(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(text_script(WORDS, pace=0.1))
    with Stagecast(gateway.url) as client:
        with client.stream_chat(user_prompt="x", stage_id="stop-2") as stream:
            next(stream)
            receipt = client.cancel("stop-2")
            rest = list(stream)
        again = client.cancel("stop-2")
    assert receipt.status_after == "cancelled"
    assert rest[-1].event == "cancel"
    assert (again.status_before, again.cancel_requested) == ("cancelled", False)


async def test_receipt_keeps_fields_a_newer_gateway_adds() -> None:
    with scripted_gateway("r-1", chat_frames("r-1", ["a"]), [Plan()]) as fake:
        async with AsyncStagecast(fake.url) as client:
            receipt = await client.cancel("r-1")
    assert receipt.model_extra == {"a_future_field": "kept"}


# --- errors ----------------------------------------------------------------------------
async def test_error_event_is_yielded_then_raised_as_stage_error(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(cut_script())
    seen: list[str] = []
    async with AsyncStagecast(gateway.url) as client:
        with pytest.raises(StageError) as info:
            await read_names(client.stream_chat(user_prompt="x", stage_id="err-1"), seen)
    assert seen[-1] == "error"
    assert info.value.code == "upstream_disconnected"
    assert info.value.retryable is True
    assert info.value.stage_id == "err-1"


async def test_error_as_a_result_when_not_raising(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(cut_script())
    async with AsyncStagecast(gateway.url) as client:
        answer = await client.collect_chat(user_prompt="x", raise_on_error=False)
    assert answer.status == "error"
    assert answer.error_code == "upstream_disconnected"
    assert answer.text == "par"
    result = answer.to_result()
    assert isinstance(result, ErrorResult) and result.code == "upstream_disconnected"


def test_sync_collect_raises_stage_error(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(cut_script())
    with Stagecast(gateway.url) as client, pytest.raises(StageError) as info:
        client.collect_chat(user_prompt="x")
    assert info.value.code == "upstream_disconnected"


async def test_cancel_raises_only_when_asked(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(text_script(WORDS, pace=0.1), text_script(WORDS, pace=0.1))
    async with AsyncStagecast(gateway.url) as client:
        async with client.stream_chat(user_prompt="x", stage_id="c-1") as quiet:
            await anext(quiet)
            await client.cancel("c-1")
            assert [e async for e in quiet][-1].event == "cancel"
        loud = client.stream_chat(user_prompt="x", stage_id="c-2", raise_on_cancel=True)
        with pytest.raises(StageCancelledError) as info:
            await cancel_after_first_event(client, loud, "c-2")
    assert info.value.stage_id == "c-2"
    assert info.value.reason == "client"


async def test_refusals_and_unreachable_gateways_are_typed(gateway: Gateway) -> None:
    async with AsyncStagecast(gateway.url) as client:
        with pytest.raises(StagecastHTTPError) as refused:
            await client.collect_chat(user_prompt="x", model_container="nope")
    assert refused.value.status == 404
    assert refused.value.code == "unknown_role"
    down = closed_port_url().removesuffix("/v1")
    async with AsyncStagecast(down) as client:
        with pytest.raises(StagecastConnectionError) as unreachable:
            await client.collect_chat(user_prompt="x")
        with pytest.raises(ConnectionError):
            await client.models()
    assert down in str(unreachable.value)
    with Stagecast(down) as sync_client, pytest.raises(StagecastConnectionError):
        sync_client.health()


# --- accumulated answers ---------------------------------------------------------------
async def test_chat_answer_accumulates_text_reasoning_and_usage(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(text_script(["<think>Lisbon is ", "hilly.</think>", "Pack ", "shoes."]))
    async with AsyncStagecast(gateway.url) as client:
        answer = await client.collect_chat(user_prompt="x", stage_id="acc-1")
    assert answer.stage_id == "acc-1"
    assert answer.status == "done" and answer.ok
    assert answer.text == "Pack shoes."
    assert answer.reasoning == "Lisbon is hilly."
    assert answer.finish_reason == "stop"
    assert answer.usage is not None and answer.usage.completion_tokens == 4
    assert answer.tool_calls == [] and answer.tool_results == {}
    assert answer.ttft_s is not None and answer.duration_s is not None
    assert answer.ttft_s <= answer.duration_s
    assert answer.events == answer.last_event_id
    result = answer.to_result()
    assert isinstance(result, TextResult)
    assert (result.text, result.reasoning) == ("Pack shoes.", "Lisbon is hilly.")


async def test_tool_answer_assembles_calls_and_merges_results(
    tool_gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(DIALECTS["openai_interleaved"](), text_script(["5 and ", "6."]))
    async with AsyncStagecast(tool_gateway.url) as client:
        async with client.stream_toolchain(
            user_prompt="add", synthesis=True, tools=["add"]
        ) as stream:
            answer = await stream.final()
    assert [(c.round, c.index, c.name) for c in answer.tool_calls] == [
        (1, 0, "add"),
        (1, 1, "add"),
    ]
    assert [c.parsed_arguments() for c in answer.tool_calls] == [
        {"a": 2, "b": 3},
        {"a": 10, "b": -4},
    ]
    assert [c.result for c in answer.tool_calls] == [5, 6]
    assert all(c.has_result and c.error is None for c in answer.tool_calls)
    ids = [c.id for c in answer.tool_calls]
    assert all(ids) and answer.tool_results == {ids[0]: 5, ids[1]: 6}
    assert [d.id for d in answer.tool_details] == ids
    assert answer.tools_called == ["add", "add"]
    assert answer.text == "5 and 6."
    assert isinstance(answer.to_result(), TextResult)


async def test_tool_rounds_restart_their_indexes(
    tool_gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(
        script([{"tool_calls": [tc(0, "r1", "add", '{"a": 1, "b": 1}')]}]),
        script(
            [
                {"tool_calls": [tc(0, "r2", "add", '{"a": 2, "b": 2}')]},
                {"tool_calls": [tc(1, "r3", "explode", '{"reason": "no"}')]},
            ]
        ),
        text_script(["Done."]),
    )
    async with AsyncStagecast(tool_gateway.url) as client:
        answer = await client.collect_toolchain(user_prompt="x", synthesis=True, max_tool_rounds=2)
    assert [(c.round, c.index, c.id) for c in answer.tool_calls] == [
        (1, 0, "r1"),
        (2, 0, "r2"),
        (2, 1, "r3"),
    ]
    assert [c.result for c in answer.tool_calls[:2]] == [2, 4]
    assert "exploded: no" in (answer.tool_calls[2].error or "")
    assert set(answer.tool_results) == {"r1", "r2", "r3"}


def test_sync_tool_only_answer(tool_gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(DIALECTS["qwen_json_content"]())
    with Stagecast(tool_gateway.url) as client:
        answer = client.collect_toolchain(user_prompt="x", tools=["add"])
    assert answer.text == ""
    assert sorted(answer.tool_results.values()) == [5, 6]
    result = answer.to_result()
    assert isinstance(result, ToolResultsResult)
    assert result.tool_calls is not None and len(result.tool_calls) == 2


# --- API key ---------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["argument", "environment"])
async def test_api_key_reaches_the_gateway_on_every_request(
    source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = chat_frames("key-1", ["a ", "b ", "c "])
    kwargs: dict[str, Any] = {}
    if source == "argument":
        kwargs["api_key"] = "sk-test-123"
    else:
        monkeypatch.setenv("STAGECAST_API_KEY", "sk-test-123")
    with scripted_gateway("key-1", frames, [Plan(send=1, end="truncate")]) as fake:
        async with AsyncStagecast(fake.url, **kwargs) as client:
            await client.collect_chat(user_prompt="x")
            await client.cancel("key-1")
    assert [(r.method, r.path) for r in fake.requests] == [
        ("POST", "/stream/v1/chat"),
        ("GET", "/stream/v1/stages/key-1"),
        ("POST", "/stream/v1/stages/key-1/cancel"),
    ]
    assert {r.headers.get("authorization") for r in fake.requests} == {"Bearer sk-test-123"}


def test_no_key_no_header_and_the_sync_client_sends_it_too() -> None:
    frames = chat_frames("key-2", ["a "])
    with scripted_gateway("key-2", frames, [Plan(), Plan()]) as fake:
        with Stagecast(fake.url) as client:
            client.collect_chat(user_prompt="x")
        with Stagecast(fake.url, api_key="sk-sync") as client:
            client.collect_chat(user_prompt="x")
    assert [r.headers.get("authorization") for r in fake.requests] == [None, "Bearer sk-sync"]


# --- the sync client's loop thread -----------------------------------------------------
def test_sync_client_stops_its_thread_and_refuses_use_after_close(gateway: Gateway) -> None:
    client = Stagecast(gateway.url)
    assert any(t.name == "stagecast-sync" for t in threading.enumerate())
    assert [m["id"] for m in client.models()] == ["fake"]
    client.close()
    client.close()  # idempotent
    assert not any(t.name == "stagecast-sync" for t in threading.enumerate())
    with pytest.raises(RuntimeError, match="closed"):
        client.models()
