"""The Store interface and the stage record it keeps: one row per stage, written at its end.

A record is what a stage leaves behind once its stream is over: a summary of the request, the
role and mode, how it ended, the final text and reasoning, tool calls and results, token usage,
timings and the error, if any. ``list`` pages with an opaque cursor over
``(created_at, stage_id)``, newest first, so pages stay stable while new stages are recorded.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import orjson
from pydantic import BaseModel, Field, computed_field, field_validator

from stagecast.errors import RequestError, StagecastError
from stagecast.protocol.requests import StageRequest

RecordMode = Literal["chat", "toolchain"]
RecordStatus = Literal["done", "cancelled", "error", "running"]

# Prompts longer than this are cut in the request summary: the record is for looking a stage
# up, not for replaying it, and a long context would make every row large.
SUMMARY_MAX_CHARS = 2000
# Only the last messages of a long conversation go into the summary, for the same reason.
SUMMARY_MAX_MESSAGES = 20
# The answer and the reasoning are kept whole up to this many characters (far more than any
# usual answer); a runaway stream's record is cut here rather than making a row of megabytes.
RECORD_TEXT_MAX_CHARS = 1_000_000


class StoreError(StagecastError):
    """The record store failed."""

    code = "store_error"


class StoreUnavailableError(StoreError):
    """The database could not be reached or did not answer; trying again later may work."""

    code = "store_unavailable"
    retryable = True


class StoreDataError(StoreError):
    """The database refused a record (it cannot be encoded or stored); retrying will not help."""

    code = "store_rejected"


class InvalidCursorError(RequestError):
    """A ``list`` cursor that this store did not hand out."""

    code = "invalid_cursor"
    status_code = 400


def utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive datetime is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _ms_between(start: datetime, end: datetime | None) -> float | None:
    if end is None:
        return None
    return (end - start).total_seconds() * 1000.0


class StageRecord(BaseModel):
    """What is kept of one stage. Datetimes are UTC; numbers (epoch seconds) are accepted too.

    A writer keeps a reference to a submitted record until it is saved: submit a new record
    (``model_copy(update=...)``) rather than changing one in place.
    """

    stage_id: str = Field(min_length=1)
    owner: str | None = None
    role: str
    mode: RecordMode
    status: RecordStatus
    request: dict[str, Any] = Field(default_factory=dict)
    text: str = ""
    reasoning: str = ""
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    tool_results: dict[str, Any] = Field(default_factory=dict)
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    created_at: datetime
    first_token_at: datetime | None = None
    finished_at: datetime | None = None

    @field_validator("created_at", "first_token_at", "finished_at")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else utc(value)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ttft_ms(self) -> float | None:
        """Milliseconds from the stage's start to its first token, if it had one."""
        return _ms_between(self.created_at, self.first_token_at)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def duration_ms(self) -> float | None:
        """Milliseconds from the stage's start to its end, once it has ended."""
        return _ms_between(self.created_at, self.finished_at)


def summarise_request(
    request: StageRequest, *, max_chars: int = SUMMARY_MAX_CHARS
) -> dict[str, Any]:
    """The ``request`` field of a record: the options as given, prompts cut to ``max_chars``."""
    summary: dict[str, Any] = request.model_dump(
        mode="json",
        exclude_none=True,
        exclude={"stage_id", "system_prompt", "user_prompt", "messages", "prompts"},
    )
    if request.system_prompt is not None:
        summary["system_prompt"] = truncate(request.system_prompt, max_chars)
    if request.user_prompt is not None:
        summary["user_prompt"] = truncate(request.user_prompt, max_chars)
    if request.prompts is not None:
        summary["prompts"] = [truncate(p, max_chars) for p in request.prompts]
    if request.messages:
        kept = request.messages[-SUMMARY_MAX_MESSAGES:]
        summary["message_count"] = len(request.messages)
        summary["messages"] = [
            {"role": m.role, "content": _summarise_content(m.content, max_chars)} for m in kept
        ]
    return summary


def _summarise_content(content: str | list[dict[str, Any]] | None, max_chars: int) -> Any:
    if isinstance(content, str):
        return truncate(content, max_chars)
    if content is None:
        return None
    # Content parts may carry images as data URLs; keep only their text.
    texts = [str(part.get("text", "")) for part in content if part.get("type") == "text"]
    return truncate("\n".join(texts), max_chars)


