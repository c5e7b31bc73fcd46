"""Chat stages (modes 1 and 2): one model call, its chunks relayed as they arrive."""

from __future__ import annotations

from stagecast.backends.base import ChatCall
from stagecast.stages.context import StageContext, StageOutcome
from stagecast.stages.normalise import ChunkNormaliser
from stagecast.stages.relay import relay


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
    await relay(ctx, call, norm, "chat_completion_chunk", "chunk")
    stats = ctx.stats
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
