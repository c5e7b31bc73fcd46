"""Exceptions the SDK raises: HTTP refusals before a stream, and ``error`` events in one."""

from __future__ import annotations

from typing import Any


class StagecastHTTPError(Exception):
    """The gateway refused the request (4xx/5xx before any event)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        self.code = str(body.get("code", "http_error"))
        self.message = str(body.get("message", body))
        super().__init__(f"HTTP {status} {self.code}: {self.message}")


class StageError(Exception):
    """The stage ended with an ``error`` event."""

    def __init__(self, stage_id: str, message: str, code: str | None, retryable: bool | None):
        self.stage_id = stage_id
        self.message = message
        self.code = code
        self.retryable = retryable
        super().__init__(f"{code or 'error'}: {message}")


class StageCancelledError(Exception):
    """The stage ended with a ``cancel`` event."""

    def __init__(self, stage_id: str) -> None:
        self.stage_id = stage_id
        super().__init__(f"stage {stage_id} was cancelled")
