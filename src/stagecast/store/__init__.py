"""Stage records: one row per stage, in SQLite by default or PostgreSQL by URL.

``make_store(url)`` picks the implementation; a ``RecordWriter`` saves records in the
background so that a stage never waits for the database, and keeps them through an outage.
"""

from __future__ import annotations

from stagecast.errors import ConfigError
from stagecast.store.base import (
    InvalidCursorError,
    StageRecord,
    Store,
    StoreDataError,
    StoreError,
    StoreUnavailableError,
    summarise_request,
)
from stagecast.store.migrations import MIGRATIONS, Migration
from stagecast.store.postgres import PostgresStore
from stagecast.store.sqlite import SQLiteStore
from stagecast.store.writer import RecordWriter

__all__ = [
    "MIGRATIONS",
    "InvalidCursorError",
    "Migration",
    "PostgresStore",
    "RecordWriter",
    "SQLiteStore",
    "StageRecord",
    "Store",
    "StoreDataError",
    "StoreError",
    "StoreUnavailableError",
    "make_store",
    "summarise_request",
]

_ACCEPTED = (
    "sqlite:///relative/path.db, sqlite:////absolute/path.db, sqlite://:memory:, "
    "postgresql://user@host:5432/db or postgres://..."
)


def make_store(database_url: str | None, default_sqlite_path: str = "stagecast.db") -> Store:
    """The store a database URL names; None means SQLite at ``default_sqlite_path``.

    SQLite URLs follow SQLAlchemy: three slashes before a relative path, four before an
    absolute one. Anything unrecognised is a ``ConfigError`` that lists what is accepted.
    Nothing connects here; ``start`` does.
    """
    if database_url is None:
        return SQLiteStore(default_sqlite_path)
    url = database_url.strip()
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if sep and scheme in ("postgresql", "postgres"):
        if not rest:
            raise ConfigError(f"database URL {url!r} names no PostgreSQL server")
        return PostgresStore(url)
    if sep and scheme == "sqlite":
        if rest in (":memory:", "/:memory:"):
            return SQLiteStore(":memory:")
        if rest.startswith("/") and len(rest) > 1 and "?" not in rest:
            return SQLiteStore(rest[1:])
        raise ConfigError(
            f"SQLite database URL {url!r} has no usable path; use one of: {_ACCEPTED}"
        )
    shown = url if "@" not in url else f"{scheme}://..."
    raise ConfigError(f"unsupported database URL {shown!r}; use one of: {_ACCEPTED}")
