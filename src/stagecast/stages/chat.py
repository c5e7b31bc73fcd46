"""Chat stages (modes 1 and 2): one model call, its chunks relayed as they arrive."""

from __future__ import annotations

import time

from stagecast.backends.base import ChatCall
from stagecast.stages.context import StageContext, StageOutcome
from stagecast.stages.normalise import ChunkNormaliser


async def run_chat(ctx: StageContext) -> StageOutcome:
    """Relay one streamed chat completion as ``chat_completion_chunk`` events."""
    req = ctx.request
    call = ChatCall(
        messages=req.chat_messages(req.phase_prompt(0)),
        max_tokens=req.phase_max_tokens(0),
        temperature=req.phase_temperature(0),
        stage_id=ctx.stage_id,
    )
    norm = ChunkNormaliser(req.reasoning)
    ctx.stats.text_parts = norm.text_parts
    prefix = ctx.prefix("chunk")
    emit = ctx.emit
    stats = ctx.stats
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
                await emit("chat_completion_chunk", prefix + out + b"}")
    finally:
        stats.upstream_open = False
    stats.completion_tokens = _completion_tokens(norm.usage, stats.chunks)
    return StageOutcome(
        text=norm.text,
        reasoning=norm.reasoning,
        usage=norm.usage,
        finish_reason=norm.finish_reason,
    )


def _completion_tokens(usage: dict[str, object] | None, chunks: int) -> int:
    value = usage.get("completion_tokens") if usage else None
    return value if isinstance(value, int) else chunks
