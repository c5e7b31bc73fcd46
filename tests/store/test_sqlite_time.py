"""SQLite keeps record times as text whose order is the times' order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from stagecast.store.sqlite import sqlite_time

aware = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)


def test_the_text_is_utc_with_microseconds_and_a_z() -> None:
    east = timezone(timedelta(hours=5))
    assert sqlite_time(datetime(2025, 1, 31, 12, 0, 0, 5, tzinfo=east)) == (
        "2025-01-31T07:00:00.000005Z"
    )
    assert sqlite_time(datetime(2025, 1, 31, 12)) == "2025-01-31T12:00:00.000000Z"  # naive: UTC
    assert sqlite_time(datetime(987, 6, 5, tzinfo=UTC)) == "0987-06-05T00:00:00.000000Z"


@given(aware, aware)
def test_text_order_is_time_order_and_every_text_has_one_width(a: datetime, b: datetime) -> None:
    ta, tb = sqlite_time(a), sqlite_time(b)
    assert len(ta) == len(tb) == len("2025-01-31T12:00:00.000000Z")
    assert (ta < tb) == (a < b)
    assert (ta == tb) == (a == b)
