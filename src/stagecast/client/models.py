"""What the SDK hands back: events, the answer accumulated from them, and cancel receipts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from stagecast.protocol.events import SSEPayload, ToolCallDetail, Usage
from stagecast.protocol.results import CancelReceipt as WireCancelReceipt
from stagecast.protocol.results import ErrorResult, StageResult, TextResult, ToolResultsResult

StageStatus = Literal["running", "done", "cancelled", "error"]


@dataclass(frozen=True, slots=True)
class StageEvent:
    """One event of a stage: its id (sequence number), name, parsed payload and raw JSON."""

    id: int
    event: str
    data: SSEPayload
    raw: str

    def to_dict(self) -> dict[str, Any]:
        """``{"id", "event", "data"}`` with ``data`` as the JSON object the gateway sent."""
        return {"id": self.id, "event": self.event, "data": json.loads(self.raw)}


class ToolCall(BaseModel):
    """A tool call assembled from ``tool_calls`` deltas, with its result once it has run.

    ``round`` is the tool round (1 for the first model call); ``index`` is the call's
    position in that round's deltas. ``result``, ``error`` and ``duration_ms`` are filled
    from the round's ``tool_summary``.
    """

    round: int = 1
    index: int = 0
    id: str | None = None
    name: str = ""
    arguments: str = ""
    result: Any = None
    error: str | None = None
    duration_ms: float | None = None
    has_result: bool = False

    def parsed_arguments(self) -> Any:
        """The arguments as JSON, or ``None`` while they are incomplete or invalid."""
        try:
            return json.loads(self.arguments) if self.arguments else {}
        except ValueError:
            return None


class StageAnswer(BaseModel):
    """Everything a stage produced, accumulated from its events.

    ``status`` is ``running`` until a terminal event arrives. Times are seconds measured by
    the client: ``ttft_s`` from the request to the first answer, reasoning or tool-call
    token, ``duration_s`` from the request to the terminal event.
    """

    stage_id: str | None = None
    status: StageStatus = "running"
    text: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_results: dict[str, Any] = Field(default_factory=dict)
    tool_details: list[ToolCallDetail] = Field(default_factory=list)
    usage: Usage | None = None
    finish_reason: str | None = None
    error: str | None = None
    error_code: str | None = None
    retryable: bool | None = None
    cancel_reason: str | None = None
    events: int = 0
    chunks: int = 0
    last_event_id: int = 0
    resumes: int = 0
    ttft_s: float | None = None
    duration_s: float | None = None

    @property
    def ok(self) -> bool:
        """True when the stage ended with ``done``."""
        return self.status == "done"

    @property
    def tools_called(self) -> list[str]:
        """Names of the tools the model called, in call order (repeats kept)."""
        return [c.name for c in self.tool_calls if c.name]

    @property
    def completion_tokens(self) -> int | None:
        """Completion tokens from the gateway's usage report, if it sent one."""
        return self.usage.completion_tokens if self.usage is not None else None

    @property
    def tokens_per_second(self) -> float | None:
        """Completion tokens per second after the first token (``None`` if unknown)."""
        tokens = self.completion_tokens
        if not tokens or self.ttft_s is None or self.duration_s is None:
            return None
        generating = self.duration_s - self.ttft_s
        return tokens / generating if generating > 0 else None

    def to_result(self) -> StageResult:
        """The seed's JSON result shape for this answer.

        An error gives ``ErrorResult``; tool results without any answer text give
        ``ToolResultsResult`` (the tool-only modes); anything else gives ``TextResult``.
        """
        stage_id = self.stage_id or ""
        if self.status == "error":
            return ErrorResult(
                stage_id=stage_id,
                message=self.error or "",
                code=self.error_code,
                retryable=self.retryable,
            )
        if self.tool_results and not self.text:
            return ToolResultsResult(
                stage_id=stage_id,
                tool_results=self.tool_results,
                tool_calls=self.tool_details or None,
                usage=self.usage,
            )
        return TextResult(
            stage_id=stage_id,
            text=self.text,
            reasoning=self.reasoning or None,
            usage=self.usage,
            finish_reason=self.finish_reason,
        )


class CancelReceipt(WireCancelReceipt):
    """The gateway's answer to ``POST /stream/v1/stages/{id}/cancel``.

    ``status_before`` / ``status_after`` are the stage's status around the request,
    ``cancel_requested`` is false when the stage had already ended, ``upstream_aborted``
    tells whether a model request was closed mid-answer, and ``tools_run`` names the tools
    that ran before the cancel.
    """

    # A newer gateway may add fields; keep them rather than fail.
    model_config = ConfigDict(extra="allow")

    def __getitem__(self, key: str) -> Any:
        # Receipts were plain dicts before the typed model; item access keeps that code working.
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None
