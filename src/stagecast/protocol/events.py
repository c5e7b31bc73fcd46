"""Wire models of protocol v1: the seed's six events and payloads, plus additive fields.

Event names and the seed's field names never change; the extra fields are optional, so a
front end written against the original protocol keeps working.
"""

from __future__ import annotations

from typing import Any, Literal

from openai.types.chat import ChatCompletionChunk
from pydantic import BaseModel, ConfigDict

EventType = Literal[
    "chat_completion_chunk",
    "tool_completion_chunk",
    "tool_summary",
    "done",
    "cancel",
    "error",
]

EVENT_TYPES: tuple[EventType, ...] = (
    "chat_completion_chunk",
    "tool_completion_chunk",
    "tool_summary",
    "done",
    "cancel",
    "error",
)

TERMINAL_EVENTS: frozenset[str] = frozenset({"done", "cancel", "error"})


class _Payload(BaseModel):
    # Additive fields from newer servers must not break older SDKs.
    model_config = ConfigDict(extra="allow")


class ChatCompletionStreamPayload(_Payload):
    """One normalised chunk of a chat answer (``chat_completion_chunk``)."""

    stage_id: str
    chunk: ChatCompletionChunk


class ToolCompletionStreamPayload(_Payload):
    """One chunk of a tool stage: tool-call deltas, then synthesis text."""

    stage_id: str
    tool_results: ChatCompletionChunk


class ToolCallDetail(BaseModel):
    """Additive per-call detail of a ``tool_summary``."""

    id: str
    name: str
    arguments: str
    result: Any = None
    error: str | None = None
    duration_ms: float | None = None


class ToolSummaryStreamPayload(_Payload):
    """Results of one round of tool calls, keyed by tool call id."""

    stage_id: str
    tool_summary: dict[str, Any]
    tool_calls: list[ToolCallDetail] | None = None
    round: int | None = None


class Usage(BaseModel):
    """Token counts of a stage, summed over its model calls."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class DonePayload(_Payload):
    """Marks the successful end of a stage."""

    stage_id: str
    usage: Usage | None = None
    finish_reason: str | None = None


class CancelPayload(_Payload):
    """Marks the cancellation of a stage."""

    stage_id: str
    reason: str | None = None


class ErrorPayload(_Payload):
    """An error that ended a stage; ``code`` and ``retryable`` are additive."""

    stage_id: str
    error: str
    code: str | None = None
    retryable: bool | None = None


SSEPayload = (
    ChatCompletionStreamPayload
    | ToolCompletionStreamPayload
    | ToolSummaryStreamPayload
    | DonePayload
    | CancelPayload
    | ErrorPayload
)

PAYLOAD_MODELS: dict[str, type[_Payload]] = {
    "chat_completion_chunk": ChatCompletionStreamPayload,
    "tool_completion_chunk": ToolCompletionStreamPayload,
    "tool_summary": ToolSummaryStreamPayload,
    "done": DonePayload,
    "cancel": CancelPayload,
    "error": ErrorPayload,
}


def parse_payload(event: str, data: str | bytes) -> SSEPayload:
    """Validate the JSON ``data`` of an event into its payload model."""
    model = PAYLOAD_MODELS.get(event)
    if model is None:
        raise ValueError(f"unknown event type {event!r}")
    return model.model_validate_json(data)  # type: ignore[return-value]
