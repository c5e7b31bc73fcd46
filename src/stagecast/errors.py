"""The one exception tree of stagecast.

Every error a stage can meet maps to a stable ``code`` that travels in ``error`` events and
JSON error results, plus a ``retryable`` hint for clients::

    StagecastError
    ├── ConfigError                 bad or missing configuration
    ├── RequestError                a request that cannot run (raised before a stream starts)
    │   ├── InvalidRequestError     422: unknown tool, bad tool_choice
    │   ├── UnknownRoleError        404: no such model role
    │   └── StageConflictError      409: the stage id is already live
    ├── UpstreamError               the model server failed us
    │   ├── UpstreamConnectionError refused, reset, cut mid-stream
    │   ├── UpstreamStatusError     an HTTP error status
    │   ├── UpstreamTimeoutError    connect, first token, idle gap or total deadline
    │   └── UpstreamProtocolError   a body that is not the protocol (malformed chunk, no end)
    ├── ToolError                   a tool failed (becomes a tool result, not a stream error)
    ├── StageLimitError             a stage outgrew its memory bounds
    └── StageCancelled              a stage was cancelled (ends with ``cancel``, not ``error``)
"""

from __future__ import annotations


class StagecastError(Exception):
    """Base of every stagecast error; ``code`` and ``retryable`` go on the wire."""

    code: str = "internal_error"
    retryable: bool = False

    def __init__(self, message: str, *, code: str | None = None, retryable: bool | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable


class ConfigError(StagecastError):
    """The configuration is invalid or incomplete."""

    code = "config_error"


class RequestError(StagecastError):
    """A request that cannot run; carries the HTTP status to answer with."""

    code = "bad_request"
    status_code = 400


class InvalidRequestError(RequestError):
    """The body is well-formed but asks for something that does not exist here."""

    code = "invalid_request"
    status_code = 422


class UnknownRoleError(RequestError):
    """The request named a model role that is not configured."""

    code = "unknown_role"
    status_code = 404


class StageConflictError(RequestError):
    """The request reused the id of a stage that is still live."""

    code = "stage_conflict"
    status_code = 409


class ServiceUnavailableError(RequestError):
    """The server cannot take a new stage right now (shutting down)."""

    code = "unavailable"
    status_code = 503


class UpstreamError(StagecastError):
    """The model server failed; most such failures are worth retrying."""

    code = "upstream_error"
    retryable = True


class UpstreamConnectionError(UpstreamError):
    """The connection to the model server was refused, reset or cut."""

    code = "upstream_unreachable"


class UpstreamStatusError(UpstreamError):
    """The model server answered with an HTTP error status."""

    code = "upstream_status"

    def __init__(self, message: str, *, status: int, body: str = ""):
        # A 4xx other than 408/429 means our request was wrong: retrying will not help.
        retryable = status >= 500 or status in (408, 429)
        super().__init__(message, retryable=retryable)
        self.status = status
        self.body = body


class UpstreamTimeoutError(UpstreamError):
    """A deadline passed: ``phase`` is connect, first_token, idle or total."""

    code = "upstream_timeout"

    def __init__(self, message: str, *, phase: str):
        super().__init__(message)
        self.phase = phase


class UpstreamProtocolError(UpstreamError):
    """The model server sent something that is not an OpenAI-compatible stream."""

    code = "upstream_malformed"
    retryable = False


class ToolError(StagecastError):
    """A tool failed; the message is what the model reads as the tool result."""

    code = "tool_error"


class StageLimitError(StagecastError):
    """A stage produced more events or bytes than the configured bounds allow."""

    code = "stage_too_large"


class StageCancelled(StagecastError):
    """The stage was cancelled by a client, a disconnect or shutdown."""

    code = "cancelled"
