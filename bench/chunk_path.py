"""The Python cost of relaying one chunk, with no sockets: ``python -m bench.chunk_path``.

It drives stagecast's own per-chunk path with its real objects: the upstream connection and
its HTTP parser, the SSE reader, the relay's callbacks and the normaliser's splice, the memory
hub's log, and uvicorn's response cycle written through ``BodyPush``. Only the two sockets are
replaced, by in-memory transports, so what it measures is the interpreter's work per chunk and
none of the kernel's. ``make bench`` measures the whole gateway; this isolates the part of it
that stagecast's own code decides.

Wall time per chunk is noisy on a shared machine. Under ``valgrind --tool=callgrind`` the
count of instructions is exact and repeatable: run it at two sizes (``--chunks``) and divide
the difference by the difference in chunks, before and after a change.

Prints ``chunks N streams S us_per_chunk X`` (the median over ``--rounds``). With
``--bytecodes`` it instead counts, exactly and in seconds, the bytecode instructions each of
stagecast's functions runs per chunk (``sys.settrace``; the interpreter's work, not its cost),
and prints ``bytecodes_per_chunk N`` then one ``N module:function`` line per function.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import logging
import statistics
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import orjson
import yarl
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from bench.mock_upstream import SSE_HEAD, StreamParams, _Stream
from stagecast.api.push import BodyPush
from stagecast.backends.http1 import Connection, Pool
from stagecast.backends.openai_compat import _ChunkReader, _Watchdog
from stagecast.hub.memory import MemoryHub
from stagecast.server import tune_collector
from stagecast.stages.context import StageStats
from stagecast.stages.normalise import ChunkNormaliser
from stagecast.stages.relay import chunk_callbacks


class MemoryTransport(asyncio.Transport):
    """Stands in for a socket: counts what is written, never pushes back."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.written = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        self.written += len(data)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def upstream(sid: str) -> _Stream:
    """The mock upstream's maker of one stream's content chunks (its exact bytes)."""
    params = StreamParams(orjson.dumps({"messages": [{"role": "user", "content": f"sid={sid}"}]}))
    return _Stream(None, params, time.monotonic())  # type: ignore[arg-type]


class Stream:
    """One relayed stage: an upstream connection feeding a stage log with one pushed reader."""

    def __init__(
        self,
        conn: Connection,
        source: _Stream,
        tasks: list[asyncio.Task[None]],
        client: MemoryTransport,
    ) -> None:
        self.conn = conn
        self.source = source
        # The reader writing to the client, and the upstream reader's pump.
        self.tasks = tasks
        self.client = client


async def open_stream(hub: MemoryHub, pool: Pool, stage_id: str) -> Stream:
    loop = asyncio.get_running_loop()
    await hub.open(stage_id, owner=None, meta={})
    emit_now = hub.appender(stage_id)
    emit_now("stage", b'{"stage_id":"' + stage_id.encode() + b'"}')

    # The client's side: uvicorn's response cycle, started as a streaming response is.
    client = MemoryTransport()
    scope: Any = {"type": "http", "method": "POST", "path": "/stream/v1/chat"}
    cycle = RequestResponseCycle(
        scope=scope,
        transport=client,
        flow=FlowControl(client),
        logger=logging.getLogger("bench.chunk_path"),
        access_logger=logging.getLogger("bench.chunk_path"),
        access_log=False,
        default_headers=[],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=True,
        on_response=lambda: None,
    )
    await cycle.send({"type": "http.response.start", "status": 200, "headers": []})
    push = BodyPush(cycle)

    async def read() -> None:
        async for batch in hub.tail(stage_id, push=push):
            await cycle.send({"type": "http.response.body", "body": batch, "more_body": True})

    # The reader writes the first event itself, then waits as a pushed reader (``push``
    # holds the cycle weakly; the reader's coroutine holds it for as long as it runs).
    reader = loop.create_task(read())
    for _ in range(3):
        await asyncio.sleep(0)

    # The upstream side: a response head, then the relay's callbacks on every read.
    conn = Connection(pool, loop)
    conn.connection_made(MemoryTransport())
    conn.data_received(SSE_HEAD)
    dog = _Watchdog(conn, 60.0, 60.0, 3600.0)
    chunks = _ChunkReader(conn, dog, "http://bench")
    norm = ChunkNormaliser(model="mock")
    prefix = b'{"stage_id":"' + stage_id.encode() + b'","chunk":'
    on_chunk, on_bytes = chunk_callbacks(StageStats(), norm, prefix, emit_now, "chunk")
    flush = hub.hold_flush(stage_id, True)
    # As the relay does: from here on every read runs the callbacks, until the stream ends.
    pump = loop.create_task(chunks.pump(on_chunk, on_bytes, flush))
    await asyncio.sleep(0)
    source = upstream(stage_id)
    conn.data_received(source.chunk())  # the first chunk is parsed; it sets the template
    return Stream(conn, source, [reader, pump], client)


