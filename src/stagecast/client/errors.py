"""Exceptions the SDK raises, one tree rooted at ``StagecastClientError``::

    StagecastClientError
    ├── StagecastHTTPError          the gateway refused a request (4xx/5xx before any event)
    ├── StagecastConnectionError    the gateway could not be reached (also a ConnectionError)
    │   └── StreamDroppedError      a stream dropped and could not be resumed
    ├── StagecastProtocolError      the gateway sent something protocol v1 does not allow
    ├── StageError                  the stage ended with an ``error`` event
    └── StageCancelledError         the stage ended with a ``cancel`` event (when asked to raise)

httpx exceptions are translated where they enter the SDK, so callers never need to import
httpx to handle a failure.
"""

from __future__ import annotations

from typing import Any


class StagecastClientError(Exception):
    """Base class of every exception the SDK raises on purpose."""


class StagecastHTTPError(StagecastClientError):
    """The gateway refused the request with an HTTP error before any event was sent.

    ``code`` and ``message`` come from the gateway's JSON error body when it has one.
    """

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        self.code = str(body.get("code", "http_error"))
        self.message = str(body.get("message", body))
        super().__init__(f"HTTP {status} {self.code}: {self.message}")


class StagecastConnectionError(StagecastClientError, ConnectionError):
    """The gateway could not be reached, or the connection failed before a stream began."""


class StreamDroppedError(StagecastConnectionError):
    """A stage stream dropped and resuming it failed (or was not possible).

    ``last_event_id`` is the id of the last event received, for a later ``attach``;
    ``resumes`` counts the successful reconnections made before giving up.
    """

    def __init__(
        self, message: str, *, stage_id: str | None, last_event_id: int, resumes: int
    ) -> None:
        self.stage_id = stage_id
        self.last_event_id = last_event_id
        self.resumes = resumes
        super().__init__(message)


class StagecastProtocolError(StagecastClientError):
    """The gateway sent a frame that is not valid protocol v1 (a bug on one side)."""


class StageError(StagecastClientError):
    """The stage ended with an ``error`` event.

    ``code`` (for example ``upstream_timeout``) and ``retryable`` are the gateway's additive
    fields; both are ``None`` for a server that predates them.
    """

    def __init__(
        self, stage_id: str, message: str, code: str | None, retryable: bool | None
    ) -> None:
        self.stage_id = stage_id
        self.message = message
        self.code = code
        self.retryable = retryable
        super().__init__(f"{code or 'error'}: {message}")


class StageCancelledError(StagecastClientError):
    """The stage ended with a ``cancel`` event (raised only with ``raise_on_cancel=True``)."""

    def __init__(self, stage_id: str, reason: str | None = None) -> None:
        self.stage_id = stage_id
        self.reason = reason
        super().__init__(f"stage {stage_id} was cancelled" + (f" ({reason})" if reason else ""))
