"""Tool-call assembly: one normalised stream of ``tool_calls`` deltas from many upstream dialects.

Model servers disagree on how a streamed tool call looks. :class:`ToolCallAssembler` accepts:

- OpenAI: deltas keyed by ``index``; ``id`` and name only on a call's first delta; parallel
  calls may interleave.
- llama.cpp server: ``id`` (and often the name) repeated on every delta, and a legacy
  ``function_call`` next to ``tool_calls`` carrying the same fragments.
- Ollama: ``index`` 0 for every call, or no ``index``; each call whole in one delta.
- Cumulative snapshots: each delta carries all the arguments so far, not the new part.
- Qwen style: a JSON object ``{"name": ..., "arguments": {...}}`` (or ``"parameters"``, or a
  list of them, maybe in a ```` ```json ```` fence) written as plain content.
- Hermes style: ``<tool_call>{...}</tool_call>`` in content, once or several times.

and re-expresses every call as OpenAI deltas: ``{"index", "id", "type", "function": {"name",
"arguments": ""}}`` first, then ``{"index", "function": {"arguments": fragment}}``. Indexes are
ours (0, 1, 2... in the order calls are announced), so they are right whatever upstream sent.

Content is held back only while it may still turn out to be a tool call; what turns out not to
be one comes out as text, unchanged.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from stagecast.tools.jsonscan import JSON_WS, JsonPrefix
from stagecast.tools.textcalls import ContentParser, TextCall

__all__ = ["AssembledCall", "ToolCallAssembler", "new_call_id"]

ToolCallDelta = dict[str, Any]
Mode = Literal["delta", "cumulative"]


def new_call_id() -> str:
    """A fresh tool call id in OpenAI's style."""
    return f"call_{secrets.token_hex(12)}"


@dataclass(frozen=True, slots=True)
class AssembledCall:
    """One complete tool call: our ``index``, its ``id``, ``name`` and ``arguments`` (JSON)."""

    id: str
    name: str
    arguments: str
    index: int


# --------------------------------------------------------------------------------------------
# Arguments of one call: deltas or cumulative snapshots?


class _ArgScan:
    """A :class:`JsonPrefix` over a whole arguments string, which must end with the value."""

    __slots__ = ("_json", "bad")

    def __init__(self) -> None:
        self._json = JsonPrefix()
        self.bad = False

    def feed(self, text: str) -> None:
        if self.bad:
            return
        used = self._json.feed(text)
        if self._json.invalid or text[used:].strip(JSON_WS):
            self.bad = True

    @property
    def complete(self) -> bool:
        return not self.bad and self._json.complete


class _Arguments:
    """The arguments of one call, read both as deltas and as cumulative snapshots until the
    fragments show which one the server sends.

    A fragment that starts with everything so far looks like a snapshot, but a delta stream can
    produce that by chance (``{"a": `` then ``{"a": 1}}``). Each reading is kept while its text
    can still be valid JSON; only the text both readings agree on is released, and the first
    reading to become impossible decides. Valid arguments therefore always come out exactly.
    """

    __slots__ = ("_cum_scan", "_delta_scan", "cumulative", "delta", "mode", "pieces")

    def __init__(self, mode: Mode | None = None) -> None:
        self.mode: Mode | None = mode
        self.delta = ""
        self.cumulative = ""
        self.pieces = 0
        self._delta_scan: _ArgScan | None = _ArgScan() if mode != "cumulative" else None
        self._cum_scan: _ArgScan | None = _ArgScan() if mode is None else None

    def add(self, fragment: str) -> Mode | None:
        """Take one fragment; returns the mode if this fragment decided it by elimination."""
        self.pieces += 1
        if self.mode == "delta" or (self.pieces == 1 and self.mode is None):
            self.delta += fragment
            if self._delta_scan is not None:
                self._delta_scan.feed(fragment)
            if self.mode is None:
                self.cumulative = fragment
                assert self._cum_scan is not None
                self._cum_scan.feed(fragment)
            return None
        if self.mode == "cumulative":
            if fragment.startswith(self.cumulative):
                self.cumulative = fragment
            elif not self.cumulative.startswith(fragment):
                # Not a snapshot of what we have: keep it rather than lose it.
                self.cumulative += fragment
            return None
        assert self._delta_scan is not None
        assert self._cum_scan is not None
        self.delta += fragment
        self._delta_scan.feed(fragment)
        if fragment.startswith(self.cumulative):
            self._cum_scan.feed(fragment[len(self.cumulative) :])
            self.cumulative = fragment
        else:
            self._cum_scan.bad = True
        delta_ok = not self._delta_scan.bad
        cum_ok = not self._cum_scan.bad
        if delta_ok and cum_ok:
            return None
        if cum_ok:
            self.mode = "cumulative"
            return self.mode
        # Only deltas fit, or neither does (not JSON at all): keep every byte the model sent.
        self.mode = "delta"
        return self.mode if delta_ok else None

    def complete(self) -> bool:
        """Some still-possible reading is complete JSON."""
        if self.mode == "cumulative":
            return _is_json(self.cumulative)
        if self._delta_scan is not None and self._delta_scan.complete:
            return True
        return self.mode is None and self._cum_scan is not None and self._cum_scan.complete

    def settled(self) -> str:
        """The text every still-possible reading agrees on (safe to relay now)."""
        if self.mode == "delta":
            return self.delta
        if self.mode == "cumulative":
            return self.cumulative
        return _common_prefix(self.delta, self.cumulative)

    def final(self) -> str:
        """The best reading now; at the end of a stream, the arguments."""
        mode = self.mode or self._likely_mode()
        return self.cumulative if mode == "cumulative" else self.delta

    def resolve(self) -> None:
        """End of stream: fix the reading that :meth:`final` returns."""
        self.mode = self.mode or self._likely_mode()

    def extend_to(self, text: str) -> None:
        """Replace the arguments by ``text``, which starts with everything relayed so far."""
        self.mode = "delta"
        self.delta = text

    def _likely_mode(self) -> Mode:
        # At most one reading can be whole JSON (a whole snapshot, appended to the text before
        # it, is not); when neither is, deltas are what most servers send.
        cum_whole = self._cum_scan is not None and self._cum_scan.complete
        delta_whole = self._delta_scan is not None and self._delta_scan.complete
        return "cumulative" if cum_whole and not delta_whole else "delta"


