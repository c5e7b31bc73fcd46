"""Load client for the benchmark: many concurrent SSE streams on one event loop.

Each stream is a raw ``asyncio.Protocol`` with its own minimal HTTP/1.1 response parser,
chunked-transfer decoder and SSE frame reader: no client library runs per chunk, so the client
stays far from saturating its core at 500 streams. It reads both wire formats in the benchmark:

- ``openai``: ``data: {ChatCompletionChunk}`` frames, then ``data: [DONE]`` (the mock upstream
  itself, and LiteLLM's proxy);
- ``stagecast``: protocol v1 frames (``id``, ``event``, ``retry`` on the first, ``data``) with
  ``{"stage_id", "chunk"}`` payloads, then exactly one terminal event.

Every chunk from the mock carries ``s=<seq> t=<CLOCK_MONOTONIC ns when written>`` in its
content; the client stamps each read with ``time.monotonic_ns()`` (same clock, same host), so
the delivery latency of every chunk is exact, and the sequence numbers show lost, duplicated
and reordered chunks. Every event's shape is checked cheaply as it arrives; a few events per
stream are kept and validated against the seed's pydantic models after the timed window.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from array import array
from collections.abc import Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

import orjson

Flavour = Literal["openai", "stagecast"]

CHUNK_EVENT = b"chat_completion_chunk"
TERMINAL_EVENTS = (b"done", b"cancel", b"error")
MAX_HEAD_BYTES = 64 * 1024
CONNECT_TIMEOUT = 10.0
TIMEOUT = "timeout"


_T = TypeVar("_T")


def run_client(main: Coroutine[Any, Any, _T]) -> _T:
    """Run a benchmark's client side to its end: on uvloop, as the gateways and the mock run,
    or on asyncio's own loop where uvloop is not installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


@dataclass(frozen=True)
class Target:
    """Where a workload is sent and which wire format comes back."""

    name: str
    host: str
    port: int
    flavour: Flavour
    path: str
    model: str
    headers: tuple[tuple[str, str], ...] = ()

    def request(self, prompt: str) -> bytes:
        """The whole HTTP request for one stream (the prompt carries the mock's parameters)."""
        body: dict[str, Any]
        if self.flavour == "stagecast":
            body = {"user_prompt": prompt, "model_container": self.model}
        else:
            body = {
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                "stream": True,
                # What stagecast asks its upstream for, so every path moves the same chunks.
                "stream_options": {"include_usage": True},
            }
        raw = orjson.dumps(body)
        head = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            "Accept: text/event-stream",
            f"Content-Length: {len(raw)}",
            *(f"{k}: {v}" for k, v in self.headers),
        ]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + raw


class StreamResult:
    """What one stream saw: timings, counts and the problems found."""

    __slots__ = (
        "duplicated",
        "error",
        "events",
        "extra",
        "first_sent",
        "frames",
        "id_errors",
        "last_id",
        "malformed",
        "max_seq",
        "n",
        "received",
        "reordered",
        "samples",
        "seen",
        "sid",
        "stage_id",
        "status",
        "t_close",
        "t_end",
        "t_first",
        "t_headers",
        "t_request",
        "terminal",
    )

    def __init__(self, sid: str, n: int) -> None:
        self.sid = sid
        self.n = n
        self.status = 0
        self.stage_id: str | None = None
        self.t_request = 0
        self.t_headers = 0
        self.t_first = 0
        self.first_sent = 0
        self.t_end = 0
        self.t_close = 0
        self.received = 0
        self.duplicated = 0
        self.reordered = 0
        self.malformed = 0
        self.extra = 0
        self.id_errors = 0
        self.frames = 0
        self.events = 0
        self.last_id = 0
        self.max_seq = 0
        self.terminal: str | None = None
        self.error: str | None = None
        self.seen = bytearray(n + 1)
        self.samples: list[tuple[str, bytes]] = []

    @property
    def closed_by_client(self) -> bool:
        """True when the client closed this stream on purpose (close-latency workloads)."""
        return self.t_close != 0

    @property
    def timed_out(self) -> bool:
        """True when the harness ended the stream at the workload's time limit (too slow)."""
        return self.error == TIMEOUT

    @property
    def failed(self) -> bool:
        """An error, or an end without the terminal event; a stream too slow is not failed."""
        if self.timed_out:
            return False
        return self.error is not None or (not self.closed_by_client and self.terminal != "done")

    @property
    def lost(self) -> int:
        """Chunks the mock sent that never arrived, for streams that ended by themselves."""
        if self.closed_by_client or self.timed_out:
            return 0
        return self.n - sum(self.seen[1:]) if self.n else 0

    @property
    def ttft_ns(self) -> int | None:
        """Request written -> first content chunk read."""
        return self.t_first - self.t_request if self.t_first and self.t_request else None

    def problems(self) -> int:
        """Every count that must be zero in a correct run."""
        return (
            self.lost
            + self.duplicated
            + self.reordered
            + self.malformed
            + self.id_errors
            + int(self.failed)
        )


