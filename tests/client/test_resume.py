"""The SDK resumes a dropped stream with Last-Event-ID: every event exactly once, in order."""

from __future__ import annotations

import threading

import pytest

from stagecast.client import (
    AsyncStagecast,
    Stagecast,
    StagecastHTTPError,
    StageEvent,
    StageStream,
    StreamDroppedError,
)
from tests.client.fake_gateway import Plan, chat_frames, scripted_gateway
from tests.conftest import Gateway, GatewayFactory, role
from tests.peers.fake_upstream import FakeUpstream, text_script
from tests.peers.tcp_proxy import tcp_proxy
from tests.test_chat_stream import assert_protocol, text_of

WORDS = [f"w{i} " for i in range(30)]


@pytest.fixture
def fast_gateway(make_gateway: GatewayFactory, upstream: FakeUpstream) -> Gateway:
    """A gateway that tells clients to reconnect after 50 ms (its ``retry:``)."""
    return make_gateway(models={"fake": role(upstream.url)}, retry_ms=50)


async def read_into(stream: StageStream, events: list[StageEvent]) -> None:
    """Read ``stream`` to its end, keeping the events as they come."""
    async with stream:
        async for event in stream:
            events.append(event)


def assert_exactly_once(events: list[StageEvent]) -> None:
    ids = [e.id for e in events]
    assert ids == list(range(1, len(ids) + 1)), f"gap or duplicate: {ids}"


async def test_async_client_resumes_a_stream_cut_by_the_network(
    fast_gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(text_script(WORDS, pace=0.03))
    events: list[StageEvent] = []
    with tcp_proxy("127.0.0.1", fast_gateway.server.port) as proxy:
        async with AsyncStagecast(proxy.url) as client:
            async with client.stream_chat(
                user_prompt="x", on_disconnect="continue", stage_id="cut-async"
            ) as stream:
                async for event in stream:
                    events.append(event)
                    if len(events) in (5, 12):
                        proxy.cut()
    assert stream.resumes == 2
    assert stream.retry_ms == 50  # the gateway's retry: replaced the client's default
    assert_exactly_once(events)
    assert_protocol(events, "cut-async")
    assert text_of(events) == "".join(WORDS)
    answer = stream.answer()
    assert answer.text == "".join(WORDS)
    assert answer.resumes == 2
    assert answer.status == "done"


def test_sync_client_resumes_a_stream_cut_by_the_network(
    fast_gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(text_script(WORDS, pace=0.03))
    events: list[StageEvent] = []
    with tcp_proxy("127.0.0.1", fast_gateway.server.port) as proxy:
        with Stagecast(proxy.url) as client:
            with client.stream_chat(
                user_prompt="x", on_disconnect="continue", stage_id="cut-sync"
            ) as stream:
                for event in stream:
                    events.append(event)
                    if len(events) == 7:
                        proxy.cut()
    assert stream.resumes == 1
    assert_exactly_once(events)
    assert_protocol(events, "cut-sync")
    assert text_of(events) == "".join(WORDS)
    assert not any(t.name == "stagecast-sync" for t in threading.enumerate())


async def test_an_outage_during_the_resume_is_retried(
    fast_gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(text_script(WORDS, pace=0.03))
    events: list[StageEvent] = []
    with tcp_proxy("127.0.0.1", fast_gateway.server.port) as proxy:
        # Connections are refused for a while; backoff (50, 100, 200, ... ms) outlasts it.
        reopen = threading.Timer(0.3, proxy.resume)
        async with AsyncStagecast(proxy.url, max_resumes=8) as client:
            async with client.stream_chat(
                user_prompt="x", on_disconnect="continue", stage_id="outage"
            ) as stream:
                async for event in stream:
                    events.append(event)
                    if len(events) == 3:
                        proxy.pause()
                        reopen.start()
        reopen.join()
    assert stream.resumes == 1
    assert_exactly_once(events)
    assert events[-1].event == "done"


@pytest.mark.parametrize(
    ("plans", "resumes"),
    [
        pytest.param([Plan(send=3, end="truncate")], 1, id="incomplete-chunked-read"),
        pytest.param([Plan(send=3, end="close")], 1, id="clean-close-without-terminal"),
        pytest.param([Plan(send=0, end="close", retry_ms=20)], 1, id="closed-before-any-event"),
        pytest.param(
            [Plan(send=2, end="truncate"), Plan(send=2, end="close"), Plan(send=1, end="truncate")],
            3,
            id="several-drops",
        ),
        pytest.param(
            [Plan(send=4, end="close"), Plan(replay=True)], 1, id="server-replays-from-start"
        ),
        pytest.param(
            [Plan(send=4, end="close"), Plan(status=503), Plan(status=502)],
            1,
            id="refused-while-restarting",
        ),
    ],
)
async def test_every_drop_shape_is_resumed(plans: list[Plan], resumes: int) -> None:
    words = [f"{i} " for i in range(10)]
    frames = chat_frames("fake-1", words, retry_ms=20)
    with scripted_gateway("fake-1", frames, plans) as fake:
        async with AsyncStagecast(fake.url, retry_ms=10_000) as client:
            async with client.stream_chat(user_prompt="x") as stream:
                events = [e async for e in stream]
    assert_exactly_once(events)
    assert [e.event for e in events][-1] == "done"
    assert text_of(events) == "".join(words)
    assert stream.resumes == resumes
    assert stream.retry_ms == 20
    # Each reconnection asked for the events after the last one it had.
    resumed = [r for r in fake.requests if r.method == "GET"]
    assert all(r.path == "/stream/v1/stages/fake-1" for r in resumed)
    marks = [int(r.headers["last-event-id"]) for r in resumed]
    assert marks == sorted(marks)


async def test_retries_are_bounded() -> None:
    frames = chat_frames("fake-2", ["a ", "b ", "c "])
    plans = [Plan(send=1, end="close")] + [Plan(send=0, end="close")] * 10
    with scripted_gateway("fake-2", frames, plans) as fake:
        async with AsyncStagecast(fake.url, max_resumes=3) as client:
            events: list[StageEvent] = []
            with pytest.raises(StreamDroppedError) as info:
                await read_into(client.stream_chat(user_prompt="x"), events)
    assert [e.id for e in events] == [1]
    assert info.value.stage_id == "fake-2"
    assert info.value.last_event_id == 1
    assert "3 reconnection attempts" in str(info.value)
    assert len(fake.requests) == 1 + 3


async def test_a_stage_gone_on_resume_is_reported() -> None:
    frames = chat_frames("fake-3", ["a ", "b ", "c "])
    with scripted_gateway("fake-3", frames, [Plan(send=2), Plan(status=404)]) as fake:
        async with AsyncStagecast(fake.url) as client:
            with pytest.raises(StreamDroppedError) as info:
                await read_into(client.stream_chat(user_prompt="x"), [])
    assert isinstance(info.value.__cause__, StagecastHTTPError)
    assert info.value.__cause__.status == 404
    assert info.value.last_event_id == 2
