"""Runs that outlive connections: disconnect policy, resume, cancel, heartbeats."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from stagecast.client import AsyncStagecast, StagecastHTTPError
from stagecast.protocol.sse import SSEDecoder
from tests.conftest import Gateway, GatewayFactory, no_leaks, role
from tests.peers.fake_upstream import FakeUpstream, Script, Step, chunk, data, text_script
from tests.test_chat_stream import assert_protocol, collect, text_of

WORDS = [f"w{i} " for i in range(30)]


async def read_frames(response: httpx.Response, n: int) -> list[Any]:
    """Read until ``n`` events arrived (comments are not events)."""
    decoder = SSEDecoder()
    events: list[Any] = []
    async for raw in response.aiter_raw():
        events += decoder.feed(raw)
        if len(events) >= n:
            break
    return events


# The server's writer tells a streaming response that its client left (``stagecast serve``);
# under any other server a task of the response listens on ``receive`` for it.
SERVERS = pytest.mark.parametrize("server", ["pushing", "plain"])


def served(make_gateway: GatewayFactory, upstream: FakeUpstream, server: str) -> Gateway:
    """A gateway for the fake upstream, under ``stagecast serve``'s protocol or uvicorn's."""
    protocol = HttpToolsProtocol if server == "plain" else None
    # No first-token timeout within the tests' waits: only the client leaving closes upstream.
    fake = role(upstream.url, first_token_timeout=60.0)
    return make_gateway(http=protocol, models={"fake": fake})


@SERVERS
async def test_client_disconnect_mid_stream_closes_upstream(
    make_gateway: GatewayFactory, upstream: FakeUpstream, server: str
) -> None:
    gateway = served(make_gateway, upstream, server)
    upstream.enqueue(text_script(WORDS, pace=0.1))
    with no_leaks(gateway):
        async with httpx.AsyncClient(base_url=gateway.url) as http:
            async with http.stream("POST", "/stream/v1/chat", json={"user_prompt": "x"}) as r:
                await read_frames(r, 3)
        record = upstream.wait_disconnected(0)
    assert record.finished_at is None


@SERVERS
async def test_client_disconnect_while_waiting_for_first_token(
    make_gateway: GatewayFactory, upstream: FakeUpstream, server: str
) -> None:
    gateway = served(make_gateway, upstream, server)
    upstream.enqueue(Script(delay_headers=30))
    with no_leaks(gateway):
        async with httpx.AsyncClient(base_url=gateway.url) as http:
            async with http.stream("POST", "/stream/v1/chat", json={"user_prompt": "x"}) as r:
                assert r.status_code == 200
                upstream.wait_requests(1)
        upstream.wait_disconnected(0)


async def test_continue_policy_finishes_into_the_log_for_a_later_resume(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(text_script(WORDS[:8], pace=0.05))
    body = {"user_prompt": "x", "on_disconnect": "continue", "stage_id": "keep-1"}
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        async with http.stream("POST", "/stream/v1/chat", json=body) as r:
            first = await read_frames(r, 2)
    # The run goes on with nobody attached; the model server is never told to stop.
    assert upstream.wait_requests(1)
    from tests.peers.servers import wait_for

    assert wait_for(lambda: upstream.chat_requests()[0].finished_at is not None)
    async with AsyncStagecast(gateway.url) as client:
        async with client.attach("keep-1", int(first[-1].id)) as stream:
            rest = [e async for e in stream]
    assert rest[0].id == int(first[-1].id) + 1
    assert rest[-1].event == "done"
    async with AsyncStagecast(gateway.url) as client, client.attach("keep-1") as stream:
        everything = [e async for e in stream]
    assert_protocol(everything, "keep-1")
    assert text_of(everything) == "".join(WORDS[:8])


async def test_resume_mid_stream_has_no_gap_and_no_duplicate(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(text_script(WORDS, pace=0.03))
    body = {"user_prompt": "x", "on_disconnect": "continue", "stage_id": "res-1"}
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        async with http.stream("POST", "/stream/v1/chat", json=body) as r:
            head = await read_frames(r, 5)
        last = head[-1].id
        # query parameter form of Last-Event-ID
        async with http.stream("GET", f"/stream/v1/stages/res-1?last_event_id={last}") as r:
            tail = await read_frames(r, 10_000)
    ids = [int(e.id) for e in head + tail]
    assert ids == list(range(1, len(ids) + 1))
    assert tail[-1].event == "done"


async def test_resume_unknown_or_expired_stage_is_404(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    gw = make_gateway(models={"fake": role(upstream.url)}, stage_ttl=0.5)
    upstream.enqueue(text_script(["a"]))
    async with AsyncStagecast(gw.url) as client:
        await collect(client, user_prompt="x", stage_id="short-lived")
        async with client.attach("short-lived") as stream:
            replay = [e async for e in stream]
        assert replay[-1].event == "done"
        await asyncio.sleep(1.0)
        for stage in ("short-lived", "never-existed"):
            with pytest.raises(StagecastHTTPError) as info:
                async with client.attach(stage) as stream:
                    pass
            assert info.value.status == 404


async def test_live_stage_id_conflicts_409(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(text_script(WORDS, pace=0.05), text_script(["b"]), text_script(["c"]))
    async with AsyncStagecast(gateway.url) as client:
        async with client.stream_chat(user_prompt="x", stage_id="dup") as first:
            with pytest.raises(StagecastHTTPError) as info:
                async with client.stream_chat(user_prompt="y", stage_id="dup"):
                    pass
            assert info.value.status == 409
            events = [e async for e in first]
        assert events[-1].event == "done"
        # Once finished, the id may be used again.
        _, again = await collect(client, user_prompt="z", stage_id="dup")
        assert again[-1].event == "done"


async def test_cancel_ends_every_attached_stream_and_returns_a_receipt(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(text_script(WORDS, pace=0.1))
    async with AsyncStagecast(gateway.url) as client:
        async with client.stream_chat(user_prompt="x", stage_id="stop-me") as a:
            it = aiter(a)
            await anext(it)
            await anext(it)
            async with client.attach("stop-me") as b:
                receipt = await client.cancel("stop-me")
                rest_a = [e async for e in it]
                all_b = [e async for e in b]
        again = await client.cancel("stop-me")
    assert receipt["status_before"] == "running"
    assert receipt["status_after"] == "cancelled"
    assert receipt["upstream_aborted"] is True
    assert receipt["completion_tokens"] >= 1
    assert rest_a[-1].event == "cancel"
    assert all_b[-1].event == "cancel"
    assert_protocol(all_b, "stop-me")
    assert again["status_before"] == "cancelled"
    assert again["cancel_requested"] is False
    upstream.wait_disconnected(0)


async def test_heartbeats_during_an_upstream_stall(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    gw = make_gateway(models={"fake": role(upstream.url, idle_timeout=10)}, heartbeat_interval=0.2)
    steps = data(chunk({"content": "before"})) + [Step("sleep", seconds=3)]
    steps += data(chunk({"content": " after"}, finish="stop")) + [Step("data", b"[DONE]")]
    upstream.enqueue(Script(steps))
    comments = 0
    decoder = SSEDecoder()
    events = []
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
        async with http.stream("POST", "/stream/v1/chat", json={"user_prompt": "x"}) as r:
            async for raw in r.aiter_raw():
                comments += raw.count(b": keep-alive\n\n")
                events += decoder.feed(raw)
    assert events[-1].event == "done"
    assert comments >= 3, comments


async def test_sdk_resumes_after_a_network_drop(gateway: Gateway, upstream: FakeUpstream) -> None:
    from tests.peers.tcp_proxy import tcp_proxy

    upstream.enqueue(text_script(WORDS, pace=0.05))
    with tcp_proxy("127.0.0.1", gateway.server.port) as proxy:
        async with AsyncStagecast(proxy.url) as client:
            events = []
            async with client.stream_chat(
                user_prompt="x", on_disconnect="continue", stage_id="drop-1"
            ) as stream:
                async for event in stream:
                    events.append(event)
                    if len(events) == 5:
                        proxy.cut()
    assert stream.resumes >= 1
    assert_protocol(events, "drop-1")
    assert text_of(events) == "".join(WORDS)


async def test_cancel_while_waiting_for_the_first_token(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Script(delay_headers=30))
    async with AsyncStagecast(gateway.url) as client:
        async with client.stream_chat(user_prompt="x", stage_id="early", raise_on_error=False) as s:
            upstream.wait_requests(1)
            receipt = await client.cancel("early")
            events = [e async for e in s]
    assert events[-1].event == "cancel"
    assert receipt["status_after"] == "cancelled"
    assert receipt["upstream_aborted"] is True
    upstream.wait_disconnected(0)


async def test_stage_over_its_event_bound_ends_with_a_clear_error(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    gw = make_gateway(models={"fake": role(upstream.url)}, max_stage_events=20)
    upstream.enqueue(text_script([f"{i} " for i in range(100)], pace=0.02))
    with no_leaks(gw):
        async with AsyncStagecast(gw.url) as client:
            _, events = await collect(client, user_prompt="x")
    assert len(events) == 21
    assert events[-1].event == "error"
    assert events[-1].data.code == "stage_too_large"  # type: ignore[union-attr]
    upstream.wait_disconnected(0)


async def test_a_reader_that_falls_behind_is_closed_and_can_resume(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    gw = make_gateway(models={"fake": role(upstream.url, idle_timeout=30)}, max_reader_lag=100)
    # One chunk, a pause in which the reader catches up, then far more than socket buffers
    # hold, flat out, then another pause while the stalled reader comes back.
    steps = data(chunk({"role": "assistant", "content": ""})) + [Step("sleep", seconds=1)]
    for i in range(20_000):
        steps += data(chunk({"content": f"{i:05d} " + "x" * 200}))
    steps += [Step("sleep", seconds=4)]
    steps += data(chunk({}, finish="stop")) + [Step("data", b"[DONE]")]
    upstream.enqueue(Script(steps))
    body = {"user_prompt": "x", "on_disconnect": "continue", "stage_id": "laggard"}
    from tests.peers.servers import wait_for

    decoder = SSEDecoder()
    first: list[Any] = []
    async with httpx.AsyncClient(base_url=gw.url, timeout=60) as http:
        async with http.stream("POST", "/stream/v1/chat", json=body) as r:
            raw = aiter(r.aiter_raw())
            while not first:
                first += decoder.feed(await anext(raw))
            # Now stop reading until the model server has sent all but the end.
            assert await asyncio.to_thread(
                wait_for, lambda: gw.state.hub._logs["laggard"].info.last_seq >= 20_001, 60
            )
            async for piece in raw:
                first += decoder.feed(piece)
    assert first[-1].event == "chat_completion_chunk", "closed without a terminal event"
    ids = [int(e.id) for e in first]
    assert ids == list(range(1, len(ids) + 1))
    async with AsyncStagecast(gw.url) as client:
        async with client.attach("laggard", ids[-1]) as stream:
            rest = [e async for e in stream]
    assert rest[0].id == ids[-1] + 1
    assert rest[-1].event == "done"
