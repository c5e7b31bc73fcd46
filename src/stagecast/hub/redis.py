"""Redis StreamHub: stage logs shared by every gateway replica behind a load balancer.

Each stage is a hash of metadata and a Redis Stream of events. Entries get explicit ids
``0-<seq>``, so the SSE ``id`` is a plain integer and ``XREAD`` from ``0-<Last-Event-ID>``
resumes with no gap and no duplicate. Writes are Lua scripts: one round trip each, and atomic
against other replicas (two replicas opening the same id, a cancel racing the terminal event).

Keys, for prefix ``P`` and stage id ``S`` (the braces keep one stage's keys in one cluster
slot)::

    P{S}:meta        hash: status, owner, replica, meta (JSON), created_at, finished_at,
                     last_seq, nbytes, readers, gen, cancel
    P{S}:log:<gen>   stream: one entry per event, fields e (event name) and d (data)
    Pcancel          pub/sub channel: "<gen> <S>" for each cancel request

``gen`` is a random token chosen at ``open``. Reopening a finished id starts a new stream key,
so a slow reader of the old run can never be handed events of the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from stagecast.errors import StageConflictError, StageLimitError
from stagecast.hub.base import (
    TERMINAL_STATUS,
    Push,
    ReaderLagError,
    StageInfo,
    StageNotFoundError,
    StageStatus,
)
from stagecast.hub.memory import MAX_BATCH
from stagecast.protocol.sse import encode_frame

log = logging.getLogger(__name__)

T = TypeVar("T")

# A waiting tail wakes at least this often (seconds) to notice a stage that expired or was
# replaced, and never blocks longer than half the socket timeout, which would cut the read.
_MAX_BLOCK = 10.0
# redis-py's own default; a ``socket_timeout`` in the URL overrides it.
_SOCKET_TIMEOUT = 5.0
# How long the cancel listener waits for a message before it pings to detect a dead link.
_LISTEN_IDLE = 30.0
_STATUSES: frozenset[str] = frozenset(("running", "done", "cancelled", "error"))

# Milliseconds on the Redis server's clock, so replicas never compare their own clocks.
_NOW = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: meta, log key prefix. ARGV: owner, has_owner, meta JSON, created_at, gen, replica,
# lease_ms. A running stage whose owner stopped renewing its lease may be replaced.
_OPEN = (
    _NOW
    + """
local m = redis.call('HMGET', KEYS[1], 'status', 'lease')
local st = m[1]
if st == 'running' and tonumber(m[2] or 0) >= now_ms() then return 0 end
if st then
  local old = redis.call('HGET', KEYS[1], 'gen')
  if old then redis.call('DEL', KEYS[2] .. old) end
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], 'status', 'running', 'meta', ARGV[3], 'created_at', ARGV[4],
  'gen', ARGV[5], 'replica', ARGV[6], 'last_seq', 0, 'nbytes', 0, 'readers', 0,
  'lease', now_ms() + tonumber(ARGV[7]))
