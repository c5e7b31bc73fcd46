"""HTTP routes: the stage routes of protocol v1, resume and cancel, models and health."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter, Header, Query, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from stagecast.api.auth import Principal
from stagecast.api.errors import error_body, json_response, status_for
from stagecast.api.stream import StageEventStream
from stagecast.config import LimitsConfig
from stagecast.errors import InvalidRequestError, StagecastError
from stagecast.hub.base import StageInfo, StageNotFoundError
from stagecast.protocol.events import EVENT_TYPES
from stagecast.protocol.requests import StageRequest
from stagecast.protocol.results import (
    CancelReceipt,
    ErrorBody,
    ErrorResult,
    TextResult,
    ToolResultsResult,
)
from stagecast.stages.context import StageContext, StageMode

if TYPE_CHECKING:
    from stagecast.api.app import AppState

router = APIRouter()


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.stagecast
    return state


def _principal(request: Request) -> Principal:
    return _state(request).keys.authenticate(request.headers.get("authorization"))


def _check_limits(body: StageRequest, limits: LimitsConfig) -> None:
    if body.messages and len(body.messages) > limits.max_messages:
        raise InvalidRequestError(
            f"messages has {len(body.messages)} entries; the limit is {limits.max_messages}"
        )
    chars = len(body.system_prompt or "") + len(body.user_prompt or "")
    for message in body.messages or []:
        content = message.content
        chars += len(content) if isinstance(content, str) else len(str(content or ""))
    if chars > limits.max_prompt_chars:
        raise InvalidRequestError(
            f"the prompt is {chars} characters long; the limit is {limits.max_prompt_chars}"
        )
    if body.max_tool_rounds > limits.max_tool_rounds:
        raise InvalidRequestError(
            f"max_tool_rounds is {body.max_tool_rounds}; the limit is {limits.max_tool_rounds}"
        )


async def _admit(
    state: AppState, authorization: str | None, body: StageRequest, mode: StageMode
) -> StageContext:
    """Authenticate, validate and admit a new stage (every refusal is a JSON 4xx)."""
    principal = state.keys.authenticate(authorization)
    _check_limits(body, state.settings.limits)
    role = state.router.resolve(body.model_container)
    principal.check_role(role)
    ctx: StageContext = state.stages.context(body, role, mode, owner=principal.key_id)
    await state.limits.admit(principal)
    state.metrics.active_stages.inc()
    return ctx


def _not_admitted(state: AppState, ctx: StageContext) -> None:
    state.metrics.active_stages.dec()
    state.limits.release(ctx.owner)


async def start_stream(
    state: AppState, authorization: str | None, body: StageRequest, mode: StageMode
) -> StageEventStream:
    """Admit a stage, start its run, and return the response that streams its events."""
    ctx = await _admit(state, authorization, body, mode)
    try:
        await state.stages.start(ctx)
    except BaseException:
        _not_admitted(state, ctx)
        raise
    return StageEventStream(
        state.hub,
        ctx.stage_id,
        heartbeat=state.settings.heartbeat_interval,
        cancel_on_leave=body.on_disconnect == "cancel",
        metrics=state.metrics,
    )


async def _complete(request: Request, body: StageRequest, mode: StageMode) -> Response:
    state = _state(request)
    ctx = await _admit(state, request.headers.get("authorization"), body, mode)
    headers = {"X-Stage-Id": ctx.stage_id}
    run = asyncio.ensure_future(state.stages.run_inline(ctx))
    left = asyncio.ensure_future(_client_left(request))
    try:
        await asyncio.wait({run, left}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (run, left):
            if not task.done():
                task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.gather(run, left, return_exceptions=True)
    if run.cancelled():
        # The client is gone; the upstream request was closed with the run.
        return Response(status_code=499, headers=headers)
    exc = run.exception()
    if isinstance(exc, StagecastError):
        result: Any = ErrorResult(
            stage_id=ctx.stage_id, message=exc.message, code=exc.code, retryable=exc.retryable
        )
        return json_response(result.model_dump(), status_for(exc), headers)
    if exc is not None:
        raise exc
    outcome = run.result()
    if mode == "toolchain" and outcome.tool_results is not None and not body.synthesis:
        result = ToolResultsResult(
            stage_id=ctx.stage_id,
            tool_results=outcome.tool_results,
            tool_calls=outcome.tool_calls,
            usage=outcome.usage,
        )
    else:
        result = TextResult(
            stage_id=ctx.stage_id,
            text=outcome.text,
            reasoning=outcome.reasoning or None,
            usage=outcome.usage,
            finish_reason=outcome.finish_reason,
        )
    return json_response(result.model_dump(exclude_none=True), 200, headers)


async def _client_left(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody, "description": ERROR_TEXT[code]} for code in codes}


ERROR_TEXT = {
    400: "A malformed parameter (e.g. a cursor this server did not hand out)",
    401: "Missing or unknown API key",
    403: "The key may not use this role",
    404: "Unknown role, or no such stage for this key",
    409: "The stage id is already running",
    413: "Request body over the limit",
    422: "Invalid request: the message names the field",
    429: "Over a per-key limit (see Retry-After)",
    502: "The model server failed",
    503: "Shutting down, or the role is at its concurrency limit",
    504: "The model server timed out",
}
# One Server-Sent Event; ``data`` is the JSON of the event's payload (see README, protocol).
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "event": {"type": "string", "enum": list(EVENT_TYPES)},
        "retry": {"type": "integer", "minimum": 0},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
    "required": ["id", "event", "data"],
}
STAGE_ERRORS = _errors(401, 403, 404, 409, 413, 422, 429, 503)
STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: chunks, then one of done, cancel or error.",
        "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
    },
    **STAGE_ERRORS,
}
COMPLETION_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "model": TextResult | ToolResultsResult | ErrorResult,
        "description": "The stage's result (type error: the model called no tool)",
    },
    499: {"description": "The client left; the stage was cancelled"},
    **STAGE_ERRORS,
    **_errors(502, 504),
}


@router.post("/stream/v1/chat", responses=STREAM_DOC, response_class=Response)
async def stream_chat(request: Request, body: StageRequest) -> Response:
    """Stream a chat stage as ``chat_completion_chunk`` events, then a terminal event."""
    return await start_stream(_state(request), request.headers.get("authorization"), body, "chat")


@router.post("/completion/v1/chat", responses=COMPLETION_DOC, response_class=Response)
async def complete_chat(request: Request, body: StageRequest) -> Response:
    """Run a chat stage and answer with ``{"stage_id", "type": "text", "text"}``."""
    return await _complete(request, body, "chat")


@router.post("/stream/v1/toolchain", responses=STREAM_DOC, response_class=Response)
async def stream_toolchain(request: Request, body: StageRequest) -> Response:
    """Stream a tool stage: tool-call deltas, ``tool_summary``, synthesis text, terminal event."""
    state = _state(request)
    return await start_stream(state, request.headers.get("authorization"), body, "toolchain")


@router.post("/completion/v1/toolchain", responses=COMPLETION_DOC, response_class=Response)
async def complete_toolchain(request: Request, body: StageRequest) -> Response:
    """Run a tool stage: ``tool_results`` JSON without synthesis, ``text`` with it."""
    return await _complete(request, body, "toolchain")


@router.get("/v1/tools", responses=_errors(401), response_class=Response)
async def list_tools(request: Request) -> Response:
    """The tools stages may use: name, description and JSON schema of the arguments."""
    _principal(request)
    return json_response({"object": "list", "data": _state(request).tools.describe()})


@router.get(
    "/stream/v1/stages/{stage_id}",
    responses={**STREAM_DOC, **_errors(404)},
    response_class=Response,
)
async def resume_stage(
    request: Request,
    stage_id: str,
    last_event_id: int | None = Query(default=None, ge=0),
    last_event_id_header: str | None = Header(default=None, alias="Last-Event-ID"),
) -> Response:
    """Replay what a client missed after ``Last-Event-ID``, then follow the stage live."""
    state = _state(request)
    info = await _visible_stage(request, stage_id)
    after = last_event_id or 0
    if last_event_id_header:
        try:
            after = max(after, int(last_event_id_header))
        except ValueError:
            return json_response(
                error_body("Last-Event-ID must be an event id (an integer)", "invalid_request"),
                422,
            )
    return StageEventStream(
        state.hub,
        stage_id,
        after=after,
        heartbeat=state.settings.heartbeat_interval,
        cancel_on_leave=info.meta.get("on_disconnect", "cancel") == "cancel",
        metrics=state.metrics,
    )


@router.post(
    "/stream/v1/stages/{stage_id}/cancel",
    responses={200: {"model": CancelReceipt, "description": "The receipt"}, **_errors(401, 404)},
    response_class=Response,
)
async def cancel_stage(request: Request, stage_id: str) -> Response:
    """Cancel a running stage (idempotent) and answer with a receipt."""
    hub = _state(request).hub
    info = await _visible_stage(request, stage_id)
    before = info.status
    requested = False
    if before == "running":
        requested = await hub.request_cancel(stage_id)
        with contextlib.suppress(TimeoutError, StageNotFoundError):
            async with asyncio.timeout(10.0):
                async for _ in hub.tail(stage_id, info.last_seq):
                    pass
    after_info = await hub.info(stage_id)
    receipt: dict[str, Any] = {
        "stage_id": stage_id,
        "status_before": before,
        "status_after": after_info.status if after_info else before,
        "cancel_requested": requested,
        "upstream_aborted": False,
        "completion_tokens": None,
        "tools_run": [],
    }
    events = await hub.events(stage_id, max((after_info or info).last_seq - 1, 0))
    if events and events[-1][1] == "cancel":
        payload = orjson.loads(events[-1][2])
        receipt["upstream_aborted"] = bool(payload.get("upstream_aborted"))
        receipt["completion_tokens"] = payload.get("completion_tokens")
        receipt["tools_run"] = payload.get("tools_run") or []
    return json_response(receipt)


async def _visible_stage(request: Request, stage_id: str) -> StageInfo:
    """The stage if it exists and belongs to the caller; otherwise the same 404 either way."""
    principal = _principal(request)
    info: StageInfo | None = await _state(request).hub.info(stage_id)
    if info is None or (principal.key_id is not None and info.owner != principal.key_id):
        raise StageNotFoundError(f"no stage {stage_id!r} (unknown, or expired after its ttl)")
    return info


@router.get("/v1/stages", responses=_errors(400, 401, 422), response_class=Response)
async def list_stages(
    request: Request,
    limit: int = Query(default=50, ge=1, le=500),
    cursor: str | None = Query(default=None, max_length=512),
) -> Response:
    """The caller's stage records, newest first; pass ``next_cursor`` back for the next page."""
    principal = _principal(request)
    records, next_cursor = await _state(request).store.list(
        owner=principal.key_id, limit=limit, cursor=cursor
    )
    return json_response(
        {
            "object": "list",
            "data": [r.model_dump(mode="json") for r in records],
            "next_cursor": next_cursor,
        }
    )


