"""The SSE encoder and the incremental decoder (WHATWG parsing rules)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from stagecast.protocol.sse import ServerSentEvent, SSEDecoder, encode_comment, encode_frame
from tests import seed_events


def decode_all(data: bytes, splits: list[int] | None = None) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    cuts = [0, *(splits or []), len(data)]
    for start, end in itertools.pairwise(cuts):
        events += decoder.feed(data[start:end])
    return events


def test_frame_fields_come_in_the_seed_serializers_order() -> None:
    frame = encode_frame("done", b'{"stage_id":"s1"}', id=7, retry=1500)
    assert frame == b'id: 7\nevent: done\nretry: 1500\ndata: {"stage_id":"s1"}\n\n'
    seed = seed_events.serialize_sse_event(
        event="done", data=seed_events.DonePayload(stage_id="s1"), id="7", retry=1500
    ).encode()
    assert frame == seed


def test_multiline_data_becomes_several_data_lines() -> None:
    frame = encode_frame("error", b"line one\nline two")
    assert frame == b"event: error\ndata: line one\ndata: line two\n\n"
    [event] = decode_all(frame)
    assert event.data == "line one\nline two"


def test_every_byte_boundary_split_gives_the_same_events() -> None:
    stream = (
        b"\xef\xbb\xbf: comment\r\n"
        + encode_frame("chat_completion_chunk", b'{"a":"\xc3\xa9t\xc3\xa9"}', id=1, retry=2000)
        + b"id: 2\r\nevent: tool_summary\r\ndata: {}\r\n\r\n"
        + b"id: 3\revent: done\rdata:x\r\r"
        + encode_comment("keep-alive")
    )
    expected = decode_all(stream)
    assert [e.event for e in expected] == ["chat_completion_chunk", "tool_summary", "done"]
    assert [e.id for e in expected] == ["1", "2", "3"]
    assert expected[0].data == '{"a":"été"}'
    assert expected[2].data == "x"
    for i in range(len(stream) + 1):
        assert decode_all(stream, [i]) == expected, f"split at byte {i}"
    assert decode_all(stream, list(range(1, len(stream)))) == expected


def test_whatwg_field_rules() -> None:
    stream = (
        b"data\n\n"  # a field with no colon: empty data, dispatched as ""
        b"data:  two spaces\n\n"  # only one space is removed
        b"id: a\x00b\ndata: x\n\n"  # id with NUL is ignored
        b"retry: 12a\ndata: y\n\n"  # non-digit retry is ignored
        b"event: custom\n\n"  # no data: not dispatched
        b"unknown: field\ndata: z\n\n"
    )
    events = decode_all(stream)
    assert [e.data for e in events] == ["", " two spaces", "x", "y", "z"]
    assert events[2].id is None
    assert events[3].retry is None
    assert all(e.event == "message" for e in events)


def test_last_event_id_persists_across_events() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(b"id: 5\ndata: a\n\ndata: b\n\n")
    assert [e.id for e in events] == ["5", "5"]
    assert decoder.last_event_id == "5"


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["chat_completion_chunk", "done", "error"]),
            st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40),
        ),
        max_size=6,
    ),
    st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
)
def test_encode_then_decode_round_trips_under_any_split(
    events: list[tuple[str, str]], splits: list[int]
) -> None:
    # Data lines are split on newlines by the encoder and re-joined with "\n" by the decoder.
    stream = b"".join(
        encode_frame(name, text.encode(), id=i + 1) for i, (name, text) in enumerate(events)
    )
    cuts = sorted({min(s, len(stream)) for s in splits})
    decoded = decode_all(stream, cuts)
    assert [(e.event, e.id) for e in decoded] == [
        (name, str(i + 1)) for i, (name, _) in enumerate(events)
    ]
    for (_, text), event in zip(events, decoded, strict=True):
        assert event.data == "\n".join(line.decode() for line in text.encode().splitlines())
