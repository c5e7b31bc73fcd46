"""A model server that sends garbage gets one error event; the gateway's memory stays bounded."""

from __future__ import annotations

import os
import random

import pytest

from stagecast.client import AsyncStagecast
from tests.conftest import Gateway, no_leaks
from tests.peers.fake_upstream import FakeUpstream, Script, Step, chunk, data, text_script
from tests.test_chat_stream import assert_protocol, collect, text_of


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def garbage(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.getrandbits(8) for _ in range(size))


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_bytes(gateway: Gateway, upstream: FakeUpstream, seed: int) -> None:
    upstream.enqueue(Script([Step("raw", garbage(seed, 64 * 1024))]), text_script(["fine"]))
    with no_leaks(gateway):
        async with AsyncStagecast(gateway.url) as client:
            _, events = await collect(client, user_prompt="x")
            _, after = await collect(client, user_prompt="y")
    assert_protocol(events)
    assert events[-1].event == "error"
    assert events[-1].data.code in {  # type: ignore[union-attr]
        "upstream_malformed",
        "upstream_disconnected",
    }
    assert text_of(after) == "fine"


async def test_endless_line_and_a_50_mb_chunk(gateway: Gateway, upstream: FakeUpstream) -> None:
    # 50 MB in one SSE line: both a "chunk" that large and a line that never ends in time.
    huge = b"data: " + b'{"choices":[{"delta":{"content":"' + b"A" * (50 * 1024 * 1024)
    endless = [Step("raw", b"data: {" + b"x" * (1024 * 1024)) for _ in range(60)]
    upstream.enqueue(
        Script([*data(chunk({"content": "start"})), Step("raw", huge)]),
        Script(endless),
        text_script(["still fine"]),
    )
    before = rss_bytes()
    with no_leaks(gateway):
        async with AsyncStagecast(gateway.url) as client:
            _, big = await collect(client, user_prompt="x")
            _, long = await collect(client, user_prompt="y")
            _, after = await collect(client, user_prompt="z")
    for events in (big, long):
        assert_protocol(events)
        assert events[-1].event == "error"
        assert events[-1].data.code == "upstream_malformed"  # type: ignore[union-attr]
        assert "over-long line" in events[-1].data.error  # type: ignore[union-attr]
    assert text_of(after) == "still fine"
    # The test process holds the fake server's own 50 MB script; the gateway must not have
    # added a copy of it (its line bound is 2 MiB).
    assert rss_bytes() - before < 40 * 1024 * 1024