@dataclass
class ClosePlan:
    """When the client drops a stream on purpose: after a time, or after some chunks."""

    after_s: float | None = None
    after_chunks: int | None = None


# The end of a chunked body: the last chunk's CRLF, then the zero-size chunk.
_CHUNKED_END = b"\r\n0\r\n\r\n"


class SSEClientConnection(asyncio.Protocol):
    """One stream on its own connection: HTTP/1.1 response, chunked body, SSE frames.

    With ``deferred``, a read of the body is only timestamped and kept while the workload
    runs (and the end of a chunked body recognised, to close the connection as soon as the
    response is over); ``replay`` then parses and checks every kept read with its own
    timestamp, exactly as a live read would have been. The client shares its core with the
    mock, so work it does while chunks arrive is time that later chunks wait to be read:
    in its own queue, it would show as every target's latency. A stream the client closes
    on a plan (after some chunks) must be read live.
    """

    def __init__(
        self,
        target: Target,
        request: bytes,
        result: StreamResult,
        latencies: array[int],
        done: asyncio.Future[None],
        *,
        plan: ClosePlan | None = None,
        keep_samples: int = 0,
        deferred: bool = False,
    ) -> None:
        if deferred and plan is not None and plan.after_chunks is not None:
            raise ValueError("a stream closed after some chunks must be read live")
        self.target = target
        self.stagecast = target.flavour == "stagecast"
        self.request = request
        self.result = result
        self.latencies = latencies
        self.done = done
        self.plan = plan
        self.keep_samples = keep_samples
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.in_body = False
        self.chunked = False
        self.remaining = 0
        self.need_crlf = False
        self.cbuf = b""
        self.sbuf = b""
        self.body_done = False
        self.stopped = False
        self.now = 0
        self.timer: asyncio.TimerHandle | None = None
        # Deferred reading: the body's reads with their timestamps, the body's last bytes
        # (to see the end of a chunked body), and whether the peer ended the stream.
        self.deferred = deferred
        self.reads: list[tuple[int, bytes]] = []
        self.tail = b""
        self.peer_ended = False

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        if self.stopped:  # aborted by a timeout while connecting
            self.transport.abort()
            return
        self.result.t_request = time.monotonic_ns()
        self.transport.write(self.request)
        if self.plan is not None and self.plan.after_s is not None:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(self.plan.after_s, self.close_now)

    def data_received(self, data: bytes) -> None:
        if self.stopped:
            return
        # One timestamp per read: every frame in it arrived at the same moment.
        self.now = time.monotonic_ns()
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > MAX_HEAD_BYTES:
                    self.fail("response head too large")
                return
            rest = self.head[end + 4 :]
            self._parse_head(self.head[:end])
            self.head = b""
            if self.stopped or not rest:
                return
            data = rest
        if self.deferred:
            self._keep(data)
        else:
            self._body(data)

    def eof_received(self) -> bool:
        if self.deferred:
            self.peer_ended = True
        else:
            self._end_of_body()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if not self.stopped:
            if self.deferred:
                self.peer_ended = True
            else:
                self._end_of_body()
        if not self.done.done():
            self.done.set_result(None)

    # -- deferred reading ----------------------------------------------------------------

    def _keep(self, data: bytes) -> None:
        self.reads.append((self.now, data))
        if not self.chunked:
            return  # the body ends when the peer closes
        tail = self.tail + data
        self.tail = tail[-len(_CHUNKED_END) :]
        if tail.endswith(_CHUNKED_END) or (len(self.reads) == 1 and data == _CHUNKED_END[2:]):
            # The response is over: close as a live read of the end would.
            self.peer_ended = True
            self.stopped = True
            if self.transport is not None:
                self.transport.close()

    def replay(self) -> None:
        """Parse and check the kept reads, each with the time it arrived (deferred only)."""
        if not self.deferred:
            return
        reads, self.reads = self.reads, []
        # The connection is closed by now; the reads are parsed as they came, and the stream
        # ends as the live reader would have ended it: where its body ends, or, if the peer
        # closed without ending it, there.
        self.transport = None
        self.deferred = False
        self.stopped = False
        for now, data in reads:
            if self.stopped:
                return
            self.now = now
            self._body(data)
        if self.peer_ended and not self.stopped:
            self._end_of_body()

    # -- control -------------------------------------------------------------------------

    def close_now(self) -> None:
        """Drop the connection as a browser tab would, and note when."""
        if self.stopped or self.transport is None:
            return
        self.stopped = True
        self.result.t_close = time.monotonic_ns()
        self.transport.close()

    def abort(self, why: str) -> None:
        """End the stream from the harness (timeouts, clean-up); ``why`` is recorded."""
        if not self.stopped and self.result.error is None and self.result.terminal is None:
            self.result.error = why
        self.stopped = True
        if self.transport is not None:
            self.transport.abort()
        elif not self.done.done():
            self.done.set_result(None)

    def fail(self, why: str) -> None:
        """Record a protocol problem and drop the connection."""
        if self.result.error is None:
            self.result.error = why
        self.stopped = True
        if self.transport is not None:
            self.transport.abort()

    # -- HTTP ----------------------------------------------------------------------------

    def _parse_head(self, head: bytes) -> None:
        r = self.result
        r.t_headers = self.now
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        try:
            r.status = int(parts[1])
        except (IndexError, ValueError):
            self.fail(f"bad status line {lines[0]!r}")
            return
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if r.status != 200:
            self.fail(f"HTTP {r.status}")
            return
        if not headers.get("content-type", "").startswith("text/event-stream"):
            self.fail(f"content-type {headers.get('content-type')!r}")
            return
        if self.stagecast:
            r.stage_id = headers.get("x-stage-id")
            if not r.stage_id:
                self.fail("no X-Stage-Id header")
                return
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self.in_body = True

    def _body(self, data: bytes) -> None:
        if not self.chunked:
            self._sse(data)
            return
        buf = self.cbuf + data if self.cbuf else data
        pos = 0
        size = len(buf)
        while pos < size and not self.stopped:
            if self.remaining:
                take = min(self.remaining, size - pos)
                self._sse(buf[pos : pos + take])
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self.need_crlf = True
                continue
            if self.need_crlf:
                if size - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    self.fail("chunked encoding: missing CRLF after a chunk")
                    return
                pos += 2
                self.need_crlf = False
                continue
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                break
            try:
                length = int(buf[pos:nl].split(b";", 1)[0], 16)
            except ValueError:
                self.fail("chunked encoding: bad chunk size")
                return
            pos = nl + 2
            if length == 0:
                self.body_done = True
                self._end_of_body()
                return
            self.remaining = length
        self.cbuf = buf[pos:] if pos < size else b""

    def _end_of_body(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        r = self.result
        r.t_end = self.now or time.monotonic_ns()
        if r.error is None and r.terminal is None:
            r.error = "connection ended before a terminal event"
        if self.sbuf.strip():
            r.malformed += 1  # an unterminated frame at the end of the body
        if self.transport is not None:
            self.transport.close()

    # -- SSE -----------------------------------------------------------------------------

    def _sse(self, data: bytes) -> None:
        if b"\r" in data:  # neither peer sends CR, but the format allows it
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self.sbuf + data if self.sbuf else data
        start = 0
        while not self.stopped:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            self._frame(buf[start:end])
            start = end + 2
        self.sbuf = buf[start:]

    def _frame(self, frame: bytes) -> None:
        event = b"message"
        fid: bytes | None = None
        retry: bytes | None = None
        data: list[bytes] = []
        for line in frame.split(b"\n"):
            if not line or line[0] == 58:  # b":" starts a comment (keep-alives)
                continue
            name, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                data.append(value)
            elif name == b"event":
                event = value
            elif name == b"id":
                fid = value
            elif name == b"retry":
                retry = value
            else:
                self.result.malformed += 1
        if not data:
            return
        payload = data[0] if len(data) == 1 else b"\n".join(data)
        r = self.result
        r.events += 1
        if r.terminal is not None:
            r.malformed += 1  # nothing may follow the terminal event
            return
        if self.stagecast:
            self._stagecast_frame(event, fid, retry, payload)
        else:
            self._openai_frame(payload)

    def _stagecast_frame(
        self, event: bytes, fid: bytes | None, retry: bytes | None, payload: bytes
    ) -> None:
        r = self.result
        r.frames += 1
        try:
            seq = int(fid) if fid is not None else -1
        except ValueError:
            seq = -1
        if seq <= r.last_id:
            r.id_errors += 1  # ids must be unique and strictly increasing
        else:
            r.last_id = seq
        if r.frames == 1 and retry is None:
            r.malformed += 1  # the first frame carries retry:
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            r.malformed += 1
            return
        if not isinstance(obj, dict) or obj.get("stage_id") != r.stage_id:
            r.malformed += 1
            return
        name = event.decode("latin-1")
        if event == CHUNK_EVENT:
            if len(r.samples) < self.keep_samples:
                r.samples.append((name, payload))
            self._chunk(obj.get("chunk"))
        elif event in TERMINAL_EVENTS:
            r.terminal = name
            if event != b"done":
                r.error = f"{name}: {obj.get('error') or obj.get('reason')}"
            if self.keep_samples:
                r.samples.append((name, payload))
        else:
            r.malformed += 1

    def _openai_frame(self, payload: bytes) -> None:
        r = self.result
        if payload == b"[DONE]":
            r.terminal = "done"
            return
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            r.malformed += 1
            return
        if isinstance(obj, dict) and "error" in obj and "choices" not in obj:
            r.error = f"error: {obj['error']}"
            r.terminal = "error"
            return
        if len(r.samples) < self.keep_samples:
            r.samples.append(("chunk", payload))
        self._chunk(obj)

    def _chunk(self, chunk: Any) -> None:
        r = self.result
        if not (
            isinstance(chunk, dict)
            and chunk.get("object") == "chat.completion.chunk"
            and isinstance(chunk.get("id"), str)
            and isinstance(chunk.get("created"), int)
            and isinstance(chunk.get("model"), str)
            and isinstance(chunk.get("choices"), list)
        ):
            r.malformed += 1
            return
        choices = chunk["choices"]
        content = None
        if choices:
            first = choices[0]
            if not (
                isinstance(first, dict)
                and isinstance(first.get("index"), int)
                and isinstance(first.get("delta"), dict)
            ):
                r.malformed += 1
                return
            content = first["delta"].get("content")
        if not (isinstance(content, str) and content.startswith("s=")):
            r.extra += 1  # role, finish and usage chunks carry no marker
            return
        try:
            seq = int(content[2:8])
            sent = int(content[11:30])
        except ValueError:
            r.malformed += 1
            return
        if not 0 < seq <= r.n:
            r.malformed += 1
            return
        if r.seen[seq]:
            r.duplicated += 1
            return
        r.seen[seq] = 1
        if seq < r.max_seq:
            r.reordered += 1
        else:
            r.max_seq = seq
        r.received += 1
        now = self.now
        if not r.t_first:
            r.t_first = now
            r.first_sent = sent
        self.latencies.append(now - sent)
        plan = self.plan
        if plan is not None and plan.after_chunks is not None and r.received >= plan.after_chunks:
            self.close_now()


@dataclass
class Workload:
    """One measured pattern of streams."""

    name: str
    streams: int
    chunks: int
    interval_ms: float = 20.0
    delay_ms: float = 0.0
    # Stream starts are spread evenly over this many seconds (phases of real streams differ).
    ramp_s: float = 0.0
    # One stream after another (time to first token without queueing).
    sequential: bool = False
    close: ClosePlan | None = None
    timeout_s: float = 60.0
    keep_samples: int = 2
    # Throughput over a fixed window: the client closes every stream after this many seconds.
    window_s: float | None = None

    def prompt(self, sid: str) -> str:
        """The mock's parameters, carried in the user prompt through any gateway."""
        return f"bench sid={sid} n={self.chunks} iv={self.interval_ms:g} delay={self.delay_ms:g}"


@dataclass
class WorkloadResult:
    """Everything one workload against one target produced."""

    target: str
    workload: Workload
    streams: list[StreamResult]
    latencies_ns: array[int]
    t_start: int
    t_end: int
    notes: list[str] = field(default_factory=list)

    @property
    def chunks(self) -> int:
        """Content chunks received (each one relayed by the gateway)."""
        return sum(s.received for s in self.streams)

    @property
    def duration_s(self) -> float:
        """First request to last byte."""
        return max(self.t_end - self.t_start, 1) / 1e9

    @property
    def rate(self) -> float:
        """Content chunks per second delivered over the whole workload."""
        return self.chunks / self.duration_s

    def ttfts_ns(self) -> list[int]:
        """Time to first token of every stream that got one."""
        return [t for s in self.streams if (t := s.ttft_ns) is not None]

    def counts(self) -> dict[str, int]:
        """Correctness counters summed over the streams (all must be zero)."""
        return {
            "streams": len(self.streams),
            "lost": sum(s.lost for s in self.streams),
            "duplicated": sum(s.duplicated for s in self.streams),
            "reordered": sum(s.reordered for s in self.streams),
            "malformed": sum(s.malformed for s in self.streams),
            "id_errors": sum(s.id_errors for s in self.streams),
            "failed_streams": sum(1 for s in self.streams if s.failed),
            # Not a correctness problem: streams the target had not finished by the time limit.
            "timed_out": sum(1 for s in self.streams if s.timed_out),
        }

    def errors(self, limit: int = 3) -> list[str]:
        """A few distinct stream errors, for the report."""
        seen: list[str] = []
        for s in self.streams:
            if s.error and s.error not in seen:
                seen.append(s.error)
                if len(seen) >= limit:
                    break
        return seen


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No pass of this process's garbage collector while the block runs.

    The client keeps every result of a run (samples, records) in its own heap, so a full
    collection pauses it the longer the later in a run, and every chunk that arrives
    meanwhile shows that pause as latency, whichever target is being measured. So
    the heap is collected before a workload and frozen during it (``gc.freeze``), and the
    collector stays off until the workload ends.
    """
    was_enabled = gc.isenabled()
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()


async def run_workload(target: Target, workload: Workload, tag: str) -> WorkloadResult:
    """Run ``workload`` against ``target``; stream ids are ``<tag>-<i>``. The client's
    garbage collector is paused while it runs (``collector_paused``)."""
    with collector_paused():
        return await _run_workload(target, workload, tag)


async def _run_workload(target: Target, workload: Workload, tag: str) -> WorkloadResult:
    loop = asyncio.get_running_loop()
    latencies: array[int] = array("q")
    results = [StreamResult(f"{tag}-{i}", workload.chunks) for i in range(workload.streams)]
    conns: list[SSEClientConnection] = []
    # Read every stream's body after the workload, unless the client closes streams after
    # some chunks (then it must count them as they come), or the workload is flat out over a
    # window (kept unread, its reads would be hundreds of MB, and its streams would outrun a
    # gateway's bound on a stage's events).
    deferred = workload.window_s is None and (
        workload.close is None or workload.close.after_chunks is None
    )
    t_start = time.monotonic_ns()
    start_at = loop.time()

    async def one(i: int) -> None:
        if workload.ramp_s and not workload.sequential:
            delay = start_at + workload.ramp_s * i / workload.streams - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        r = results[i]
        done: asyncio.Future[None] = loop.create_future()
        conn = SSEClientConnection(
            target,
            target.request(workload.prompt(r.sid)),
            r,
            latencies,
            done,
            plan=workload.close,
            keep_samples=workload.keep_samples,
            deferred=deferred,
        )
        conns.append(conn)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await loop.create_connection(lambda: conn, target.host, target.port)
        except (OSError, TimeoutError) as exc:
            r.error = f"connect: {exc!r}"
            return
        await done

    notes: list[str] = []
    window: asyncio.TimerHandle | None = None
    if workload.window_s is not None:

        def close_all() -> None:
            for conn in conns:
                conn.close_now()

        window = loop.call_later(workload.window_s, close_all)
    t_abort = 0
    try:
        async with asyncio.timeout(workload.timeout_s):
            if workload.sequential:
                for i in range(workload.streams):
                    await one(i)
            else:
                await asyncio.gather(*(one(i) for i in range(workload.streams)))
    except TimeoutError:
        notes.append(f"timed out after {workload.timeout_s:g}s")
        t_abort = time.monotonic_ns()
        for conn in conns:
            conn.abort(TIMEOUT)
        for r in results:  # streams the time limit kept from starting (sequential workloads)
            if r.error is None and r.terminal is None and not r.t_request:
                r.error = TIMEOUT
        # Let the aborted transports report connection_lost.
        await asyncio.sleep(0.05)
    finally:
        if window is not None:
            window.cancel()
    for conn in conns:
        conn.replay()
    ends = [s.t_end for s in results] + [s.t_close for s in results]
    t_end = max([*ends, t_abort, t_start + 1])
    return WorkloadResult(target.name, workload, results, latencies, t_start, t_end, notes)


class IdleStreams:
    """Many open streams that wait for a first token, for the memory-per-stream ladder."""

    def __init__(self, target: Target, tag: str, *, delay_ms: float = 120_000.0) -> None:
        self.target = target
        self.tag = tag
        self.delay_ms = delay_ms
        self.conns: list[SSEClientConnection] = []
        self.results: list[StreamResult] = []
        self.latencies: array[int] = array("q")

    async def open(self, count: int, *, concurrency: int = 64, timeout: float = 60.0) -> int:
        """Open ``count`` more streams; returns how many connected."""
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(concurrency)
        workload = Workload("idle", count, 1, interval_ms=20.0, delay_ms=self.delay_ms)
        ok = 0

        async def one() -> None:
            nonlocal ok
            r = StreamResult(f"{self.tag}-{len(self.results)}", 1)
            self.results.append(r)
            done: asyncio.Future[None] = loop.create_future()
            conn = SSEClientConnection(
                self.target, self.target.request(workload.prompt(r.sid)), r, self.latencies, done
            )
            self.conns.append(conn)
            async with gate:
                try:
                    async with asyncio.timeout(CONNECT_TIMEOUT):
                        await loop.create_connection(
                            lambda: conn, self.target.host, self.target.port
                        )
                    ok += 1
                except (OSError, TimeoutError) as exc:
                    r.error = f"connect: {exc!r}"

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(one() for _ in range(count)))
        return ok

    def with_headers(self) -> int:
        """Streams whose response head has arrived."""
        return sum(1 for r in self.results if r.t_headers)

    async def close_all(self) -> None:
        """Close every stream (as clients leaving) and wait briefly for the transports."""
        for conn in self.conns:
            conn.close_now()
        await asyncio.sleep(0.05)


async def http_json(
    host: str,
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    timeout: float = 5.0,
) -> tuple[int, Any]:
    """A small JSON request on a fresh connection (control endpoints and health checks)."""
    raw = orjson.dumps(body) if body is not None else b""
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n"
    ).encode() + raw
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(request)
            data = await reader.read(-1)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    head, _, payload = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    if any(
        line.lower().startswith("transfer-encoding:") and "chunked" in line.lower()
        for line in lines
    ):
        payload = _dechunk(payload)
    try:
        return status, orjson.loads(payload) if payload else None
    except orjson.JSONDecodeError:
        return status, payload.decode("utf-8", "replace")


def _dechunk(data: bytes) -> bytes:
    out: list[bytes] = []
    pos = 0
    while True:
        nl = data.find(b"\r\n", pos)
        if nl < 0:
            break
        size = int(data[pos:nl].split(b";", 1)[0] or b"0", 16)
        if size == 0:
            break
        out.append(data[nl + 2 : nl + 2 + size])
        pos = nl + 2 + size + 2
    return b"".join(out)


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q`` quantile (0-100) with linear interpolation; NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def validate_samples(result: WorkloadResult, flavour: Flavour) -> tuple[int, int, str | None]:
    """Validate the kept events against the seed's models (or the OpenAI chunk type).

    Returns ``(checked, invalid, first problem)``. Runs after the timed window: a pydantic
    validation per event would cost the client more than the gateway under test.
    """
    from pydantic import ValidationError

    if flavour == "stagecast":
        from tests import seed_events

        models: dict[str, Any] = {
            "chat_completion_chunk": seed_events.ChatCompletionStreamPayload,
            "done": seed_events.DonePayload,
            "cancel": seed_events.CancelPayload,
            "error": seed_events.ErrorPayload,
        }
    else:
        from openai.types.chat import ChatCompletionChunk

        models = {"chunk": ChatCompletionChunk}
    checked = invalid = 0
    first: str | None = None
    for stream in result.streams:
        for name, payload in stream.samples:
            checked += 1
            model = models.get(name)
            try:
                if model is None:
                    raise ValueError(f"unexpected event {name!r}")
                model.model_validate_json(payload)
            except (ValidationError, ValueError) as exc:
                invalid += 1
                if first is None:
                    first = f"{name}: {str(exc)[:200]}"
    return checked, invalid, first
