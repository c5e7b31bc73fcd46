"""Versioned schema migrations for the record store, one SQL text per database.

``schema_migrations`` lists the versions applied. A store's ``start`` applies the missing ones
in order, in one transaction, so a failed upgrade leaves the schema as it was. Released
migrations are never edited: a change to the schema is a new version at the end of the list.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema version: its statements for SQLite and for PostgreSQL."""

    version: int
    name: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


# Taken with pg_advisory_xact_lock while migrating, so that replicas starting together take
# turns: the first applies the migrations, the others then find nothing left to do. The value
# is arbitrary; it only has to differ from other advisory locks in the same database.
MIGRATION_LOCK_KEY = 0x5374_6167_6563_6173  # "Stagecas"

SCHEMA_MIGRATIONS_SQLITE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version INTEGER PRIMARY KEY,"
    " name TEXT NOT NULL,"
    " applied_at TEXT NOT NULL)"
)
SCHEMA_MIGRATIONS_POSTGRES = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version INTEGER PRIMARY KEY,"
    " name TEXT NOT NULL,"
    " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
)

# SQLite keeps datetimes as fixed-width UTC text (see sqlite.py), so text order is time order;
# JSON is TEXT there and JSONB on PostgreSQL. Both indexes end in stage_id DESC to match the
# listing order exactly, so a page is an index range scan with no sort.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        name="stage_records",
        sqlite=(
            """
            CREATE TABLE stage_records (
                stage_id       TEXT PRIMARY KEY,
                owner          TEXT,
                role           TEXT NOT NULL,
                mode           TEXT NOT NULL,
                status         TEXT NOT NULL,
                request        TEXT NOT NULL,
                text           TEXT NOT NULL,
                reasoning      TEXT NOT NULL,
                tool_calls     TEXT NOT NULL,
                tool_results   TEXT NOT NULL,
                usage          TEXT,
                error          TEXT,
                created_at     TEXT NOT NULL,
                first_token_at TEXT,
                finished_at    TEXT,
                ttft_ms        REAL,
                duration_ms    REAL
            )
            """,
        ),
        postgres=(
            """
            CREATE TABLE stage_records (
                stage_id       TEXT PRIMARY KEY,
                owner          TEXT,
                role           TEXT NOT NULL,
                mode           TEXT NOT NULL,
                status         TEXT NOT NULL,
                request        JSONB NOT NULL,
                text           TEXT NOT NULL,
                reasoning      TEXT NOT NULL,
                tool_calls     JSONB NOT NULL,
                tool_results   JSONB NOT NULL,
                usage          JSONB,
                error          JSONB,
                created_at     TIMESTAMPTZ NOT NULL,
                first_token_at TIMESTAMPTZ,
                finished_at    TIMESTAMPTZ,
                ttft_ms        DOUBLE PRECISION,
                duration_ms    DOUBLE PRECISION
            )
            """,
        ),
    ),
    Migration(
        version=2,
        name="stage_records_listing_indexes",
        sqlite=(
            "CREATE INDEX stage_records_owner_created"
            " ON stage_records (owner, created_at DESC, stage_id DESC)",
            "CREATE INDEX stage_records_created ON stage_records (created_at DESC, stage_id DESC)",
        ),
        postgres=(
            "CREATE INDEX stage_records_owner_created"
            " ON stage_records (owner, created_at DESC, stage_id DESC)",
            "CREATE INDEX stage_records_created ON stage_records (created_at DESC, stage_id DESC)",
        ),
    ),
)


def check_migrations(migrations: Sequence[Migration]) -> None:
    """``ValueError`` unless versions are positive and strictly increasing."""
    last = 0
    for migration in migrations:
        if migration.version <= last:
            raise ValueError(
                f"migration {migration.version} ({migration.name}) must come after {last}"
            )
        last = migration.version


def pending_migrations(migrations: Sequence[Migration], applied: set[int]) -> list[Migration]:
    """The migrations not yet applied, in order.

    Versions this code does not know mean a newer stagecast migrated the database. That is
    logged, not refused: during a rolling upgrade old replicas still run against the new schema.
    """
    known = {m.version for m in migrations}
    if unknown := sorted(applied - known):
        log.warning(
            "the database schema is newer than this stagecast knows",
            extra={"unknown_versions": unknown, "known_versions": sorted(known)},
        )
    return [m for m in migrations if m.version not in applied]
