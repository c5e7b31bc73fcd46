"""Every way a model server can fail ends the stream with one ``error`` event and a code."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from stagecast.client import AsyncStagecast
from tests.conftest import GatewayFactory, no_leaks, role
from tests.peers.fake_upstream import (
    FakeUpstream,
    Script,
    Step,
    chunk,
    data,
    done,
    error_script,
    text_script,
)
from tests.peers.servers import closed_port_url, wait_for
from tests.test_chat_stream import assert_protocol, collect, text_of


def stalled(seconds: float) -> Script:
    return Script(
        data(chunk({"role": "assistant", "content": ""})) + [Step("sleep", seconds=seconds)]
    )


CASES: dict[str, tuple[Script, str, bool]] = {
    "http_500": (error_script(500, "model crashed"), "upstream_status", True),
    "http_429": (error_script(429, "slow down"), "upstream_status", True),
    "http_400": (error_script(400, "bad model"), "upstream_status", False),
    "first_token_timeout": (Script(delay_headers=30), "upstream_timeout", True),
    "idle_timeout": (stalled(30), "upstream_timeout", True),
    "cut_mid_stream": (
        Script(data(chunk({"content": "partial"})) + [Step("cut")]),
        "upstream_disconnected",
        True,
    ),
    "malformed_chunk": (
        Script(data(chunk({"content": "ok"})) + [Step("raw", b"data: {not json\n\n")]),
        "upstream_malformed",
        False,
    ),
    "error_object_in_stream": (
        Script(data({"error": {"message": "overloaded"}})),
        "upstream_status",
        True,
    ),
    "ends_without_done": (
        Script(data(chunk({"content": "half"}))),
        "upstream_disconnected",
        True,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_upstream_failure_is_one_error_event(
    make_gateway: GatewayFactory, upstream: FakeUpstream, case: str
) -> None:
    script, code, retryable = CASES[case]
    gw = make_gateway(
        models={"fake": role(upstream.url, first_token_timeout=1.0, idle_timeout=1.0)}
    )
    upstream.enqueue(script, text_script(["still", " serving"]))
    with no_leaks(gw):
        async with AsyncStagecast(gw.url) as client:
            _, events = await collect(client, user_prompt="x")
            assert_protocol(events)
            error: Any = events[-1].data
            assert events[-1].event == "error", events[-1]
            assert error.code == code, error
            assert error.retryable is retryable
            assert error.error
            # The gateway keeps serving after the failure.
            _, after = await collect(client, user_prompt="again")
            assert text_of(after) == "still serving"
    if "timeout" in case:
        # The gateway gave up on the model server: it must also hang up on it.
        upstream.wait_disconnected(0)


async def test_refused_connection(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(models={"dead": role(closed_port_url())})
    with no_leaks(gw):
        async with AsyncStagecast(gw.url) as client:
            _, events = await collect(client, user_prompt="x")
    assert_protocol(events)
    assert events[-1].event == "error"
    assert events[-1].data.code == "upstream_unreachable"  # type: ignore[union-attr]
    assert "could not connect" in events[-1].data.error  # type: ignore[union-attr]


async def test_total_timeout(make_gateway: GatewayFactory, upstream: FakeUpstream) -> None:
    steps = data(chunk({"content": "tick"}))
    for _ in range(40):
        steps += data(chunk({"content": "."}), delay=0.1)
    upstream.enqueue(Script(steps + done()))
    gw = make_gateway(models={"fake": role(upstream.url, total_timeout=1.0)})
    async with AsyncStagecast(gw.url) as client:
        _, events = await collect(client, user_prompt="x")
    assert events[-1].data.code == "upstream_timeout"  # type: ignore[union-attr]
    assert "before the deadline" in events[-1].data.error  # type: ignore[union-attr]
    upstream.wait_disconnected(0)


async def test_timeouts_close_the_upstream_connection(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    gw = make_gateway(models={"fake": role(upstream.url, idle_timeout=0.5)})
    upstream.enqueue(stalled(30))
    async with AsyncStagecast(gw.url) as client:
        _, events = await collect(client, user_prompt="x")
    assert events[-1].event == "error"
    upstream.wait_disconnected(0)


async def test_retry_before_first_token_then_success(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    gw = make_gateway(models={"fake": role(upstream.url, retries=2)})
    upstream.enqueue(error_script(503, "warming up"), error_script(502), text_script(["ok"]))
    async with AsyncStagecast(gw.url) as client:
        _, events = await collect(client, user_prompt="x")
    assert_protocol(events)
    assert text_of(events) == "ok"
    assert len(upstream.chat_requests()) == 3


async def test_no_retry_after_first_token(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    gw = make_gateway(models={"fake": role(upstream.url, retries=3)})
    upstream.enqueue(Script(data(chunk({"content": "par"})) + [Step("cut")]), text_script(["x"]))
    async with AsyncStagecast(gw.url) as client:
        _, events = await collect(client, user_prompt="x")
    assert text_of(events) == "par"
    assert events[-1].event == "error"
    assert len(upstream.chat_requests()) == 1


async def test_fallback_role_serves_when_primary_is_down(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    gw = make_gateway(
        models={
            "primary": role(closed_port_url(), fallbacks=["backup"]),
            "backup": role(upstream.url, model="backup-model"),
        }
    )
    upstream.enqueue(text_script(["from backup"]))
    async with AsyncStagecast(gw.url) as client:
        _, events = await collect(client, user_prompt="x", model="primary")
    assert text_of(events) == "from backup"
    assert upstream.chat_requests()[0].body["model"] == "backup-model"


async def test_non_retryable_status_is_not_retried(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    gw = make_gateway(models={"fake": role(upstream.url, retries=3)})
    upstream.enqueue(error_script(401, "bad key"))
    async with AsyncStagecast(gw.url) as client:
        _, events = await collect(client, user_prompt="x")
    assert events[-1].data.code == "upstream_status"  # type: ignore[union-attr]
    assert len(upstream.chat_requests()) == 1


async def test_concurrency_limit_queues_then_reports_busy(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    gw = make_gateway(models={"fake": role(upstream.url, max_concurrency=1, queue_timeout=0.5)})
    upstream.enqueue(stalled(3))
    async with AsyncStagecast(gw.url) as client:
        async with client.stream_chat(user_prompt="first", raise_on_error=False) as first:
            upstream.wait_requests(1)
            _, events = await collect(client, user_prompt="second")
            assert events[-1].data.code == "role_busy"  # type: ignore[union-attr]
            await first.aclose()
    assert len(upstream.chat_requests()) == 1


async def test_a_slot_is_given_back_however_the_stream_ended(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    # One slot: every stage below would be refused as busy if an earlier one had kept it.
    gw = make_gateway(
        models={"fake": role(upstream.url, max_concurrency=1, queue_timeout=0.2, retries=1)}
    )
    upstream.enqueue(text_script(["one"]))
    upstream.enqueue(error_script(400, "bad model"))  # not retried
    upstream.enqueue(error_script(500, "model crashed"))  # retried once, then fails again
    upstream.enqueue(error_script(500, "model crashed"))
    upstream.enqueue(stalled(30))  # the client leaves while it streams
    upstream.enqueue(text_script(["last"]))
    async with AsyncStagecast(gw.url) as client:
        _, events = await collect(client, user_prompt="ok")
        assert text_of(events) == "one"
        for code in ("upstream_status", "upstream_status"):
            _, events = await collect(client, user_prompt="fails")
            assert events[-1].event == "error"
            assert events[-1].data.code == code  # type: ignore[union-attr]
        async with client.stream_chat(user_prompt="left", raise_on_error=False) as left:
            await anext(aiter(left))
            upstream.wait_requests(5)
        _, events = await collect(client, user_prompt="ok again")
        assert text_of(events) == "last"
    assert len(upstream.chat_requests()) == 6


async def test_streams_leave_no_connection_objects_to_the_collector(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    """What a stream used on both sides (the upstream connection, its parser, reader and
    watchdog; the client's request cycle and its writer) is freed by reference counting when
    the stream ends or its client leaves, not in a later collector pass (a pause for
    everyone)."""
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    from stagecast.api.push import BodyPush
    from stagecast.backends.http1 import Connection
    from stagecast.backends.openai_compat import _ChunkReader, _Watchdog

    watched = (Connection, _ChunkReader, _Watchdog, RequestResponseCycle, BodyPush)
    gw = make_gateway(models={"fake": role(upstream.url)})
    upstream.enqueue(text_script(["whole"]), stalled(30), stalled(30))
    gc.collect()
    gc.disable()
    try:
        async with AsyncStagecast(gw.url) as client:
            _, events = await collect(client, user_prompt="ends")
            assert text_of(events) == "whole"
            for n in range(2):
                async with client.stream_chat(user_prompt="left", raise_on_error=False) as left:
                    await anext(aiter(left))
                    upstream.wait_requests(n + 2)
        assert wait_for(lambda: gw.state.stages.runs == {}, 10)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        cyclic = sorted(type(o).__name__ for o in gc.garbage if isinstance(o, watched))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert cyclic == []
