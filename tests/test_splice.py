"""The relay's unparsed path (``ChunkNormaliser.splicer``) relays exactly what parsing would.

Streams of upstream chunks, written as different model servers write them (key order,
spacing, ASCII escapes, changing ``created``, reasoning tags, role and finish chunks, usage),
go through two normalisers: one parses every chunk, the other first offers each chunk's bytes
to its splicer. Every relayed payload, and the answer, reasoning, finish reason and usage they
end with, must be the same; and on the common shape the splice must actually be taken.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stagecast.backends.base import UpstreamChunk
from stagecast.stages.context import StageStats
from stagecast.stages.normalise import ChunkNormaliser, ReasoningMode, _plain

TEXTS = st.one_of(
    st.sampled_from(["Hello", " world", ".", "plain", "more text"]),
    st.sampled_from(["", "<", "<think>", "hm</think>", "a\nb", 'say "hi"', "caf\u00e9"]),
    st.text(max_size=12),
    st.text(alphabet='abc <>/\\"\n\u00e9\u4e2d\U0001f600', max_size=8),
)
KINDS = ["text"] * 4 + ["reasoning"] * 2 + ["role", "finish", "usage", "empty", "bare"]

PLAIN = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": "m"}


@st.composite
def streams(draw: st.DrawFn) -> list[dict[str, Any]]:
    """The chunks of one stream (as dicts): mostly plain content, sometimes something else.

    Like a real server, a stream keeps its chunks' layout; ``created`` may tick over, and a
    badly behaved one changes its id or leaves id and model out ("bare").
    """
    logprobs = draw(st.booleans())
    ticks = draw(st.booleans())
    renames = draw(st.booleans())
    out: list[dict[str, Any]] = []
    for kind in draw(st.lists(st.sampled_from(KINDS), max_size=25)):
        delta: dict[str, Any] = {}
        choice: dict[str, Any] = {"index": 0, "delta": delta}
        if kind in ("text", "bare"):
            delta["content"] = draw(TEXTS)
        elif kind == "role":
            delta.update(role="assistant", content="")
        elif kind == "reasoning":
            delta["reasoning_content"] = draw(TEXTS)
        if logprobs:
            choice["logprobs"] = None
        choice["finish_reason"] = "stop" if kind == "finish" else None
        created = 1700000000 + (draw(st.integers(0, 1)) if ticks else 0)
        chunk = {**PLAIN, "created": created, "choices": [] if kind == "usage" else [choice]}
        if renames:
            chunk["id"] = draw(st.sampled_from(["chatcmpl-1", "chatcmpl-2"]))
        if kind == "bare":
            del chunk["id"], chunk["model"]
        if kind == "usage":
            chunk["usage"] = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
        out.append(chunk)
    return out


def encode(chunk: dict[str, Any], style: str) -> bytes:
    """The chunk's bytes as one kind of model server writes them."""
    if style == "compact":
        return orjson.dumps(chunk)
    if style == "python":  # json.dumps defaults: spaces after separators, ASCII escapes
        return json.dumps(chunk).encode()
    if style == "sorted":
        return orjson.dumps(chunk, option=orjson.OPT_SORT_KEYS)
    return json.dumps(chunk, ensure_ascii=False, separators=(",", ":")).encode()


PREFIX = b'{"stage_id":"s","chunk":'


class Splicer:
    """A normaliser's splicer, with what it emitted and counted."""

    def __init__(self, norm: ChunkNormaliser) -> None:
        self.stats = StageStats()
        self.emitted: list[tuple[str, bytes]] = []
        self.on_bytes = norm.splicer(
            lambda event, data: self.emitted.append((event, data)), "chunk", PREFIX, self.stats
        )

    def __call__(self, raw: bytes) -> bytes | None:
        """The chunk JSON it relayed for ``raw`` (None: refused, nothing emitted)."""
        before = len(self.emitted)
        if not self.on_bytes(raw):
            assert len(self.emitted) == before
            return None
        [(event, data)] = self.emitted[before:]
        assert event == "chunk" and data.startswith(PREFIX) and data.endswith(b"}")
        assert self.stats.chunks == len(self.emitted)
        return data[len(PREFIX) : -1]


