"""The load client keeps its own garbage collector, and its own parsing, out of the
latencies it measures."""

from __future__ import annotations

import asyncio
import gc
import itertools
import unittest.mock
from array import array
from typing import Any

import orjson
from bench.load_client import SSEClientConnection, StreamResult, Target, collector_paused
from hypothesis import given, settings
from hypothesis import strategies as st


def test_collector_is_off_and_the_heap_frozen_while_a_workload_runs() -> None:
    assert gc.isenabled()
    kept = [[i] for i in range(1_000)]  # containers the collector would otherwise scan
    with collector_paused():
        assert not gc.isenabled()
        assert gc.get_freeze_count() >= len(kept)
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_collector_stays_off_after_if_it_was_off_before() -> None:
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_collector_is_restored_when_the_workload_fails() -> None:
    try:
        with collector_paused():
            raise RuntimeError("workload failed")
    except RuntimeError:
        pass
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


# -- deferred reading ------------------------------------------------------------------------

STAGE = "a" * 32
TARGET = Target("stagecast", "127.0.0.1", 1, "stagecast", "/stream/v1/chat", "bench")


def _frame(seq: int, event: str, payload: dict[str, Any], *, retry: bool = False) -> bytes:
    head = f"id: {seq}\n" + ("retry: 2000\n" if retry else "") + f"event: {event}\n"
    return head.encode() + b"data: " + orjson.dumps(payload) + b"\n\n"


def _chunk_frame(seq: int, n: int, sent: int) -> bytes:
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "mock",
        "choices": [{"index": 0, "delta": {"content": f"s={n:06d} t={sent:019d} x"}}],
    }
    return _frame(seq, "chat_completion_chunk", {"stage_id": STAGE, "chunk": chunk}, retry=seq == 1)


def _response(chunks: int, *, end: bool = True, extra: bytes = b"") -> bytes:
    """A stagecast response as the gateway writes it: one HTTP chunk per event."""
    frames = [_chunk_frame(i, i, 1_000 * i) for i in range(1, chunks + 1)]
    if extra:
        frames.append(extra)
    if end:
        frames.append(_frame(chunks + 1, "done", {"stage_id": STAGE}))
    body = b"".join(b"%x\r\n%b\r\n" % (len(f), f) for f in frames)
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
        b"transfer-encoding: chunked\r\nx-stage-id: " + STAGE.encode() + b"\r\n\r\n"
    )
    return head + body + (b"0\r\n\r\n" if end else b"")


class _Transport:
    """Stands in for the socket: notes writes and whether it was closed."""

    def __init__(self) -> None:
        self.closed = False
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def _read(raw: bytes, cuts: list[int], *, deferred: bool, chunks: int) -> tuple[Any, ...]:
    """Feed ``raw`` in pieces cut at ``cuts``, the clock moving 1 ms a read; what was seen."""
    loop = asyncio.new_event_loop()
    clock = itertools.count(10**9, 10**6)
    try:
        result = StreamResult("s", chunks)
        latencies: array[int] = array("q")
        conn = SSEClientConnection(
            TARGET, b"request", result, latencies, loop.create_future(), deferred=deferred
        )
        transport = _Transport()
        with unittest.mock.patch("time.monotonic_ns", side_effect=clock.__next__):
            conn.connection_made(transport)  # type: ignore[arg-type]
            edges = [0, *sorted(set(cuts)), len(raw)]
            for start, stop in itertools.pairwise(edges):
                if start < stop and not conn.stopped:
                    conn.data_received(raw[start:stop])
            closed_live = transport.closed
            conn.connection_lost(None)
            conn.replay()
        return (
            closed_live,
            conn.done.done(),
            result.received,
            result.terminal,
            result.error,
            result.malformed,
            result.id_errors,
            result.lost,
            result.t_first,
            result.t_end,
            sorted(latencies),
        )
    finally:
        loop.close()


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=4_000), max_size=12))
def test_a_deferred_read_finds_what_a_live_read_finds(cuts: list[int]) -> None:
    """However the body is cut into reads, reading it after the workload gives the same
    counts, times and latencies as reading it as it came, and both close the connection as
    soon as the body ends."""
    raw = _response(6)
    cuts = [c % len(raw) for c in cuts]
    live = _read(raw, cuts, deferred=False, chunks=6)
    later = _read(raw, cuts, deferred=True, chunks=6)
    assert later == live
    closed, done, received, terminal, error, malformed, *_ = later
    assert (closed, done, received, terminal, error, malformed) == (True, True, 6, "done", None, 0)


def test_a_body_cut_off_by_the_peer_is_a_failed_stream_either_way() -> None:
    raw = _response(3, end=False)
    live = _read(raw, [len(raw) // 2], deferred=False, chunks=3)
    later = _read(raw, [len(raw) // 2], deferred=True, chunks=3)
    assert later == live
    assert later[0] is False  # nothing ended the body, so the client did not close it
    assert later[2:5] == (3, None, "connection ended before a terminal event")


def test_a_malformed_frame_is_counted_either_way() -> None:
    raw = _response(2, extra=b"id: 3\nbogus: 1\nevent: chat_completion_chunk\ndata: {}\n\n")
    live = _read(raw, [], deferred=False, chunks=2)
    later = _read(raw, [], deferred=True, chunks=2)
    assert later == live
    assert later[5] >= 1 and later[6] == 1  # the frame's field, its payload and its id
