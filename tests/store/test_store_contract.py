"""The Store contract, run against every implementation (SQLite file and PostgreSQL).

PostgreSQL runs against a real server (see conftest.py), each test in a database of its own.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import pytest

from stagecast.errors import ConfigError
from stagecast.protocol.requests import StageRequest
from stagecast.store import (
    MIGRATIONS,
    InvalidCursorError,
    Migration,
    PostgresStore,
    SQLiteStore,
    StageRecord,
    Store,
    StoreDataError,
    StoreError,
    StoreUnavailableError,
    make_store,
    summarise_request,
)
from stagecast.store.migrations import MIGRATION_LOCK_KEY
from tests.peers.servers import free_port

# Generous: these bound a hang on a noisy machine, they do not measure anything.
WAIT = 30.0

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


@dataclass
class Backend:
    """One database for one test, and how to make stores on it and look at it directly."""

    kind: str
    location: str  # a file path or a PostgreSQL URL
    stores: list[Store] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.location if self.kind == "postgres" else f"sqlite:///{self.location}"

    def make(self, **kwargs: Any) -> Store:
        store: Store
        if self.kind == "postgres":
            store = PostgresStore(self.location, **kwargs)
        else:
            store = SQLiteStore(self.location, **kwargs)
        self.stores.append(store)
        return store

    def unreachable(self, tmp_path: Path) -> Store:
        """A store of this kind whose database cannot be reached."""
        store: Store
        if self.kind == "postgres":
            url = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
            store = PostgresStore(url, connect_timeout=2)
        else:
            store = SQLiteStore(str(tmp_path / "no-such-dir" / "records.db"))
        self.stores.append(store)
        return store

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of a query on a connection of its own, bypassing the store."""
        if self.kind == "postgres":
            conn = await asyncpg.connect(self.location, timeout=5)
            try:
                return [tuple(row) for row in await conn.fetch(sql)]
            finally:
                await conn.close()
        async with aiosqlite.connect(self.location) as db:
            return [tuple(row) for row in await db.execute_fetchall(sql)]

    async def applied_versions(self) -> list[int]:
        rows = await self.fetch("SELECT version FROM schema_migrations ORDER BY version")
        return [int(row[0]) for row in rows]

    async def index_names(self) -> set[str]:
        if self.kind == "postgres":
            sql = "SELECT indexname FROM pg_indexes WHERE tablename = 'stage_records'"
        else:
            sql = (
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'stage_records'"
            )
        return {str(row[0]) for row in await self.fetch(sql)}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """A fresh database of one kind; every store made on it is closed afterwards."""
    if request.param == "postgres":
        location: str = request.getfixturevalue("postgres_url")
    else:
        location = str(tmp_path / "records.db")
    b = Backend(request.param, location)
    try:
        yield b
    finally:
        for store in b.stores:
            await store.aclose()


@pytest.fixture
async def store(backend: Backend) -> Store:
    """A started store on a fresh database."""
    s = backend.make()
    await s.start()
    return s


def record(stage_id: str = "s1", **fields: Any) -> StageRecord:
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


