"""Python SDK for stagecast (imports only ``stagecast.protocol``, so it ships without the server)."""

from stagecast.client.aio import AsyncStagecast, StageEvent, StageStream
from stagecast.client.errors import StageCancelledError, StageError, StagecastHTTPError

__all__ = [
    "AsyncStagecast",
    "StageCancelledError",
    "StageError",
    "StageEvent",
    "StageStream",
    "StagecastHTTPError",
]