if ARGV[2] == '1' then redis.call('HSET', KEYS[1], 'owner', ARGV[1]) end
return 1
"""
)

# KEYS: meta, log key prefix. ARGV: event, data, terminal status or '', max_events,
# max_bytes, ttl_ms, now. Returns the new seq, or -1 unknown stage, -2 ended, -3 too large.
_APPEND = """
local m = redis.call('HMGET', KEYS[1], 'status', 'last_seq', 'nbytes', 'gen')
if not m[1] then return -1 end
if m[1] ~= 'running' then return -2 end
local last = tonumber(m[2])
local nbytes = tonumber(m[3])
local terminal = ARGV[3]
if terminal == '' and (last >= tonumber(ARGV[4]) or nbytes + #ARGV[2] > tonumber(ARGV[5])) then
  return -3
end
local seq = last + 1
local logkey = KEYS[2] .. m[4]
redis.call('XADD', logkey, '0-' .. seq, 'e', ARGV[1], 'd', ARGV[2])
nbytes = nbytes + #ARGV[1] + #ARGV[2]
if terminal == '' then
  redis.call('HSET', KEYS[1], 'last_seq', seq, 'nbytes', nbytes)
else
  redis.call('HSET', KEYS[1], 'last_seq', seq, 'nbytes', nbytes, 'status', terminal,
    'finished_at', ARGV[7])
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  redis.call('PEXPIRE', logkey, ARGV[6])
end
return seq
"""

# KEYS: meta, log key prefix. ARGV: first seq wanted. -1 when the stage is unknown (an
# integer: how a Lua nil or false reaches the client differs between RESP2 and RESP3).
_EVENTS = """
local gen = redis.call('HGET', KEYS[1], 'gen')
if not gen then return -1 end
return redis.call('XRANGE', KEYS[2] .. gen, '0-' .. ARGV[1], '+')
"""

# KEYS: meta. ARGV: channel, stage id. The flag lets an owner that missed the message (its
# listener was reconnecting) still see the request.
_CANCEL = """
local m = redis.call('HMGET', KEYS[1], 'status', 'gen')
if m[1] ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'cancel', 1)
redis.call('PUBLISH', ARGV[1], m[2] .. ' ' .. ARGV[2])
return 1
"""

# KEYS: metas of this replica's running stages. ARGV: lease_ms, replica. Renews each lease
# that is still this replica's.
_RENEW = (
    _NOW
    + """
local until_ms = now_ms() + tonumber(ARGV[1])
for _, key in ipairs(KEYS) do
  local m = redis.call('HMGET', key, 'status', 'replica')
  if m[1] == 'running' and m[2] == ARGV[2] then redis.call('HSET', key, 'lease', until_ms) end
end
return 1
"""
)

# KEYS: meta, log key prefix. ARGV: error payload, ttl_ms, finished_at. Ends a running stage
# whose owner's lease ran out (the replica died) with a terminal error event. Returns 1 if
# it did.
_REAP = (
    _NOW
    + """
