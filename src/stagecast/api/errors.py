"""Errors before a stream starts become JSON with the right status; this is where."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from stagecast.errors import (
    StagecastError,
    UpstreamError,
    UpstreamTimeoutError,
)
from stagecast.hub.base import StageNotFoundError

log = logging.getLogger(__name__)


def json_response(
    body: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON answer serialised with orjson."""
    return Response(
        orjson.dumps(body), status_code=status_code, headers=headers, media_type="application/json"
    )


def error_body(
    message: str, code: str, *, stage_id: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The JSON of every error answer: the seed's error result shape plus ``code``."""
    body: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if stage_id is not None:
        body["stage_id"] = stage_id
    body.update(extra)
    return body


def status_for(exc: StagecastError) -> int:
    """The HTTP status of a failure that happened before any byte was streamed."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status
    if isinstance(exc, StageNotFoundError):
        return 404
    if isinstance(exc, UpstreamTimeoutError):
        return 504
    if exc.code == "store_unavailable":
        return 503
    if isinstance(exc, UpstreamError):
        return 503 if exc.code == "role_busy" else 502
    return 500


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


async def _validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for err in exc.errors():
        where = _loc(tuple(err.get("loc", ())))
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "extra_forbidden":
            msg = "unknown field (check its spelling)"
        errors.append({"field": where, "message": msg})
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return json_response(
        error_body(f"invalid request: {summary}", "invalid_request", errors=errors), 422
    )


def stagecast_error_response(exc: StagecastError) -> Response:
    """The JSON answer for a refusal or failure before streaming began."""
    retry_after = getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return json_response(
        error_body(exc.message, exc.code, retryable=exc.retryable), status_for(exc), headers
    )


def internal_error_response() -> Response:
    """The answer for a bug: the details go to the log, not to the client."""
    return json_response(error_body("internal error; see the server log", "internal_error"), 500)


async def _stagecast(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StagecastError)
    return stagecast_error_response(exc)


async def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return json_response(error_body(str(exc.detail), code), exc.status_code, exc.headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", extra={"path": request.url.path})
    return internal_error_response()


def install_error_handlers(app: FastAPI) -> None:
    """Register the JSON error answers on ``app``."""
    app.add_exception_handler(Exception, _unexpected)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StagecastError, _stagecast)
    app.add_exception_handler(StarletteHTTPException, _http)
