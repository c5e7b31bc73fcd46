"""Turns upstream chunks into valid ``ChatCompletionChunk`` JSON for the relay.

The common chunk (plain content, nothing to fix) is not re-serialised: its upstream bytes go
into the event as they came. Only chunks that need a change are rebuilt.

Most chunks of a stream differ only in their content text. Once a chunk of that shape has
been parsed and passed unchanged, its bytes before and after the text become the stream's
template; a later chunk made of that same head and tail around a plain string (no escape, no
control character, no ``<``) is relayed without being parsed at all (``splicer``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import orjson

from stagecast.backends.base import UpstreamChunk
from stagecast.stages.reasoning import ThinkSplitter

if TYPE_CHECKING:
    from stagecast.stages.context import EmitNow, StageStats

ReasoningMode = Literal["separate", "inline", "hidden"]
# Sees (choice, delta) of the first choice after reasoning is split off and before the answer
# is accumulated; returns True if it changed the delta. Tool-call assembly hooks in here.
DeltaHook = Callable[[dict[str, Any], dict[str, Any]], bool]

_REQUIRED = ("id", "object", "created", "model", "choices")
# What a JSON string may not hold to be spliced: escapes, quotes, control characters, and the
# ``<`` that may open a reasoning tag.
_NOT_PLAIN = bytes(range(32)) + b'"\\<'
# Every byte to itself except those, which become 0xFF: translating a plain text changes
# nothing (and CPython then hands back the same object, so the comparison is immediate).
_MARK_NOT_PLAIN = bytes(0xFF if byte in _NOT_PLAIN else byte for byte in range(256))


def _plain(text: bytes) -> bool:
    """True if ``text`` holds none of ``_NOT_PLAIN``."""
    return text.translate(_MARK_NOT_PLAIN) == text


class ChunkNormaliser:
    """Per-stream state for normalising chunks and accumulating the answer."""

    __slots__ = (
        "_created",
        "_head",
        "_held",
        "_id",
        "_inline_open",
        "_model",
        "_splitter",
        "_tail",
        "_template_id",
        "finish_reason",
        "hook",
        "mode",
        "reasoning_parts",
        "text_parts",
        "usage",
    )

    def __init__(
        self, mode: ReasoningMode = "separate", model: str = "", hook: DeltaHook | None = None
    ) -> None:
        self.mode = mode
        self.hook = hook
        self._splitter = ThinkSplitter()
        self._id = ""
        self._model = model
        self._created = int(time.time())
        self._inline_open = False
        # True while the think state may change how the next text reads (a <think> block
        # open, a partial tag held back): then no chunk is spliced. Only ``_choice`` changes it.
        self._held = False
        # The splice template: the bytes before and after the content text (see splicer).
        self._head = b""
        self._tail = b""
        self._template_id: tuple[str, str] = ("", "")
        self.text_parts: list[str] = []
        self.reasoning_parts: list[str] = []
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None

    @property
    def text(self) -> str:
        """The answer so far."""
        return "".join(self.text_parts)

    @property
    def reasoning(self) -> str:
        """The reasoning so far."""
        return "".join(self.reasoning_parts)

    def splicer(
        self, emit: EmitNow, event: str, prefix: bytes, stats: StageStats
    ) -> Callable[[bytes], bool]:
        """The relay's unparsed path: a function that, given one chunk's JSON bytes ``raw``,
        returns False and does nothing unless ``raw`` is the template around a new plain
        text. If it is, the text is taken into the answer, the chunk is counted in
        ``stats.chunks`` and emitted as ``event`` with the payload ``prefix + raw + b"}"``,
        and it returns True. A chunk it refuses must go through ``process``.

        One function on purpose: it runs for nearly every chunk of a stream, and the check
        and the emit together cost one call less than apart."""
        parts = self.text_parts
        mark = _MARK_NOT_PLAIN

        def splice(raw: bytes) -> bool:
            head = self._head
            if not head or self._held or not raw.startswith(head) or not raw.endswith(self._tail):
                # No template yet; or the text may end a <think> block or continue a tag.
                return False
            text = raw[len(head) : len(raw) - len(self._tail)]
            if not text or text.translate(mark) != text:  # _plain, inline
                return False
            try:
                parts.append(text.decode())
            except UnicodeDecodeError:
                return False
            self._id, self._model = self._template_id
            stats.chunks += 1
            emit(event, prefix + raw + b"}")
            return True

        return splice

    def process(self, chunk: UpstreamChunk) -> bytes | None:
        """Normalise one chunk; returns the JSON to relay, or None if nothing is left of it."""
        data = chunk.data
        changed = chunk.raw is None or 10 in chunk.raw
        for key in _REQUIRED:
            if key not in data or data[key] is None:
                changed = True
                self._fill(data, key)
        if data.get("object") != "chat.completion.chunk":
            data["object"] = "chat.completion.chunk"
            changed = True
        self._id = data["id"]
        self._model = data["model"]
        usage = data.get("usage")
        if usage:
            self.usage = usage
        choices = data["choices"]
        if not isinstance(choices, list):
            data["choices"] = choices = []
            changed = True
        for choice in choices:
            if self._choice(choice):
                changed = True
        if not changed:
            if len(choices) == 1 and not usage and chunk.raw is not None:
                self._learn(chunk.raw, data, choices[0])
            return chunk.raw
        if len(choices) == 1 and not usage and _empty(choices[0]):
            # Everything in it was held back or moved (a partial tag, a tool call in text).
            return None
        return orjson.dumps(data)

    def _learn(self, raw: bytes, data: dict[str, Any], choice: dict[str, Any]) -> None:
        """Take ``raw`` (relayed unchanged) as the splice template if it is a plain text
        chunk whose text occurs once in it."""
        if self.hook is not None or self._held:
            return
        if self._head and raw.startswith(self._head) and raw.endswith(self._tail):
            return  # the template already fits
        delta = choice["delta"]
        text = delta.get("content")
        if len(delta) != 1 or not isinstance(text, str) or not text or choice.get("finish_reason"):
            return
        quoted = orjson.dumps(text)
        if not _plain(quoted[1:-1]) or raw.count(quoted) != 1:
            return
        at = raw.index(quoted) + 1
        head, tail = raw[:at], raw[at + len(quoted) - 2 :]
        # Proof that the text found is the content: the template around another text parses
        # to this chunk with that text.
        probe = "stagecast-template-probe"
        try:
            parsed = orjson.loads(head + probe.encode() + tail)
        except orjson.JSONDecodeError:
            return
        delta["content"] = probe
        try:
            if parsed == data:
                self._head, self._tail = head, tail
                self._template_id = (data["id"], data["model"])
        finally:
            delta["content"] = text

    def _fill(self, data: dict[str, Any], key: str) -> None:
        if key == "id":
            data["id"] = self._id or "chatcmpl-stagecast"
        elif key == "object":
            data["object"] = "chat.completion.chunk"
        elif key == "created":
            data["created"] = self._created
        elif key == "model":
            data["model"] = self._model or "unknown"
        elif key == "choices":
            data["choices"] = []

    def _choice(self, choice: dict[str, Any]) -> bool:
        changed = False
        if "index" not in choice:
            choice["index"] = 0
            changed = True
        finish = choice.get("finish_reason")
        if finish:
            self.finish_reason = finish
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            choice["delta"] = delta = {}
            changed = True
        if "reasoning" in delta:
            # Ollama and OpenRouter name the field ``reasoning``.
            value = delta.pop("reasoning")
            if value and not delta.get("reasoning_content"):
                delta["reasoning_content"] = value
            changed = True
        content = delta.get("content")
        if content and (not self._splitter.idle() or "<" in content):
            answer, thought = self._splitter.feed(content)
            delta["content"] = answer or None
            if thought:
                delta["reasoning_content"] = (delta.get("reasoning_content") or "") + thought
            changed = True
        if finish:
            answer, thought = self._splitter.flush()
            if answer:
                delta["content"] = (delta.get("content") or "") + answer
                changed = True
            if thought:
                delta["reasoning_content"] = (delta.get("reasoning_content") or "") + thought
                changed = True
        if self.hook is not None and choice["index"] == 0 and self.hook(choice, delta):
            changed = True
        changed = self._apply_mode(delta) or changed
        self._held = self._inline_open or not self._splitter.idle()
        return changed

    def _apply_mode(self, delta: dict[str, Any]) -> bool:
        content = delta.get("content")
        reasoning = delta.get("reasoning_content")
        if reasoning and self.mode != "hidden":
            self.reasoning_parts.append(reasoning)
        if self.mode == "separate" or not (reasoning or self._inline_open):
            if content:
                self.text_parts.append(content)
            return False
        if reasoning:
            del delta["reasoning_content"]
        if self.mode == "hidden":
            if content:
                self.text_parts.append(content)
            return bool(reasoning)
        # inline: one <think> block around the whole of the reasoning, as the model wrote it
        pieces: list[str] = []
        if reasoning:
            if not self._inline_open:
                pieces.append("<think>")
                self._inline_open = True
            pieces.append(reasoning)
        if content or (reasoning is None and self._inline_open and delta.get("finish_reason")):
            pieces.append("</think>")
            self._inline_open = False
        if content:
            pieces.append(content)
        if not pieces:
            return bool(reasoning)
        merged = "".join(pieces)
        delta["content"] = merged
        self.text_parts.append(merged)
        return True


def _empty(choice: dict[str, Any]) -> bool:
    if choice.get("finish_reason"):
        return False
    delta = choice["delta"]
    return not any(value for value in delta.values())
