"""How ``stagecast chat`` shows a stage: live in a terminal, plain text in a pipe, or JSON lines.

The terminal renderer prints answer and reasoning pieces as they arrive (each piece is
written once, so a long answer costs linear time) and keeps a small live region only for
the tool calls of the current round, whose arguments grow in place.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Protocol, TextIO

import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.status import Status
from rich.table import Table
from rich.text import Text

from stagecast.client import CancelReceipt, EventDelta, StageAccumulator, StageAnswer, StageEvent
from stagecast.protocol import ToolSummaryStreamPayload

# Longest argument or result text shown in a table cell or a live tool-call line.
CELL_LIMIT = 120


class ChatRenderer(Protocol):
    """What the chat command tells its output about a stage."""

    def started(self, stage_id: str) -> None:
        """The stream is open."""

    def event(self, event: StageEvent, delta: EventDelta, acc: StageAccumulator) -> None:
        """One event arrived; ``delta`` is what it added to the answer in ``acc``."""

    def finished(self, answer: StageAnswer) -> None:
        """The stream ended (with ``answer.status`` telling how)."""

    def failed(self, message: str) -> None:
        """The request failed before or outside the stage (refused, unreachable)."""

    def cancelled(self, receipt: CancelReceipt | None, problem: str | None) -> None:
        """Ctrl-C: the cancel receipt, or why there is none."""

    def close(self) -> None:
        """Stop any live display (called on every way out)."""


def describe_receipt(receipt: CancelReceipt) -> str:
    """One line about a cancel receipt."""
    parts = [
        f"cancelled stage {receipt.stage_id}: {receipt.status_before} -> {receipt.status_after}"
    ]
    if receipt.upstream_aborted:
        parts.append("model request aborted")
    if receipt.completion_tokens is not None:
        parts.append(f"{receipt.completion_tokens} tokens generated")
    if receipt.tools_run:
        parts.append("tools run: " + ", ".join(receipt.tools_run))
    return "; ".join(parts)


def describe_failure(answer: StageAnswer) -> str:
    """Why a stage did not end with ``done``."""
    if answer.status == "error":
        return f"stage failed ({answer.error_code or 'error'}): {answer.error}"
    if answer.status == "cancelled":
        return f"stage was cancelled ({answer.cancel_reason or 'by a client'})"
    return "the stream ended without a terminal event"


def short_json(value: Any, limit: int = CELL_LIMIT) -> str:
    """Compact JSON of ``value``, cut to ``limit`` characters."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class PlainRenderer:
    """For pipes and files: the answer text on stdout, everything else on stderr.

    A tool-only stage has no answer text; its tool results go to stdout as one JSON object.
    """

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._wrote = False

    def started(self, stage_id: str) -> None:
        """Nothing to show."""

    def event(self, event: StageEvent, delta: EventDelta, acc: StageAccumulator) -> None:
        """Write answer text as it arrives."""
        if delta.text:
            self.out.write(delta.text)
            self.out.flush()
            self._wrote = True

    def finished(self, answer: StageAnswer) -> None:
        """End the line; print tool results of a tool-only stage; report failures."""
        if not self._wrote and answer.tool_results and answer.ok:
            self.out.write(json.dumps(answer.tool_results, ensure_ascii=False))
            self._wrote = True
        if self._wrote:
            self.out.write("\n")
            self.out.flush()
        if not answer.ok:
            self.err.write(f"stagecast: {describe_failure(answer)}\n")

    def failed(self, message: str) -> None:
        """Report on stderr."""
        if self._wrote:
            self.out.write("\n")
            self.out.flush()
        self.err.write(f"stagecast: {message}\n")

    def cancelled(self, receipt: CancelReceipt | None, problem: str | None) -> None:
        """Report the receipt on stderr."""
        self.err.write(
            f"stagecast: {describe_receipt(receipt) if receipt else problem or 'interrupted'}\n"
        )

    def close(self) -> None:
        """Nothing live to stop."""


class JsonRenderer:
    """``--json``: every event as one JSON line ``{"id", "event", "data"}`` on stdout."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def started(self, stage_id: str) -> None:
        """Nothing to show."""

    def event(self, event: StageEvent, delta: EventDelta, acc: StageAccumulator) -> None:
        """One line per event; ``data`` is the gateway's JSON, spliced in unparsed."""
        line = orjson.dumps(
            {"id": event.id, "event": event.event, "data": orjson.Fragment(event.raw)}
        )
        self.out.write(line.decode() + "\n")
        self.out.flush()

    def finished(self, answer: StageAnswer) -> None:
        """The terminal event already said everything."""

    def failed(self, message: str) -> None:
        """Report on stderr."""
        self.err.write(f"stagecast: {message}\n")

    def cancelled(self, receipt: CancelReceipt | None, problem: str | None) -> None:
        """The receipt as one JSON line on stderr (stdout carries only events)."""
        body = {"receipt": receipt.model_dump()} if receipt else {"problem": problem}
        self.err.write(json.dumps(body) + "\n")

    def close(self) -> None:
        """Nothing live to stop."""