Tracer = Callable[[FrameType, str, Any], Any]


def bytecode_counter(counts: collections.Counter[str]) -> Tracer:
    """A ``sys.settrace`` function that counts the bytecodes of every stagecast function
    (``module:function``) into ``counts``."""

    def call(frame: FrameType, event: str, arg: Any) -> Tracer | None:
        name = frame.f_globals.get("__name__", "")
        if not name.startswith("stagecast.") and not name.startswith("uvicorn."):
            return None  # the harness's own stand-ins are not counted
        frame.f_trace_opcodes = True
        key = f"{name}:{frame.f_code.co_name}"

        def local(frame: FrameType, event: str, arg: Any) -> Tracer:
            if event == "opcode":
                counts[key] += 1
            return local

        return local

    return call


async def measure(
    chunks: int, streams: int, rounds: int, counts: collections.Counter[str] | None = None
) -> list[float]:
    """Microseconds per relayed chunk, one value per round; with ``counts``, bytecodes are
    counted into it instead (and the times mean nothing)."""
    hub = MemoryHub(max_events=10**9, max_bytes=10**12)
    pool = Pool(yarl.URL("http://127.0.0.1:9/v1/chat/completions"))
    opened = [await open_stream(hub, pool, f"stg_bench_{i}") for i in range(streams)]
    tune_collector()  # as ``stagecast serve`` sets it once started
    per_chunk: list[float] = []
    for _ in range(rounds):
        work = [
            (s.conn.data_received, s.source.chunk())
            for s in itertools.islice(itertools.cycle(opened), chunks)
        ]
        writes = sum(s.client.writes for s in opened)
        if counts is not None:
            sys.settrace(bytecode_counter(counts))
        started = time.perf_counter()
        try:
            for received, piece in work:
                received(piece)
        finally:
            sys.settrace(None)
        per_chunk.append((time.perf_counter() - started) / max(chunks, 1) * 1e6)
        written = sum(s.client.writes for s in opened) - writes
        if written != chunks:
            raise RuntimeError(f"{chunks} chunks relayed but {written} written to clients")
    tasks = [task for stream in opened for task in stream.tasks]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return per_chunk


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=40_000, help="chunks per round")
    parser.add_argument("--streams", type=int, default=100, help="stages they are spread over")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--bytecodes", action="store_true", help="count bytecodes per chunk instead of time"
    )
    args = parser.parse_args(argv)
    if args.bytecodes:
        counts: collections.Counter[str] = collections.Counter()
        asyncio.run(measure(args.chunks, args.streams, args.rounds, counts))
        total = args.chunks * args.rounds
        print(f"bytecodes_per_chunk {sum(counts.values()) / total:.1f}")
        for key, n in counts.most_common():
            print(f"{n / total:8.1f} {key}")
        return
    values = asyncio.run(measure(args.chunks, args.streams, args.rounds))
    print(
        f"chunks {args.chunks} streams {args.streams} us_per_chunk {statistics.median(values):.3f}"
    )


if __name__ == "__main__":
    main()
