"""Tool calls written as text: Qwen-style JSON objects and Hermes ``<tool_call>`` blocks.

A small model often answers a tool request with a JSON object in plain content instead of
``tool_calls`` deltas; this module finds such calls in streamed content and holds back only
the text that may still turn out to be one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from stagecast.tools.jsonscan import JSON_WS, JsonPrefix

# --------------------------------------------------------------------------------------------
# Calls written as text


_TAG_OPEN = "<tool_call>"
_TAG_CLOSE = "</tool_call>"
_FENCE_HEAD = re.compile(r"```([A-Za-z0-9_+-]*)[ \t]*\r?\n")
_FENCE_HEAD_PREFIX = re.compile(r"`{0,3}|```[A-Za-z0-9_+-]*[ \t]*\r?")
_FENCE_BLOCK = re.compile(r"```[A-Za-z0-9_+-]*[ \t]*\r?\n(.*?)\s*```", re.DOTALL)
_FENCE_LANGS = frozenset({"", "json", "tool_call", "tool_code"})
# The only top-level keys a tool call written as JSON has; any other key means it is data.
_CALL_KEYS = frozenset({"name", "arguments", "parameters", "function", "type", "id", "tool_calls"})
_MISSING = object()

_START, _TEXT, _FENCE, _JSON, _TAG = range(5)

TextCall = tuple[str, str]


def parse_text_calls(
    text: str, *, strict: bool = True, tool_names: frozenset[str] | None = None
) -> list[TextCall] | None:
    """Read ``(name, arguments JSON)`` pairs from a tool call written as text, or None.

    ``strict`` (bare JSON in content) asks for an ``arguments``/``parameters`` key and no
    foreign keys, and, when ``tool_names`` is given, a known name: plain JSON answers must not
    turn into calls. Inside ``<tool_call>`` tags the intent is explicit, so none of that is
    required.
    """
    text = text.strip()
    fenced = _FENCE_BLOCK.fullmatch(text)
    if fenced is not None:
        text = fenced.group(1).strip()
    try:
        value = json.loads(text, strict=False)
    except ValueError:
        return None
    if isinstance(value, dict) and isinstance(value.get("tool_calls"), list):
        value = value["tool_calls"]
    items = value if isinstance(value, list) else [value]
    calls: list[TextCall] = []
    for item in items:
        call = _text_call(item, strict=strict, tool_names=tool_names)
        if call is None:
            return None
        calls.append(call)
    return calls or None


def _text_call(item: Any, *, strict: bool, tool_names: frozenset[str] | None) -> TextCall | None:
    if not isinstance(item, dict):
        return None
    if strict and not set(item) <= _CALL_KEYS:
        return None
    function = item.get("function")
    if isinstance(function, dict):
        item = function
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    name = name.strip()
    args = item.get("arguments", item.get("parameters", _MISSING))
    if strict:
        if tool_names is not None and name not in tool_names:
            return None
        if args is _MISSING and tool_names is None:
            return None
    if args is _MISSING or args is None:
        return name, "{}"
    if isinstance(args, str):
        return name, args
    if isinstance(args, dict):
        return name, json.dumps(args, ensure_ascii=False)
    return None


class ContentParser:
    """Splits content into text to show and tool calls written as text.

    Held back: content that starts (after whitespace) with ``{``, ``[`` or a fence, until it is
    a complete call or clearly is not one; a ``<tool_call>`` block until it closes; and at the
    end of a piece, a possible beginning of ``<tool_call>``.
    """

    def __init__(
        self, tool_names: frozenset[str] | None, on_calls: Callable[[list[TextCall]], None]
    ) -> None:
        self._tool_names = tool_names
        self._on_calls = on_calls
        self._buf = ""
        self._mode = _START
        self._after_call = False
        self._scan: JsonPrefix | None = None
        self._fenced = False
        self._json_at = 0
        self._scanned = 0

    def feed(self, text: str) -> str:
        self._buf += text
        return self._run(final=False)

    def finish(self) -> str:
        return self._run(final=True)

    def _calls(self, text: str, *, strict: bool) -> bool:
        calls = parse_text_calls(text, strict=strict, tool_names=self._tool_names)
        if not calls:
            return False
        self._on_calls(calls)
        return True

    def _run(self, final: bool) -> str:
        out: list[str] = []
        while True:
            buf = self._buf
            mode = self._mode
            if mode == _START:
                body = buf.lstrip(JSON_WS)
                if not body:
                    if final:
                        if not self._after_call:
                            out.append(buf)
                        self._buf = ""
                    break
                if self._after_call:
                    # Whitespace between calls is layout, not an answer.
                    self._buf = buf = body
                at = len(buf) - len(body)
                if body[0] in "{[":
                    self._begin_json(at, fenced=False)
                elif body[0] == "`":
                    self._mode = _FENCE
                    self._json_at = at
                else:
                    self._mode = _TEXT
                continue
            if mode == _TEXT:
                at = buf.find(_TAG_OPEN)
                if at >= 0:
                    out.append(buf[:at])
                    self._buf = buf[at + len(_TAG_OPEN) :]
                    self._mode = _TAG
                    continue
                keep = 0 if final else _partial_tag(buf)
                out.append(buf[: len(buf) - keep])
                self._buf = buf[len(buf) - keep :]
                break
            if mode == _FENCE:
                head = buf[self._json_at :]
                match = _FENCE_HEAD.match(head)
                if match is None:
                    if not final and _FENCE_HEAD_PREFIX.fullmatch(head):
                        break
                    self._mode = _TEXT
                    continue
                if match.group(1).lower() not in _FENCE_LANGS:
                    self._mode = _TEXT
                    continue
                after = self._json_at + match.end()
                body = buf[after:].lstrip(JSON_WS)
                if not body:
                    if final:
                        self._mode = _TEXT
                        continue
                    break
                if body[0] not in "{[":
                    self._mode = _TEXT
                    continue
                self._begin_json(len(buf) - len(body), fenced=True)
                continue
            if mode == _JSON:
                scan = self._scan
                assert scan is not None
                if not scan.complete:
                    self._scanned += scan.feed(buf[self._scanned :])
                if scan.invalid or scan.array_scalar or not set(scan.keys) <= _CALL_KEYS:
                    self._mode = _TEXT
                    continue
                if not scan.complete:
                    if final:
                        self._mode = _TEXT
                        continue
                    break
                end = self._scanned
                candidate = buf[self._json_at : end]
                if not self._fenced:
                    if self._calls(candidate, strict=True):
                        self._buf = buf[end:]
                        self._call_done()
                    else:
                        self._mode = _TEXT
                    continue
                tail = buf[end:].lstrip(JSON_WS)
                if tail.startswith("```"):
                    if self._calls(candidate, strict=True):
                        self._buf = tail[3:]
                        self._call_done()
                    else:
                        self._mode = _TEXT
                    continue
                if not final and "```".startswith(tail):
                    break
                if final and not tail and self._calls(candidate, strict=True):
                    # The stream ended before the closing fence: the call is still whole.
                    self._buf = ""
                    self._call_done()
                    continue
                self._mode = _TEXT
                continue
            # _TAG
            at = buf.find(_TAG_CLOSE)
            if at >= 0:
                if self._calls(buf[:at], strict=False):
                    self._buf = buf[at + len(_TAG_CLOSE) :]
                    self._call_done()
                else:
                    out.append(_TAG_OPEN + buf[: at + len(_TAG_CLOSE)])
                    self._buf = buf[at + len(_TAG_CLOSE) :]
                    self._mode = _TEXT
                continue
            if not final:
                break
            # Models often stop without the closing tag; a whole call is still a call.
            if self._calls(buf, strict=False):
                self._buf = ""
                self._call_done()
            else:
                out.append(_TAG_OPEN + buf)
                self._buf = ""
                self._mode = _TEXT
        return "".join(out)

    def _begin_json(self, at: int, *, fenced: bool) -> None:
        self._mode = _JSON
        self._fenced = fenced
        self._json_at = at
        self._scanned = at
        self._scan = JsonPrefix(watch_keys=True)

    def _call_done(self) -> None:
        self._mode = _START
        self._after_call = True
        self._scan = None


def _partial_tag(text: str) -> int:
    """Length of the longest end of ``text`` that could begin ``<tool_call>``."""
    start = text.rfind("<", max(0, len(text) - len(_TAG_OPEN) + 1))
    if start < 0:
        return 0
    tail = text[start:]
    return len(tail) if _TAG_OPEN.startswith(tail) else 0
