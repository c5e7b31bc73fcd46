"""What a stage producer works with: its request, its role, and where its events go."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from stagecast.backends.router import Router
from stagecast.protocol.requests import StageRequest

StageMode = Literal["chat", "toolchain"]
Emit = Callable[[str, bytes], Awaitable[object]]
EmitNow = Callable[[str, bytes], object]
SetFlow = Callable[[tuple[Callable[[], None], Callable[[], None]] | None], None]
HoldFlush = Callable[[bool], Callable[[], None] | None]


@dataclass(slots=True)
class StageStats:
    """Live counters of a run, read by cancel receipts and stage records."""

    started_at: float = field(default_factory=time.time)
    first_token_at: float | None = None
    chunks: int = 0
    completion_tokens: int = 0
    upstream_open: bool = False
    tools_run: list[str] = field(default_factory=list)
    # The answer so far, shared with the producer's normaliser (for records of failed stages).
    text_parts: list[str] = field(default_factory=list)


@dataclass(slots=True)
class StageOutcome:
    """The result of a finished stage, for completion routes and the ``done`` event."""

    text: str = ""
    reasoning: str = ""
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    tool_results: dict[str, Any] | None = None
    tool_calls: list[dict[str, Any]] | None = None


async def _discard(event: str, data: bytes) -> None:
    return None


class StageContext:
    """One stage's request, role and event sink, shared by the producers."""

    __slots__ = (
        "emit",
        "emit_nowait",
        "hold_flush",
        "mode",
        "owner",
        "request",
        "role",
        "router",
        "set_flow",
        "sid_json",
        "stage_id",
        "stats",
    )

    def __init__(
        self,
        *,
        stage_id: str,
        request: StageRequest,
        role: str,
        router: Router,
        mode: StageMode,
        emit: Emit | None = None,
        owner: str | None = None,
    ) -> None:
        self.stage_id = stage_id
        self.owner = owner
        self.request = request
        self.role = role
        self.router = router
        self.mode = mode
        self.emit: Emit = emit or _discard
        # Set when the hub appends without waiting: the relay then emits on the socket read.
        self.emit_nowait: EmitNow | None = None
        # Set with ``emit_nowait``: hands the hub the producer's (pause, resume) pair.
        self.set_flow: SetFlow | None = None
        # Set with ``emit_nowait``: ``hold_flush(True)`` returns a flush that the producer
        # calls at the end of each socket read (the read's frames then go to pushed readers
        # at once); ``hold_flush(False)`` ends that.
        self.hold_flush: HoldFlush | None = None
        self.stats = StageStats()
        # The stage id as JSON, spliced into every payload without re-encoding it.
        # A copy: orjson's own result keeps a 4 KiB buffer alive for as long as it is held.
        self.sid_json = bytes(memoryview(orjson.dumps(stage_id)))

    def payload(self, **fields: Any) -> bytes:
        """A payload object whose first field is ``stage_id``."""
        return orjson.dumps({"stage_id": self.stage_id, **fields})

    def prefix(self, field_name: str) -> bytes:
        """``{"stage_id":...,"<field>":`` for splicing a chunk's JSON in; close with ``}``."""
        return b'{"stage_id":' + self.sid_json + b',"' + field_name.encode() + b'":'
