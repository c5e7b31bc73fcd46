"""Stage event logs: the StreamHub interface and its memory and Redis implementations."""

from stagecast.hub.base import ReaderLagError, StageInfo, StageNotFoundError, StreamHub
from stagecast.hub.memory import MemoryHub

__all__ = ["MemoryHub", "ReaderLagError", "StageInfo", "StageNotFoundError", "StreamHub"]
