"""Separates a reasoning model's thinking from its answer.

Models show thinking three ways: ``<think>...</think>`` inside ``content`` (tags may be split
across chunks), a ``reasoning_content`` field (DeepSeek, vLLM) or a ``reasoning`` field
(Ollama, OpenRouter). All three end up as ``delta.reasoning_content``.
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


class ThinkSplitter:
    """Splits streamed content into (answer, reasoning) around ``<think>`` tags."""

    __slots__ = ("_pending", "thinking")

    def __init__(self) -> None:
        self.thinking = False
        self._pending = ""

    def idle(self) -> bool:
        """True when the next chunk without ``<`` can pass through untouched."""
        return not self.thinking and not self._pending

    def feed(self, text: str) -> tuple[str, str]:
        """Split one content delta; a possible partial tag at the end is held back."""
        buf = self._pending + text
        self._pending = ""
        answer: list[str] = []
        thought: list[str] = []
        while buf:
            tag = CLOSE if self.thinking else OPEN
            out = thought if self.thinking else answer
            i = buf.find(tag)
            if i >= 0:
                out.append(buf[:i])
                buf = buf[i + len(tag) :]
                self.thinking = not self.thinking
                continue
            k = _partial_suffix(buf, tag)
            out.append(buf[: len(buf) - k])
            self._pending = buf[len(buf) - k :]
            break
        return "".join(answer), "".join(thought)

    def flush(self) -> tuple[str, str]:
        """What is still held back at the end of the stream (never a tag after all)."""
        pending, self._pending = self._pending, ""
        return ("", pending) if self.thinking else (pending, "")
