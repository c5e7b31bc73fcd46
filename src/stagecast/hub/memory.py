"""In-process StreamHub: the default for a single gateway process.

Frames are encoded once, at append, and kept as bytes; a reader that is behind gets every
ready frame joined into one write. Older frames are folded into blocks of ``BLOCK`` as the
stage goes on (not all at once when it ends), so a long stage is a few hundred objects for
the garbage collector to walk, not tens of thousands. A reader that has caught up and whose
server offers ``push`` is written to from the producer's side, with no task of its own woken
(``tail``): once per upstream read when the producer flushes (``hold_flush``), else once per
loop turn. Appending never waits for readers; a run whose slowest local reader falls far
behind has its upstream read paused instead (``set_flow``). Ended stages stay for ``ttl``
seconds, within ``max_retained_bytes``.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

from stagecast.errors import StageConflictError, StageLimitError
from stagecast.hub.base import (
    TERMINAL_STATUS,
    Push,
    ReaderLagError,
    StageInfo,
    StageNotFoundError,
    StageStatus,
)
from stagecast.protocol.sse import SSEDecoder, encode_frame

# Most frames one write may carry (about 170 KB of typical chunk events).
MAX_BATCH = 512
# Producer flow control: a run whose slowest local reader is this many events behind has its
# upstream paused until that reader is within FLOW_RESUME; checked every FLOW_EVERY appends.
FLOW_PAUSE = 2_000
FLOW_RESUME = 500
FLOW_EVERY = 64
# Frames folded into one bytes, once twice as many have come (every FLOW_EVERY appends): a
# caught-up reader, a few frames behind, reads the unfolded ones as they are.
BLOCK = FLOW_EVERY


class _Log:
    __slots__ = (
        "base",
        "blocks",
        "cancel_callbacks",
        "expires",
        "flow",
        "flush_held",
        "flush_pending",
        "frames",
        "hub",
        "info",
        "max_bytes",
        "max_events",
        "nbytes",
        "paused",
        "positions",
        "pushers",
        "readers",
        "terminal",
        "waiters",
    )

    def __init__(self, info: StageInfo, hub: MemoryHub) -> None:
        self.info = info
        # For the retry interval and for retention when the stage ends; the bounds are
        # copied, as ``append`` checks them on every event.
        self.hub = hub
        self.max_events = hub.max_events
        self.max_bytes = hub.max_bytes
        # Frames ``base`` on, as they were appended; before them, ``blocks`` of ``BLOCK``
        # frames each (a list from the first fold on).
        self.frames: list[bytes] = []
        self.base = 0
        self.blocks: list[bytes] = ()  # type: ignore[assignment]
        self.nbytes = 0
        # Readers waiting for the next frame (a dict used as an ordered set), and what to call
        # on a cancel. Both are dropped for empty ones the garbage collector does not track
        # (a new dict, an empty tuple) once they are done with; see ``_end``.
        self.waiters: dict[asyncio.Future[None], None] = {}
        self.terminal = False
        self.readers = 0
        self.cancel_callbacks: tuple[Callable[[], None], ...] = ()
        # Where each local reader is (by reader token), and the producer's pause/resume.
        self.positions: dict[object, int] = {}
        self.flow: tuple[Callable[[], None], Callable[[], None]] | None = None
        self.paused = False
        # Caught-up readers written to on append (by reader token), and whether frames are
        # waiting to be written to them.
        self.pushers: dict[object, _Pusher] = {}
        self.flush_pending = False
        # The producer flushes at the end of each of its reads (``MemoryHub.hold_flush``).
        self.flush_held = False
        # When the hub forgets the ended stage (loop time; set when it ends).
        self.expires = 0.0

    def append(self, event: str, data: bytes) -> int:
        """Append one event (see ``MemoryHub.append_nowait``); returns its sequence number."""
        frames = self.frames
        seq = self.base + len(frames) + 1
        status: StageStatus | None = None
        # One test for everything the common event is not: the first, a terminal one, one
        # over the bounds, one whose data has line breaks (byte values: ``in`` is a memchr).
        if (
            seq == 1
            or event in TERMINAL_STATUS
            or self.terminal
            or seq > self.max_events
            or self.nbytes + len(data) > self.max_bytes
            or 10 in data
            or 13 in data
        ):
            frame, status = self._rare_frame(event, data, seq)
        else:
            # The common frame in one formatting step (same bytes as encode_frame).
            frame = b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, event.encode(), data)
        frames.append(frame)
        self.nbytes += len(frame)
        self.info.last_seq = seq
        if not seq % FLOW_EVERY:
            if len(frames) >= 2 * BLOCK:
                self._fold()
            self._check_pause()
        if status is not None:
            self._end(status)
        if self.waiters:
            self.wake()
        if self.pushers and not self.flush_pending:
            # Once per upstream read (the producer flushes) or else once per loop turn: the
            # frames of one read go out in one write.
            self.flush_pending = True
            if not self.flush_held:
                self.hub._running_loop().call_soon(self.flush)
        return seq

    def _rare_frame(self, event: str, data: bytes, seq: int) -> tuple[bytes, StageStatus | None]:
        """The frame of an event that is not the common one (see ``append``), and the status
        it ends the stage with, if it is terminal; refused past the bounds or after the end."""
        status = TERMINAL_STATUS.get(event)
        if self.terminal or (
            status is None and (seq > self.max_events or self.nbytes + len(data) > self.max_bytes)
        ):
            self._refuse()
        frame = encode_frame(event, data, id=seq, retry=self.hub.retry_ms if seq == 1 else None)
        return frame, status

    def _fold(self) -> None:
        """Fold the oldest ``BLOCK`` unfolded frames into one block."""
        frames = self.frames
        if not self.base:
            self.blocks = []
        self.blocks.append(b"".join(frames[:BLOCK]))
        del frames[:BLOCK]
        self.base += BLOCK

    def count(self) -> int:
        """Frames appended so far."""
        return self.base + len(self.frames)

    def batch(self, pos: int, end: int) -> bytes:
        """Frames ``pos`` to ``end`` (from 0, ``end`` not included) in one bytes."""
        base = self.base
        if pos >= base:
            frames = self.frames
            return (
                frames[pos - base] if end - pos == 1 else b"".join(frames[pos - base : end - base])
            )
        parts = []
        while pos < end and pos < base:
            block = self.blocks[pos // BLOCK]
            stop = min(end, (pos // BLOCK + 1) * BLOCK)
            # Whole blocks as they are; slices of the first and last only where needed.
            first = _start(block, pos) if pos % BLOCK else 0
            parts.append(block[first : _start(block, stop) if stop % BLOCK else len(block)])
            pos = stop
        if end > base:
            parts.extend(self.frames[: end - base])
        return b"".join(parts)

    def _end(self, status: StageStatus) -> None:
        """The terminal event is in: the stage has ended, and the hub keeps its log a while."""
        # An ended log never changes again. Kept as lists, its frames and blocks would be
        # walked by every full pass of the garbage collector for as long as the stage is
        # retained (ten minutes by default): with a few thousand stages retained, some 100 ms
        # a pass, a stall of every live stream. Tuples of bytes are left out of those passes
        # after one young pass has walked them: a few hundred objects at most (the blocks).
        self.frames = tuple(self.frames)  # type: ignore[assignment]
        self.blocks = tuple(self.blocks)  # type: ignore[assignment]
        self.terminal = True
        self.info.status = status
        self.info.finished_at = time.time()
        # The same goes for the log's other containers: what a retained stage keeps, the
        # collector walks. Readers still waiting are woken with a new (untracked) dict left in
        # their place, and pushed readers are let go the same way (``flush``): the ended log
        # is two tracked objects, itself and its info.
        self.cancel_callbacks = ()
        if not self.pushers:
            self.pushers = {}
        self.hub._retain(self.info.stage_id, self)

    def _check_pause(self) -> None:
        """Pause the producer if its slowest local reader is too far behind."""
        if self.flow is not None and not self.paused and self.backlog() > FLOW_PAUSE:
            self.paused = True
            self.flow[0]()

    def _refuse(self) -> NoReturn:
        stage_id = self.info.stage_id
        if self.terminal:
            raise StageLimitError(f"stage {stage_id!r} already ended", code="stage_ended")
        raise StageLimitError(
            f"stage {stage_id!r} exceeded its bounds of {self.max_events} events "
            f"or {self.max_bytes} bytes"
        )

    def backlog(self) -> int:
        """Events the slowest local reader has yet to write (0 without readers)."""
        return self.count() - min(self.positions.values()) if self.positions else 0

    def check_resume(self) -> None:
        if self.paused and self.backlog() <= FLOW_RESUME:
            self.paused = False
            if self.flow is not None:
                self.flow[1]()

    def wake(self) -> None:
        waiters, self.waiters = self.waiters, {}
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def flush(self) -> None:
        """Write the new frames to every pushed reader, if any are due; a reader whose
        connection cannot take them now (or that is a whole batch behind) goes back to its
        own task."""
        if not self.flush_pending:
            return
        self.flush_pending = False
        frames = self.frames
        n = self.base + len(frames)
        stopped: list[object] | None = None
        for token, pusher in self.pushers.items():
            # Counted back from the last frame: the unfolded ones, unless a long read has
            # folded some of this reader's (see ``batch``).
            behind = n - pusher.pos
            if behind <= 0:
                continue
            if behind <= MAX_BATCH:
                try:
                    if behind == 1:
                        batch = frames[-1]
                    elif behind <= len(frames):
                        batch = b"".join(frames[-behind:])
                    else:
                        batch = self.batch(pusher.pos, n)
                    written = pusher.push(batch)
                except Exception:
                    written = False
                if written:
                    pusher.pos = self.positions[token] = n
                    continue
            if stopped is None:
                stopped = []
            stopped.append(token)
        if self.terminal:
            # Every pushed reader goes back to its task to finish.
            pushers, self.pushers = self.pushers, {}
            for pusher in pushers.values():
                pusher.release()
        elif stopped is not None:
            for token in stopped:
                self.pushers.pop(token).release()
        if self.paused:
            self.check_resume()


def _start(block: bytes, pos: int) -> int:
    """Where frame ``pos`` (from 0, not a block's first) starts in its block. Every frame
    starts with its id line, ``pos + 1``, and ends with the only blank line in it (data with
    line breaks is written as one ``data:`` line per line)."""
    return block.index(b"\n\nid: %d\n" % (pos + 1)) + 2


class _Pusher:
    """A caught-up reader written to from the producer's side (see ``MemoryHub.tail``)."""

    __slots__ = ("fut", "pos", "push")

    def __init__(self, push: Push, fut: asyncio.Future[None], pos: int) -> None:
        self.push = push
        self.fut = fut
        self.pos = pos

    def release(self) -> None:
        """Hand the reader back to its task."""
        if not self.fut.done():
            self.fut.set_result(None)


class MemoryHub:
    """StreamHub for one process."""

    def __init__(
        self,
        *,
        ttl: float = 600.0,
        max_events: int = 100_000,
        max_bytes: int = 64 * 1024 * 1024,
        max_reader_lag: int = 10_000,
        retry_ms: int = 2000,
        max_retained_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self.ttl = ttl
        self.max_retained_bytes = max_retained_bytes
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_reader_lag = max_reader_lag
        self.retry_ms = retry_ms
        self._logs: dict[str, _Log] = {}
        # Ended stages kept for replay, oldest first, and their frames' bytes: past
        # ``max_retained_bytes`` the oldest go before their ``ttl``. With one ``ttl`` for all,
        # oldest first is also soonest to expire: one timer, for the first, forgets them all
        # in turn (``_sweep``), rather than one timer per ended stage. An OrderedDict: its
        # oldest entry is found at once, where a dict's first live entry is found by skipping
        # the slots of every entry deleted since the table was last rebuilt (thousands, on a
        # busy gateway, for every stage that ends).
        self._retained: OrderedDict[str, _Log] = OrderedDict()
        self._retained_bytes = 0
        self._sweeper: asyncio.TimerHandle | None = None
        # The loop the stages are on, held from the first open: asyncio's lookup of the
        # running loop costs a system call.
        self._loop: asyncio.AbstractEventLoop | None = None
        # Heartbeats of waiting readers, by interval: one timer for all of them.
        self._beats: dict[float, _Heartbeats] = {}

    async def open(self, stage_id: str, *, owner: str | None, meta: dict[str, Any]) -> None:
        old = self._logs.get(stage_id)
        if old is not None:
            if not old.terminal:
                raise StageConflictError(f"stage {stage_id!r} is already running")
            self._drop(stage_id, old)
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        info = StageInfo(stage_id, "running", 0, owner, dict(meta), time.time())
        self._logs[stage_id] = _Log(info, self)

    async def append(self, stage_id: str, event: str, data: bytes) -> int:
        return self.append_nowait(stage_id, event, data)

    def append_nowait(self, stage_id: str, event: str, data: bytes) -> int:
        """``append`` without a coroutine: the memory hub never waits to append."""
        log = self._logs.get(stage_id)
        if log is None:
            raise StageNotFoundError(f"stage {stage_id!r} is not open")
        return log.append(event, data)

    def appender(self, stage_id: str) -> Callable[[str, bytes], int]:
        """``append_nowait`` of one stage, bound to its log (no lookup per event): for the
        stage's producer, which appends until the stage's terminal event."""
        log = self._logs.get(stage_id)
        if log is None:
            raise StageNotFoundError(f"stage {stage_id!r} is not open")
        return log.append

    def _heartbeats(self, loop: asyncio.AbstractEventLoop, interval: float) -> _Heartbeats:
        beats = self._beats.get(interval)
        if beats is None:
            beats = self._beats[interval] = _Heartbeats(loop, interval)
        return beats

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop if self._loop is not None else asyncio.get_running_loop()

    def set_flow(
        self,
        stage_id: str,
        flow: tuple[Callable[[], None], Callable[[], None]] | None,
    ) -> None:
        """Let the hub pause (``flow[0]``) and resume (``flow[1]``) the stage's producer when
        its local readers fall behind (so a fast model and a slow client do not grow the
        log without bound); ``None`` ends it."""
        log = self._logs.get(stage_id)
        if log is None:
            return
        if flow is None and log.paused and log.flow is not None:
            log.flow[1]()
        log.paused = False
        log.flow = flow

    def hold_flush(self, stage_id: str, held: bool) -> Callable[[], None] | None:
        """With ``held``, frames appended to the stage reach its pushed readers when the
        returned function is called, not in a later loop turn: a producer that appends on
        its socket reads calls it at the end of each read, so the frames go out in the turn
        they came in. Without, anything due goes out now and flushing is the hub's again."""
        log = self._logs.get(stage_id)
        if log is None:
            return None
        log.flush_held = held
        if held:
            return log.flush
        log.flush()
        return None

    def _retain(self, stage_id: str, log: _Log) -> None:
        """Keep an ended stage for replay: for ``ttl``, or until newer ones need the room."""
        loop = self._running_loop()
        log.expires = loop.time() + self.ttl
        self._retained[stage_id] = log
        self._retained_bytes += log.nbytes
        while self._retained_bytes > self.max_retained_bytes and len(self._retained) > 1:
            oldest = next(iter(self._retained))
            self._drop(oldest, self._retained[oldest])
        if self._sweeper is None:
            self._sweeper = loop.call_at(log.expires, self._sweep)

    def _sweep(self) -> None:
        """Forget the ended stages whose ``ttl`` is over, and wait for the next one."""
        self._sweeper = None
        loop = self._running_loop()
        now = loop.time()
        retained = self._retained
        while retained:
            stage_id, log = next(iter(retained.items()))
            if log.expires > now:
                self._sweeper = loop.call_at(log.expires, self._sweep)
                return
            self._drop(stage_id, log)

    def _drop(self, stage_id: str, log: _Log) -> None:
        """Forget an ended stage (readers still on it finish; new ones get not-found)."""
        if self._retained.get(stage_id) is log:
            del self._retained[stage_id]
            self._retained_bytes -= log.nbytes
        if self._logs.get(stage_id) is log:
            del self._logs[stage_id]

    async def tail(
        self,
        stage_id: str,
        after: int = 0,
        *,
        heartbeat: float | None = None,
        push: Push | None = None,
    ) -> AsyncIterator[bytes]:
        """See ``StreamHub.tail``. With ``push``, a reader that has caught up is written to
        on append, by ``push``, instead of being woken to write; it goes back to yielding
        frames when ``push`` refuses them (returns False), and only then yields."""
        log = self._logs.get(stage_id)
        if log is None:
            raise StageNotFoundError(f"no stage {stage_id!r} (unknown or expired)")
        pos = max(after, 0)
        loop = self._running_loop()
        # Lag counts only once a reader has caught up: a reader replaying history starts far
        # behind by design, and is not the slow consumer this bound is for.
        caught_up = False
        token = object()
        positions = log.positions
        positions[token] = pos
        beats = self._heartbeats(loop, heartbeat) if heartbeat is not None else None
        try:
            while True:
                n = log.count()
                if pos < n:
                    if caught_up and n - pos > self.max_reader_lag and not log.terminal:
                        raise ReaderLagError(
                            f"reader is {n - pos} events behind stage {stage_id!r}; resume "
                            f"from Last-Event-ID {pos}"
                        )
                    # Bounded batches keep what one slow socket buffers to a few hundred KB.
                    end = min(n, pos + MAX_BATCH)
                    batch = log.batch(pos, end)
                    pos = end
                    yield batch
                    # Written: the producer may go on if it waited for this reader.
                    positions[token] = pos
                    if log.paused:
                        log.check_resume()
                    continue
                caught_up = True
                if log.terminal:
                    return
                fut: asyncio.Future[None] = loop.create_future()
                pusher = None
                if push is None:
                    log.waiters[fut] = None
                else:
                    pusher = log.pushers[token] = _Pusher(push, fut, pos)
                if beats is not None:
                    beats.waiting[fut] = loop.time()
                    beats.arm()
                try:
                    await fut
                finally:
                    if beats is not None:
                        beats.waiting.pop(fut, None)
                    if pusher is not None:
                        log.pushers.pop(token, None)
                if pusher is not None and pusher.pos != pos:
                    pos = pusher.pos  # frames were written for this reader: not quiet
                    continue
                if beats is not None and log.count() == pos and not log.terminal:
                    yield b""
        finally:
            log.pushers.pop(token, None)
            del positions[token]
            if log.paused:
                log.check_resume()

    async def info(self, stage_id: str) -> StageInfo | None:
        log = self._logs.get(stage_id)
        return log.info if log is not None else None

    async def events(self, stage_id: str, after: int = 0) -> list[tuple[int, str, bytes]]:
        log = self._logs.get(stage_id)
        if log is None:
            raise StageNotFoundError(f"no stage {stage_id!r} (unknown or expired)")
        # Only the encoded frames are kept (one copy of each event); reading back is rare.
        out = []
        for event in SSEDecoder().feed(log.batch(max(after, 0), log.count())):
            out.append((int(event.id or 0), event.event, event.data.encode()))
        return out

    async def request_cancel(self, stage_id: str) -> bool:
        log = self._logs.get(stage_id)
        if log is None or log.terminal:
            return False
        for callback in log.cancel_callbacks:
            callback()
        return True

    def on_cancel(self, stage_id: str, callback: Callable[[], None]) -> None:
        log = self._logs.get(stage_id)
        if log is None:
            raise StageNotFoundError(f"stage {stage_id!r} is not open")
        log.cancel_callbacks += (callback,)

    async def attach(self, stage_id: str) -> int:
        log = self._logs.get(stage_id)
        if log is None:
            return 0
        log.readers += 1
        return log.readers

    async def detach(self, stage_id: str) -> int:
        log = self._logs.get(stage_id)
        if log is None:
            return 0
        log.readers = max(log.readers - 1, 0)
        return log.readers

    async def aclose(self) -> None:
        for beats in self._beats.values():
            beats.cancel()
        self._beats.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._retained.clear()
        self._retained_bytes = 0
        for log in self._logs.values():
            log.wake()
            for pusher in log.pushers.values():
                pusher.release()
            log.pushers.clear()
        self._logs.clear()


class _Heartbeats:
    """Resolves each waiting reader's wait once it has lasted ``interval`` (the reader then
    writes a keep-alive), with one timer for every reader of that interval.

    ``waiting`` maps each wait to when it began; waits begin in time order, so the dict is
    also in deadline order and the timer only ever looks at its front.
    """

    __slots__ = ("_handle", "_loop", "interval", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self._loop = loop
        self.interval = interval
        self.waiting: dict[asyncio.Future[None], float] = {}
        self._handle: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        if self._handle is None:
            self._handle = self._loop.call_at(self._loop.time() + self.interval, self._fire)

    def _fire(self) -> None:
        self._handle = None
        now = self._loop.time()
        waiting = self.waiting
        while waiting:
            fut, since = next(iter(waiting.items()))
            if now - since < self.interval:
                self._handle = self._loop.call_at(since + self.interval, self._fire)
                return
            del waiting[fut]
            if not fut.done():
                fut.set_result(None)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
