"""What every model backend offers: a stream of chunks for one chat call, and a probe."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class ChatCall:
    """One upstream chat completion request (always streamed upstream)."""

    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    temperature: float | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    stage_id: str = ""
    # A JSON schema the embedded backend may use to constrain its output (tool calls).
    grammar_schema: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class UpstreamChunk:
    """One chunk from a model server: the parsed JSON and, when it came as JSON, its bytes.

    ``raw`` lets the relay splice the upstream bytes into the outgoing event when the
    normaliser changed nothing, so the common case costs no re-serialisation.
    """

    __slots__ = ("data", "raw")

    def __init__(self, data: dict[str, Any], raw: bytes | None = None) -> None:
        self.data = data
        self.raw = raw


ChunkStream = AsyncIterator[UpstreamChunk]


@dataclass(slots=True)
class ProbeResult:
    """Outcome of a health probe of one backend."""

    ok: bool
    detail: str = ""
    latency_ms: float | None = None


class Backend(Protocol):
    """A model server (or in-process model) that streams chat completions."""

    role: str

    @property
    def model_name(self) -> str:
        """The model id sent upstream (or the embedded model's name)."""
        ...

    def stream(self, call: ChatCall) -> AbstractAsyncContextManager[ChunkStream]:
        """Open a streamed completion; leaving the context closes it (and aborts upstream)."""
        ...

    async def probe(self, timeout: float) -> ProbeResult:
        """Check that the backend answers, within ``timeout`` seconds."""
        ...

    async def aclose(self) -> None:
        """Release pooled connections or loaded models."""
        ...
