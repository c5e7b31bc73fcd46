"""Wire protocol v1: event payloads, completion results, request bodies and SSE framing."""

from stagecast.protocol.events import (
    EVENT_TYPES,
    TERMINAL_EVENTS,
    CancelPayload,
    ChatCompletionStreamPayload,
    DonePayload,
    ErrorPayload,
    EventType,
    SSEPayload,
    ToolCallDetail,
    ToolCompletionStreamPayload,
    ToolSummaryStreamPayload,
    Usage,
    parse_payload,
)
from stagecast.protocol.requests import StageRequest
from stagecast.protocol.results import ErrorResult, StageResult, TextResult, ToolResultsResult
from stagecast.protocol.sse import ServerSentEvent, SSEDecoder, encode_comment, encode_frame

__all__ = [
    "EVENT_TYPES",
    "TERMINAL_EVENTS",
    "CancelPayload",
    "ChatCompletionStreamPayload",
    "DonePayload",
    "ErrorPayload",
    "ErrorResult",
    "EventType",
    "SSEDecoder",
    "SSEPayload",
    "ServerSentEvent",
    "StageRequest",
    "StageResult",
    "TextResult",
    "ToolCallDetail",
    "ToolCompletionStreamPayload",
    "ToolResultsResult",
    "ToolSummaryStreamPayload",
    "Usage",
    "encode_comment",
    "encode_frame",
    "parse_payload",
]
