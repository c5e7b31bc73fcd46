"""An incremental JSON prefix scanner: can this text still become one JSON value?

Tool-call assembly uses it to decide, chunk by chunk, whether streamed text may still be a
tool call (and must be held back) or can be released as answer text.
"""

from __future__ import annotations

import json
import re

# --------------------------------------------------------------------------------------------
# An incremental JSON prefix checker


JSON_WS = " \t\r\n"
_HEX = frozenset("0123456789abcdefABCDEF")
_STRING_RUN = re.compile(r'[^"\\]+')
_NUMBER_CHARS = frozenset("0123456789+-.eE")
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_NUMBER_PREFIX = re.compile(r"-?(?:(?:0|[1-9]\d*)(?:\.\d*|(?:\.\d+)?[eE][+-]?\d*)?)?")
_LITERALS = {"t": "rue", "f": "alse", "n": "ull"}

(
    _VALUE,
    _ARR_FIRST,
    _OBJ_FIRST,
    _OBJ_KEY,
    _COLON,
    _AFTER,
    _STRING,
    _ESCAPE,
    _UNICODE,
    _NUM,
    _LITERAL,
    _DONE,
    _INVALID,
) = range(13)


class JsonPrefix:
    """Tells, text fed piece by piece, whether it is a prefix of one JSON object or array.

    :meth:`feed` stops right after the value closes and returns how much it consumed, so the
    caller can see what follows. With ``watch_keys`` it records the keys of the top-level object
    (or of the objects directly inside a top-level array) and whether such an array holds
    anything but objects: enough to tell early that content is not a tool call.
    """

    __slots__ = (
        "_hex_left",
        "_in_key",
        "_key",
        "_literal",
        "_number",
        "_stack",
        "_state",
        "array_scalar",
        "keys",
        "watch_keys",
    )

    def __init__(self, *, watch_keys: bool = False) -> None:
        self._state = _VALUE
        self._stack: list[str] = []
        self._number: list[str] = []
        self._literal = ""
        self._hex_left = 0
        self._key: list[str] | None = None
        self._in_key = False
        self.watch_keys = watch_keys
        self.keys: list[str] = []
        self.array_scalar = False

    @property
    def complete(self) -> bool:
        """The value has closed."""
        return self._state == _DONE

    @property
    def invalid(self) -> bool:
        """What was fed cannot start a JSON object or array."""
        return self._state == _INVALID

    def feed(self, text: str) -> int:
        """Consume ``text`` up to the end of the value; returns the number of characters used."""
        i = 0
        n = len(text)
        state = self._state
        stack = self._stack
        while i < n and state != _DONE and state != _INVALID:
            c = text[i]
            if state == _STRING:
                run = _STRING_RUN.match(text, i)
                if run is not None:
                    if self._key is not None:
                        self._key.append(run.group())
                    i = run.end()
                    continue
                i += 1
                if c == "\\":
                    if self._key is not None:
                        self._key.append(c)
                    state = _ESCAPE
                elif self._in_key:
                    state = _COLON
                    self._end_key()
                else:
                    state = _DONE if not stack else _AFTER
                continue
            if state == _ESCAPE:
                if self._key is not None:
                    self._key.append(c)
                i += 1
                if c == "u":
                    self._hex_left = 4
                    state = _UNICODE
                elif c in '"\\/bfnrt':
                    state = _STRING
                else:
                    state = _INVALID
                continue
            if state == _UNICODE:
                if c not in _HEX:
                    state = _INVALID
                    continue
                if self._key is not None:
                    self._key.append(c)
                i += 1
                self._hex_left -= 1
                if not self._hex_left:
                    state = _STRING
                continue
            if state == _NUM:
                if c in _NUMBER_CHARS:
                    self._number.append(c)
                    i += 1
                    continue
                if not _NUMBER.fullmatch("".join(self._number)):
                    state = _INVALID
                    continue
                self._number.clear()
                state = _DONE if not stack else _AFTER
                continue  # c is read again as what follows the number
            if state == _LITERAL:
                if c != self._literal[0]:
                    state = _INVALID
                    continue
                i += 1
                self._literal = self._literal[1:]
                if not self._literal:
                    state = _DONE if not stack else _AFTER
                continue
            if c in JSON_WS:
                i += 1
                continue
            i += 1
            if state in (_VALUE, _ARR_FIRST):
                if state == _ARR_FIRST and c == "]":
                    stack.pop()
                    state = _DONE if not stack else _AFTER
                    continue
                if not stack and c not in "{[":
                    state = _INVALID
                    continue
                if self.watch_keys and len(stack) == 1 and stack[0] == "[" and c != "{":
                    self.array_scalar = True
                if c == "{":
                    stack.append("{")
                    state = _OBJ_FIRST
                elif c == "[":
                    stack.append("[")
                    state = _ARR_FIRST
                elif c == '"':
                    state = _STRING
                elif c in "-0123456789":
                    self._number.append(c)
                    state = _NUM
                elif c in _LITERALS:
                    self._literal = _LITERALS[c]
                    state = _LITERAL
                else:
                    state = _INVALID
            elif state in (_OBJ_FIRST, _OBJ_KEY):
                if state == _OBJ_FIRST and c == "}":
                    stack.pop()
                    state = _DONE if not stack else _AFTER
                elif c == '"':
                    state = _STRING
                    self._start_key()
                else:
                    state = _INVALID
            elif state == _COLON:
                state = _VALUE if c == ":" else _INVALID
            else:  # _AFTER
                top = stack[-1]
                if c == ",":
                    state = _OBJ_KEY if top == "{" else _VALUE
                elif (c == "}" and top == "{") or (c == "]" and top == "["):
                    stack.pop()
                    state = _DONE if not stack else _AFTER
                else:
                    state = _INVALID
        if state == _NUM and not _NUMBER_PREFIX.fullmatch("".join(self._number)):
            state = _INVALID
        self._state = state
        return i

    def _start_key(self) -> None:
        self._in_key = True
        stack = self._stack
        # Only keys that tell a tool call from data are worth their characters.
        if self.watch_keys and (stack == ["{"] or stack == ["[", "{"]):
            self._key = []

    def _end_key(self) -> None:
        self._in_key = False
        key, self._key = self._key, None
        if key is None:
            return
        raw = "".join(key)
        try:
            self.keys.append(json.loads(f'"{raw}"', strict=False))
        except ValueError:
            self.keys.append(raw)
