"""stagecast: a streaming gateway for LLM stages.

Build the server with ``create_app(load_settings(...))``; talk to one with ``AsyncStagecast``.
"""

import typing as _typing

from stagecast._version import __version__ as __version__
from stagecast.client import AsyncStagecast, StagecastHTTPError, StageError, StageEvent
from stagecast.config import ModelConfig, Settings, load_settings
from stagecast.errors import (
    ConfigError,
    StagecastError,
    ToolError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)

if _typing.TYPE_CHECKING:
    from stagecast.api.app import create_app

__all__ = [
    "AsyncStagecast",
    "ConfigError",
    "ModelConfig",
    "Settings",
    "StageError",
    "StageEvent",
    "StagecastError",
    "StagecastHTTPError",
    "ToolError",
    "UpstreamConnectionError",
    "UpstreamError",
    "UpstreamStatusError",
    "UpstreamTimeoutError",
    "create_app",
    "load_settings",
]


def __getattr__(name: str) -> _typing.Any:
    # The server is imported on first use, so that `import stagecast.client` stays light.
    if name == "create_app":
        from stagecast.api.app import create_app

        return create_app
    raise AttributeError(f"module 'stagecast' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
