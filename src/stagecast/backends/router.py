"""Maps roles to backends; adds per-role concurrency limits, retries and fallbacks.

Retries and fallbacks happen only before the first chunk: once a token has been relayed, a
second model's answer cannot be spliced onto the first, so a later failure is the stage's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from stagecast.backends.base import Backend, ChatCall, ChunkStream, ProbeResult, UpstreamChunk
from stagecast.config import ModelConfig, Settings
from stagecast.errors import UnknownRoleError, UpstreamError, UpstreamProtocolError

log = logging.getLogger(__name__)


def make_backend(role: str, config: ModelConfig) -> Backend:
    """Build the backend a role's configuration asks for."""
    if config.kind == "embedded":
        from stagecast.backends.embedded import EmbeddedBackend

        return EmbeddedBackend(role, config)
    from stagecast.backends.openai_compat import OpenAICompatBackend

    return OpenAICompatBackend(role, config)


@dataclass
class _Role:
    name: str
    config: ModelConfig
    backend: Backend
    slots: asyncio.Semaphore


class RoleBusyError(UpstreamError):
    """Every concurrency slot of a role stayed taken for the role's queue timeout."""

    code = "role_busy"


class Router:
    """The configured roles and how to reach each one."""

    def __init__(self, settings: Settings, backends: dict[str, Backend] | None = None) -> None:
        self.default_role = settings.default_role
        self._roles: dict[str, _Role] = {}
        for name, cfg in settings.models.items():
            backend = (backends or {}).get(name) or make_backend(name, cfg)
            self._roles[name] = _Role(name, cfg, backend, asyncio.Semaphore(cfg.max_concurrency))

    @property
    def roles(self) -> list[str]:
        """Configured role names, in configuration order."""
        return list(self._roles)

    def config(self, role: str) -> ModelConfig:
        """The configuration of a role."""
        return self._role(role).config

    def backend(self, role: str) -> Backend:
        """The backend that serves a role."""
        return self._role(role).backend

    def resolve(self, role: str | None) -> str:
        """The role a request asked for (or the default); 404-worthy if unknown."""
        name = role or self.default_role
        if name not in self._roles:
            raise UnknownRoleError(
                f"unknown model_container {name!r}; configured roles: {', '.join(self._roles)}"
            )
        return name

    def _role(self, role: str) -> _Role:
        try:
            return self._roles[role]
        except KeyError:
            raise UnknownRoleError(f"unknown role {role!r}") from None

    @asynccontextmanager
    async def stream(self, role: str, call: ChatCall) -> AsyncIterator[ChunkStream]:
        """Open a stream on ``role``, retrying and falling back until a first chunk arrives."""
        primary = self._role(role)
        candidates = [primary.name, *primary.config.fallbacks]
        last: UpstreamError | None = None
        for name in candidates:
            entry = self._roles[name]
            for attempt in range(entry.config.retries + 1):
                if attempt:
                    await asyncio.sleep(min(0.25 * 2 ** (attempt - 1), 2.0))
                # A slot, then the backend's stream inside it; both held until the caller
                # is done (written out: an exit stack costs a kilobyte per open stream).
                await _take_slot(entry)
                opened: AbstractAsyncContextManager[ChunkStream] | None = None
                try:
                    stream = entry.backend.stream(call)
                    chunks = await stream.__aenter__()
                    opened = stream
                    try:
                        first = await anext(chunks)
                    except StopAsyncIteration:
                        raise UpstreamProtocolError(
                            "model server ended the stream without a single chunk"
                        ) from None
                except BaseException as exc:
                    try:
                        if opened is not None:
                            await opened.__aexit__(type(exc), exc, exc.__traceback__)
                    finally:
                        entry.slots.release()
                    if not isinstance(exc, UpstreamError):
                        raise
                    last = exc
                    log.warning(
                        "upstream attempt failed",
                        extra={"role": name, "attempt": attempt + 1, "code": exc.code},
                    )
                    if not exc.retryable:
                        break
                    continue
                try:
                    yield _Prepended(first, chunks)
                except BaseException as exc:
                    try:
                        await opened.__aexit__(type(exc), exc, exc.__traceback__)
                    finally:
                        entry.slots.release()
                    raise
                try:
                    await opened.__aexit__(None, None, None)
                finally:
                    entry.slots.release()
                return
        assert last is not None
        raise last

    async def probe_all(self, timeout: float) -> dict[str, ProbeResult]:
        """Probe every role concurrently; never takes much longer than ``timeout``."""

        async def one(entry: _Role) -> ProbeResult:
            try:
                async with asyncio.timeout(timeout + 0.5):
                    return await entry.backend.probe(timeout)
            except TimeoutError:
                return ProbeResult(False, f"no answer within {timeout:g}s")
            except Exception as exc:  # a probe must report, never raise
                return ProbeResult(False, f"probe failed: {exc}")

        entries = list(self._roles.values())
        results = await asyncio.gather(*(one(e) for e in entries))
        return {e.name: r for e, r in zip(entries, results, strict=True)}

    async def aclose(self) -> None:
        """Close every backend."""
        await asyncio.gather(*(r.backend.aclose() for r in self._roles.values()))


async def _take_slot(entry: _Role) -> None:
    """One of the role's slots (the caller releases it); ``RoleBusyError`` after the queue
    timeout."""
    if not entry.slots.locked():
        await entry.slots.acquire()
        return
    try:  # only a wait for a slot needs a deadline
        async with asyncio.timeout(entry.config.queue_timeout):
            await entry.slots.acquire()
    except TimeoutError:
        raise RoleBusyError(
            f"role {entry.name!r} is at its limit of {entry.config.max_concurrency} "
            f"concurrent streams; try again later"
        ) from None


class _Ready:
    """An awaitable that is already done: hands back the chunk read while retrying."""

    __slots__ = ("value",)

    def __init__(self, value: UpstreamChunk) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, UpstreamChunk]:
        return self.value
        yield  # a generator that never suspends


class _Prepended:
    """The stream with its already-read first chunk put back in front.

    ``__anext__`` hands out the underlying stream's own awaitable, so after the first chunk
    the wrapper adds no coroutine frame per chunk.
    """

    __slots__ = ("_first", "_rest")

    def __init__(self, first: UpstreamChunk, rest: ChunkStream) -> None:
        self._first: UpstreamChunk | None = first
        self._rest = rest

    def __aiter__(self) -> _Prepended:
        return self

    def __anext__(self) -> Awaitable[UpstreamChunk]:
        first = self._first
        if first is not None:
            self._first = None
            return _Ready(first)
        return self._rest.__anext__()

    def flow(self) -> tuple[Callable[[], None], Callable[[], None]] | None:
        """The stream's (pause, resume) pair, when its backend can hold back reading."""
        pause = getattr(self._rest, "pause", None)
        resume = getattr(self._rest, "resume", None)
        return (pause, resume) if pause is not None and resume is not None else None

    async def pump(
        self,
        handler: Callable[[UpstreamChunk], None],
        splice: Callable[[bytes], bool] | None = None,
        flush: Callable[[], None] | None = None,
    ) -> None:
        """Run ``handler`` on every chunk, on the read itself where the backend can (and
        offer each chunk's bytes to ``splice`` first, where the backend reads bytes);
        ``flush`` after each read's chunks."""
        first = self._first
        if first is not None:
            self._first = None
            handler(first)
            if flush is not None:
                flush()
        pump = getattr(self._rest, "pump", None)
        if pump is not None:
            await pump(handler, splice, flush)
            return
        async for chunk in self._rest:
            handler(chunk)
            if flush is not None:
                flush()
