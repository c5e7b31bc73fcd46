"""Build a stage's answer from its events: text, reasoning, tool calls, results, usage.

A front end needs the same bookkeeping whatever it renders, so it lives here once: tool calls
are assembled from ``tool_calls`` deltas by index (the id and name arrive once, arguments in
pieces), each round of calls is closed by its ``tool_summary``, and the terminal event sets
the status.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from openai.types.chat import ChatCompletionChunk

from stagecast.client.models import StageAnswer, StageEvent, ToolCall
from stagecast.protocol.events import (
    CancelPayload,
    ChatCompletionStreamPayload,
    DonePayload,
    ErrorPayload,
    ToolCompletionStreamPayload,
    ToolSummaryStreamPayload,
)


@dataclass(slots=True)
class EventDelta:
    """What one event added to the answer, for renderers that draw incrementally.

    ``tool_calls`` holds the positions (in ``StageAnswer.tool_calls``) of the calls the event
    created or extended; ``summary`` is set for a ``tool_summary`` event.
    """

    text: str = ""
    reasoning: str = ""
    tool_calls: list[int] = field(default_factory=list)
    summary: ToolSummaryStreamPayload | None = None
    terminal: bool = False


class StageAccumulator:
    """Feed it a stage's events with ``add``; ``result()`` is the answer so far.

    ``started`` is the ``time.monotonic()`` at which the request went out; it defaults to
    the accumulator's creation and drives ``ttft_s`` and ``duration_s``.
    """

    def __init__(self, stage_id: str | None = None, *, started: float | None = None) -> None:
        self._answer = StageAnswer(stage_id=stage_id)
        self.started = time.monotonic() if started is None else started
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._round = 1
        # Position in answer.tool_calls of each call of the current round, by delta index.
        self._round_calls: dict[int, int] = {}

    def add(self, event: StageEvent) -> EventDelta:
        """Account for one event and return what it added."""
        answer = self._answer
        answer.events += 1
        answer.last_event_id = max(answer.last_event_id, event.id)
        data = event.data
        if answer.stage_id is None:
            answer.stage_id = data.stage_id
        delta = EventDelta()
        if isinstance(data, ChatCompletionStreamPayload):
            self._chunk(data.chunk, delta)
        elif isinstance(data, ToolCompletionStreamPayload):
            self._chunk(data.tool_results, delta)
        elif isinstance(data, ToolSummaryStreamPayload):
            self._summary(data)
            delta.summary = data
        elif isinstance(data, DonePayload):
            answer.status = "done"
            answer.usage = data.usage
            answer.finish_reason = data.finish_reason
            delta.terminal = True
        elif isinstance(data, CancelPayload):
            answer.status = "cancelled"
            answer.cancel_reason = data.reason
            delta.terminal = True
        elif isinstance(data, ErrorPayload):
            answer.status = "error"
            answer.error = data.error
            answer.error_code = data.code
            answer.retryable = data.retryable
            delta.terminal = True
        if delta.terminal:
            answer.duration_s = time.monotonic() - self.started
        if answer.ttft_s is None and (delta.text or delta.reasoning or delta.tool_calls):
            answer.ttft_s = time.monotonic() - self.started
        if delta.text:
            self._text.append(delta.text)
        if delta.reasoning:
            self._reasoning.append(delta.reasoning)
        return delta

    @property
    def stage_id(self) -> str | None:
        """The stage's id, once known."""
        return self._answer.stage_id

    @property
    def status(self) -> str:
        """``running`` until the terminal event, then ``done``, ``cancelled`` or ``error``."""
        return self._answer.status

    @property
    def text(self) -> str:
        """The answer text so far."""
        return "".join(self._text)

    @property
    def reasoning(self) -> str:
        """The reasoning so far."""
        return "".join(self._reasoning)

    @property
    def tool_calls(self) -> list[ToolCall]:
        """The tool calls so far, live: renderers read a call's growing arguments here."""
        return self._answer.tool_calls

    def result(self) -> StageAnswer:
        """A snapshot of the answer so far (later events do not change it)."""
        # Text is kept as a list of pieces and joined only here: joining per chunk would make
        # a long answer quadratic.
        answer = self._answer.model_copy(deep=True)
        answer.text = "".join(self._text)
        answer.reasoning = "".join(self._reasoning)
        return answer

    def _chunk(self, chunk: ChatCompletionChunk, delta: EventDelta) -> None:
        self._answer.chunks += 1
        for choice in chunk.choices:
            # One answer per stage: further choices (n > 1) are not the stage's answer.
            if choice.index != 0:
                continue
            d = choice.delta
            if d.content:
                delta.text += d.content
            reasoning = _reasoning_of(d)
            if reasoning:
                delta.reasoning += reasoning
            for call_delta in d.tool_calls or ():
                position = self._call(call_delta.index)
                call = self._answer.tool_calls[position]
                if call_delta.id and not call.id:
                    call.id = call_delta.id
                fn = call_delta.function
                if fn is not None:
                    call.name += fn.name or ""
                    call.arguments += fn.arguments or ""
                if position not in delta.tool_calls:
                    delta.tool_calls.append(position)

    def _call(self, index: int) -> int:
        position = self._round_calls.get(index)
        if position is None:
            position = len(self._answer.tool_calls)
            self._answer.tool_calls.append(ToolCall(round=self._round, index=index))
            self._round_calls[index] = position
        return position

    def _summary(self, data: ToolSummaryStreamPayload) -> None:
        answer = self._answer
        answer.tool_results.update(data.tool_summary)
        by_id = {c.id: c for c in answer.tool_calls if c.id}
        for detail in data.tool_calls or ():
            answer.tool_details.append(detail)
            call = by_id.get(detail.id)
            if call is None:
                # A call the deltas did not show (an older or different server): keep it.
                call = ToolCall(
                    round=self._round,
                    index=len(self._round_calls),
                    id=detail.id,
                    name=detail.name,
                    arguments=detail.arguments,
                )
                self._round_calls[call.index] = len(answer.tool_calls)
                answer.tool_calls.append(call)
                by_id[detail.id] = call
            call.result, call.error, call.duration_ms = (
                detail.result,
                detail.error,
                detail.duration_ms,
            )
            call.has_result = True
        if not data.tool_calls:
            # No per-call details (a seed-era server): take results from the summary dict.
            for call_id, value in data.tool_summary.items():
                call = by_id.get(call_id)
                if call is not None:
                    call.result = value
                    call.error = _error_of(value)
                    call.has_result = True
        # A summary closes the round: the next deltas start a new set of indexes.
        self._round = (data.round or self._round) + 1
        self._round_calls = {}


def _reasoning_of(delta: Any) -> str | None:
    # The gateway puts reasoning in ``reasoning_content``, an extra field of the openai type.
    value = getattr(delta, "reasoning_content", None)
    return value if isinstance(value, str) else None


def _error_of(value: Any) -> str | None:
    if isinstance(value, dict) and set(value) == {"error"}:
        return str(value["error"])
    return None


def accumulate(events: list[StageEvent]) -> StageAnswer:
    """The answer of a list of events (for events collected some other way)."""
    acc = StageAccumulator()
    for event in events:
        acc.add(event)
    return acc.result()
