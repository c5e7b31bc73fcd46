"""RecordWriter: saves in the background, survives a database outage, and stays bounded.

The outage is real: a TCP proxy between the store and PostgreSQL refuses connections and drops
the open ones, then lets them through again. SQLite outages are a database file whose
directory does not exist yet.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from stagecast.store import PostgresStore, RecordWriter, SQLiteStore, StageRecord, Store
from tests.peers.tcp_proxy import TCPProxy, tcp_proxy
from tests.store.conftest import with_address

# Generous: these bound a hang on a noisy machine, they do not measure anything.
WAIT = 60.0
WRITER_LOG = "stagecast.store.writer"

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def record(stage_id: str, **fields: Any) -> StageRecord:
    values: dict[str, Any] = {
        "stage_id": stage_id,
        "owner": "alice",
        "role": "local",
        "mode": "chat",
        "status": "done",
        "created_at": T0,
    }
    values.update(fields)
    return StageRecord(**values)


async def eventually(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> None:
    """Wait until ``predicate()`` (sync or async) is true."""
    async with asyncio.timeout(timeout):
        while True:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.02)
    raise AssertionError(what)  # pragma: no cover - asyncio.timeout raises first


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == WRITER_LOG and text in r.getMessage()]


@pytest.fixture
async def closing() -> AsyncIterator[list[RecordWriter | Store]]:
    """Writers and stores to close at the end of a test (writers first)."""
    things: list[RecordWriter | Store] = []
    yield things
    for thing in things:
        if isinstance(thing, RecordWriter):
            await thing.aclose(timeout=1.0)
    for thing in things:
        if not isinstance(thing, RecordWriter):
            await thing.aclose()


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[TCPProxy]:
    """A TCP proxy in front of the test's PostgreSQL server."""
    parts = urlsplit(postgres_url)
    with tcp_proxy(parts.hostname or "127.0.0.1", parts.port or 5432) as p:
        yield p


async def stored(url: str) -> dict[str, StageRecord]:
    """Every record in the database, read directly (not through the proxy or the store)."""
    conn = await asyncpg.connect(url, timeout=5)
    try:
        rows = await conn.fetch("SELECT stage_id, status, text FROM stage_records")
    finally:
        await conn.close()
    return {r["stage_id"]: record(r["stage_id"], status=r["status"], text=r["text"]) for r in rows}


# -- PostgreSQL outage -----------------------------------------------------------------------


@pytest.mark.postgres
async def test_records_wait_out_a_postgres_outage_and_all_appear(
    postgres_url: str,
    proxy: TCPProxy,
    closing: list[RecordWriter | Store],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=WRITER_LOG)
    store = PostgresStore(with_address(postgres_url, "127.0.0.1", proxy.port), connect_timeout=2)
    writer = RecordWriter(store, retry_initial=0.05, retry_max=0.5)
    closing += [writer, store]
    await store.start()
    await writer.start()

    # Before the outage: a stage that is still running is recorded as such.
    writer.submit(record("before", status="running", text=""))
    await eventually(lambda: writer.saved == 1, "the first record was saved")

    proxy.pause()
    # The pause drops pooled connections on the proxy's own thread: wait until it has.
    await eventually(lambda: _is_false(store.ping()), "the store noticed the outage")

    during = [record(f"out-{i:02d}", text=f"answer {i} ✓") for i in range(25)]
    for i, rec in enumerate(during):
        if i % 5 == 0:
            # An earlier state of the same stage, superseded before it could be saved.
            writer.submit(rec.model_copy(update={"status": "running", "text": ""}))
        writer.submit(rec)
    writer.submit(record("before", status="done", text="finished during the outage"))
    assert writer.pending == 26

    await eventually(lambda: writer.failed_attempts >= 2, "the writer retried")
    warnings = messages(caplog, "could not save stage records")
    assert warnings, "the failure was logged"
    assert all(w.levelno == logging.WARNING for w in warnings)
    assert warnings[0].pending == 26  # type: ignore[attr-defined]
    assert "PostgreSQL" in warnings[0].error  # type: ignore[attr-defined]
    in_db = await stored(postgres_url)
    assert set(in_db) == {"before"}, "nothing got through while the proxy was paused"
    assert in_db["before"].status == "running"
    assert writer.pending == 26
    assert writer.dropped == 0

    proxy.resume()
    await eventually(lambda: writer.pending == 0, "every pending record was saved")
    in_db = await stored(postgres_url)
    assert set(in_db) == {"before"} | {r.stage_id for r in during}
    for rec in during:
        assert (in_db[rec.stage_id].status, in_db[rec.stage_id].text) == ("done", rec.text)
    assert in_db["before"].status == "done"
    assert in_db["before"].text == "finished during the outage"
    assert (writer.dropped, writer.rejected) == (0, 0)
    assert messages(caplog, "saving stage records again")
    # Through the store too: the owner's listing has each stage exactly once.
    page, cursor = await store.list(owner="alice", limit=100)
    assert sorted(r.stage_id for r in page) == sorted(in_db)
    assert cursor is None


async def _is_false(ping: Any) -> bool:
    return (await ping) is False