local m = redis.call('HMGET', KEYS[1], 'status', 'lease', 'last_seq', 'gen')
if m[1] ~= 'running' or tonumber(m[2] or 0) >= now_ms() then return 0 end
local seq = tonumber(m[3]) + 1
local logkey = KEYS[2] .. m[4]
redis.call('XADD', logkey, '0-' .. seq, 'e', 'error', 'd', ARGV[1])
redis.call('HSET', KEYS[1], 'last_seq', seq, 'status', 'error', 'finished_at', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', logkey, ARGV[2])
return 1
"""
)

# KEYS: meta. ARGV: +1 or -1. Never below zero, never creates the hash.
_READERS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = redis.call('HINCRBY', KEYS[1], 'readers', ARGV[1])
if n < 0 then
  redis.call('HSET', KEYS[1], 'readers', 0)
  n = 0
end
return n
"""


@dataclass(slots=True)
class _Owned:
    """A stage opened through this hub: where its cancel requests are delivered."""

    gen: str
    callbacks: list[Callable[[], None]] = field(default_factory=list)
    cancelled: bool = False


class RedisHub:
    """StreamHub on Redis Streams, shared by every replica that uses the same Redis.

    The process that opens a stage owns it: cancel requests made on any replica reach the
    callbacks registered here with ``on_cancel``. Each hub holds one pub/sub connection for
    that; every tail holds a pooled connection while it waits for events.
    """

    def __init__(
        self,
        url: str,
        *,
        ttl: float = 600.0,
        max_events: int = 100_000,
        max_bytes: int = 64 * 1024 * 1024,
        max_reader_lag: int = 10_000,
        retry_ms: int = 2000,
        replica_id: str | None = None,
        prefix: str = "stagecast:",
        owner_lease: float = 15.0,
    ) -> None:
        self.ttl = ttl
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_reader_lag = max_reader_lag
        self.retry_ms = retry_ms
        self.replica_id = replica_id or secrets.token_hex(6)
        self.prefix = prefix
        # A replica renews the leases of its running stages every third of this; a stage
        # whose lease ran out belongs to a replica that died, and readers end it.
        self.owner_lease = owner_lease
        self._channel = f"{prefix}cancel".encode()
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url,
            decode_responses=False,
            socket_timeout=_SOCKET_TIMEOUT,
            # Names this replica's connections in CLIENT LIST.
            client_name="stagecast-hub:" + "_".join(self.replica_id.split()),
        )
        socket_timeout = self._redis.connection_pool.connection_kwargs.get("socket_timeout")
        self._max_block = (
            _MAX_BLOCK if socket_timeout is None else min(_MAX_BLOCK, socket_timeout / 2)
        )
        self._open_script = self._redis.register_script(_OPEN)
        self._append_script = self._redis.register_script(_APPEND)
        self._events_script = self._redis.register_script(_EVENTS)
        self._cancel_script = self._redis.register_script(_CANCEL)
        self._readers_script = self._redis.register_script(_READERS)
        self._renew_script = self._redis.register_script(_RENEW)
        self._reap_script = self._redis.register_script(_REAP)
        self._keeper: asyncio.Task[None] | None = None
        self._owned: dict[str, _Owned] = {}
        self._pubsub: PubSub | None = None
        self._listener: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()
        self._closed = False

    def _meta_key(self, stage_id: str) -> str:
        return f"{self.prefix}{{{stage_id}}}:meta"

    def _log_prefix(self, stage_id: str) -> str:
        return f"{self.prefix}{{{stage_id}}}:log:"

    async def start(self) -> None:
        """Subscribe to cancel requests; ``open`` calls this, so calling it is optional.

        Returns once Redis has confirmed the subscription, so a cancel published after the
        first ``open`` returns cannot be missed.
        """
        if self._listener is not None:
            return
        async with self._start_lock:
            if self._listener is not None:
                return
            if self._closed:
                raise RuntimeError("RedisHub is closed")
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                async with asyncio.timeout(_LISTEN_IDLE):
                    msg = None
                    while msg is None or msg["type"] != "subscribe":
                        msg = await pubsub.get_message(timeout=_LISTEN_IDLE)
            except BaseException:
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # unannotated upstream
                raise
            self._pubsub = pubsub
            self._listener = asyncio.create_task(
                self._listen(pubsub), name=f"stagecast-hub-cancel-{self.replica_id}"
            )
            self._keeper = asyncio.create_task(
                self._keep_leases(), name=f"stagecast-hub-lease-{self.replica_id}"
            )

    async def open(self, stage_id: str, *, owner: str | None, meta: dict[str, Any]) -> None:
        """Create the log of a new stage; ``StageConflictError`` if that id is live anywhere."""
        await self.start()
        gen = secrets.token_hex(8)
        cancels = _cancels()
        created = await self._open_script(
            keys=[self._meta_key(stage_id), self._log_prefix(stage_id)],
            args=[
                owner or "",
                "0" if owner is None else "1",
                orjson.dumps(meta),
                repr(time.time()),
                gen,
                self.replica_id,
                max(int(self.owner_lease * 1000), 1),
            ],
        )
        if created:
            self._owned[stage_id] = _Owned(gen)
        _raise_lost_cancel(cancels)
        if not created:
            raise StageConflictError(f"stage {stage_id!r} is already running")

    async def append(self, stage_id: str, event: str, data: bytes) -> int:
        """Append one event in one round trip and return its sequence number.

        Bytes are counted as stored (event name plus data), not as encoded frames.
        """
        status = TERMINAL_STATUS.get(event)
        cancels = _cancels()
        seq = int(
            await self._append_script(
                keys=[self._meta_key(stage_id), self._log_prefix(stage_id)],
                args=[
                    event,
                    data,
                    status or "",
                    self.max_events,
                    self.max_bytes,
                    max(int(self.ttl * 1000), 1),
                    repr(time.time()),
                ],
            )
        )
        if status is not None and seq > 0:
            self._owned.pop(stage_id, None)
        _raise_lost_cancel(cancels)
        if seq == -1:
            raise StageNotFoundError(f"stage {stage_id!r} is not open")
        if seq == -2:
            raise StageLimitError(f"stage {stage_id!r} already ended", code="stage_ended")
        if seq == -3:
            raise StageLimitError(
                f"stage {stage_id!r} exceeded its bounds of {self.max_events} events or "
                f"{self.max_bytes} bytes"
            )
        return seq

    async def tail(
        self,
        stage_id: str,
        after: int = 0,
        *,
        heartbeat: float | None = None,
        push: Push | None = None,
    ) -> AsyncIterator[bytes]:
        """Encoded SSE frames after ``after``, live, until the terminal frame.

        One round trip per wake-up: a blocking ``XREAD`` pipelined with a read of the
        stage's status, which notices expiry and tells how far behind the reader is. As in
        ``MemoryHub``, batches hold at most ``MAX_BATCH`` frames, and lag counts only once the
        reader has caught up: a replay starts far behind by design.
        """
        meta_key = self._meta_key(stage_id)
        row = await _keep_cancel(self._redis.hmget(meta_key, ["gen", "status", "last_seq"]))
        # decode_responses=False: redis-py's str | bytes annotations are bytes here.
        gen, status, last_seq = cast("list[bytes | None]", row)
        if gen is None:
            raise StageNotFoundError(f"no stage {stage_id!r} (unknown or expired)")
        log_key = self._log_prefix(stage_id).encode() + gen
        pos = max(after, 0)
        caught_up = pos >= int(last_seq or 0)
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        while True:
            block_ms: int | None = None
            if status == b"running":
                # Only a live stage can grow; a finished one is read without waiting.
                wait = self._max_block
                if heartbeat is not None:
                    wait = min(wait, heartbeat - (loop.time() - quiet_since))
                block_ms = max(math.ceil(wait * 1000), 1)
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xread({log_key: f"0-{pos}"}, count=MAX_BATCH, block=block_ms)
                pipe.hmget(meta_key, ["status", "last_seq", "gen"])
                reply, (status, last_seq, now_gen) = await _keep_cancel(pipe.execute())
            if status is None or now_gen != gen:
                raise StageNotFoundError(f"no stage {stage_id!r} (expired or replaced)")
            entries = _stream_entries(reply)
            if entries:
                behind = int(last_seq) - pos
                if caught_up and behind > self.max_reader_lag and status == b"running":
                    raise ReaderLagError(
                        f"reader is {behind} events behind stage {stage_id!r}; resume from "
                        f"Last-Event-ID {pos}"
                    )
                frames: list[bytes] = []
                ended = False
                for entry_id, fields in entries:
                    pos = int(entry_id.partition(b"-")[2])
                    event = fields[b"e"].decode()
                    retry = self.retry_ms if pos == 1 else None
                    frames.append(encode_frame(event, fields[b"d"], id=pos, retry=retry))
                    # The terminal event is always the last entry of a log.
                    ended = event in TERMINAL_STATUS
                yield frames[0] if len(frames) == 1 else b"".join(frames)
                if ended:
                    return
                caught_up = caught_up or pos >= int(last_seq)
                quiet_since = loop.time()
                continue
            caught_up = True
            if status != b"running":
                # Already past the terminal event (``after`` was at or beyond it).
                return
            if stage_id not in self._owned and await _keep_cancel(self._reap(stage_id)):
                continue
            if heartbeat is not None and loop.time() - quiet_since >= heartbeat:
                yield b""
                quiet_since = loop.time()

    async def info(self, stage_id: str) -> StageInfo | None:
        """The stage's status as stored in Redis, or None if unknown or expired."""
        row = await _keep_cancel(
            self._redis.hmget(
                self._meta_key(stage_id),
                ["status", "last_seq", "owner", "meta", "created_at", "finished_at"],
            )
        )
        status, last_seq, owner, meta, created_at, finished_at = cast("list[bytes | None]", row)
        if status is None:
            return None
        text = status.decode()
        if text not in _STATUSES:
            raise RuntimeError(f"stage {stage_id!r} has an unknown status {text!r} in Redis")
        return StageInfo(
            stage_id=stage_id,
            status=cast(StageStatus, text),
            last_seq=int(last_seq or 0),
            owner=owner.decode() if owner is not None else None,
            meta=orjson.loads(meta) if meta else {},
            created_at=float(created_at or 0.0),
            finished_at=float(finished_at) if finished_at is not None else None,
        )

    async def events(self, stage_id: str, after: int = 0) -> list[tuple[int, str, bytes]]:
        """The stored events after ``after`` as (seq, event, data), without waiting."""
        raw = await _keep_cancel(
            self._events_script(
                keys=[self._meta_key(stage_id), self._log_prefix(stage_id)],
                args=[max(after, 0) + 1],
            )
        )
        if isinstance(raw, int):
            raise StageNotFoundError(f"no stage {stage_id!r} (unknown or expired)")
        out: list[tuple[int, str, bytes]] = []
        for entry_id, flat in raw:
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            out.append((int(entry_id.partition(b"-")[2]), fields[b"e"].decode(), fields[b"d"]))
        return out

    async def request_cancel(self, stage_id: str) -> bool:
        """Ask the stage's owner, on whichever replica, to cancel; False if not running."""
        sent = await _keep_cancel(
            self._cancel_script(keys=[self._meta_key(stage_id)], args=[self._channel, stage_id])
        )
        return bool(sent)

    def on_cancel(self, stage_id: str, callback: Callable[[], None]) -> None:
        """Register a callback for cancel requests from any replica.

        Only the hub that opened the stage can register (it is the owner). A request that
        arrived before the callback was registered invokes it at once. Callbacks run on this
        hub's listener task and should be idempotent: a request can be seen twice.
        """
        owned = self._owned.get(stage_id)
        if owned is None:
            raise StageNotFoundError(f"stage {stage_id!r} is not open on this hub")
        owned.callbacks.append(callback)
        if owned.cancelled:
            callback()

    async def attach(self, stage_id: str) -> int:
        """A reader attached; returns the number of attached readers across replicas."""
        return int(
            await _keep_cancel(self._readers_script(keys=[self._meta_key(stage_id)], args=[1]))
        )

    async def detach(self, stage_id: str) -> int:
        """A reader left; returns the number still attached across replicas."""
        return int(
            await _keep_cancel(self._readers_script(keys=[self._meta_key(stage_id)], args=[-1]))
        )

    async def aclose(self) -> None:
        """Stop the cancel listener and lease keeper, and close every connection."""
        self._closed = True
        for attr in ("_listener", "_keeper"):
            task = getattr(self, attr)
            setattr(self, attr, None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # unannotated upstream
        self._owned.clear()
        await self._redis.aclose()

    async def _listen(self, pubsub: PubSub) -> None:
        backoff = 0.1
        while True:
            try:
                msg = await _keep_cancel(pubsub.get_message(timeout=_LISTEN_IDLE))
                if msg is None:
                    # A quiet link may be a dead one; the ping fails (and we reconnect) if so.
                    await _keep_cancel(pubsub.ping())
                    continue
                backoff = 0.1
                if msg["type"] == "message":
                    gen, _, stage_id = msg["data"].decode().partition(" ")
                    self._deliver(stage_id, gen)
                elif msg["type"] == "subscribe":
                    # A resubscription after a reconnect: requests published while we were
                    # away survive only as the flag in each stage's hash.
                    await self._sweep()
            except (RedisError, OSError) as exc:
                log.warning(
                    "cancel listener lost Redis; retrying",
                    extra={"replica": self.replica_id, "error": repr(exc), "backoff": backoff},
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:
                # A dead listener would silently drop every later cancel: log and go on.
                log.exception("cancel listener failed", extra={"replica": self.replica_id})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _keep_leases(self) -> None:
        lease_ms = max(int(self.owner_lease * 1000), 1)
        while True:
            await asyncio.sleep(self.owner_lease / 3)
            keys = [self._meta_key(s) for s in self._owned]
            if not keys:
                continue
            try:
                # A cancel (``aclose``) lost inside this call would leave the keeper renewing
                # the leases of a hub that has closed: its stages could never be reaped.
                await _keep_cancel(self._renew_script(keys=keys, args=[lease_ms, self.replica_id]))
            except (RedisError, OSError) as exc:
                log.warning(
                    "could not renew stage leases",
                    extra={"replica": self.replica_id, "error": repr(exc)},
                )

    async def _reap(self, stage_id: str) -> bool:
        """End ``stage_id`` with ``owner_lost`` if its owner's lease ran out."""
        payload = orjson.dumps(
            {
                "stage_id": stage_id,
                "error": "the gateway replica running this stage stopped; run it again",
                "code": "owner_lost",
                "retryable": True,
            }
        )
        reaped = await self._reap_script(
            keys=[self._meta_key(stage_id), self._log_prefix(stage_id)],
            args=[payload, max(int(self.ttl * 1000), 1), repr(time.time())],
        )
        if reaped:
            log.warning("stage owner lost; stage ended", extra={"stage_id": stage_id})
        return bool(reaped)

    def _deliver(self, stage_id: str, gen: str) -> None:
        owned = self._owned.get(stage_id)
        if owned is None or owned.gen != gen:
            return
        owned.cancelled = True
        for callback in list(owned.callbacks):
            try:
                callback()
            except Exception:
                log.exception(
                    "cancel callback failed",
                    extra={"stage_id": stage_id, "replica": self.replica_id},
                )

    async def _sweep(self) -> None:
        owned = list(self._owned.items())
        if not owned:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for stage_id, _ in owned:
                pipe.hmget(self._meta_key(stage_id), ["status", "gen", "cancel"])
            rows = await pipe.execute()
        for (stage_id, entry), (status, gen, cancel) in zip(owned, rows, strict=True):
            if gen is None or gen.decode() != entry.gen or status != b"running":
                # Ended (or reopened) through another replica: nothing left to cancel here.
                if self._owned.get(stage_id) is entry:
                    del self._owned[stage_id]
            elif cancel and not entry.cancelled:
                self._deliver(stage_id, entry.gen)


def _stream_entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The entries of a one-stream XREAD reply, in RESP2 or RESP3 shape (the URL picks)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        (entries,) = reply.values()
        # redis-py wraps the RESP3 entry list in one more list.
        return entries[0] if entries and isinstance(entries[0], list) else entries
    return cast("list[tuple[bytes, dict[bytes, bytes]]]", reply[0][1])


async def _keep_cancel(call: Awaitable[T]) -> T:
    """Await a redis-py call without losing a cancel that lands during it (see below)."""
    cancels = _cancels()
    result = await call
    _raise_lost_cancel(cancels)
    return result


def _cancels() -> int:
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def _raise_lost_cancel(before: int) -> None:
    """Raise a cancel requested since ``_cancels()`` returned ``before`` but never delivered.

    With a socket timeout, redis-py writes each command inside ``asyncio.wait_for``, and on
    Python 3.11 ``wait_for`` drops a cancel that arrives just as the write completes: the task
    runs on as if never cancelled (a stage that does not stop, a reader that waits forever).
    Raising it here is as if it had come just after the call. A task that was already
    cancelling (cleaning up after a cancel) is not cancelled again.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError
