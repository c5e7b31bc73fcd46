"""``stagecast chat``: run one stage and show it as it streams; Ctrl-C cancels it on the gateway.

Exit codes: 0 the stage finished, 1 it ended with an error or was cancelled elsewhere,
2 the gateway refused the request or could not be reached, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from stagecast.cli.render import ChatRenderer
from stagecast.client import (
    AsyncStagecast,
    CancelReceipt,
    StagecastClientError,
    StagecastConnectionError,
    StagecastHTTPError,
    StageStream,
)

StageMode = Literal["chat", "tools", "tools+synthesis"]

EXIT_OK = 0
EXIT_STAGE_FAILED = 1
EXIT_REFUSED = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class ChatRequest:
    """What to ask, and how: the body of one stage."""

    prompt: str
    mode: StageMode = "chat"
    model: str | None = None
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    tools: tuple[str, ...] = ()
    tool_choice: str | None = None
    max_tool_rounds: int | None = None
    stage_id: str | None = None

    def body(self, stage_id: str) -> dict[str, Any]:
        """The ``StageRequest`` fields for the gateway."""
        body: dict[str, Any] = {"user_prompt": self.prompt, "stage_id": stage_id}
        optional: dict[str, Any] = {
            "model_container": self.model,
            "system_prompt": self.system,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        if self.mode != "chat":
            optional.update(
                tools=list(self.tools) or None,
                tool_choice=self.tool_choice,
                max_tool_rounds=self.max_tool_rounds,
                synthesis=self.mode == "tools+synthesis",
            )
        body.update({k: v for k, v in optional.items() if v is not None})
        return body


class _Interrupts:
    """Ctrl-C handling: the first cancels the stage on the gateway, the second stops waiting.

    Before the stream is open there is no stage to cancel yet; leaving the request is then
    the cancel (the gateway stops a stage whose client left, by its default policy).
    """

    def __init__(self, client: AsyncStagecast, stage_id: str) -> None:
        self.client = client
        self.stage_id = stage_id
        self.stream_open = False
        self.count = 0
        self.cancel_task: asyncio.Task[CancelReceipt] | None = None
        self._main = asyncio.current_task()

    def __call__(self) -> None:
        self.count += 1
        if self.count == 1 and self.stream_open:
            self.cancel_task = asyncio.ensure_future(self.client.cancel(self.stage_id))
        elif self._main is not None:
            self._main.cancel()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Route SIGINT here while the block runs (where the platform allows it)."""
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGINT, self)
        except (NotImplementedError, RuntimeError):
            # Windows, or not the main thread: Ctrl-C stays a KeyboardInterrupt.
            yield
            return
        try:
            yield
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    async def receipt(self) -> tuple[CancelReceipt | None, str | None]:
        """The cancel receipt, or why there is none."""
        if self.cancel_task is None:
            return None, "interrupted before the stage started; it was abandoned"
        try:
            return await self.cancel_task, None
        except StagecastClientError as exc:
            return None, f"could not cancel stage {self.stage_id}: {exc}"


async def run_chat(
    request: ChatRequest,
    renderer: ChatRenderer,
    *,
    server: str | None,
    api_key: str | None,
) -> int:
    """Run one stage through ``renderer``; returns the process exit code."""
    # The id is chosen here so that Ctrl-C can cancel the stage by name at any moment.
    stage_id = request.stage_id or f"chat-{uuid.uuid4().hex[:16]}"
    body = request.body(stage_id)
    async with AsyncStagecast(server, api_key=api_key) as client:
        interrupts = _Interrupts(client, stage_id)
        stream: StageStream
        if request.mode == "chat":
            stream = client.stream_chat(raise_on_error=False, **body)
        else:
            stream = client.stream_toolchain(raise_on_error=False, **body)
        try:
            with interrupts.installed():
                code = await _relay(stream, renderer, interrupts)
                if interrupts.count:
                    receipt, problem = await interrupts.receipt()
                    renderer.cancelled(receipt, problem)
                    return EXIT_INTERRUPTED
                return code
        except asyncio.CancelledError:
            # A second Ctrl-C (or the first, before the stream opened).
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            if interrupts.cancel_task is not None:
                interrupts.cancel_task.cancel()
            renderer.cancelled(None, "interrupted; stopped waiting for the gateway")
            return EXIT_INTERRUPTED
        except StagecastHTTPError as exc:
            renderer.failed(exc.message if exc.status < 500 else str(exc))
            return EXIT_REFUSED
        except StagecastConnectionError as exc:
            renderer.failed(str(exc))
            return EXIT_REFUSED
        except StagecastClientError as exc:
            renderer.failed(str(exc))
            return EXIT_STAGE_FAILED
        finally:
            renderer.close()


async def _relay(stream: StageStream, renderer: ChatRenderer, interrupts: _Interrupts) -> int:
    async with stream:
        interrupts.stream_open = True
        renderer.started(stream.stage_id or interrupts.stage_id)
        async for event in stream:
            renderer.event(event, stream.last_delta, stream.accumulator)
    answer = stream.answer()
    renderer.finished(answer)
    return EXIT_OK if answer.ok else EXIT_STAGE_FAILED
