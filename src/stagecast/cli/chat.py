"""``stagecast chat``: print a streamed answer."""

from __future__ import annotations

import sys
from typing import Any

from stagecast.client import AsyncStagecast, StagecastHTTPError, StageError


async def run_chat(
    prompt: str,
    *,
    model: str | None,
    system: str | None,
    max_tokens: int | None,
    server: str | None,
) -> int:
    """Stream one chat stage to stdout; returns the process exit code."""
    body: dict[str, Any] = {"user_prompt": prompt}
    if model:
        body["model_container"] = model
    if system:
        body["system_prompt"] = system
    if max_tokens:
        body["max_tokens"] = max_tokens
    out = sys.stdout
    async with AsyncStagecast(server) as client:
        try:
            async with client.stream_chat(**body) as stream:
                async for event in stream:
                    if event.event == "chat_completion_chunk":
                        for choice in event.data.chunk.choices:  # type: ignore[union-attr]
                            if choice.delta.content:
                                out.write(choice.delta.content)
                                out.flush()
        except StagecastHTTPError as exc:
            print(f"\nstagecast: {exc.message}", file=sys.stderr)
            return 2
        except StageError as exc:
            print(f"\nstagecast: stage failed ({exc.code}): {exc.message}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"\nstagecast: cannot reach the gateway: {exc}", file=sys.stderr)
            return 2
    out.write("\n")
    return 0
