"""Python SDK for stagecast.

It imports only ``stagecast.protocol``, so it ships without the server.
"""

from stagecast.client.aio import AsyncStagecast, StageEvent, StageStream
from stagecast.client.errors import StageCancelledError, StagecastHTTPError, StageError

__all__ = [
    "AsyncStagecast",
    "StageCancelledError",
    "StageError",
    "StageEvent",
    "StageStream",
    "StagecastHTTPError",
]
