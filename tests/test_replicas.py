"""Two gateway processes behind one Redis: resume and cancel work from either replica."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from stagecast.client import AsyncStagecast
from tests.peers.fake_upstream import FakeUpstream, text_script
from tests.peers.servers import gateway_process
from tests.test_chat_stream import assert_protocol, text_of

pytestmark = pytest.mark.redis
WORDS = [f"w{i} " for i in range(40)]


@pytest.fixture
def two_replicas(
    tmp_path: Path, upstream: FakeUpstream, redis_url: str, redis_prefix: str
) -> Iterator[tuple[str, str]]:
    config = tmp_path / "stagecast.toml"
    config.write_text(
        f'database_path = "{tmp_path}/records.db"\n'
        f'redis_url = "{redis_url}"\nredis_prefix = "{redis_prefix}"\nheartbeat_interval = 1\n'
        f'[models.fake]\nbase_url = "{upstream.url}"\nmodel = "m"\n'
    )
    with ExitStack() as stack:
        _, a = stack.enter_context(gateway_process(config, capture=False))
        _, b = stack.enter_context(gateway_process(config, capture=False))
        yield a, b


async def test_stage_started_on_a_resumes_on_b_exactly_once(
    two_replicas: tuple[str, str], upstream: FakeUpstream
) -> None:
    a_url, b_url = two_replicas
    upstream.enqueue(text_script(WORDS, pace=0.05))
    async with AsyncStagecast(a_url) as a, AsyncStagecast(b_url) as b:
        seen = []
        async with a.stream_chat(
            user_prompt="x", stage_id="roam-1", on_disconnect="continue"
        ) as on_a:
            async for event in on_a:
                seen.append(event)
                if len(seen) == 6:
                    break
        async with b.attach("roam-1", seen[-1].id) as on_b:
            seen += [e async for e in on_b]
    assert_protocol(seen, "roam-1")
    assert [e.id for e in seen] == list(range(1, len(seen) + 1))
    assert text_of(seen) == "".join(WORDS)


async def test_cancel_sent_to_b_stops_the_run_on_a(
    two_replicas: tuple[str, str], upstream: FakeUpstream
) -> None:
    a_url, b_url = two_replicas
    upstream.enqueue(text_script(WORDS, pace=0.1))
    async with AsyncStagecast(a_url) as a, AsyncStagecast(b_url) as b:
        async with a.stream_chat(user_prompt="x", stage_id="stop-1") as on_a:
            events_a = aiter(on_a)
            first = [await anext(events_a)]
            async with b.attach("stop-1") as on_b:
                receipt = await b.cancel("stop-1")
                rest_a = [e async for e in events_a]
                all_b = [e async for e in on_b]
    assert receipt["status_before"] == "running"
    assert receipt["status_after"] == "cancelled"
    assert receipt["upstream_aborted"] is True
    assert rest_a[-1].event == "cancel"
    assert all_b[-1].event == "cancel"
    assert_protocol(first + rest_a, "stop-1")
    upstream.wait_disconnected(0)
    assert upstream.chat_requests()[0].finished_at is None
