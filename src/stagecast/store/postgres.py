"""PostgresStore: stage records in PostgreSQL, through an asyncpg connection pool.

JSON fields are JSONB, datetimes TIMESTAMPTZ. A URL may choose a schema with asyncpg's server
settings, e.g. ``postgresql://host/db?search_path=stagecast``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import asyncpg

from stagecast.errors import ConfigError
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
)
from stagecast.store.migrations import (
    MIGRATION_LOCK_KEY,
    MIGRATIONS,
    SCHEMA_MIGRATIONS_POSTGRES,
    Migration,
    check_migrations,
    pending_migrations,
)

log = logging.getLogger(__name__)

_SELECT = SELECT_RECORDS
_UPSERT = upsert_records_sql([f"${i}" for i in range(1, len(COLUMNS) + 1)])


def _row(record: StageRecord) -> tuple[object, ...]:
    values: dict[str, object] = {
        **record.model_dump(
            include={
                "stage_id",
                "owner",
                "role",
                "mode",
                "status",
                "created_at",
                "first_token_at",
                "finished_at",
            }
        ),
        **json_columns(record),
        "text": scrub_text(record.text),
        "reasoning": scrub_text(record.reasoning),
        "ttft_ms": record.ttft_ms,
        "duration_ms": record.duration_ms,
    }
    return tuple(values[c] for c in COLUMNS)


def _redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{host}"


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    """asyncpg and socket errors as store errors: refused data apart from an outage."""
    try:
        yield
    except (
        asyncpg.exceptions.DataError,
        asyncpg.exceptions.IntegrityConstraintViolationError,
        UnicodeEncodeError,
    ) as exc:
        raise StoreDataError(f"PostgreSQL refused to {action}: {exc}") from exc
    except asyncpg.exceptions.ClientConfigurationError as exc:
        raise ConfigError(f"cannot {action}: {exc}") from exc
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        # Anything else from the server or the socket (refused, reset, shutting down, timed
        # out, too many connections) may pass, so it is worth trying again.
        raise StoreUnavailableError(
            f"PostgreSQL could not {action}: {type(exc).__name__}: {exc}"
        ) from exc


class PostgresStore:
    """Stage records in PostgreSQL.

    The pool opens connections on demand (``min_size=0``): while the server is down nothing
    reconnects in the background, and the first operation after it is back connects again.
    Operations start the store if ``start`` has not succeeded yet.
    """

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 0,
        max_size: int = 10,
        connect_timeout: float = 5.0,
        command_timeout: float = 30.0,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        self.url = url
        self.min_size = min_size
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        check_migrations(migrations)
        self.migrations = tuple(migrations)
        self._pool: Any = None
        self._closed = False
        self._start_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"PostgresStore({_redact(self.url)!r})"

    async def start(self) -> None:
        """Create the pool and apply pending migrations (one replica at a time)."""
        await self._ready()

    async def _ready(self) -> Any:
        if self._closed:
            raise StoreError("the record store is closed")
        if self._pool is not None:
            return self._pool
        async with self._start_lock:
            if self._closed:
                raise StoreError("the record store is closed")
            if self._pool is not None:
                return self._pool
            where = _redact(self.url)
            try:
                with _translated(f"connect to {where}"):
                    pool = await asyncpg.create_pool(
                        self.url,
                        min_size=self.min_size,
                        max_size=self.max_size,
                        timeout=self.connect_timeout,
                        command_timeout=self.command_timeout,
                    )
                try:
                    with _translated(f"migrate the schema at {where}"):
                        async with pool.acquire(timeout=self.connect_timeout) as conn:
                            await self._migrate(conn)
                except BaseException:
                    pool.terminate()
                    raise
            except ValueError as exc:
                # asyncpg parses the URL when it first connects and says what is wrong with it.
                raise ConfigError(f"invalid PostgreSQL URL {where!r}: {exc}") from exc
            self._pool = pool
            return pool

    async def _migrate(self, conn: Any) -> None:
        async with conn.transaction():
            # Replicas that start together queue here; the lock ends with the transaction.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            await conn.execute(SCHEMA_MIGRATIONS_POSTGRES)
            rows = await conn.fetch("SELECT version FROM schema_migrations")
            applied = {int(row[0]) for row in rows}
            for migration in pending_migrations(self.migrations, applied):
                for statement in migration.postgres:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
                log.info(
                    "applied schema migration",
                    extra={
                        "store": "postgres",
                        "version": migration.version,
                        "migration": migration.name,
                    },
                )

    async def save(self, record: StageRecord) -> None:
        """Insert the record, or replace the one with the same ``stage_id``."""
        await self.save_many((record,))

    async def save_many(self, records: Sequence[StageRecord]) -> None:
        """Upsert the records in order, in one transaction."""
        if not records:
            return
        rows = [_row(r) for r in records]
        pool = await self._ready()
        with _translated("save stage records"):
            async with pool.acquire(timeout=self.connect_timeout) as conn, conn.transaction():
                await conn.executemany(_UPSERT, rows)

    async def get(self, stage_id: str, *, owner: str | None = None) -> StageRecord | None:
        """The record of a stage, or None (also when it belongs to another owner)."""
        sql = f"{_SELECT} WHERE stage_id = $1"
        params: builtins.list[object] = [stage_id]
        if owner is not None:
            sql += " AND owner = $2"
            params.append(owner)
        pool = await self._ready()
        with _translated("read a stage record"):
            row = await pool.fetchrow(sql, *params)
        return None if row is None else record_from_row(row)

    async def list(
        self, *, owner: str | None, limit: int = 50, cursor: str | None = None
    ) -> tuple[builtins.list[StageRecord], str | None]:
        """A page of records, newest first, and the next page's cursor (None at the end)."""
        check_limit(limit)
        where: builtins.list[str] = []
        params: builtins.list[object] = []
        if owner is not None:
            params.append(owner)
            where.append(f"owner = ${len(params)}")
        if cursor is not None:
            after_time, after_id = decode_cursor(cursor)
            params += [after_time, after_id]
            where.append(f"(created_at, stage_id) < (${len(params) - 1}, ${len(params)})")
        sql = _SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        # One row more than asked says whether there is a next page.
        params.append(limit + 1)
        sql += f" ORDER BY created_at DESC, stage_id DESC LIMIT ${len(params)}"
        pool = await self._ready()
        with _translated("list stage records"):
            rows = await pool.fetch(sql, *params)
        records = [record_from_row(row) for row in rows[:limit]]
        if len(rows) <= limit:
            return records, None
        last = records[-1]
        return records, encode_cursor(last.created_at, last.stage_id)

    async def ping(self) -> bool:
        """True if the server answers ``SELECT 1``."""
        try:
            pool = await self._ready()
            with _translated("answer a ping"):
                value = await pool.fetchval("SELECT 1", timeout=self.connect_timeout)
        except Exception:  # a health probe reports, it does not raise
            return False
        return bool(value == 1)

    async def aclose(self, timeout: float = 10.0) -> None:
        """Close the pool, waiting up to ``timeout`` for queries in flight; then cut them."""
        async with self._start_lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout)
        except TimeoutError:
            log.warning("record store pool did not close in time; terminating it")
            pool.terminate()
