"""PostgreSQL for the store tests: a fresh database per test on a real server.

Without a server the PostgreSQL tests are skipped; with STAGECAST_REQUIRE_SERVICES=1 (CI) they
fail. The server is ``postgresql://postgres@127.0.0.1:5432/postgres`` unless
STAGECAST_TEST_DATABASE_URL names another; that URL's user must be allowed to create databases.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

T = TypeVar("T")


def _run_in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on its own loop in another thread: the test's loop is not touched."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


async def _probe(url: str) -> None:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """A URL of the test server, once it answers; its user creates the per-test databases."""
    url = os.environ.get("STAGECAST_TEST_DATABASE_URL") or DEFAULT_DATABASE_URL
    try:
        _run_in_thread(_probe(url))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        reason = f"PostgreSQL not reachable at {url}: {type(exc).__name__}: {exc}"
        if os.environ.get("STAGECAST_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return url


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database on the same server."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def with_address(url: str, host: str, port: int) -> str:
    """``url`` pointing at another host and port (a proxy), same user and database."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A URL of a new, empty database, dropped after the test.

    A plain fixture (the admin work runs on a loop of its own), so that async fixtures can
    ask for it with ``request.getfixturevalue``.
    """
    name = f"stagecast_test_{uuid.uuid4().hex[:16]}"
    # template0: nothing else ever connects to it, so creation never waits on other users.
    _run_in_thread(_admin(postgres_admin_url, f'CREATE DATABASE "{name}" TEMPLATE template0'))
    try:
        yield with_database(postgres_admin_url, name)
    finally:
        # FORCE: a test that failed half-way may have left connections open.
        _run_in_thread(_admin(postgres_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
