"""SQLiteStore: stage records in one SQLite file (the default), through aiosqlite.

One connection in WAL mode, so readers in other processes (the ``sqlite3`` shell, a second
gateway on the same file) are not blocked by our writes. Datetimes are fixed-width UTC text
(``2025-01-31T12:00:00.000000Z``), so comparing the text compares the times and the listing
cursor can use the index.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import itertools
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import datetime

import aiosqlite

from stagecast.store.base import (
    COLUMNS,
    SELECT_RECORDS,
    StageRecord,
    StoreDataError,
    StoreError,
    StoreUnavailableError,
    check_limit,
    decode_cursor,
    encode_cursor,
    json_columns,
    record_from_row,
    scrub_text,
    upsert_records_sql,
    utc,
)
from stagecast.store.migrations import (
    MIGRATIONS,
    SCHEMA_MIGRATIONS_SQLITE,
    Migration,
    check_migrations,
    pending_migrations,
)

log = logging.getLogger(__name__)

_SELECT = SELECT_RECORDS
# Rows per statement of a batch: well within SQLite's bound of 32,766 parameters.
_ROWS_PER_STATEMENT = 100


@functools.cache
def _upsert(rows: int) -> str:
    """One statement that upserts ``rows`` records, in order (a later one of a stage wins)."""
    return upsert_records_sql(["?"] * len(COLUMNS), rows=rows)


def sqlite_time(value: datetime) -> str:
    """A datetime as the fixed-width UTC text stored in SQLite."""
    # isoformat, not strftime: three times a record, and it pads the year to four digits.
    return utc(value).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _row(record: StageRecord) -> tuple[object, ...]:
    encoded = json_columns(record)
    values: dict[str, object] = {
        "stage_id": record.stage_id,
        "owner": record.owner,
        "role": record.role,
        "mode": record.mode,
        "status": record.status,
        **encoded,
        "text": scrub_text(record.text),
        "reasoning": scrub_text(record.reasoning),
        "created_at": sqlite_time(record.created_at),
        "first_token_at": sqlite_time(record.first_token_at) if record.first_token_at else None,
        "finished_at": sqlite_time(record.finished_at) if record.finished_at else None,
        "ttft_ms": record.ttft_ms,
        "duration_ms": record.duration_ms,
    }
    return tuple(values[c] for c in COLUMNS)


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    """sqlite3 errors as store errors: refused data apart from an unusable database."""
    try:
        yield
    except (sqlite3.IntegrityError, sqlite3.DataError, UnicodeEncodeError) as exc:
        raise StoreDataError(f"SQLite refused to {action}: {exc}") from exc
    except (sqlite3.Error, OSError) as exc:
        raise StoreUnavailableError(f"SQLite could not {action}: {exc}") from exc


class SQLiteStore:
    """Stage records in a SQLite file (or ``":memory:"``, gone when the store closes).

    Operations start the store if ``start`` has not succeeded yet, so a store whose file was
    unavailable at startup recovers on its own.
    """

    def __init__(
        self,
        path: str,
        *,
        busy_timeout: float = 5.0,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        check_migrations(migrations)
        self.migrations = tuple(migrations)
        self._db: aiosqlite.Connection | None = None
        self._closed = False
        # One connection cannot interleave transactions: every use of it takes this lock.
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Open the database (WAL mode) and apply pending migrations."""
        async with self._lock:
            await self._connection()

    async def _connection(self) -> aiosqlite.Connection:
        if self._closed:
            raise StoreError("the record store is closed")
        if self._db is not None:
            return self._db
        with _translated(f"open {self.path!r}"):
            db = await aiosqlite.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            with _translated(f"prepare {self.path!r}"):
                await self._use_wal(db)
                # In WAL mode NORMAL loses at most the last commits on power loss, never
                # corrupts; FULL would fsync on every record.
                await db.execute("PRAGMA synchronous=NORMAL")
                await self._migrate(db)
        except BaseException:
            await db.close()
            raise
        self._db = db
        return db

    async def _use_wal(self, db: aiosqlite.Connection) -> None:
        # Switching a new file to WAL needs an exclusive lock, and SQLite reports "database is
        # locked" at once instead of calling the busy handler; so wait here as it would.
        deadline = asyncio.get_running_loop().time() + self.busy_timeout
        while True:
            try:
                await db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                # Extended codes (SQLITE_BUSY_RECOVERY, ...) keep the primary code in the low byte.
                busy = (exc.sqlite_errorcode & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
                if not busy or asyncio.get_running_loop().time() > deadline:
                    raise
            await asyncio.sleep(0.01)

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        # BEGIN IMMEDIATE takes the write lock before reading the applied versions, so a
        # second process starting on the same file waits for us and then finds them applied.
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.execute(SCHEMA_MIGRATIONS_SQLITE)
            rows = await db.execute_fetchall("SELECT version FROM schema_migrations")
            applied = {int(row[0]) for row in rows}
            for migration in pending_migrations(self.migrations, applied):
                for statement in migration.sqlite:
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at)"
                    " VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                    (migration.version, migration.name),
                )
                log.info(
                    "applied schema migration",
                    extra={
                        "store": "sqlite",
                        "version": migration.version,
                        "migration": migration.name,
                    },
                )
            await db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await db.execute("ROLLBACK")
            raise

    async def save(self, record: StageRecord) -> None:
        """Insert the record, or replace the one with the same ``stage_id``."""
        await self.save_many((record,))

    async def save_many(self, records: Sequence[StageRecord]) -> None:
        """Upsert the records in order, all or none.

        Up to a hundred records are one statement, which SQLite runs as one transaction: one
        trip to the database thread and one commit. (A transaction around ``executemany``
        took three trips, and each woke the event loop when it came back.)
        """
        if not records:
            return
        rows = [_row(r) for r in records]
        async with self._lock:
            db = await self._connection()
            with _translated("save stage records"):
                if len(rows) <= _ROWS_PER_STATEMENT:
                    await db.execute(_upsert(len(rows)), list(itertools.chain(*rows)))
                    return
                await db.execute("BEGIN IMMEDIATE")
                try:
                    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
                        part = rows[start : start + _ROWS_PER_STATEMENT]
                        await db.execute(_upsert(len(part)), list(itertools.chain(*part)))
                    await db.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error, ValueError):
                        await db.execute("ROLLBACK")
                    raise

    async def get(self, stage_id: str, *, owner: str | None = None) -> StageRecord | None:
        """The record of a stage, or None (also when it belongs to another owner)."""
        sql = f"{_SELECT} WHERE stage_id = ?"
        params: list[object] = [stage_id]
        if owner is not None:
            sql += " AND owner = ?"
            params.append(owner)
        async with self._lock:
            db = await self._connection()
            with _translated("read a stage record"):
                rows = builtins.list(await db.execute_fetchall(sql, params))
        return record_from_row(rows[0]) if rows else None

    async def list(
        self, *, owner: str | None, limit: int = 50, cursor: str | None = None
    ) -> tuple[builtins.list[StageRecord], str | None]:
        """A page of records, newest first, and the next page's cursor (None at the end)."""
        check_limit(limit)
        where: builtins.list[str] = []
        params: builtins.list[object] = []
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        if cursor is not None:
            after_time, after_id = decode_cursor(cursor)
            where.append("(created_at, stage_id) < (?, ?)")
            params += [sqlite_time(after_time), after_id]
        sql = _SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        # One row more than asked says whether there is a next page.
        sql += " ORDER BY created_at DESC, stage_id DESC LIMIT ?"
        params.append(limit + 1)
        async with self._lock:
            db = await self._connection()
            with _translated("list stage records"):
                rows = builtins.list(await db.execute_fetchall(sql, params))
        records = [record_from_row(row) for row in rows[:limit]]
        if len(rows) <= limit:
            return records, None
        last = records[-1]
        return records, encode_cursor(last.created_at, last.stage_id)

    async def ping(self) -> bool:
        """True if the database file can be opened and queried."""
        try:
            async with self._lock:
                db = await self._connection()
                with _translated("answer a ping"):
                    await db.execute_fetchall("SELECT 1")
        except Exception:  # a health probe reports, it does not raise
            return False
        return True

    async def aclose(self) -> None:
        """Close the connection; the store cannot be used afterwards."""
        async with self._lock:
            self._closed = True
            db, self._db = self._db, None
            if db is not None:
                await db.close()
