"""The relay loop shared by every stage mode: one model call, its chunks normalised and emitted."""

from __future__ import annotations

import time

from stagecast.backends.base import ChatCall
from stagecast.stages.context import StageContext
from stagecast.stages.normalise import ChunkNormaliser


async def relay(
    ctx: StageContext, call: ChatCall, norm: ChunkNormaliser, event: str, field: str
) -> None:
    """Stream ``call`` on the stage's role and emit each normalised chunk as ``event``."""
    stats = ctx.stats
    stats.text_parts = norm.text_parts
    prefix = ctx.prefix(field)
    emit = ctx.emit
    # Open from the request on, so a cancel during the first-token wait counts as an abort.
    stats.upstream_open = True
    try:
        async with ctx.router.stream(ctx.role, call) as chunks:
            async for upstream in chunks:
                out = norm.process(upstream)
                if out is None:
                    continue
                if stats.first_token_at is None:
                    stats.first_token_at = time.time()
                stats.chunks += 1
                await emit(event, prefix + out + b"}")
    finally:
        stats.upstream_open = False
