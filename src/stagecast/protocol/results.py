"""JSON results of the completion routes, in the seed's three shapes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from stagecast.protocol.events import ToolCallDetail, Usage


class TextResult(BaseModel):
    """A finished answer: ``{"stage_id", "type": "text", "text"}``."""

    stage_id: str
    type: Literal["text"] = "text"
    text: str
    reasoning: str | None = None
    usage: Usage | None = None
    finish_reason: str | None = None


class ToolResultsResult(BaseModel):
    """Tool results without synthesis: ``{"stage_id", "type": "tool_results", ...}``."""

    stage_id: str
    type: Literal["tool_results"] = "tool_results"
    tool_results: dict[str, Any]
    tool_calls: list[ToolCallDetail] | None = None
    usage: Usage | None = None


class ErrorResult(BaseModel):
    """A failed stage: ``{"stage_id", "type": "error", "message"}``."""

    stage_id: str
    type: Literal["error"] = "error"
    message: str
    code: str | None = None
    retryable: bool | None = None


StageResult = TextResult | ToolResultsResult | ErrorResult


class ErrorBody(BaseModel):
    """A refused request (4xx/5xx before any event): what went wrong and how to fix it."""

    type: Literal["error"] = "error"
    code: str
    message: str
    retryable: bool | None = None
    stage_id: str | None = None
    errors: list[dict[str, Any]] | None = None


class CancelReceipt(BaseModel):
    """What ``POST /stream/v1/stages/{id}/cancel`` answers."""

    stage_id: str
    status_before: str
    status_after: str
    cancel_requested: bool
    upstream_aborted: bool
    completion_tokens: int | None = None
    tools_run: list[str] = []