class RichRenderer:
    """For terminals: streamed answer, dimmed reasoning, live tool calls, tables, a footer."""

    def __init__(
        self, console: Console, err_console: Console, *, show_reasoning: bool = False
    ) -> None:
        self.console = console
        self.err_console = err_console
        self.show_reasoning = show_reasoning
        self._status: Status | None = None
        self._live: Live | None = None
        self._live_round = 0
        self._kind = ""  # what the last printed piece was: "", "text" or "reasoning"
        self._line_open = False  # the last printed piece did not end its line

    def started(self, stage_id: str) -> None:
        """Show a spinner until the first token."""
        self._status = self.console.status(Text("waiting for the first token…", style="dim"))
        self._status.start()

    def event(self, event: StageEvent, delta: EventDelta, acc: StageAccumulator) -> None:
        """Print what the event added, in the order a chunk carries it."""
        if delta.reasoning:
            if self.show_reasoning:
                self._piece(delta.reasoning, "reasoning")
            elif self._status is not None:
                self._status.update(Text("thinking…", style="dim"))
        if delta.text:
            self._piece(delta.text, "text")
        if delta.tool_calls:
            self._tool_calls(acc, delta.tool_calls)
        if delta.summary is not None:
            self._stop_live()
            self._end_line()
            self.console.print(self._results_table(delta.summary, acc))

    def finished(self, answer: StageAnswer) -> None:
        """Close the answer and print the footer: TTFT, tokens, tokens/s, status."""
        self.close()
        self._end_line()
        self.console.print(self._footer(answer))
        if not answer.ok:
            self.err_console.print(Text(f"stagecast: {describe_failure(answer)}", style="red"))

    def failed(self, message: str) -> None:
        """Report in red on stderr."""
        self.close()
        self._end_line()
        self.err_console.print(Text(f"stagecast: {message}", style="red"))

    def cancelled(self, receipt: CancelReceipt | None, problem: str | None) -> None:
        """Show the cancel receipt."""
        self.close()
        self._end_line()
        if receipt is not None:
            self.console.print(Text(describe_receipt(receipt), style="yellow"))
        else:
            self.err_console.print(Text(f"stagecast: {problem or 'interrupted'}", style="yellow"))

    def close(self) -> None:
        """Stop the spinner and the live tool-call region."""
        self._stop_status()
        self._stop_live()

    # --- pieces ------------------------------------------------------------------------
    def _piece(self, text: str, kind: str) -> None:
        self._stop_status()
        self._stop_live()
        if kind != self._kind and self._kind:
            # Reasoning and answer are separated by a blank line.
            self._end_line()
            self.console.print()
        self._kind = kind
        style = "dim italic" if kind == "reasoning" else ""
        self.console.print(Text(text, style=style), end="", soft_wrap=True)
        self._line_open = not text.endswith("\n")

    def _end_line(self) -> None:
        if self._line_open:
            self.console.print()
            self._line_open = False

    def _tool_calls(self, acc: StageAccumulator, positions: list[int]) -> None:
        self._stop_status()
        calls = acc.tool_calls
        round_no = calls[positions[-1]].round
        if self._live is None or round_no != self._live_round:
            self._stop_live()
            self._end_line()
            self._kind = ""
            self._live_round = round_no
            # Refreshes are rate-limited: a burst of argument deltas redraws a few times a
            # second, not once per delta.
            self._live = Live(console=self.console, refresh_per_second=10, transient=False)
            self._live.start()
        lines = []
        for call in calls:
            if call.round != round_no:
                continue
            args = call.arguments
            if len(args) > CELL_LIMIT:
                args = "…" + args[-(CELL_LIMIT - 1) :]
            lines.append(
                Text.assemble(
                    ("⚙ ", "cyan"),
                    (call.name or "…", "bold cyan"),
                    ("(", "dim"),
                    (args, "yellow"),
                    (")", "dim"),
                )
            )
        self._live.update(Group(*lines))

    def _results_table(self, summary: ToolSummaryStreamPayload, acc: StageAccumulator) -> Table:
        title = f"Tool results (round {summary.round})" if summary.round else "Tool results"
        table = Table(title=title, title_justify="left", expand=False)
        table.add_column("tool", style="cyan", no_wrap=True)
        table.add_column("arguments", overflow="fold")
        table.add_column("result", overflow="fold")
        table.add_column("ms", justify="right")
        names = {c.id: c for c in acc.tool_calls if c.id}
        if summary.tool_calls:
            for d in summary.tool_calls:
                result = Text(f"error: {d.error}", style="red") if d.error else short_json(d.result)
                ms = f"{d.duration_ms:.0f}" if d.duration_ms is not None else ""
                table.add_row(d.name, short_json(d.arguments), result, ms)
        else:
            for call_id, value in summary.tool_summary.items():
                call = names.get(call_id)
                table.add_row(
                    call.name if call else call_id,
                    short_json(call.arguments) if call else "",
                    short_json(value),
                    "",
                )
        return table

    def _footer(self, answer: StageAnswer) -> Text:
        parts: list[str] = []
        if answer.ttft_s is not None:
            parts.append(f"TTFT {answer.ttft_s:.2f} s")
        tokens = answer.completion_tokens
        if tokens is not None:
            parts.append(f"{tokens} tokens")
        else:
            parts.append(f"{answer.chunks} chunks")
        rate = answer.tokens_per_second
        parts.append(f"{rate:.1f} tok/s" if rate is not None else "- tok/s")
        if answer.duration_s is not None:
            parts.append(f"{answer.duration_s:.2f} s")
        status: str = answer.status
        if answer.finish_reason:
            status += f" ({answer.finish_reason})"
        parts.append(status)
        if answer.resumes:
            parts.append(f"{answer.resumes} resumes")
        return Text(" · ".join(parts), style="dim")

    def _stop_status(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def _stop_live(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