def relay_all(
    raws: list[bytes], mode: ReasoningMode, *, splice: bool
) -> tuple[list[bytes | None], ChunkNormaliser, int]:
    norm = ChunkNormaliser(mode)
    splicer = Splicer(norm)
    out: list[bytes | None] = []
    spliced = 0
    for raw in raws:
        payload = splicer(raw) if splice else None
        if payload is None:
            payload = norm.process(UpstreamChunk(orjson.loads(raw), raw))
        else:
            spliced += 1
        out.append(payload)
    return out, norm, spliced


# A state that matters (an open <think> block, a held tag) needs a few chunks in the right
# order: more examples than the default find it. Drawing them is slower than hypothesis'
# default budget for one input.
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    streams(),
    st.sampled_from(["compact", "python", "sorted", "unicode"]),
    st.sampled_from(["separate", "inline", "hidden"]),
)
@example(  # the answer after inline reasoning must close the <think> block
    [
        {**PLAIN, "choices": [{"index": 0, "delta": {"content": "a"}}]},
        {**PLAIN, "choices": [{"index": 0, "delta": {"reasoning_content": "b"}}]},
        {**PLAIN, "choices": [{"index": 0, "delta": {"content": "c"}}]},
    ],
    "compact",
    "inline",
)
def test_splice_relays_what_parsing_relays(
    stream: list[dict[str, Any]], style: str, mode: ReasoningMode
) -> None:
    raws = [encode(c, style) for c in stream]
    parsed, by_parse, _ = relay_all(raws, mode, splice=False)
    spliced, by_splice, _ = relay_all(raws, mode, splice=True)
    assert spliced == parsed
    assert by_splice.text == by_parse.text
    assert by_splice.reasoning == by_parse.reasoning
    assert by_splice.finish_reason == by_parse.finish_reason
    assert by_splice.usage == by_parse.usage


def test_plain_chunks_after_the_first_are_spliced() -> None:
    words = ["Once", " upon", " a", " time", " there", " was", " a", " gateway"]
    raws = [
        orjson.dumps(
            {
                "id": "chatcmpl-2",
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": "m",
                "system_fingerprint": "fp",
                "choices": [
                    {"index": 0, "delta": {"content": w}, "logprobs": None, "finish_reason": None}
                ],
            }
        )
        for w in words
    ]
    out, norm, spliced = relay_all(raws, "separate", splice=True)
    assert out == raws
    assert norm.text == "Once upon a time there was a gateway"
    assert spliced == len(words) - 1  # the first chunk is parsed, and becomes the template


def test_a_text_that_is_not_plain_is_parsed() -> None:
    norm = ChunkNormaliser("separate")
    splice = Splicer(norm)

    def chunk(text: str) -> bytes:
        return orjson.dumps(
            {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "m",
                "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
            }
        )

    first = chunk("plain")
    assert norm.process(UpstreamChunk(orjson.loads(first), first)) == first
    assert splice(chunk("more")) == chunk("more")
    # An escape, a quote, a control character or a possible tag: parsed, never spliced.
    for text in ['a "quote"', "back\\slash", "line\nbreak", "<think>", "tab\there"]:
        assert splice(chunk(text)) is None
    # Bytes that are not UTF-8 are not spliced either (parsing reports them).
    assert splice(chunk("x").replace(b'"x"', b'"\xff"')) is None
    assert norm.text == "plainmore"


def test_a_template_is_never_learned_where_the_text_is_ambiguous() -> None:
    # The text "m" is also the model's name: the content cannot be told apart by bytes.
    norm = ChunkNormaliser("separate")
    raw = orjson.dumps(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": "m"}, "finish_reason": None}],
        }
    )
    norm.process(UpstreamChunk(orjson.loads(raw), raw))
    assert Splicer(norm)(raw.replace(b'"content":"m"', b'"content":"n"')) is None


def test_the_plain_check_refuses_exactly_quotes_backslashes_control_bytes_and_angle() -> None:
    refused = set(range(32)) | {ord('"'), ord("\\"), ord("<")}
    for byte in range(256):
        text = b"ab" + bytes([byte]) + b"yz"
        assert _plain(text) is (byte not in refused), byte
    assert _plain(b"") is True
