"""The sync client: the async client driven on a private event loop in a daemon thread.

Nothing here talks HTTP or parses events; every method hands a coroutine of
``AsyncStagecast`` to the loop thread and waits for it, so both clients behave the same.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from stagecast.client.accumulate import EventDelta, StageAccumulator
from stagecast.client.aio import DEFAULT_RETRY_MS, AsyncStagecast, StageStream
from stagecast.client.models import CancelReceipt, StageAnswer, StageEvent

_P = ParamSpec("_P")
_T = TypeVar("_T")


class _LoopThread:
    """An event loop running forever in a daemon thread, for callers without one.

    A daemon thread, so a client the program forgot to close cannot keep it from exiting.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="stagecast-sync", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def call(self, fn: Callable[_P, Awaitable[_T]], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run ``fn(*args, **kwargs)`` on the loop and wait for its result."""
        if not self._thread.is_alive():
            raise RuntimeError("the client is closed")
        if threading.current_thread() is self._thread:
            raise RuntimeError("a sync client cannot be used from its own event loop")

        async def run() -> _T:
            return await fn(*args, **kwargs)

        future = asyncio.run_coroutine_threadsafe(run(), self.loop)
        try:
            return future.result()
        except BaseException:
            # Ctrl-C while waiting: stop the coroutine too, not just the wait for it.
            future.cancel()
            raise

    def stop(self) -> None:
        """Stop the loop and wait for its thread (idempotent)."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            if threading.current_thread() is not self._thread:
                self._thread.join(timeout=10)


async def _next_event(stream: StageStream) -> StageEvent | None:
    # StopAsyncIteration must not cross run_coroutine_threadsafe: it becomes a sentinel.
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


class SyncStageStream:
    """A stage stream for sync code: ``with`` it and iterate; same rules as ``StageStream``."""

    def __init__(self, runner: _LoopThread, stream: StageStream) -> None:
        self._runner = runner
        self._stream = stream

    def __enter__(self) -> SyncStageStream:
        self._runner.call(self._stream.__aenter__)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (the stage goes on or stops by its ``on_disconnect``)."""
        self._runner.call(self._stream.aclose)

    def __iter__(self) -> Iterator[StageEvent]:
        return self

    def __next__(self) -> StageEvent:
        event = self._runner.call(_next_event, self._stream)
        if event is None:
            raise StopIteration
        return event

    def final(self) -> StageAnswer:
        """Read the rest of the stream and return the accumulated answer."""
        return self._runner.call(self._stream.final)

    def answer(self) -> StageAnswer:
        """The answer accumulated from the events received so far."""
        return self._stream.answer()

    @property
    def accumulator(self) -> StageAccumulator:
        """The live accumulator of the stream."""
        return self._stream.accumulator

    @property
    def last_delta(self) -> EventDelta:
        """What the event last returned by iteration added to the answer."""
        return self._stream.last_delta

    @property
    def stage_id(self) -> str | None:
        """The stage's id, once the gateway has said it."""
        return self._stream.stage_id

    @property
    def last_event_id(self) -> int:
        """The id of the last event received."""
        return self._stream.last_event_id

    @property
    def resumes(self) -> int:
        """Successful reconnections so far."""
        return self._stream.resumes

    @property
    def terminal(self) -> StageEvent | None:
        """The terminal event, once it has arrived."""
        return self._stream.terminal


class Stagecast:
    """Sync client for a stagecast gateway; the same API as ``AsyncStagecast``.

    Use it as a context manager, or call ``close()``. See ``AsyncStagecast`` for the
    arguments.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 600.0,
        max_resumes: int = 5,
        retry_ms: int = DEFAULT_RETRY_MS,
    ) -> None:
        self._runner = _LoopThread()
        # Stop the loop thread even if the client is never closed.
        self._finalizer = weakref.finalize(self, self._runner.stop)

        async def make() -> AsyncStagecast:
            # Built on the loop that will use it.
            return AsyncStagecast(
                base_url,
                api_key=api_key,
                timeout=timeout,
                max_resumes=max_resumes,
                retry_ms=retry_ms,
            )

        self._client = self._runner.call(make)

    @property
    def base_url(self) -> str:
        """The gateway's base URL."""
        return self._client.base_url

    def __enter__(self) -> Stagecast:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool and stop the loop thread (idempotent)."""
        if not self._finalizer.alive:
            return
        try:
            self._runner.call(self._client.aclose)
        finally:
            self._finalizer()

    def stream_chat(
        self, *, raise_on_error: bool = True, raise_on_cancel: bool = False, **body: Any
    ) -> SyncStageStream:
        """Start a streamed chat stage; use as ``with`` and iterate the events."""
        return SyncStageStream(
            self._runner,
            self._client.stream_chat(
                raise_on_error=raise_on_error, raise_on_cancel=raise_on_cancel, **body
            ),
        )

    def stream_toolchain(
        self, *, raise_on_error: bool = True, raise_on_cancel: bool = False, **body: Any
    ) -> SyncStageStream:
        """Start a streamed tool stage; use as ``with`` and iterate the events."""
        return SyncStageStream(
            self._runner,
            self._client.stream_toolchain(
                raise_on_error=raise_on_error, raise_on_cancel=raise_on_cancel, **body
            ),
        )

    def attach(
        self,
        stage_id: str,
        last_event_id: int = 0,
        *,
        raise_on_error: bool = True,
        raise_on_cancel: bool = False,
    ) -> SyncStageStream:
        """Attach to a running or retained stage, replaying after ``last_event_id``."""
        return SyncStageStream(
            self._runner,
            self._client.attach(
                stage_id,
                last_event_id,
                raise_on_error=raise_on_error,
                raise_on_cancel=raise_on_cancel,
            ),
        )

    def collect_chat(self, *, raise_on_error: bool = True, **body: Any) -> StageAnswer:
        """Stream a chat stage to its end and return the accumulated answer."""
        return self._runner.call(self._client.collect_chat, raise_on_error=raise_on_error, **body)

    def collect_toolchain(self, *, raise_on_error: bool = True, **body: Any) -> StageAnswer:
        """Stream a tool stage to its end and return the accumulated answer."""
        return self._runner.call(
            self._client.collect_toolchain, raise_on_error=raise_on_error, **body
        )

    def complete_chat(self, **body: Any) -> dict[str, Any]:
        """Run a chat stage on the completion route; returns the seed's JSON result."""
        return self._runner.call(self._client.complete_chat, **body)

    def complete_toolchain(self, **body: Any) -> dict[str, Any]:
        """Run a tool stage on the completion route; returns the seed's JSON result."""
        return self._runner.call(self._client.complete_toolchain, **body)

    def cancel(self, stage_id: str) -> CancelReceipt:
        """Cancel a stage (idempotent) and return the gateway's receipt."""
        return self._runner.call(self._client.cancel, stage_id)

    def models(self) -> list[dict[str, Any]]:
        """The roles the gateway serves."""
        return self._runner.call(self._client.models)

    def tools(self) -> list[dict[str, Any]]:
        """The tools stages may use."""
        return self._runner.call(self._client.tools)

    def health(self) -> dict[str, Any]:
        """The gateway's health report."""
        return self._runner.call(self._client.health)