@router.get("/v1/stages/{stage_id}", responses=_errors(401, 404), response_class=Response)
async def get_stage(request: Request, stage_id: str) -> Response:
    """The record of one of the caller's stages (written when the stage ends)."""
    principal = _principal(request)
    record = await _state(request).store.get(stage_id, owner=principal.key_id)
    if record is None:
        raise StageNotFoundError(
            f"no record of stage {stage_id!r} (unknown, still running, or not yet written)"
        )
    return json_response(record.model_dump(mode="json"))


@router.get("/v1/models", responses=_errors(401), response_class=Response)
async def list_models(request: Request) -> Response:
    """The configured roles (what ``model_container`` may name)."""
    state = _state(request)
    _principal(request)
    r = state.router
    data = []
    for role in r.roles:
        cfg = r.config(role)
        data.append(
            {
                "id": role,
                "object": "model",
                "owned_by": "stagecast",
                "kind": cfg.kind,
                "model": r.backend(role).model_name,
                "default": role == r.default_role,
            }
        )
    return json_response({"object": "list", "data": data})


@router.get("/healthz", response_class=Response)
async def healthz(request: Request) -> Response:
    """Probe every backend concurrently with a short timeout; never hangs."""
    state = _state(request)
    results = await state.router.probe_all(state.settings.health_timeout)
    backends = {
        role: {"ok": r.ok, "detail": r.detail, "latency_ms": r.latency_ms}
        for role, r in results.items()
    }
    try:
        async with asyncio.timeout(state.settings.health_timeout):
            store_ok = await state.store.ping()
    except (TimeoutError, StagecastError):
        store_ok = False
    healthy = store_ok and all(r.ok for r in results.values())
    body = {
        "status": "ok" if healthy else "degraded",
        "accepting": state.stages.accepting,
        "backends": backends,
        "store": {"ok": store_ok, "pending_records": state.records.pending},
    }
    return json_response(body, 200 if state.stages.accepting else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus metrics (open, like /healthz, for scrapers)."""
    return Response(_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