@pytest.mark.postgres
async def test_past_max_pending_the_oldest_records_are_dropped(
    postgres_url: str,
    proxy: TCPProxy,
    closing: list[RecordWriter | Store],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger=WRITER_LOG)
    # The database is down from the start: the store has never connected.
    proxy.pause()
    store = PostgresStore(with_address(postgres_url, "127.0.0.1", proxy.port), connect_timeout=2)
    writer = RecordWriter(store, max_pending=5, retry_initial=0.05, retry_max=0.2)
    closing += [writer, store]
    await writer.start()

    for i in range(8):
        writer.submit(record(f"s{i}"))
    assert (writer.pending, writer.dropped) == (5, 3)
    dropped = messages(caplog, "too many records waiting")
    assert [r.stage_id for r in dropped] == ["s0", "s1", "s2"]  # type: ignore[attr-defined]
    assert all(r.levelno == logging.ERROR for r in dropped)
    await eventually(lambda: writer.failed_attempts >= 1, "the writer tried and failed")

    proxy.resume()
    await eventually(lambda: writer.pending == 0, "the kept records were saved")
    assert set(await stored(postgres_url)) == {"s3", "s4", "s5", "s6", "s7"}
    assert writer.saved == 5
    assert writer.dropped == 3


# -- SQLite ----------------------------------------------------------------------------------


async def test_records_are_saved_in_the_background(
    tmp_path: Path, closing: list[RecordWriter | Store]
) -> None:
    store = SQLiteStore(str(tmp_path / "records.db"))
    writer = RecordWriter(store)
    closing += [writer, store]
    await store.start()
    await writer.start()
    for i in range(250):
        writer.submit(record(f"s{i:03d}", created_at=T0 + timedelta(seconds=i)))
    await eventually(lambda: writer.pending == 0, "the records were saved")
    assert writer.saved == 250
    assert (writer.failed_attempts, writer.dropped, writer.rejected) == (0, 0, 0)
    page, cursor = await store.list(owner="alice", limit=300)
    assert [r.stage_id for r in page] == [f"s{i:03d}" for i in reversed(range(250))]
    assert cursor is None


async def test_the_newest_record_of_a_stage_is_the_one_kept(
    tmp_path: Path, closing: list[RecordWriter | Store]
) -> None:
    store = SQLiteStore(str(tmp_path / "records.db"))
    writer = RecordWriter(store, batch_size=3)
    closing += [writer, store]
    await writer.start()
    for step in range(20):
        for stage in ("a", "b", "c", "d"):
            status = "done" if step == 19 else "running"
            writer.submit(record(stage, status=status, text=f"{stage} step {step}"))
        # Let the writer run between steps, so saves and submissions interleave.
        await asyncio.sleep(0)
    await eventually(lambda: writer.pending == 0, "the records were saved")
    for stage in ("a", "b", "c", "d"):
        got = await store.get(stage)
        assert got is not None
        assert (got.status, got.text) == ("done", f"{stage} step 19")


async def test_records_wait_until_the_sqlite_file_can_be_opened(
    tmp_path: Path, closing: list[RecordWriter | Store], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=WRITER_LOG)
    directory = tmp_path / "later"
    store = SQLiteStore(str(directory / "records.db"))
    writer = RecordWriter(store, retry_initial=0.05, retry_max=0.2)
    closing += [writer, store]
    await writer.start()
    for i in range(3):
        writer.submit(record(f"s{i}"))
    await eventually(lambda: writer.failed_attempts >= 2, "the writer retried")
    assert writer.pending == 3
    assert "SQLite" in messages(caplog, "could not save")[0].error  # type: ignore[attr-defined]

    directory.mkdir()
    await eventually(lambda: writer.pending == 0, "the records were saved")
    assert {r.stage_id for r in (await store.list(owner=None))[0]} == {"s0", "s1", "s2"}


async def test_a_record_the_database_refuses_does_not_hold_back_the_others(
    tmp_path: Path, closing: list[RecordWriter | Store], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger=WRITER_LOG)
    store = SQLiteStore(str(tmp_path / "records.db"))
    writer = RecordWriter(store)
    closing += [writer, store]
    await store.start()
    writer.submit(record("good-1"))
    # A lone surrogate cannot be encoded: no number of retries would save this record.
    writer.submit(record("bad", text="broken \ud800"))
    writer.submit(record("good-2"))
    await writer.start()
    await eventually(lambda: writer.pending == 0, "the queue drained")
    assert await store.get("good-1") is not None
    assert await store.get("good-2") is not None
    assert await store.get("bad") is None
    assert (writer.saved, writer.rejected, writer.dropped) == (2, 1, 0)
    refused = messages(caplog, "refused by the store")
    assert [r.stage_id for r in refused] == ["bad"]  # type: ignore[attr-defined]


async def test_aclose_saves_what_is_pending(
    tmp_path: Path, closing: list[RecordWriter | Store]
) -> None:
    store = SQLiteStore(str(tmp_path / "records.db"))
    writer = RecordWriter(store)
    closing.append(store)
    await store.start()
    await writer.start()
    for i in range(40):
        writer.submit(record(f"s{i}"))
    await writer.aclose(timeout=WAIT)
    assert (writer.pending, writer.saved, writer.dropped) == (0, 40, 0)
    assert len((await store.list(owner=None, limit=100))[0]) == 40


async def test_aclose_gives_up_on_a_dead_database_and_says_what_was_lost(
    tmp_path: Path, closing: list[RecordWriter | Store], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger=WRITER_LOG)
    store = SQLiteStore(str(tmp_path / "missing" / "records.db"))
    writer = RecordWriter(store, retry_initial=5.0, retry_max=5.0)
    closing.append(store)
    await writer.start()
    writer.submit(record("a"))
    writer.submit(record("b"))
    await eventually(lambda: writer.failed_attempts >= 1, "the writer tried")
    await writer.aclose(timeout=0.5)
    assert (writer.pending, writer.saved, writer.dropped) == (0, 0, 2)
    lost = messages(caplog, "not saved before shutdown")
    assert len(lost) == 1
    assert lost[0].stage_ids == ["a", "b"]  # type: ignore[attr-defined]

    # A record that arrives after close is dropped and logged, never raised.
    writer.submit(record("late"))
    assert writer.dropped == 3
    assert messages(caplog, "the writer is closed")
