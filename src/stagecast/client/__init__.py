"""Python SDK for stagecast: async first, with a thin sync wrapper.

It imports only ``stagecast.protocol``, so it ships without the server::

    async with AsyncStagecast("http://127.0.0.1:8000") as client:
        async with client.stream_chat(user_prompt="Hi", model_container="local") as stream:
            async for event in stream:
                ...
            answer = stream.answer()

    with Stagecast() as client:
        answer = client.collect_toolchain(user_prompt="Weather in Lisbon?", synthesis=True)
"""

from stagecast.client.accumulate import EventDelta, StageAccumulator, accumulate
from stagecast.client.aio import AsyncStagecast, StageStream
from stagecast.client.errors import (
    StageCancelledError,
    StagecastClientError,
    StagecastConnectionError,
    StagecastHTTPError,
    StagecastProtocolError,
    StageError,
    StreamDroppedError,
)
from stagecast.client.models import CancelReceipt, StageAnswer, StageEvent, StageStatus, ToolCall
from stagecast.client.sync import Stagecast, SyncStageStream

__all__ = [
    "AsyncStagecast",
    "CancelReceipt",
    "EventDelta",
    "StageAccumulator",
    "StageAnswer",
    "StageCancelledError",
    "StageError",
    "StageEvent",
    "StageStatus",
    "StageStream",
    "Stagecast",
    "StagecastClientError",
    "StagecastConnectionError",
    "StagecastHTTPError",
    "StagecastProtocolError",
    "StreamDroppedError",
    "SyncStageStream",
    "ToolCall",
    "accumulate",
]