def truncate(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` characters, saying how much was cut."""
    if len(text) <= max_chars:
        return text
    return _cut(text[:max_chars], len(text) - max_chars)


def truncate_parts(parts: list[str], max_chars: int) -> str:
    """``truncate("".join(parts), max_chars)`` without joining what would be cut."""
    kept = 0
    for i, part in enumerate(parts):
        if kept + len(part) > max_chars:
            head = "".join(parts[:i]) + part[: max_chars - kept]
            return _cut(head, len(part) - (max_chars - kept) + sum(map(len, parts[i + 1 :])))
        kept += len(part)
    return "".join(parts)


def _cut(head: str, cut: int) -> str:
    return f"{head}… [+{cut} chars]"


def encode_cursor(created_at: datetime, stage_id: str) -> str:
    """The opaque cursor that continues a listing after the record ``(created_at, stage_id)``."""
    raw = orjson.dumps([utc(created_at).isoformat(), stage_id])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The ``(created_at, stage_id)`` a cursor points after; ``InvalidCursorError`` if bad."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = orjson.loads(raw)
        if not isinstance(value, list) or len(value) != 2:
            raise ValueError("not a pair")
        when, stage_id = value
        if not isinstance(when, str) or not isinstance(stage_id, str):
            raise ValueError("not a pair of strings")
        return utc(datetime.fromisoformat(when)), stage_id
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError) as exc:
        raise InvalidCursorError(f"invalid cursor {cursor[:64]!r}") from exc


def check_limit(limit: int) -> int:
    """``limit`` if it is a usable page size, else ``ValueError``."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    return limit


# Column order of stage_records, shared by both stores' INSERT and SELECT statements.
COLUMNS: tuple[str, ...] = (
    "stage_id",
    "owner",
    "role",
    "mode",
    "status",
    "request",
    "text",
    "reasoning",
    "tool_calls",
    "tool_results",
    "usage",
    "error",
    "created_at",
    "first_token_at",
    "finished_at",
    "ttft_ms",
    "duration_ms",
)
# The statements both stores run; only the drivers' parameter placeholders differ.
SELECT_RECORDS = f"SELECT {', '.join(COLUMNS)} FROM stage_records"


def upsert_records_sql(placeholders: list[str], *, rows: int = 1) -> str:
    """Insert records, or replace the record of their ``stage_id``: ``rows`` rows of
    ``placeholders`` each."""
    values = ", ".join([f"({', '.join(placeholders)})"] * rows)
    return (
        f"INSERT INTO stage_records ({', '.join(COLUMNS)}) VALUES {values}"
        " ON CONFLICT (stage_id) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c != "stage_id")
    )


JSON_COLUMNS: frozenset[str] = frozenset(
    ("request", "tool_calls", "tool_results", "usage", "error")
)
_DERIVED_COLUMNS = frozenset(("ttft_ms", "duration_ms"))


def scrub_text(text: str) -> str:
    """``text`` with U+0000 replaced by U+FFFD.

    PostgreSQL text and JSONB cannot hold U+0000. Every store replaces it, so that a model
    that emits one loses a character rather than its whole record, the same way everywhere.
    """
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _scrub_json(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, list):
        return [_scrub_json(v) for v in value]
    if isinstance(value, dict):
        return {scrub_text(k): _scrub_json(v) for k, v in value.items()}
    return value


def json_columns(record: StageRecord) -> dict[str, str | None]:
    """The record's JSON fields encoded for the database; ``StoreDataError`` if they cannot be.

    Values go through pydantic's JSON mode first, so a datetime or a set inside a tool result
    is stored as JSON would show it rather than failing the write.
    """
    out: dict[str, str | None] = {}
    try:
        plain = record.model_dump(mode="json", include=set(JSON_COLUMNS))
        for key, value in plain.items():
            if value is None:
                out[key] = None
                continue
            encoded = orjson.dumps(value)
            # orjson writes U+0000 as this escape; only then is the walk worth it.
            if b"\\u0000" in encoded:
                encoded = orjson.dumps(_scrub_json(value))
            out[key] = encoded.decode()
    except Exception as exc:  # pydantic and orjson raise several types for the same problem
        raise StoreDataError(
            f"stage record {record.stage_id!r} cannot be encoded as JSON: {exc}"
        ) from exc
    return out


def record_from_row(row: Sequence[Any]) -> StageRecord:
    """A record from a row of ``COLUMNS``: JSON columns as text, datetimes as either
    datetimes or ISO 8601 text."""
    values: dict[str, Any] = {}
    for name, value in zip(COLUMNS, row, strict=True):
        if name in _DERIVED_COLUMNS:
            continue
        if name in JSON_COLUMNS and value is not None:
            value = orjson.loads(value)
        values[name] = value
    return StageRecord.model_validate(values)


class Store(Protocol):
    """Where stage records live: SQLite by default, PostgreSQL by URL (see ``make_store``)."""

    async def start(self) -> None:
        """Connect and apply pending schema migrations; calling it again does nothing."""
        ...

    async def save(self, record: StageRecord) -> None:
        """Insert the record, or replace the one with the same ``stage_id``."""
        ...

    async def save_many(self, records: Sequence[StageRecord]) -> None:
        """``save`` each record, in order, in one transaction: all of them or none."""
        ...

    async def get(self, stage_id: str, *, owner: str | None = None) -> StageRecord | None:
        """The record of a stage, or None; with ``owner``, another owner's record is None."""
        ...

    async def list(
        self, *, owner: str | None, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[StageRecord], str | None]:
        """A page of records, newest first, and the cursor of the next page (None at the end).

        ``owner=None`` lists every owner's records. New records never shift a later page:
        the cursor marks a position in ``(created_at, stage_id)`` order, not an offset.
        """
        ...

    async def ping(self) -> bool:
        """True if the database answers; never raises."""
        ...

    async def aclose(self) -> None:
        """Close every connection; calling it again does nothing."""
        ...
