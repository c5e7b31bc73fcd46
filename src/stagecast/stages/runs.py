"""Stage runs: tasks owned by the server that write a stage's events into the hub.

A run is not a connection. Clients attach to its log and may leave and come back; a cancel
from any replica reaches the run through the hub; when the run ends, exactly one terminal
event closes its log.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from stagecast.backends.router import Router
from stagecast.errors import ServiceUnavailableError, StagecastError
from stagecast.hub.base import StreamHub
from stagecast.protocol.requests import StageRequest
from stagecast.stages.chat import run_chat
from stagecast.stages.context import StageContext, StageMode, StageOutcome
from stagecast.store.base import (
    RECORD_TEXT_MAX_CHARS,
    StageRecord,
    summarise_request,
    truncate,
    truncate_parts,
)

log = logging.getLogger(__name__)


class _StageIds:
    """Unguessable stage ids: 16 bytes from the OS's CSPRNG each, as 32 hex digits.

    The bytes are drawn 4 KiB at a time, so a stage costs no ``getrandom`` system call of its
    own (the id alone is what lets a client resume or cancel a stage without an API key).
    Every byte is used once, also across a fork (the child starts with a fresh pool).
    """

    __slots__ = ("_at", "_pool")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._pool = b""
        self._at = 0

    def new(self) -> str:
        at = self._at
        if at + 16 > len(self._pool):
            self._pool = os.urandom(4096)
            at = 0
        self._at = at + 16
        return self._pool[at : at + 16].hex()


_stage_ids = _StageIds()
os.register_at_fork(after_in_child=_stage_ids.reset)

Producer = Callable[[StageContext], Awaitable[StageOutcome]]


@dataclass(slots=True)
class StageEnd:
    """How a stage ended, handed to metrics and the record store."""

    ctx: StageContext
    status: str  # done | cancelled | error
    outcome: StageOutcome | None = None
    error: StagecastError | None = None


EndHook = Callable[[StageEnd], None]


class StageRun:
    """One running stage: its task, its counters, and why it was cancelled (if it was)."""

    __slots__ = (
        "aborted_upstream",
        "ctx",
        "finished",
        "manager",
        "on_disconnect",
        "stage_id",
        "task",
        "why",
    )

    def __init__(self, ctx: StageContext, manager: StageManager) -> None:
        self.ctx = ctx
        self.manager = manager
        self.stage_id = ctx.stage_id
        self.on_disconnect = ctx.request.on_disconnect
        self.task: asyncio.Task[None] | None = None
        self.why: str | None = None
        self.finished = False
        self.aborted_upstream = False

    def cancel(self, why: str) -> None:
        """Stop the run; ``why`` is ``client`` (cancel/disconnect) or ``shutdown``."""
        if self.task is not None and not self.task.done() and self.why is None:
            self.why = why
            # Read now: unwinding the run closes the upstream request and clears the flag.
            self.aborted_upstream = self.ctx.stats.upstream_open
            self.task.cancel()

    # Bound methods of the run rather than closures: they live as long as the run, and a
    # closure, its cells and their tuple are each an object the garbage collector walks.

    def cancel_by_client(self) -> None:
        """The hub's cancel callback: a client asked to cancel the stage."""
        self.cancel("client")

    def reap(self, task: asyncio.Task[None]) -> None:
        """The task's done callback: the manager forgets the run."""
        self.manager._reap(self)


