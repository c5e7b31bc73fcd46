"""The StreamHub contract, run against every implementation (memory and Redis).

Redis runs against a real server (see conftest.py); the last tests use two RedisHub instances
on one Redis as two gateway replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import orjson
import pytest
import redis.asyncio

from stagecast.errors import StageConflictError, StageLimitError
from stagecast.hub import MemoryHub, ReaderLagError, StageNotFoundError, StreamHub
from stagecast.hub.memory import MAX_BATCH
from stagecast.hub.redis import RedisHub
from stagecast.protocol.sse import ServerSentEvent, SSEDecoder

# Generous: these bound a hang on a noisy machine, they do not measure anything.
WAIT = 15.0

HubFactory = Callable[..., StreamHub]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def make_hub(request: pytest.FixtureRequest) -> AsyncIterator[HubFactory]:
    """Builds hubs of one implementation; Redis hubs of one test share a key prefix."""
    hubs: list[StreamHub] = []
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        prefix: str = request.getfixturevalue("redis_prefix")

        def make(**kwargs: Any) -> StreamHub:
            hub = RedisHub(url, prefix=prefix, **kwargs)
            hubs.append(hub)
            return hub
    else:

        def make(**kwargs: Any) -> StreamHub:
            hub = MemoryHub(**kwargs)
            hubs.append(hub)
            return hub

    yield make
    for hub in hubs:
        await hub.aclose()


@pytest.fixture
def hub(make_hub: HubFactory) -> StreamHub:
    """A hub with the default bounds."""
    return make_hub()


@pytest.fixture
async def replicas(redis_url: str, redis_prefix: str) -> AsyncIterator[tuple[RedisHub, RedisHub]]:
    """Two RedisHub instances on one Redis, as two gateway replicas would be."""
    run = uuid.uuid4().hex[:8]  # other test runs may share this Redis
    a = RedisHub(redis_url, prefix=redis_prefix, replica_id=f"a-{run}")
    b = RedisHub(redis_url, prefix=redis_prefix, replica_id=f"b-{run}")
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


def payload(stage_id: str, i: int) -> bytes:
    return orjson.dumps({"stage_id": stage_id, "i": i})


async def fill(hub: StreamHub, stage_id: str, n: int, *, start: int = 1) -> list[int]:
    return [await hub.append(stage_id, "chunk", payload(stage_id, i)) for i in range(start, n + 1)]


async def read_all(hub: StreamHub, stage_id: str, after: int = 0) -> list[ServerSentEvent]:
    """Every event a tail delivers until it ends by itself."""

    async def run() -> list[ServerSentEvent]:
        decoder = SSEDecoder()
        out: list[ServerSentEvent] = []
        async for chunk in hub.tail(stage_id, after):
            out.extend(decoder.feed(chunk))
        return out

    return await asyncio.wait_for(run(), WAIT)


async def wait_expired(hub: StreamHub, stage_id: str) -> None:
    async with asyncio.timeout(WAIT):
        while True:
            if await hub.info(stage_id) is None:
                return
            await asyncio.sleep(0.05)


def closable(tail: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """Both hubs implement ``tail`` as an async generator; tests close it deterministically."""
    assert isinstance(tail, AsyncGenerator)
    return tail


def ids(events: list[ServerSentEvent]) -> list[int]:
    return [int(e.id or "-1") for e in events]


async def test_sequence_numbers_start_at_one_and_increase(hub: StreamHub) -> None:
    await hub.open("s1", owner="runner", meta={})
    seqs = await fill(hub, "s1", 5)
    seqs.append(await hub.append("s1", "done", b'{"stage_id":"s1"}'))
    assert seqs == [1, 2, 3, 4, 5, 6]
    stored = await hub.events("s1")
    assert [seq for seq, _, _ in stored] == seqs
    assert stored[0] == (1, "chunk", payload("s1", 1))
    assert stored[-1] == (6, "done", b'{"stage_id":"s1"}')
    assert [seq for seq, _, _ in await hub.events("s1", after=4)] == [5, 6]


async def test_only_the_first_frame_carries_retry(make_hub: HubFactory) -> None:
    hub = make_hub(retry_ms=1234)
    await hub.open("s1", owner=None, meta={})
    await hub.append("s1", "chunk", b'{"a":1}')
    await hub.append("s1", "chunk", b'{"a":2}')
    await hub.append("s1", "done", b"{}")
    raw = b""
    async for chunk in hub.tail("s1"):
        raw += chunk
    assert raw == (
        b'id: 1\nevent: chunk\nretry: 1234\ndata: {"a":1}\n\n'
        b'id: 2\nevent: chunk\ndata: {"a":2}\n\n'
        b"id: 3\nevent: done\ndata: {}\n\n"
    )


async def test_tail_replays_then_follows_live_appends(hub: StreamHub) -> None:
    await hub.open("s1", owner="runner", meta={})
    await fill(hub, "s1", 2)
    seen: asyncio.Queue[ServerSentEvent] = asyncio.Queue()

    async def reader() -> None:
        decoder = SSEDecoder()
        async for chunk in hub.tail("s1"):
            for event in decoder.feed(chunk):
                seen.put_nowait(event)

    task = asyncio.create_task(reader())
    try:
        replayed = [await asyncio.wait_for(seen.get(), WAIT) for _ in range(2)]
        assert ids(replayed) == [1, 2]
        await fill(hub, "s1", 4, start=3)
        await hub.append("s1", "done", b"{}")
        live = [await asyncio.wait_for(seen.get(), WAIT) for _ in range(3)]
        await asyncio.wait_for(task, WAIT)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert ids(live) == [3, 4, 5]
    assert [e.event for e in live] == ["chunk", "chunk", "done"]
    assert orjson.loads(live[0].data) == {"stage_id": "s1", "i": 3}
    assert seen.empty()


async def test_tail_resumes_after_any_event_id_with_no_gap_or_duplicate(hub: StreamHub) -> None:
    await hub.open("s1", owner="runner", meta={})
    await fill(hub, "s1", 6)
    await hub.append("s1", "done", b"{}")
    for after in range(8):
        events = await read_all(hub, "s1", after)
        assert ids(events) == list(range(after + 1, 8)), after


async def test_tail_resumes_mid_stream_on_a_live_stage(hub: StreamHub) -> None:
    await hub.open("s1", owner="runner", meta={})
    await fill(hub, "s1", 3)
    task = asyncio.create_task(read_all(hub, "s1", after=2))
    await fill(hub, "s1", 6, start=4)
    await hub.append("s1", "done", b"{}")
    events = await task
    assert ids(events) == [3, 4, 5, 6, 7]
    assert [orjson.loads(e.data).get("i") for e in events[:-1]] == [3, 4, 5, 6]


async def test_tail_ends_after_the_terminal_event(hub: StreamHub) -> None:
    await hub.open("s1", owner="runner", meta={})
    await fill(hub, "s1", 2)
    await hub.append("s1", "error", b'{"error":"boom"}')
    events = await read_all(hub, "s1")
    assert [e.event for e in events] == ["chunk", "chunk", "error"]
    # A reader already at the terminal event gets nothing and is not left waiting.
    assert await read_all(hub, "s1", after=3) == []


async def test_reader_cancelled_while_waiting_leaves_the_hub_usable(hub: StreamHub) -> None:
    await hub.open("s1", owner="runner", meta={})
    await fill(hub, "s1", 1)
    got_first = asyncio.Event()

    async def reader() -> None:
        async for _ in hub.tail("s1"):
            got_first.set()

    task = asyncio.create_task(reader())
    await asyncio.wait_for(got_first.wait(), WAIT)
    task.cancel()  # as the HTTP layer does when a client goes away mid-wait
    with pytest.raises(asyncio.CancelledError):
        await task
    await fill(hub, "s1", 3, start=2)
    await hub.append("s1", "done", b"{}")
    assert ids(await read_all(hub, "s1", after=1)) == [2, 3, 4]


async def test_writer_cancelled_while_appending_stops(hub: StreamHub) -> None:
    await hub.open("s1", owner="runner", meta={})
    appended = asyncio.Event()

    async def writer() -> None:
        for n in itertools.count(1):
            await hub.append("s1", "chunk", b"{}")
            appended.set()
            if n % 2 == 0:
                # An in-process hub never suspends in append; a real producer awaits its
                # upstream here. Odd turns go straight on to the next append instead.
                await asyncio.sleep(0)

    task = asyncio.create_task(writer())
    await asyncio.wait_for(appended.wait(), WAIT)
    task.cancel()  # as StageRun.cancel does; it lands while the next append is under way
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, WAIT)
    last = (await hub.events("s1"))[-1][0]
    # The cancelled writer really stopped: the log takes the terminal right after its last event.
    assert await hub.append("s1", "cancel", b"{}") == last + 1


async def test_finished_stage_is_replayable_until_its_ttl(make_hub: HubFactory) -> None:
    hub = make_hub(ttl=1.0)
    await hub.open("s1", owner="runner", meta={})
    await fill(hub, "s1", 2)
    await hub.append("s1", "done", b"{}")
    assert ids(await read_all(hub, "s1")) == [1, 2, 3]
    await wait_expired(hub, "s1")
    with pytest.raises(StageNotFoundError):
        await read_all(hub, "s1")
    with pytest.raises(StageNotFoundError):
        await hub.events("s1")


async def test_unknown_stage(hub: StreamHub) -> None:
    with pytest.raises(StageNotFoundError):
        await read_all(hub, "nope")
    with pytest.raises(StageNotFoundError):
        await hub.events("nope")
    with pytest.raises(StageNotFoundError):
        await hub.append("nope", "chunk", b"{}")
    with pytest.raises(StageNotFoundError):
        hub.on_cancel("nope", lambda: None)
    assert await hub.info("nope") is None
    assert await hub.request_cancel("nope") is False
    assert await hub.attach("nope") == 0
    assert await hub.detach("nope") == 0


async def test_open_conflicts_while_live_and_reopens_after_terminal(hub: StreamHub) -> None:
    await hub.open("s1", owner="first", meta={"run": 1})
    await fill(hub, "s1", 3)
    with pytest.raises(StageConflictError):
        await hub.open("s1", owner="second", meta={"run": 2})
    await hub.append("s1", "done", b"{}")

    await hub.open("s1", owner="second", meta={"run": 2})
    info = await hub.info("s1")
    assert info is not None
    assert (info.status, info.last_seq, info.owner, info.meta) == (
        "running",
        0,
        "second",
        {"run": 2},
    )
    assert await hub.events("s1") == []
    assert await hub.append("s1", "chunk", b'{"run":2}') == 1
    await hub.append("s1", "done", b"{}")
    events = await read_all(hub, "s1")
    assert [(e.id, e.data) for e in events] == [("1", '{"run":2}'), ("2", "{}")]


async def test_event_limit_rejects_more_but_accepts_the_terminal(make_hub: HubFactory) -> None:
    hub = make_hub(max_events=3)
    await hub.open("s1", owner="runner", meta={})
    assert await fill(hub, "s1", 3) == [1, 2, 3]
    with pytest.raises(StageLimitError) as too_many:
        await hub.append("s1", "chunk", b"{}")
    assert too_many.value.code == "stage_too_large"
    assert await hub.append("s1", "error", b'{"error":"too large"}') == 4
    with pytest.raises(StageLimitError) as ended:
        await hub.append("s1", "chunk", b"{}")
    assert ended.value.code == "stage_ended"
    assert [e.event for e in await read_all(hub, "s1")] == ["chunk"] * 3 + ["error"]


async def test_byte_limit_rejects_more_but_accepts_the_terminal(make_hub: HubFactory) -> None:
    hub = make_hub(max_bytes=1000)
    await hub.open("s1", owner="runner", meta={})
    big = b'"' + b"x" * 398 + b'"'
    accepted = 0
    refused: list[StageLimitError] = []
    for _ in range(10):
        try:
            await hub.append("s1", "chunk", big)
        except StageLimitError as exc:
            refused.append(exc)
            break
        accepted += 1
    assert [exc.code for exc in refused] == ["stage_too_large"]
    # Each implementation counts its own framing overhead; neither lets the data pass the bound.
    assert 1 <= accepted <= 1000 // len(big)
    assert await hub.append("s1", "done", b"{}") == accepted + 1
    info = await hub.info("s1")
    assert info is not None
    assert info.status == "done"


async def test_heartbeats_only_after_a_quiet_interval_per_reader(hub: StreamHub) -> None:
    """Several readers: each gets a heartbeat only once its own wait has lasted the interval
    (a busy reader none while events keep coming), and a quiet reader keeps getting them."""
    interval = 0.15
    loop = asyncio.get_running_loop()
    await hub.open("busy", owner="runner", meta={})
    await hub.open("quiet", owner="runner", meta={})
    gaps: dict[str, list[tuple[float, bytes]]] = {"busy": [], "quiet": []}

    async def read(stage: str) -> None:
        last = loop.time()
        async for item in hub.tail(stage, heartbeat=interval):
            now = loop.time()
            gaps[stage].append((now - last, item))
            last = now
            if stage == "quiet" and sum(1 for _, i in gaps[stage] if not i) >= 3:
                return

    readers = [asyncio.ensure_future(read("busy")), asyncio.ensure_future(read("quiet"))]
    for n in range(40):
        await hub.append("busy", "chunk", b'{"n":%d}' % n)
        await asyncio.sleep(interval / 10)
    await hub.append("busy", "done", b"{}")
    await asyncio.wait_for(asyncio.gather(*readers), WAIT)
    for stage, seen in gaps.items():
        beats = [gap for gap, item in seen if not item]
        # Never early: a heartbeat comes at least one interval after the reader's last item
        # (timer resolution allows a millisecond).
        assert all(gap >= interval - 0.002 for gap in beats), (stage, beats)
    assert sum(1 for _, item in gaps["quiet"] if not item) == 3
    assert b"".join(item for _, item in gaps["busy"]).count(b"event: chunk") == 40


async def test_heartbeat_when_quiet(hub: StreamHub) -> None:
    await hub.open("s1", owner="runner", meta={})
    tail = closable(hub.tail("s1", heartbeat=0.05))
    try:
        assert await asyncio.wait_for(anext(tail), WAIT) == b""
        assert await asyncio.wait_for(anext(tail), WAIT) == b""
        await hub.append("s1", "chunk", b"{}")
        chunk = b""
        while not chunk:  # a heartbeat may already be due before the event is seen
            chunk = await asyncio.wait_for(anext(tail), WAIT)
        assert chunk.startswith(b"id: 1\nevent: chunk\n")
        await hub.append("s1", "done", b"{}")
        chunk = b""
        while not chunk:
            chunk = await asyncio.wait_for(anext(tail), WAIT)
        assert chunk == b"id: 2\nevent: done\ndata: {}\n\n"
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(tail), WAIT)
    finally:
        await tail.aclose()


async def test_replay_is_not_lag_and_comes_in_bounded_batches(make_hub: HubFactory) -> None:
    hub = make_hub(max_reader_lag=5)
    await hub.open("s1", owner="runner", meta={})
    await fill(hub, "s1", MAX_BATCH + 100)
    decoder = SSEDecoder()
    tail = closable(hub.tail("s1"))
    try:
        first = decoder.feed(await asyncio.wait_for(anext(tail), WAIT))
        second = decoder.feed(await asyncio.wait_for(anext(tail), WAIT))
    finally:
        await tail.aclose()
    # Far more than max_reader_lag behind, yet served: a reader catching up is not lagging.
    assert ids(first + second) == list(range(1, MAX_BATCH + 101))
    assert len(first) == MAX_BATCH


async def test_reader_that_falls_too_far_behind_a_live_stage_must_resume(
    make_hub: HubFactory,
) -> None:
    hub = make_hub(max_reader_lag=5)
    await hub.open("s1", owner="runner", meta={})
    await fill(hub, "s1", 10)
    decoder = SSEDecoder()
    tail = closable(hub.tail("s1", heartbeat=0.05))
    try:
        replayed: list[ServerSentEvent] = []
        while len(replayed) < 10:
            replayed.extend(decoder.feed(await asyncio.wait_for(anext(tail), WAIT)))
        assert ids(replayed) == list(range(1, 11))
        # A heartbeat: the reader has caught up and is waiting for the stage.
        assert await asyncio.wait_for(anext(tail), WAIT) == b""
        await fill(hub, "s1", 15, start=11)  # 5 behind: still within the bound
        chunk = b""
        while not chunk:
            chunk = await asyncio.wait_for(anext(tail), WAIT)
        assert ids(decoder.feed(chunk))[0] == 11
        while decoder.last_event_id != "15":
            decoder.feed(await asyncio.wait_for(anext(tail), WAIT))
        await fill(hub, "s1", 21, start=16)  # 6 behind while it was not reading
        with pytest.raises(ReaderLagError) as lag:
            await asyncio.wait_for(anext(tail), WAIT)
        assert lag.value.retryable is True
    finally:
        await tail.aclose()
    # Resuming from its Last-Event-ID, the reader gets the rest without a gap.
    task = asyncio.create_task(read_all(hub, "s1", after=15))
    await hub.append("s1", "done", b"{}")
    assert ids(await task) == list(range(16, 23))


async def test_request_cancel_reaches_the_owner_callback(hub: StreamHub) -> None:
    await hub.open("s1", owner="runner", meta={})
    called = asyncio.Event()
    hub.on_cancel("s1", called.set)
    assert await hub.request_cancel("s1") is True
    await asyncio.wait_for(called.wait(), WAIT)
    await hub.append("s1", "cancel", b'{"stage_id":"s1"}')
    assert await hub.request_cancel("s1") is False


async def test_request_cancel_is_false_for_a_finished_stage(hub: StreamHub) -> None:
    await hub.open("s1", owner="runner", meta={})
    calls: list[str] = []
    hub.on_cancel("s1", lambda: calls.append("s1"))
    await hub.append("s1", "done", b"{}")
    assert await hub.request_cancel("s1") is False
    # Requests reach owners in order: once a later one has arrived, a (wrongly) sent request
    # for s1 would have arrived too.
    await hub.open("s2", owner="runner", meta={})
    later = asyncio.Event()
    hub.on_cancel("s2", later.set)
    assert await hub.request_cancel("s2") is True
    await asyncio.wait_for(later.wait(), WAIT)
    assert calls == []


async def test_attach_and_detach_count_readers(hub: StreamHub) -> None:
    await hub.open("s1", owner="runner", meta={})
    assert [await hub.attach("s1") for _ in range(3)] == [1, 2, 3]
    assert await hub.detach("s1") == 2
    assert await hub.detach("s1") == 1
    assert await hub.detach("s1") == 0
    assert await hub.detach("s1") == 0
    assert await hub.attach("s1") == 1


@pytest.mark.parametrize(
    ("terminal", "status"), [("done", "done"), ("cancel", "cancelled"), ("error", "error")]
)
async def test_info_reports_status(hub: StreamHub, terminal: str, status: str) -> None:
    await hub.open("s1", owner="runner-7", meta={"role": "traditional", "n": [1, 2]})
    info = await hub.info("s1")
    assert info is not None
    assert (info.stage_id, info.status, info.last_seq) == ("s1", "running", 0)
    assert info.owner == "runner-7"
    assert info.meta == {"role": "traditional", "n": [1, 2]}
    assert info.created_at > 0
    assert info.finished_at is None
    await fill(hub, "s1", 2)
    await hub.append("s1", terminal, b"{}")
    info = await hub.info("s1")
    assert info is not None
    assert (info.status, info.last_seq) == (status, 3)
    assert info.finished_at is not None
    assert info.finished_at >= info.created_at


async def test_stage_without_owner(hub: StreamHub) -> None:
    await hub.open("s1", owner=None, meta={})
    info = await hub.info("s1")
    assert info is not None
    assert info.owner is None
    assert info.meta == {}


# Redis only: several replicas on one Redis.


@pytest.mark.redis
async def test_replica_tails_a_stage_appended_on_another(
    replicas: tuple[RedisHub, RedisHub],
) -> None:
    a, b = replicas
    await a.open("s1", owner="runner", meta={})
    await fill(a, "s1", 3)
    task = asyncio.create_task(read_all(b, "s1"))
    for i in range(4, 201):
        await a.append("s1", "chunk", payload("s1", i))
        if i % 10 == 0:
            await asyncio.sleep(0)  # let the reader catch up mid-stream, not only at the end
    await a.append("s1", "done", b'{"stage_id":"s1"}')
    events = await task
    assert ids(events) == list(range(1, 202))
    assert [orjson.loads(e.data)["i"] for e in events[:-1]] == list(range(1, 201))
    assert events[-1].event == "done"


@pytest.mark.redis
async def test_cancel_requested_on_one_replica_reaches_the_owner_on_another(
    replicas: tuple[RedisHub, RedisHub],
) -> None:
    a, b = replicas
    await a.open("s1", owner="runner", meta={})
    called = asyncio.Event()
    a.on_cancel("s1", called.set)
    with pytest.raises(StageNotFoundError):
        b.on_cancel("s1", lambda: None)  # only the owner's hub takes callbacks
    assert await b.request_cancel("s1") is True
    await asyncio.wait_for(called.wait(), WAIT)
    await a.append("s1", "cancel", b'{"stage_id":"s1"}')
    assert await b.request_cancel("s1") is False
    info = await b.info("s1")
    assert info is not None
    assert info.status == "cancelled"


@pytest.mark.redis
async def test_cancel_reaches_the_owner_after_its_listener_connection_was_cut(
    replicas: tuple[RedisHub, RedisHub], redis_url: str
) -> None:
    a, b = replicas
    await a.open("s1", owner="runner", meta={})
    called = asyncio.Event()
    a.on_cancel("s1", called.set)
    async with redis.asyncio.Redis.from_url(redis_url) as admin:
        clients = await admin.client_list(_type="pubsub")
        owner_links = [c["id"] for c in clients if c["name"] == f"stagecast-hub:{a.replica_id}"]
        assert len(owner_links) == 1
        await admin.client_kill_filter(_id=owner_links[0])
    # Published while the owner may still be reconnecting: it must not be lost either way.
    assert await b.request_cancel("s1") is True
    await asyncio.wait_for(called.wait(), WAIT)


@pytest.mark.redis
async def test_reader_counts_are_shared_by_replicas(replicas: tuple[RedisHub, RedisHub]) -> None:
    a, b = replicas
    await a.open("s1", owner="runner", meta={})
    assert await a.attach("s1") == 1
    assert await b.attach("s1") == 2
    assert await a.detach("s1") == 1
    assert await b.detach("s1") == 0


@pytest.mark.redis
async def test_only_one_replica_can_open_a_live_id(replicas: tuple[RedisHub, RedisHub]) -> None:
    a, b = replicas
    for round_ in range(20):
        stage_id = f"race-{round_}"
        results = await asyncio.gather(
            a.open(stage_id, owner="a", meta={}),
            b.open(stage_id, owner="b", meta={}),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1, results
        assert isinstance(errors[0], StageConflictError)
        winner = "b" if results[0] is errors[0] else "a"
        info = await a.info(stage_id)
        assert info is not None
        assert info.owner == winner


@pytest.mark.redis
async def test_reader_of_a_replaced_run_never_sees_the_new_run(
    replicas: tuple[RedisHub, RedisHub],
) -> None:
    a, b = replicas
    await a.open("s1", owner="first", meta={})
    await fill(a, "s1", 1500)  # more than one read batch, so the reader stops half way
    await a.append("s1", "done", b"{}")
    decoder = SSEDecoder()
    # The heartbeat only makes the reader look again soon; it would notice within its idle
    # wake-up interval without one.
    tail = closable(b.tail("s1", heartbeat=0.05))
    try:
        first = decoder.feed(await asyncio.wait_for(anext(tail), WAIT))
        assert ids(first) == list(range(1, len(first) + 1))
        assert len(first) < 1501
        await a.open("s1", owner="second", meta={})
        await fill(a, "s1", 1600)

        async def drain() -> None:
            while True:
                events = decoder.feed(await asyncio.wait_for(anext(tail), WAIT))
                assert events == [], "a reader of the old run was handed the new run's events"

        with pytest.raises(StageNotFoundError):
            await drain()
    finally:
        await tail.aclose()


@pytest.mark.redis
async def test_a_stage_whose_replica_died_is_ended_and_its_id_freed(
    redis_url: str, redis_prefix: str
) -> None:
    owner = RedisHub(redis_url, prefix=redis_prefix, owner_lease=0.6)
    other = RedisHub(redis_url, prefix=redis_prefix, owner_lease=0.6)
    try:
        await owner.open("orphan", owner=None, meta={})
        await owner.append("orphan", "chat_completion_chunk", b'{"stage_id":"orphan"}')
        # While the owner lives it renews its lease: the id stays taken.
        await asyncio.sleep(1.0)
        with pytest.raises(StageConflictError):
            await other.open("orphan", owner=None, meta={})
        # The owner "crashes": it stops renewing without writing a terminal event.
        await owner.aclose()
        frames = [f async for f in other.tail("orphan", 0, heartbeat=0.2)]
        body = b"".join(frames)
        assert body.count(b"event: chat_completion_chunk") == 1
        assert b"event: error" in body
        assert b'"code":"owner_lost"' in body
        info = await other.info("orphan")
        assert info is not None
        assert info.status == "error"
        # The id can be used again.
        await other.open("orphan", owner=None, meta={})
    finally:
        await owner.aclose()
        await other.aclose()


async def test_memory_hub_keeps_ended_stages_within_its_byte_budget() -> None:
    """Past ``max_retained_bytes`` the oldest ended stages go before their TTL; a running
    stage never does, and a reader already on a dropped stage still reads it to the end."""
    hub = MemoryHub(ttl=600.0, max_retained_bytes=1024 * 1024)
    payload = b'{"text":"%s"}' % (b"x" * 100_000)  # about 100 KB per event
    try:
        await hub.open("running", owner="runner", meta={})
        await hub.append("running", "chunk", payload)
        await hub.open("first", owner="runner", meta={})
        await hub.append("first", "chunk", payload)
        early = hub.tail("first")  # attached before the stage is dropped
        assert (await anext(early)).startswith(b"id: 1\n")
        for _ in range(3):
            await hub.append("first", "chunk", payload)
        await hub.append("first", "done", b"{}")
        for n in range(2, 5):  # three more ended stages of 400 KB: "first" must make room
            await hub.open(f"s{n}", owner="runner", meta={})
            for _ in range(4):
                await hub.append(f"s{n}", "chunk", payload)
            await hub.append(f"s{n}", "done", b"{}")
        assert await hub.info("first") is None
        with pytest.raises(StageNotFoundError):
            await hub.events("first")
        assert [await hub.info(f"s{n}") is not None for n in range(2, 5)] == [False, True, True]
        info = await hub.info("running")
        assert info is not None and info.status == "running"
        rest = b"".join([frame async for frame in early])
        assert rest.count(b"event: chunk") == 3 and rest.endswith(b"event: done\ndata: {}\n\n")
        # The same id may run again once its old log is gone or ended.
        await hub.open("s4", owner="runner", meta={})
        assert (await hub.info("s4")).status == "running"  # type: ignore[union-attr]
    finally:
        await hub.aclose()


async def test_memory_hub_keeps_an_ended_log_out_of_the_collectors_passes() -> None:
    """A retained log's frames stop being walked by the garbage collector once its stage has
    ended (a pause of every stream otherwise grows with every stage retained), and a reader
    still on it, or one that comes later to replay it, gets every frame."""
    hub = MemoryHub(ttl=600.0)
    try:
        await hub.open("s1", owner="runner", meta={})
        live = hub.tail("s1")
        await hub.append("s1", "chunk", b'{"n":1}')
        assert (await anext(live)).startswith(b"id: 1\n")
        for n in range(2, 6):
            await hub.append("s1", "chunk", b'{"n":%d}' % n)
        await hub.append("s1", "done", b"{}")
        gc.collect()  # tuples holding only bytes are let go by the collector in a pass
        assert not gc.is_tracked(hub._logs["s1"].frames)
        rest = b"".join([frame async for frame in live])
        assert rest.count(b"event: chunk") == 4 and rest.endswith(b"event: done\ndata: {}\n\n")
        assert [e[0] for e in await hub.events("s1")] == [1, 2, 3, 4, 5, 6]
        assert ids(await read_all(hub, "s1", after=3)) == [4, 5, 6]
    finally:
        await hub.aclose()


async def test_memory_hub_forgets_ended_stages_in_the_order_their_ttl_runs_out() -> None:
    """Every ended stage is kept for its own ``ttl`` from its end: one that ended later is
    still there when an earlier one has gone, and goes in its turn."""
    hub = MemoryHub(ttl=1.2)
    try:
        for stage_id in ("early", "late"):
            await hub.open(stage_id, owner="runner", meta={})
            await hub.append(stage_id, "chunk", b"{}")
            await hub.append(stage_id, "done", b"{}")
            if stage_id == "early":
                await asyncio.sleep(0.8)
        await wait_expired(hub, "early")
        info = await hub.info("late")
        assert info is not None and info.status == "done"
        assert ids(await read_all(hub, "late")) == [1, 2]
        await wait_expired(hub, "late")
        # A stage that ends after the others have gone is kept for its ttl again.
        await hub.open("again", owner="runner", meta={})
        await hub.append("again", "done", b"{}")
        assert ids(await read_all(hub, "again")) == [1]
        await wait_expired(hub, "again")
    finally:
        await hub.aclose()


async def test_memory_hub_keeps_an_ended_stage_in_two_tracked_objects() -> None:
    """Ended stages stay for ten minutes by default, thousands of them on a busy gateway, and
    every object of theirs that the garbage collector tracks is walked by its older passes,
    which stall every live stream: a retained stage keeps two, its log and its info (no timer
    of its own, nor the containers its readers and its cancel used), and the readers that
    were on it when it ended still get every frame."""
    hub = MemoryHub(ttl=600.0)
    stages = 200
    pushed: list[bytes] = []

    def push(body: bytes) -> bool:
        pushed.append(body)
        return True

    async def drain(tail: AsyncIterator[bytes]) -> bytes:
        return b"".join([frame async for frame in tail])

    readers: list[asyncio.Task[bytes]] = []
    try:
        gc.collect()
        before = len(gc.get_objects())
        for n in range(stages):
            stage_id = f"s{n}"
            await hub.open(stage_id, owner="runner", meta={"role": "fast", "mode": "chat"})
            hub.on_cancel(stage_id, lambda: None)
            # One reader waits to be woken, one is written to on append.
            waiting = asyncio.ensure_future(drain(hub.tail(stage_id)))
            on_push = asyncio.ensure_future(drain(hub.tail(stage_id, push=push)))
            await asyncio.sleep(0)
            for seq in range(5):
                await hub.append(stage_id, "chunk", b'{"n":%d}' % seq)
                await asyncio.sleep(0)
            await hub.append(stage_id, "done", b"{}")
            assert (await waiting).count(b"event: ") == 6
            readers.append(on_push)
        for task in readers:
            await task
        del waiting, on_push, readers
        gc.collect()
        per_stage = (len(gc.get_objects()) - before) / stages
        assert per_stage <= 2.5
        assert b"".join(pushed).count(b"event: done") == stages
        assert [e[0] for e in await hub.events("s0")] == [1, 2, 3, 4, 5, 6]
    finally:
        await hub.aclose()
