"""The memory hub's log of a long stage: older frames are folded into blocks as the stage goes
on, and every way of reading the log back gets the same bytes as if they had not been."""

from __future__ import annotations

import asyncio
import gc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stagecast.hub import MemoryHub
from stagecast.hub.memory import BLOCK, MAX_BATCH
from stagecast.protocol.sse import SSEDecoder, encode_frame
from tests.hub.test_hub_contract import WAIT, ids

# Data that looks like the framing: line breaks of every kind, blank lines, id lines.
_TEXT = st.lists(st.sampled_from(["a", "é", " ", ":", "\n", "\r", "id: 7", "\n\n"])).map("".join)


def expected_frame(seq: int, data: bytes, event: str = "chunk") -> bytes:
    """The frame the hub writes (the first one also carries the default retry)."""
    return encode_frame(event, data, id=seq, retry=2000 if seq == 1 else None)


async def _read(hub: MemoryHub, stage_id: str, after: int) -> list[bytes]:
    async def run() -> list[bytes]:
        return [batch async for batch in hub.tail(stage_id, after)]

    return await asyncio.wait_for(run(), WAIT)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.lists(_TEXT.map(str.encode), min_size=1, max_size=8).map(
        lambda pool: pool * 60  # hundreds of events, several blocks, from a few distinct ones
    ),
    size=st.integers(min_value=0, max_value=5 * BLOCK),
    afters=st.lists(st.integers(min_value=0, max_value=6 * BLOCK), min_size=1, max_size=4),
    ended=st.booleans(),
)
def test_any_reader_gets_the_frames_as_appended(
    data: list[bytes], size: int, afters: list[int], ended: bool
) -> None:
    """A reader resuming after any event id, on a live or an ended stage of any length, gets
    byte for byte the frames that were appended after it, in batches of at most
    ``MAX_BATCH`` frames; ``events`` reads the same events back."""

    async def check() -> None:
        hub = MemoryHub()
        try:
            await hub.open("s", owner="runner", meta={})
            appended = [b""]  # by sequence number
            for seq, chunk in enumerate(data[:size], start=1):
                assert await hub.append("s", "chunk", chunk) == seq
                appended.append(expected_frame(seq, chunk))
            if ended:
                await hub.append("s", "done", b"{}")
                appended.append(expected_frame(len(appended), b"{}", "done"))
            for after in afters:
                after = min(after, len(appended) - 1)
                if ended:
                    batches = await _read(hub, "s", after)
                else:
                    # A live stage's tail waits for more: read what is there, then stop.
                    batches = []
                    tail = hub.tail("s", after)
                    for _ in range(-(-(len(appended) - 1 - after) // MAX_BATCH)):
                        batches.append(await asyncio.wait_for(anext(tail), WAIT))
                    await tail.aclose()  # type: ignore[attr-defined]
                assert b"".join(batches) == b"".join(appended[after + 1 :])
                assert all(len(SSEDecoder().feed(b)) <= MAX_BATCH for b in batches)
                events = await hub.events("s", after)
                assert [e[0] for e in events] == list(range(after + 1, len(appended)))
                # Data with line breaks comes back with each one as a line feed.
                sent = [b"\n".join(d.splitlines()) for d in data[after:size]]
                assert [e[2] for e in events][: len(sent)] == sent
        finally:
            await hub.aclose()

    asyncio.run(check())


async def test_a_reader_pushed_to_after_a_long_read_gets_it_in_one_write() -> None:
    """A producer's one upstream read may append more events than stay unfolded: the pushed
    reader still gets them all, once each, in one write."""
    hub = MemoryHub()
    pushed: list[bytes] = []

    def push(body: bytes) -> bool:
        pushed.append(body)
        return True

    async def read() -> bytes:
        return b"".join([batch async for batch in hub.tail("s", push=push)])

    try:
        await hub.open("s", owner="runner", meta={})
        task = asyncio.ensure_future(read())
        await asyncio.sleep(0.01)
        # The long read folds the first frame still to be written to the reader (the last
        # of a block), so it is written from the blocks.
        first = 3 * BLOCK - 1
        frames = [b""]
        for seq in range(1, 4 * BLOCK + 10):
            frames.append(expected_frame(seq, b'{"n":%d}' % seq))
        flush = hub.hold_flush("s", True)
        assert flush is not None
        for seq in range(1, 4 * BLOCK + 10):
            hub.append_nowait("s", "chunk", b'{"n":%d}' % seq)
            if seq == first:  # one read, then a longer one
                flush()
        flush()
        assert pushed == [b"".join(frames[1 : first + 1]), b"".join(frames[first + 1 :])]
        hub.hold_flush("s", False)
        await hub.append("s", "done", b"{}")
        rest = await asyncio.wait_for(task, WAIT)
        assert ids(SSEDecoder().feed(b"".join(pushed) + rest)) == list(range(1, 4 * BLOCK + 11))
    finally:
        await hub.aclose()


async def test_a_long_stage_is_a_few_objects_for_the_collector() -> None:
    """The garbage collector walks every element of a tracked container it visits, and a
    stage can be tens of thousands of events: live, a long stage's frames are a few hundred
    objects; ended, the containers holding them are let go by the collector's next pass."""
    hub = MemoryHub()
    try:
        await hub.open("s", owner="runner", meta={})
        n = 200 * BLOCK + 5
        for seq in range(1, n + 1):
            hub.append_nowait("s", "chunk", b'{"n":%d}' % seq)
        log = hub._logs["s"]
        held = len(log.frames) + len(log.blocks)
        assert held <= n // BLOCK + 2 * BLOCK
        await hub.append("s", "done", b"{}")
        gc.collect()
        assert not gc.is_tracked(log.frames) and not gc.is_tracked(log.blocks)
        assert [e[0] for e in await hub.events("s", n - 2)] == [n - 1, n, n + 1]
        assert ids(SSEDecoder().feed(b"".join(await _read(hub, "s", 0)))) == list(range(1, n + 2))
    finally:
        await hub.aclose()
