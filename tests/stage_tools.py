"""Tools the toolchain tests load through ``[tools] modules``."""

from __future__ import annotations

import asyncio
import threading
from typing import Annotated

from pydantic import Field

from stagecast.tools import tool

# Two calls of `meet` only both succeed if they run at the same time.
MEETING = threading.Barrier(2, timeout=10)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def meet(who: Annotated[str, Field(description="Who arrives at the meeting.")]) -> str:
    """Wait until a second caller arrives (proves calls run concurrently)."""
    MEETING.wait()
    return f"{who} met"


@tool
def explode(reason: str) -> str:
    """Always fails."""
    raise RuntimeError(f"exploded: {reason}")


@tool(timeout=0.5)
async def dawdle() -> str:
    """Takes far longer than its timeout."""
    await asyncio.sleep(30)
    return "never"


STARTED = threading.Event()


@tool
async def wait_forever() -> str:
    """Runs until cancelled (for cancel tests)."""
    STARTED.set()
    await asyncio.sleep(3600)
    return "never"
