"""The relay loop shared by every stage mode: one model call, its chunks normalised and emitted.

Where both ends allow it (a backend that can push chunks, a hub that appends without
waiting), each chunk is normalised and appended on the upstream socket read itself: no task
switch and no coroutine per chunk; a chunk that fits the stream's template is not even parsed
(``ChunkNormaliser.splicer``), and the in-process hub writes what one read brought to the
caught-up readers' sockets at the end of that read. The hub pauses the upstream read while
the stage's readers are far behind. Otherwise the chunks are pulled one by one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from stagecast.backends.base import ChatCall, UpstreamChunk
from stagecast.stages.context import EmitNow, StageContext, StageStats
from stagecast.stages.normalise import ChunkNormaliser


def chunk_callbacks(
    stats: StageStats, norm: ChunkNormaliser, prefix: bytes, emit_now: EmitNow, event: str
) -> tuple[Callable[[UpstreamChunk], None], Callable[[bytes], bool]]:
    """What the relay does with each chunk of a backend that pushes them: ``on_chunk`` (emit
    a parsed chunk) and ``on_bytes`` (emit a chunk's bytes that fit the stream's template
    without parsing them; False if they do not: ``ChunkNormaliser.splicer``)."""
    sink = _ParsedChunks(stats, norm, prefix, event, emit_now)
    # A template is only learned from a chunk that was relayed already, so a spliced chunk is
    # never the first token: the splice path has no first-token check.
    return sink.on_chunk, norm.splicer(emit_now, event, prefix, stats)


class _ParsedChunks:
    """``payload`` (the event payload of a parsed chunk, or None) and, with ``emit_now``,
    ``on_chunk`` (emit it): methods of one object rather than closures, as they live as long
    as their stage (a closure, its cells and their tuple are each an object the garbage
    collector walks, for every live stream)."""

    __slots__ = ("emit_now", "event", "prefix", "process", "stats")

    def __init__(
        self,
        stats: StageStats,
        norm: ChunkNormaliser,
        prefix: bytes,
        event: str,
        emit_now: EmitNow | None = None,
    ) -> None:
        self.stats = stats
        self.process = norm.process
        self.prefix = prefix
        self.event = event
        self.emit_now = emit_now

    def payload(self, upstream: UpstreamChunk) -> bytes | None:
        """The event payload for one upstream chunk (None: nothing of it is relayed), counted."""
        out = self.process(upstream)
        if out is None:
            return None
        stats = self.stats
        if stats.first_token_at is None:
            stats.first_token_at = time.time()
        stats.chunks += 1
        return self.prefix + out + b"}"

    def on_chunk(self, upstream: UpstreamChunk) -> None:
        """Emit one parsed chunk; only on an object made with ``emit_now``."""
        data = self.payload(upstream)
        if data is not None:
            self.emit_now(self.event, data)  # type: ignore[misc]


async def relay(
    ctx: StageContext, call: ChatCall, norm: ChunkNormaliser, event: str, field: str
) -> None:
    """Stream ``call`` on the stage's role and emit each normalised chunk as ``event``."""
    stats = ctx.stats
    stats.text_parts = norm.text_parts
    emit = ctx.emit
    emit_now = ctx.emit_nowait
    prefix = ctx.prefix(field)
    # Made before the request, off the first-token path; only for a hub that appends
    # without waiting (a backend that pushes chunks calls them on its reads).
    push = chunk_callbacks(stats, norm, prefix, emit_now, event) if emit_now is not None else None

    # Open from the request on, so a cancel during the first-token wait counts as an abort.
    stats.upstream_open = True
    try:
        async with ctx.router.stream(ctx.role, call) as chunks:
            pump = getattr(chunks, "pump", None)
            if pump is not None and push is not None:
                flow = getattr(chunks, "flow", None)
                set_flow = ctx.set_flow if flow is not None else None
                if set_flow is not None:
                    set_flow(flow())  # type: ignore[misc]
                hold_flush = ctx.hold_flush
                flush = hold_flush(True) if hold_flush is not None else None
                try:
                    await pump(*push, flush)
                finally:
                    if hold_flush is not None:
                        hold_flush(False)
                    if set_flow is not None:
                        set_flow(None)
                return
            payload = _ParsedChunks(stats, norm, prefix, event).payload
            async for upstream in chunks:
                data = payload(upstream)
                if data is not None:
                    await emit(event, data)
    finally:
        stats.upstream_open = False
