"""The one SSE encoder and incremental decoder, shared by server, SDK, CLI and tests.

The decoder follows the WHATWG event-stream parsing rules: lines end at CRLF, LF or CR (also
when a CRLF pair is split between two reads), a leading BOM is dropped, ``:`` starts a
comment, one space after the colon is removed, ``id`` values with NUL are ignored, ``retry``
takes digits only, and an event is dispatched at a blank line only if it has data.
"""

from __future__ import annotations

from dataclasses import dataclass

_NEWLINES = (b"\r\n", b"\r", b"\n")


def encode_frame(
    event: str, data: bytes, *, id: int | str | None = None, retry: int | None = None
) -> bytes:
    """Encode one event; fields in the seed serializer's order: id, event, retry, data."""
    parts: list[bytes] = []
    if id is not None:
        parts.append(b"id: %s\n" % str(id).encode())
    parts.append(b"event: %s\n" % event.encode())
    if retry:
        parts.append(b"retry: %d\n" % retry)
    # Byte values, not one-byte strings: ``in`` then is one memchr.
    if 10 in data or 13 in data:
        for line in data.splitlines():
            parts.append(b"data: %s\n" % line)
    else:
        parts.append(b"data: %s\n" % data)
    parts.append(b"\n")
    return b"".join(parts)


def encode_comment(text: str = "") -> bytes:
    """Encode a comment line (used for keep-alives); clients ignore it."""
    return b": %s\n\n" % text.encode() if text else b":\n\n"


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event. ``id`` is the stream's last event id at dispatch time."""

    event: str
    data: str
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Incremental decoder: feed it bytes as they arrive, get whole events back."""

    __slots__ = ("_buf", "_data", "_event", "_last_id", "_retry", "_saw_cr", "_started")

    def __init__(self) -> None:
        self._buf = b""
        self._saw_cr = False
        self._started = False
        self._data: list[str] = []
        self._event = ""
        self._last_id: str | None = None
        self._retry: int | None = None

    @property
    def last_event_id(self) -> str | None:
        """The id to send as ``Last-Event-ID`` when reconnecting."""
        return self._last_id

    @property
    def retry(self) -> int | None:
        """The most recent ``retry`` value (reconnection delay in ms), if any."""
        return self._retry

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Consume bytes and return the events they complete."""
        if not chunk:
            return []
        if self._saw_cr:
            # The CR that ended the last read already ended a line; its LF is not a new one.
            self._saw_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf = self._buf + chunk
        if not self._started:
            if len(buf) < 3 and b"\xef\xbb\xbf".startswith(buf):
                self._buf = buf
                return []
            self._started = True
            if buf.startswith(b"\xef\xbb\xbf"):
                buf = buf[3:]
        events: list[ServerSentEvent] = []
        start = 0
        n = len(buf)
        while start < n:
            lf = buf.find(b"\n", start)
            cr = buf.find(b"\r", start)
            if lf == -1 and cr == -1:
                break
            if cr == -1 or (lf != -1 and lf < cr):
                end, nxt = lf, lf + 1
            elif cr + 1 < n:
                end, nxt = cr, cr + 2 if buf[cr + 1] == 0x0A else cr + 1
            else:
                end, nxt = cr, cr + 1
                self._saw_cr = True
            event = self._line(buf[start:end].decode("utf-8", "replace"))
            if event is not None:
                events.append(event)
            start = nxt
        self._buf = buf[start:]
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None
        name, sep, value = line.partition(":")
        if sep and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return ServerSentEvent(
            event=event or "message", data="\n".join(data), id=self._last_id, retry=self._retry
        )