def full_record() -> StageRecord:
    """A record that uses every field, with text and JSON that are easy to get wrong."""
    return StageRecord(
        stage_id="stage-ü-1",
        owner="ówner 🦊",
        role="reasoning_alt",
        mode="toolchain",
        status="error",
        request={
            "user_prompt": "Wie wird das Wetter in Zürich? 天気は",
            "max_tokens": [256, 512],
            "temperature": [0.25, 1.5],
            "tools": ["weather", "calculator"],
            "synthesis": True,
            "stream": None,
        },
        text="Résumé: ☀️ 21 °C — «très bien» \U0001f600 עברית \u0301e\n\ttabs",
        reasoning="<think>step 1 → step 2</think> 'quotes' \"double\" \\backslash",
        tool_calls=[
            {
                "id": "call_0",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city": "Zürich"}'},
            },
            {"id": "call_1", "type": "function", "function": {"name": "calc", "arguments": ""}},
        ],
        tool_results={
            "call_0": {
                "temperature": 21.5,
                "hourly": [[1, 2.5, None], {"deep": {"deeper": {"deepest": ["ok", True]}}}],
                "clé": "värde",
            },
            "call_1": "plain string result",
            "empty": {},
        },
        usage={"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46},
        error={"code": "upstream_timeout", "message": "no token within 60 s ⏱"},
        created_at=T0,
        first_token_at=T0 + timedelta(milliseconds=250, microseconds=7),
        finished_at=T0 + timedelta(seconds=3, microseconds=999999),
    )


async def list_all(store: Store, *, owner: str | None, limit: int) -> list[StageRecord]:
    out: list[StageRecord] = []
    cursor: str | None = None
    for _ in range(1000):
        page, cursor = await store.list(owner=owner, limit=limit, cursor=cursor)
        assert len(page) <= limit
        out += page
        if cursor is None:
            return out
    raise AssertionError("pagination did not end")


def newest_first(records: list[StageRecord]) -> list[str]:
    return [r.stage_id for r in sorted(records, key=lambda r: (r.created_at, r.stage_id))][::-1]


# -- records ---------------------------------------------------------------------------------


async def test_save_and_get_round_trip_every_field(store: Store) -> None:
    original = full_record()
    await store.save(original)
    got = await store.get(original.stage_id)
    assert got is not None
    assert got.model_dump() == original.model_dump()
    assert got.created_at.tzinfo is not None
    assert got.created_at.utcoffset() == timedelta(0)
    assert got.ttft_ms == pytest.approx(250.007)
    assert got.duration_ms == pytest.approx(3999.999)


async def test_optional_fields_round_trip_as_none(store: Store) -> None:
    original = StageRecord(
        stage_id="bare",
        owner=None,
        role="local",
        mode="chat",
        status="running",
        created_at=T0,
    )
    await store.save(original)
    got = await store.get("bare")
    assert got == original
    assert got is not None
    assert (got.usage, got.error, got.first_token_at, got.finished_at) == (None, None, None, None)
    assert (got.ttft_ms, got.duration_ms) == (None, None)
    assert (got.text, got.tool_calls, got.tool_results, got.request) == ("", [], {}, {})


async def test_datetimes_come_back_in_utc(store: Store) -> None:
    plus_two = timezone(timedelta(hours=2))
    await store.save(record("tz", created_at=datetime(2025, 3, 1, 14, 0, 0, 5, tzinfo=plus_two)))
    got = await store.get("tz")
    assert got is not None
    assert got.created_at == datetime(2025, 3, 1, 12, 0, 0, 5, tzinfo=UTC)
    assert got.created_at.utcoffset() == timedelta(0)


async def test_get_of_an_unknown_stage_is_none(store: Store) -> None:
    assert await store.get("nope") is None
    assert await store.get("nope", owner="alice") is None


async def test_save_replaces_the_record_of_the_same_stage(store: Store) -> None:
    await store.save(record("s1", status="running", text=""))
    await store.save(record("s1", status="done", text="final", usage={"total_tokens": 3}))
    got = await store.get("s1")
    assert got is not None
    assert (got.status, got.text, got.usage) == ("done", "final", {"total_tokens": 3})
    page, cursor = await store.list(owner=None)
    assert [r.stage_id for r in page] == ["s1"]
    assert cursor is None


async def test_save_many_saves_in_order_and_later_records_win(store: Store) -> None:
    await store.save_many(
        [
            record("a", status="running"),
            record("b"),
            record("a", status="cancelled", text="partial"),
        ]
    )
    a, b = await store.get("a"), await store.get("b")
    assert a is not None and b is not None
    assert (a.status, a.text) == ("cancelled", "partial")
    assert b.status == "done"


async def test_save_many_is_all_or_nothing(store: Store) -> None:
    # A lone surrogate cannot be encoded as UTF-8: the database refuses the second record.
    with pytest.raises(StoreDataError):
        await store.save_many([record("good"), record("bad", text="broken \ud800 text")])
    assert await store.get("good") is None
    assert await store.get("bad") is None
    # The store is still usable after the refusal.
    await store.save(record("good"))
    assert await store.get("good") is not None


async def test_a_large_batch_is_saved_whole_or_not_at_all(store: Store) -> None:
    # More records than one statement carries (SQLite) or one round trip (PostgreSQL).
    records = [record(f"big{i:03d}", text=f"answer {i}") for i in range(250)]
    records.append(record("big007", status="cancelled", text="later"))
    await store.save_many(records)
    assert len(await list_all(store, owner="alice", limit=100)) == 250
    got = await store.get("big007")
    assert got is not None and (got.status, got.text) == ("cancelled", "later")
    bad = [record(f"next{i:03d}") for i in range(250)] + [record("x", text="bad \ud800")]
    with pytest.raises(StoreDataError):
        await store.save_many(bad)
    assert await store.get("next000") is None
    assert await store.get("next249") is None


async def test_a_json_value_that_cannot_be_encoded_is_refused(store: Store) -> None:
    with pytest.raises(StoreDataError):
        await store.save(record("bad", tool_results={"x": "\udc00"}))
    assert await store.get("bad") is None


async def test_nul_characters_are_replaced_not_refused(store: Store) -> None:
    # PostgreSQL cannot store U+0000 in text or JSONB; every store replaces it the same way.
    await store.save(record("nul", text="a\x00b", tool_results={"k\x00": ["v\x00"]}))
    got = await store.get("nul")
    assert got is not None
    assert got.text == "a\ufffdb"
    assert got.tool_results == {"k\ufffd": ["v\ufffd"]}


# -- owners ----------------------------------------------------------------------------------


async def test_get_with_an_owner_hides_other_owners_records(store: Store) -> None:
    await store.save(record("mine", owner="alice"))
    await store.save(record("anonymous", owner=None))
    assert await store.get("mine", owner="alice") is not None
    assert await store.get("mine", owner="bob") is None
    assert await store.get("anonymous", owner="alice") is None
    # Without an owner (an administrator's view) every record is visible.
    assert await store.get("mine") is not None
    assert await store.get("anonymous") is not None


async def test_list_with_an_owner_shows_only_that_owners_records(store: Store) -> None:
    await store.save_many(
        [record(f"a{i}", owner="alice", created_at=T0 + timedelta(seconds=i)) for i in range(7)]
        + [record(f"b{i}", owner="bob", created_at=T0 + timedelta(seconds=i)) for i in range(5)]
        + [record("n0", owner=None)]
    )
    alice = await list_all(store, owner="alice", limit=3)
    bob = await list_all(store, owner="bob", limit=2)
    everyone = await list_all(store, owner=None, limit=4)
    assert [r.stage_id for r in alice] == [f"a{i}" for i in reversed(range(7))]
    assert [r.stage_id for r in bob] == [f"b{i}" for i in reversed(range(5))]
    assert {r.owner for r in alice} == {"alice"}
    assert len(everyone) == 13
    assert await store.list(owner="carol") == ([], None)


# -- listing ---------------------------------------------------------------------------------


async def test_pages_visit_every_record_once_newest_first(store: Store) -> None:
    # Some records share created_at, so the stage_id tie-break is exercised across pages.
    records = [
        record(f"s{i:02d}", created_at=T0 + timedelta(seconds=i // 3, microseconds=i % 2))
        for i in range(23)
    ]
    await store.save_many(records)
    for limit in (1, 4, 5, 23, 50):
        seen = await list_all(store, owner="alice", limit=limit)
        assert [r.stage_id for r in seen] == newest_first(records), limit
    first, cursor = await store.list(owner="alice", limit=23)
    assert len(first) == 23
    assert cursor is None


async def test_pages_are_stable_when_records_arrive_between_them(store: Store) -> None:
    originals = [record(f"s{i:02d}", created_at=T0 + timedelta(seconds=i)) for i in range(20)]
    await store.save_many(originals)
    seen: list[str] = []
    cursor: str | None = None
    page_no = 0
    while True:
        page, cursor = await store.list(owner="alice", limit=3, cursor=cursor)
        seen += [r.stage_id for r in page]
        if cursor is None:
            break
        page_no += 1
        # New stages (newer than anything listed), one that started before the cursor but
        # only now finished, and a rewrite of a record already listed.
        await store.save(
            record(f"new{page_no}", created_at=T0 + timedelta(hours=1, seconds=page_no))
        )
        await store.save(record(f"late{page_no}", created_at=T0 - timedelta(seconds=page_no)))
        await store.save(record(seen[0], status="error", created_at=T0 + timedelta(seconds=19)))
    assert len(seen) == len(set(seen)), "a record was listed twice"
    original_ids = newest_first(originals)
    assert [s for s in seen if s in original_ids] == original_ids
    assert not [s for s in seen if s.startswith("new")], "newer than the first page"
    late = [s for s in seen if s.startswith("late")]
    assert late == sorted(late, key=lambda s: int(s[4:])), "older records come in order"


async def test_a_cursor_not_made_by_the_store_is_refused(store: Store) -> None:
    await store.save_many([record(f"s{i}", created_at=T0 + timedelta(seconds=i)) for i in range(3)])
    forged = base64.urlsafe_b64encode(b'{"not": "a cursor"}').decode()
    for bad in ("garbage!", "", forged, base64.urlsafe_b64encode(b"[1, 2]").decode()):
        with pytest.raises(InvalidCursorError):
            await store.list(owner=None, cursor=bad)
    with pytest.raises(ValueError, match="limit"):
        await store.list(owner=None, limit=0)


# -- migrations ------------------------------------------------------------------------------


async def test_migrations_are_versioned_and_applied_once(backend: Backend) -> None:
    first = backend.make()
    await first.start()
    await first.start()
    await first.save(record("kept"))
    second = backend.make()
    await second.start()
    expected = [m.version for m in MIGRATIONS]
    assert await backend.applied_versions() == expected
    rows = await backend.fetch("SELECT version, name, applied_at FROM schema_migrations")
    assert {(int(r[0]), r[1]) for r in rows} == {(m.version, m.name) for m in MIGRATIONS}
    assert all(r[2] is not None for r in rows)
    assert await second.get("kept") is not None
    assert {"stage_records_owner_created", "stage_records_created"} <= await backend.index_names()


async def test_start_applies_only_the_missing_migrations(backend: Backend) -> None:
    old = backend.make(migrations=MIGRATIONS[:1])
    await old.start()
    assert await backend.applied_versions() == [MIGRATIONS[0].version]
    assert "stage_records_owner_created" not in await backend.index_names()
    await old.save(record("from-v1"))
    before = await backend.fetch("SELECT applied_at FROM schema_migrations")

    new = backend.make()
    await new.start()
    assert await backend.applied_versions() == [m.version for m in MIGRATIONS]
    assert "stage_records_owner_created" in await backend.index_names()
    after = await backend.fetch(
        f"SELECT applied_at FROM schema_migrations WHERE version = {MIGRATIONS[0].version}"
    )
    assert after == before, "an applied migration ran again"
    assert await new.get("from-v1") is not None


async def test_a_store_starts_on_a_schema_newer_than_it_knows(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    # A rolling upgrade: a newer replica applied version 99, an older one restarts.
    newer = backend.make(
        migrations=[*MIGRATIONS, Migration(99, "future", ("SELECT 1",), ("SELECT 1",))]
    )
    await newer.start()
    await newer.save(record("from-newer"))
    older = backend.make()
    await older.start()
    assert await older.get("from-newer") is not None
    assert await backend.applied_versions() == [*(m.version for m in MIGRATIONS), 99]
    warned = [r for r in caplog.records if "schema is newer" in r.getMessage()]
    assert [r.unknown_versions for r in warned] == [[99]]  # type: ignore[attr-defined]


async def test_stores_starting_together_apply_each_migration_once(backend: Backend) -> None:
    stores = [backend.make() for _ in range(6)]
    await asyncio.wait_for(asyncio.gather(*(s.start() for s in stores)), WAIT)
    assert await backend.applied_versions() == [m.version for m in MIGRATIONS]
    await stores[0].save(record("x"))
    assert all([await s.get("x") is not None for s in stores])


@pytest.mark.postgres
async def test_postgres_migrations_wait_for_the_advisory_lock(postgres_url: str) -> None:
    holder = await asyncpg.connect(postgres_url, timeout=5)
    store = PostgresStore(postgres_url)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        starting = asyncio.create_task(store.start())
        async with asyncio.timeout(WAIT):
            while not await holder.fetchval(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
                " WHERE l.locktype = 'advisory' AND NOT l.granted"
                " AND d.datname = current_database()"
            ):
                assert not starting.done(), starting
                await asyncio.sleep(0.02)
        # The store waits on the lock: nothing is applied while another process migrates.
        assert not starting.done()
        assert await holder.fetchval("SELECT to_regclass('schema_migrations')") is None
        await holder.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        await asyncio.wait_for(starting, WAIT)
        versions = await holder.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r[0] for r in versions] == [m.version for m in MIGRATIONS]
    finally:
        await holder.close()
        await store.aclose()


# -- lifecycle -------------------------------------------------------------------------------


async def test_ping_says_whether_the_database_answers(
    backend: Backend, store: Store, tmp_path: Path
) -> None:
    assert await store.ping() is True
    down = backend.unreachable(tmp_path)
    assert await down.ping() is False
    with pytest.raises(StoreUnavailableError):
        await down.start()
    with pytest.raises(StoreUnavailableError):
        await down.save(record())


async def test_operations_start_the_store_on_first_use(backend: Backend) -> None:
    fresh = backend.make()
    await fresh.save(record("lazy"))
    assert await fresh.get("lazy") is not None
    assert await backend.applied_versions() == [m.version for m in MIGRATIONS]


async def test_a_closed_store_refuses_work(backend: Backend) -> None:
    s = backend.make()
    await s.start()
    await s.aclose()
    await s.aclose()
    with pytest.raises(StoreError):
        await s.save(record())
    with pytest.raises(StoreError):
        await s.get("s1")
    assert await s.ping() is False


async def test_make_store_builds_a_working_store_from_a_url(backend: Backend) -> None:
    s = make_store(backend.url)
    backend.stores.append(s)
    assert isinstance(s, PostgresStore if backend.kind == "postgres" else SQLiteStore)
    await s.start()
    await s.save(record("via-url"))
    got = await s.get("via-url", owner="alice")
    assert got is not None
    assert await backend.fetch("SELECT stage_id FROM stage_records") == [("via-url",)]


# -- URLs and summaries (no database) --------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "path"),
    [
        (None, "stagecast.db"),
        ("sqlite:///records.db", "records.db"),
        ("sqlite:///data/records.db", "data/records.db"),
        ("sqlite:////var/lib/stagecast/records.db", "/var/lib/stagecast/records.db"),
        ("sqlite://:memory:", ":memory:"),
        ("sqlite:///:memory:", ":memory:"),
        ("  SQLite:///x.db  ", "x.db"),
    ],
)
def test_make_store_picks_sqlite(url: str | None, path: str) -> None:
    s = make_store(url)
    assert isinstance(s, SQLiteStore)
    assert s.path == path


def test_make_store_uses_the_default_sqlite_path() -> None:
    s = make_store(None, default_sqlite_path="/srv/records.db")
    assert isinstance(s, SQLiteStore)
    assert s.path == "/srv/records.db"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@127.0.0.1:5432/stagecast",
        "postgres://user:secret@db.example:6543/records?sslmode=require",
    ],
)
def test_make_store_picks_postgres(url: str) -> None:
    s = make_store(url)
    assert isinstance(s, PostgresStore)
    assert s.url == url
    assert "secret" not in repr(s)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "records.db",
        "mysql://root@localhost/db",
        "http://127.0.0.1:5432/db",
        "sqlite://",
        "sqlite:///",
        "sqlite://host/records.db",
        "sqlite:///records.db?mode=ro",
        "postgresql://",
        "redis://user:hunter2@127.0.0.1:6379/0",
    ],
)
def test_make_store_refuses_other_urls(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_store(url)
    message = str(caught.value)
    assert "sqlite:///" in message or "PostgreSQL" in message
    assert "hunter2" not in message


async def test_an_invalid_postgres_url_is_a_config_error() -> None:
    s = make_store("postgresql://127.0.0.1:notaport/db")
    try:
        with pytest.raises(ConfigError):
            await s.start()
    finally:
        await s.aclose()


def test_request_summary_keeps_options_and_truncates_prompts() -> None:
    request = StageRequest(
        stage_id="s1",
        system_prompt="be brief",
        user_prompt="x" * 5000,
        messages=[{"role": "user", "content": f"m{i}"} for i in range(30)],
        prompts=("tool phase", "y" * 3000),
        max_tokens=(10, 20),
        temperature=0.5,
        tools=["calculator"],
        synthesis=True,
    )
    summary = summarise_request(request, max_chars=100)
    assert summary["system_prompt"] == "be brief"
    assert summary["user_prompt"] == "x" * 100 + "… [+4900 chars]"
    assert summary["prompts"] == ["tool phase", "y" * 100 + "… [+2900 chars]"]
    assert summary["message_count"] == 30
    assert [m["content"] for m in summary["messages"]] == [f"m{i}" for i in range(10, 30)]
    assert summary["max_tokens"] == [10, 20]
    assert summary["temperature"] == [0.5, 0.5]
    assert summary["tools"] == ["calculator"]
    assert summary["synthesis"] is True
    assert "stage_id" not in summary
    # A summary is a valid record field.
    assert record(request=summary).request == summary


def test_record_times_may_be_epoch_seconds_or_naive_utc() -> None:
    from_epoch = record(created_at=T0.timestamp(), finished_at=T0.timestamp() + 1.5)
    naive = record(created_at=T0.replace(tzinfo=None))
    assert from_epoch.created_at == T0
    assert from_epoch.duration_ms == pytest.approx(1500.0)
    assert naive.created_at == T0
    assert naive.created_at.tzinfo is not None
