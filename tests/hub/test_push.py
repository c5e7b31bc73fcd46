"""Readers written to by ``push``: frames reach the reader once each and in order, whether
the hub pushes them, the reader's task writes them, or both take turns."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import pytest

from stagecast.hub import MemoryHub, StreamHub
from stagecast.protocol.sse import SSEDecoder
from tests.hub.test_hub_contract import WAIT, HubFactory, fill, ids, payload
from tests.hub.test_hub_contract import make_hub as make_hub  # the fixture, for both hubs

# Which pushes a reader's connection takes: by the number of the push call (from 0).
PATTERNS: dict[str, Callable[[int], bool]] = {
    "takes every push": lambda n: True,
    "refuses every push": lambda n: False,
    "takes every other push": lambda n: n % 2 == 0,
    "refuses the first ten": lambda n: n >= 10,
}


class Reader:
    """One reader's connection: what was pushed and what its task wrote, in arrival order."""

    def __init__(self, takes: Callable[[int], bool], *, raises: bool = False) -> None:
        self.takes = takes
        self.raises = raises
        self.calls = itertools.count()
        self.received: list[bytes] = []
        self.pushed: list[bytes] = []

    def push(self, body: bytes) -> bool:
        n = next(self.calls)
        if self.raises and n % 3 == 1:
            raise ConnectionResetError("push failed")
        if not self.takes(n):
            return False
        self.pushed.append(body)
        self.received.append(body)
        return True

    async def read(self, hub: StreamHub, stage_id: str, *, heartbeat: float | None = None) -> None:
        async for batch in hub.tail(stage_id, heartbeat=heartbeat, push=self.push):
            self.received.append(batch)


async def produce(hub: StreamHub, stage_id: str, bursts: int, size: int) -> None:
    """``bursts`` runs of ``size`` appends each within one loop turn, then ``done``."""
    for burst in range(bursts):
        await fill(hub, stage_id, (burst + 1) * size, start=burst * size + 1)
        await asyncio.sleep(0.001)
    await hub.append(stage_id, "done", b"{}")


@pytest.mark.parametrize("pattern", list(PATTERNS))
async def test_every_frame_arrives_once_in_order(make_hub: HubFactory, pattern: str) -> None:
    hub = make_hub()
    await hub.open("s1", owner="runner", meta={})
    await fill(hub, "s1", 5)  # history the reader replays before it has caught up
    reader = Reader(PATTERNS[pattern])
    task = asyncio.ensure_future(reader.read(hub, "s1"))
    await asyncio.sleep(0.01)
    await produce(hub, "s1", bursts=40, size=7)
    await asyncio.wait_for(task, WAIT)
    events = SSEDecoder().feed(b"".join(reader.received))
    assert ids(events) == list(range(1, 5 + 40 * 7 + 2))
    assert events[-1].event == "done"


async def test_a_push_that_raises_counts_as_refused(make_hub: HubFactory) -> None:
    hub = make_hub()
    await hub.open("s1", owner="runner", meta={})
    reader = Reader(PATTERNS["takes every push"], raises=True)
    task = asyncio.ensure_future(reader.read(hub, "s1"))
    await asyncio.sleep(0.01)
    await produce(hub, "s1", bursts=30, size=3)
    await asyncio.wait_for(task, WAIT)
    assert ids(SSEDecoder().feed(b"".join(reader.received))) == list(range(1, 92))


async def test_the_memory_hub_pushes_one_write_per_loop_turn() -> None:
    """Once caught up, a reader gets its frames from the producer's side: a burst appended
    in one loop turn is one push."""
    hub = MemoryHub()
    await hub.open("s1", owner="runner", meta={})
    reader = Reader(PATTERNS["takes every push"])
    task = asyncio.ensure_future(reader.read(hub, "s1"))
    await asyncio.sleep(0.01)
    await produce(hub, "s1", bursts=20, size=5)
    await asyncio.wait_for(task, WAIT)
    assert len(reader.pushed) == 21  # the 20 bursts and the terminal frame
    assert all(ids(SSEDecoder().feed(p)) for p in reader.pushed)
    assert reader.received == reader.pushed
    assert not hub._logs["s1"].pushers
    await hub.aclose()


async def test_a_pushed_reader_gets_heartbeats_only_when_quiet() -> None:
    hub = MemoryHub()
    interval = 0.15
    await hub.open("s1", owner="runner", meta={})
    loop = asyncio.get_running_loop()
    reader = Reader(PATTERNS["takes every push"])
    beats: list[float] = []
    last = [loop.time()]
    original = reader.push

    def push(body: bytes) -> bool:
        last[0] = loop.time()
        return original(body)

    async def read() -> None:
        async for batch in hub.tail("s1", heartbeat=interval, push=push):
            if batch:
                reader.received.append(batch)
            else:
                beats.append(loop.time() - last[0])
            last[0] = loop.time()
            if len(beats) == 2:
                return

    task = asyncio.ensure_future(read())
    await asyncio.sleep(0.01)
    # Busy for four intervals: an event every tenth of one; no heartbeat is due.
    for n in range(40):
        await hub.append("s1", "chunk", b'{"n":%d}' % n)
        await asyncio.sleep(interval / 10)
    assert not beats
    await asyncio.wait_for(task, WAIT)  # then quiet: two heartbeats
    assert all(gap >= interval - 0.002 for gap in beats), beats
    # Mostly pushed (a frame that came as the heartbeat woke the reader is written by it).
    assert ids(SSEDecoder().feed(b"".join(reader.received))) == list(range(1, 41))
    assert len(reader.pushed) >= 30
    await hub.aclose()


async def test_a_producer_that_holds_the_flush_sends_each_read_at_its_end() -> None:
    """While held, appended frames reach pushed readers only when the producer flushes (at
    the end of a socket read); letting go sends what is due at once."""
    hub = MemoryHub()
    await hub.open("s1", owner="runner", meta={})
    reader = Reader(PATTERNS["takes every push"])
    task = asyncio.ensure_future(reader.read(hub, "s1"))
    await asyncio.sleep(0.01)
    flush = hub.hold_flush("s1", True)
    assert flush is not None
    for i in range(1, 4):  # one "read" of three events
        hub.append_nowait("s1", "chunk", payload("s1", i))
    await asyncio.sleep(0.01)
    assert reader.pushed == []  # held: nothing went out in a later loop turn
    flush()
    assert ids(SSEDecoder().feed(b"".join(reader.pushed))) == [1, 2, 3]
    assert len(reader.pushed) == 1
    hub.append_nowait("s1", "chunk", payload("s1", 4))
    assert hub.hold_flush("s1", False) is None  # let go: what is due goes now
    assert ids(SSEDecoder().feed(reader.pushed[-1])) == [4]
    await hub.append("s1", "done", b"{}")
    await asyncio.wait_for(task, WAIT)
    assert ids(SSEDecoder().feed(b"".join(reader.received))) == [1, 2, 3, 4, 5]
    await hub.aclose()
