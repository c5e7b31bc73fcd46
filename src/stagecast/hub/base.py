"""The StreamHub interface: a per-stage event log with a live tail and a cancel signal.

A stage run (owned by the server, not by any connection) appends events; HTTP responses tail
the log from a ``Last-Event-ID``. Sequence numbers start at 1 and are the SSE ``id`` of each
frame, so a resume replays exactly what a client missed. The log ends at its terminal event
(``done``, ``cancel`` or ``error``) and is kept for ``stage_ttl`` after it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from stagecast.errors import StagecastError

StageStatus = Literal["running", "done", "cancelled", "error"]

TERMINAL_STATUS: dict[str, StageStatus] = {"done": "done", "cancel": "cancelled", "error": "error"}


class StageNotFoundError(StagecastError):
    """No live or retained stage has this id (never existed, or expired)."""

    code = "stage_not_found"


class ReaderLagError(StagecastError):
    """A reader fell more than ``max_reader_lag`` events behind; it should resume."""

    code = "reader_lag"
    retryable = True


@dataclass(slots=True)
class StageInfo:
    """What the hub knows about a stage."""

    stage_id: str
    status: StageStatus
    last_seq: int
    owner: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    finished_at: float | None = None


# Writes one piece of a reader's response now and returns True, or returns False and writes
# nothing (the reader's connection cannot take it now): see ``stagecast.api.push``.
Push = Callable[[bytes], bool]


class StreamHub(Protocol):
    """Per-stage event logs shared by every connection (and, for Redis, every replica)."""

    async def open(self, stage_id: str, *, owner: str | None, meta: dict[str, Any]) -> None:
        """Create the log of a new stage; ``StageConflictError`` if that id is live."""
        ...

    async def append(self, stage_id: str, event: str, data: bytes) -> int:
        """Append one event and return its sequence number.

        ``StageLimitError`` when the stage outgrows its bounds; terminal events are always
        accepted, and after one the log is closed to further appends.
        """
        ...

    def tail(
        self,
        stage_id: str,
        after: int = 0,
        *,
        heartbeat: float | None = None,
        push: Push | None = None,
    ) -> AsyncIterator[bytes]:
        """Encoded SSE frames after sequence ``after``, live, until the terminal frame.

        Several ready frames come as one bytes object. An empty bytes object means the
        stream was quiet for ``heartbeat`` seconds. ``StageNotFoundError`` if unknown;
        ``ReaderLagError`` if this reader falls too far behind.

        ``push``, if the hub uses it, writes frames to the reader directly, as they are
        appended; a hub may ignore it. Frames that ``push`` accepted are not yielded too.
        """
        ...

    async def info(self, stage_id: str) -> StageInfo | None:
        """The stage's status, or None if unknown or expired."""
        ...

    async def events(self, stage_id: str, after: int = 0) -> list[tuple[int, str, bytes]]:
        """The stored events after ``after`` as (seq, event, data), without waiting."""
        ...

    async def request_cancel(self, stage_id: str) -> bool:
        """Ask the stage's owner to cancel it; False if it is not running."""
        ...

    def on_cancel(self, stage_id: str, callback: Callable[[], None]) -> None:
        """Register the owner's callback for cancel requests (from any replica)."""
        ...

    async def attach(self, stage_id: str) -> int:
        """A reader attached; returns the number of attached readers."""
        ...

    async def detach(self, stage_id: str) -> int:
        """A reader left; returns the number still attached (across replicas)."""
        ...

    async def aclose(self) -> None:
        """Release connections and timers."""
        ...