class StageManager:
    """Starts stage runs, cancels them, and ends them all on shutdown."""

    def __init__(
        self,
        *,
        router: Router,
        hub: StreamHub,
        producers: dict[str, Producer] | None = None,
        on_end: EndHook | None = None,
    ) -> None:
        self.router = router
        self.hub = hub
        self.on_end = on_end
        self.producers: dict[str, Producer] = {"chat": run_chat, **(producers or {})}
        self.runs: dict[str, StageRun] = {}
        self.accepting = True
        # The loop the runs are on, held once known: looking it up costs a system call.
        self._loop: asyncio.AbstractEventLoop | None = None

    def context(
        self, request: StageRequest, role: str, mode: StageMode, owner: str | None = None
    ) -> StageContext:
        """A context for a new stage (its id from the request, or a fresh UUID)."""
        if not self.accepting:
            raise ServiceUnavailableError("the server is shutting down; retry on another replica")
        validate = getattr(self.producers[mode], "validate", None)
        if validate is not None:
            validate(request)
        stage_id = request.stage_id or _stage_ids.new()
        return StageContext(
            stage_id=stage_id,
            request=request,
            role=role,
            router=self.router,
            mode=mode,
            owner=owner,
        )

    async def start(self, ctx: StageContext) -> StageRun:
        """Open the stage's log and start its run; 409 if the id is live."""
        meta = {
            "role": ctx.role,
            "mode": ctx.mode,
            "on_disconnect": ctx.request.on_disconnect,
        }
        await self.hub.open(ctx.stage_id, owner=ctx.owner, meta=meta)
        hub = self.hub
        stage_id = ctx.stage_id
        # The hub's own append, bound: no wrapper coroutine per event.
        ctx.emit = functools.partial(hub.append, stage_id)
        appender = getattr(hub, "appender", None)
        if appender is not None:
            # The stage's own log's append: no lookup per event.
            ctx.emit_nowait = appender(stage_id)
        set_flow = getattr(hub, "set_flow", None)
        if set_flow is not None:
            ctx.set_flow = functools.partial(set_flow, stage_id)
        hold_flush = getattr(hub, "hold_flush", None)
        if hold_flush is not None:
            ctx.hold_flush = functools.partial(hold_flush, stage_id)
        run = StageRun(ctx, self)
        self.runs[stage_id] = run
        hub.on_cancel(stage_id, run.cancel_by_client)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        run.task = loop.create_task(self._drive(run), name=f"stage-{stage_id}")
        run.task.add_done_callback(run.reap)
        return run

    async def run_inline(self, ctx: StageContext) -> StageOutcome:
        """Run a stage for a completion route: no log, the caller awaits the outcome."""
        try:
            outcome = await self.producers[ctx.mode](ctx)
        except asyncio.CancelledError:
            self._ended(StageEnd(ctx, "cancelled"))
            raise
        except StagecastError as exc:
            self._ended(StageEnd(ctx, "error", error=exc))
            raise
        except Exception as exc:
            self._ended(StageEnd(ctx, "error", error=StagecastError(f"internal error: {exc}")))
            raise
        self._ended(StageEnd(ctx, "done", outcome=outcome))
        return outcome

    def _ended(self, end: StageEnd) -> None:
        try:
            if self.on_end is not None:
                self.on_end(end)
        except Exception:
            # Accounting must never break a stage.
            log.exception("stage end hook failed", extra={"stage_id": end.ctx.stage_id})
        finally:
            # The answer's pieces are not needed once the stage is recorded. Freed here, a
            # long answer's thousands of strings go now, not in whichever collector pass
            # finds the cancelled run's reference cycles (a pause in other stages' streams).
            end.ctx.stats.text_parts.clear()

    async def _drive(self, run: StageRun) -> None:
        ctx = run.ctx
        try:
            outcome = await self.producers[ctx.mode](ctx)
        except asyncio.CancelledError:
            if run.why is None:
                raise
            await self._end_cancelled(run)
        except StagecastError as exc:
            await self._terminal(run, "error", _error(ctx, exc), StageEnd(ctx, "error", error=exc))
        except Exception as exc:
            log.exception("stage failed", extra={"stage_id": ctx.stage_id})
            error = StagecastError(f"internal error: {exc}", retryable=True)
            await self._terminal(
                run, "error", _error(ctx, error), StageEnd(ctx, "error", error=error)
            )
        else:
            fields: dict[str, Any] = {}
            if outcome.usage:
                fields["usage"] = outcome.usage
            if outcome.finish_reason:
                fields["finish_reason"] = outcome.finish_reason
            end = StageEnd(ctx, "done", outcome=outcome)
            await self._terminal(run, "done", ctx.payload(**fields), end)

    async def _end_cancelled(self, run: StageRun) -> None:
        ctx = run.ctx
        if run.why == "shutdown":
            error = StagecastError(
                "the server shut down before the stage finished; run it again",
                code="server_shutdown",
                retryable=True,
            )
            await self._terminal(
                run, "error", _error(ctx, error), StageEnd(ctx, "error", error=error)
            )
            return
        stats = ctx.stats
        payload = ctx.payload(
            reason=run.why,
            upstream_aborted=run.aborted_upstream,
            completion_tokens=stats.completion_tokens or stats.chunks,
            tools_run=stats.tools_run,
        )
        await self._terminal(run, "cancel", payload, StageEnd(ctx, "cancelled"))

    async def _terminal(self, run: StageRun, event: str, payload: bytes, end: StageEnd) -> None:
        if run.finished:
            return
        run.finished = True
        try:
            await self.hub.append(run.stage_id, event, payload)
        except Exception:
            # The hub is out of reach (Redis down): readers time out and resume later.
            log.exception("could not write terminal event", extra={"stage_id": run.stage_id})
        self._ended(end)

    def _reap(self, run: StageRun) -> None:
        if self.runs.get(run.stage_id) is run:
            del self.runs[run.stage_id]
        if not run.finished and run.why is not None:
            # Cancelled before its first step: the task never ran, so write its end here.
            asyncio.get_running_loop().create_task(self._end_cancelled(run))

    async def shutdown(self, grace: float) -> None:
        """Stop taking stages, let runs finish within ``grace``, then end the rest."""
        self.accepting = False
        pending = [r.task for r in self.runs.values() if r.task is not None]
        if pending and grace > 0:
            await asyncio.wait(pending, timeout=grace)
        for run in list(self.runs.values()):
            run.cancel("shutdown")
        rest = [r.task for r in self.runs.values() if r.task is not None]
        if rest:
            await asyncio.wait(rest, timeout=5.0)


def _error(ctx: StageContext, exc: StagecastError) -> bytes:
    return ctx.payload(error=exc.message, code=exc.code, retryable=exc.retryable)


def stage_record(end: StageEnd) -> StageRecord:
    """The record kept of a stage that ended."""
    ctx = end.ctx
    stats = ctx.stats
    outcome = end.outcome
    error = None
    if end.error is not None:
        error = {"code": end.error.code, "message": end.error.message}
    return StageRecord(
        stage_id=ctx.stage_id,
        owner=ctx.owner,
        role=ctx.role,
        mode=ctx.mode,
        status=end.status,
        request=summarise_request(ctx.request),
        text=truncate(outcome.text, RECORD_TEXT_MAX_CHARS)
        if outcome
        else truncate_parts(stats.text_parts, RECORD_TEXT_MAX_CHARS),
        reasoning=truncate(outcome.reasoning, RECORD_TEXT_MAX_CHARS) if outcome else "",
        tool_calls=(outcome.tool_calls if outcome else None) or [],
        tool_results=(outcome.tool_results if outcome else None) or {},
        usage=outcome.usage if outcome else None,
        error=error,
        created_at=datetime.fromtimestamp(stats.started_at, UTC),
        first_token_at=(
            datetime.fromtimestamp(stats.first_token_at, UTC) if stats.first_token_at else None
        ),
        finished_at=datetime.now(UTC),
    )