def _common_prefix(a: str, b: str) -> str:
    if b.startswith(a):
        return a
    if a.startswith(b):
        return b
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return a[:i]


def _is_json(text: str) -> bool:
    scan = _ArgScan()
    scan.feed(text)
    return scan.complete


# --------------------------------------------------------------------------------------------
# The assembler


class _Call:
    __slots__ = ("args", "emitted", "id", "index", "name", "upstream_ids")

    def __init__(self, call_id: str, mode: Mode | None) -> None:
        self.id = call_id
        self.name: str | None = None
        self.args = _Arguments(mode)
        self.index: int | None = None
        self.emitted = 0
        self.upstream_ids: set[str] = set()


_Key = tuple[str, int]


class ToolCallAssembler:
    """Assembles the tool calls of one streamed choice; see the module docstring for dialects.

    ``tool_names``, when given, is the set of tools offered to the model: plain JSON content is
    only taken for a call when it names one of them (explicit ``tool_calls`` and
    ``<tool_call>`` blocks are always taken, so a wrong name reaches execution as an error the
    model can read).
    """

    def __init__(self, tool_names: Iterable[str] | None = None) -> None:
        self._tool_names = frozenset(tool_names) if tool_names is not None else None
        self._calls: list[_Call] = []
        self._by_id: dict[str, _Call] = {}
        self._by_key: dict[_Key, _Call] = {}
        self._last: _Call | None = None
        self._used_ids: set[str] = set()
        self._next_index = 0
        self._mode_hint: Mode | None = None
        self._seen_tool_calls = False
        self._content = ContentParser(self._tool_names, self._add_text_calls)

    # -- public ---------------------------------------------------------------------------

    def feed(self, delta: Mapping[str, Any]) -> tuple[list[ToolCallDelta], str | None]:
        """Take ``choices[0].delta`` of one chunk; returns (tool-call deltas, text) to relay.

        The deltas are in index order; a call's first delta and its first fragment may come in
        the same list. Text is None when nothing is to be shown yet.
        """
        if not isinstance(delta, Mapping):
            return [], None
        tool_calls = delta.get("tool_calls")
        structured = False
        if isinstance(tool_calls, list):
            for item in tool_calls:
                if isinstance(item, Mapping):
                    self._seen_tool_calls = True
                    structured = True
                    self._take(item, legacy=False)
        function_call = delta.get("function_call")
        # llama.cpp repeats each tool_calls fragment as a legacy function_call: take one.
        if isinstance(function_call, Mapping) and not structured and not self._seen_tool_calls:
            self._take(function_call, legacy=True)
        text = ""
        content = delta.get("content")
        if isinstance(content, str) and content:
            text = self._content.feed(content)
        return self._drain(), text or None

    def finish(self) -> tuple[list[ToolCallDelta], str | None]:
        """End of stream: release what was held back, settle every call's arguments."""
        text = self._content.finish()
        kept: list[_Call] = []
        for call in self._calls:
            call.args.resolve()
            if call.name is None:
                if not call.args.final():
                    continue  # an empty shell (e.g. a bare {"index": 0}): nothing was called
                call.name = ""
            final = call.args.final()
            if not final.strip(JSON_WS):
                # "No arguments" is "{}" to every client and to execution.
                call.args.extend_to(final + "{}")
            kept.append(call)
        self._calls = kept
        return self._drain(everything=True), text or None

    @property
    def calls(self) -> list[AssembledCall]:
        """The calls announced so far, in index order (complete once :meth:`finish` ran)."""
        return [
            AssembledCall(id=c.id, name=c.name or "", arguments=c.args.final(), index=c.index)
            for c in sorted(self._calls, key=_index_of)
            if c.index is not None
        ]

    # -- structured deltas ----------------------------------------------------------------

    def _take(self, item: Mapping[str, Any], *, legacy: bool) -> None:
        function = item if legacy else item.get("function")
        if not isinstance(function, Mapping):
            function = {}
        name = function.get("name")
        name = name.strip() if isinstance(name, str) and name.strip() else None
        args = _arguments_text(function.get("arguments"))
        upstream_id = None if legacy else item.get("id")
        upstream_id = upstream_id if isinstance(upstream_id, str) and upstream_id else None
        index = item.get("index")
        key: _Key | None
        if legacy:
            key = ("function_call", 0)
        elif isinstance(index, int) and not isinstance(index, bool):
            key = ("tool_calls", index)
        else:
            key = None

        call = self._route(upstream_id, key, name, args)
        if call is None:
            call = self._new_call(upstream_id)
        if name is not None and call.name is None:
            call.name = name
        if upstream_id is not None:
            call.upstream_ids.add(upstream_id)
            self._by_id.setdefault(upstream_id, call)
        if key is not None:
            self._by_key[key] = call
        if args and not (name is not None and self._is_repeat(call, name, args)):
            decided = call.args.add(args)
            if decided is not None and self._mode_hint is None:
                self._mode_hint = decided
        self._last = call

    def _route(
        self, upstream_id: str | None, key: _Key | None, name: str | None, args: str
    ) -> _Call | None:
        """The call this item continues, or None when it starts a new one."""
        known = self._by_id.get(upstream_id) if upstream_id is not None else None
        if known is not None:
            candidate: _Call | None = known
        elif key is not None:
            candidate = self._by_key.get(key)
            if candidate is None:
                return None
        else:
            candidate = self._last
        if candidate is None:
            return None
        if known is None and upstream_id is not None and candidate.upstream_ids:
            # A new id at a known index: a new call (Ollama), unless a server that mints an id
            # per chunk is still streaming this call's arguments.
            if name is not None or candidate.args.complete():
                return None
            return candidate
        if (
            name is not None
            and candidate.name is not None
            and candidate.args.complete()
            and not self._is_repeat(candidate, name, args)
        ):
            # A name after a call whose arguments are whole: the next call (no ids, no index).
            return None
        return candidate

    @staticmethod
    def _is_repeat(call: _Call, name: str, args: str) -> bool:
        """The item restates a finished call (a last full snapshot), adding nothing."""
        return (
            name == call.name and call.args.complete() and (not args or args == call.args.final())
        )

    def _new_call(self, upstream_id: str | None) -> _Call:
        call_id = upstream_id
        if call_id is None or call_id in self._used_ids:
            call_id = new_call_id()
        self._used_ids.add(call_id)
        call = _Call(call_id, self._mode_hint)
        self._calls.append(call)
        return call

    # -- calls written as text ------------------------------------------------------------

    def _add_text_calls(self, calls: list[TextCall]) -> None:
        for name, args in calls:
            call = self._new_call(None)
            call.args = _Arguments("delta")
            call.name = name
            call.args.add(args)
        # Structured deltas that follow must not continue a call taken from text.
        self._last = None

    # -- output ---------------------------------------------------------------------------

    def _drain(self, *, everything: bool = False) -> list[ToolCallDelta]:
        out: list[ToolCallDelta] = []
        for call in self._calls:
            if call.index is None:
                if call.name is None:
                    continue
                call.index = self._next_index
                self._next_index += 1
                out.append(
                    {
                        "index": call.index,
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": ""},
                    }
                )
            text = call.args.final() if everything else call.args.settled()
            if len(text) > call.emitted:
                out.append({"index": call.index, "function": {"arguments": text[call.emitted :]}})
                call.emitted = len(text)
        out.sort(key=_delta_index)
        return out


def _index_of(call: _Call) -> int:
    return call.index if call.index is not None else -1


def _delta_index(delta: ToolCallDelta) -> int:
    index = delta["index"]
    return index if isinstance(index, int) else 0


def _arguments_text(value: Any) -> str:
    """Arguments as text: strings as sent, objects (Ollama's native form) as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)
