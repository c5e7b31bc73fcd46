"""RecordWriter: saves stage records in the background, so that no stage waits for a database.

``submit`` only queues. One task saves the queue in order, in batches; when the database fails
it logs, backs off exponentially and tries again with the same records, so an outage delays
records instead of losing them. The queue is bounded: past ``max_pending`` the oldest record
is dropped (and logged, and counted). Only the newest record of a stage is kept while it
waits, which is all an upsert by ``stage_id`` would leave anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import OrderedDict
from collections.abc import Sequence
from itertools import islice

from stagecast.store.base import StageRecord, Store, StoreDataError

log = logging.getLogger(__name__)

# Stage ids named in the log line of a shutdown that left records unsaved.
_LOST_IDS_SHOWN = 20


class RecordWriter:
    """A bounded queue of stage records and the task that saves them.

    Counters for metrics: ``saved`` (records written), ``failed_attempts`` (saves that failed
    and will be tried again), ``dropped`` (records given up: queue overflow, or still unsaved
    at shutdown), ``rejected`` (records the database refused for good) and ``pending``.

    The writer does not own the store: start the store before and close it after the writer.
    Use it from one event loop; ``submit`` is not thread-safe.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_pending: int = 10_000,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        batch_size: int = 100,
        linger: float = 0.05,
    ) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        if not 0 < retry_initial <= retry_max:
            raise ValueError("need 0 < retry_initial <= retry_max")
        self.store = store
        self.max_pending = max_pending
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.batch_size = max(1, batch_size)
        self.linger = max(0.0, linger)
        self.saved = 0
        self.failed_attempts = 0
        self.dropped = 0
        self.rejected = 0
        # stage_id -> newest record, oldest submission first.
        self._pending: OrderedDict[str, StageRecord] = OrderedDict()
        # The batch being saved right now: overflow spares it, since it may be written already.
        self._in_flight: dict[str, StageRecord] = {}
        self._wake = asyncio.Event()
        # Set by aclose to cut a backoff short: the last chance to save before shutdown.
        self._hurry = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        """Records waiting to be saved, including the batch being saved now."""
        return len(self._pending)

    def submit(self, record: StageRecord) -> None:
        """Queue a record for saving. Never blocks, never raises: a stage calls this last."""
        try:
            if self._closed:
                self.dropped += 1
                log.error(
                    "stage record dropped: the writer is closed",
                    extra={"stage_id": record.stage_id},
                )
                return
            stage_id = record.stage_id
            # A newer record of a stage replaces the waiting one and moves to the back, so
            # per stage only the latest state is written, and never overwritten by an older.
            self._pending.pop(stage_id, None)
            self._pending[stage_id] = record
            if len(self._pending) > self.max_pending:
                self._drop_oldest(stage_id)
            self._wake.set()
        except Exception:
            log.exception("could not queue a stage record")

    def _drop_oldest(self, newest: str) -> None:
        # The oldest record not being saved right now: one in flight may be written already.
        # If only the record just submitted qualifies, the oldest in flight goes instead.
        victim = next(iter(self._pending))
        for stage_id, record in self._pending.items():
            if stage_id == newest:
                break
            if self._in_flight.get(stage_id) is not record:
                victim = stage_id
                break
        del self._pending[victim]
        self.dropped += 1
        log.error(
            "stage record dropped: too many records waiting for the store",
            extra={"stage_id": victim, "max_pending": self.max_pending, "dropped": self.dropped},
        )

    async def start(self) -> None:
        """Start the background task (records submitted before are saved too)."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="stagecast-record-writer"
            )
            self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # Records would pile up unseen behind a dead task: say so loudly.
            log.error(
                "the record writer stopped",
                exc_info=task.exception(),
                extra={"pending": len(self._pending)},
            )

    async def aclose(self, timeout: float = 10.0) -> None:
        """Save what can be saved within ``timeout`` seconds, then stop; the rest is dropped."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._hurry.set()
        task, self._task = self._task, None
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._pending:
            lost = list(self._pending)
            self._pending.clear()
            self.dropped += len(lost)
            log.error(
                "stage records not saved before shutdown",
                extra={"lost": len(lost), "stage_ids": lost[:_LOST_IDS_SHOWN]},
            )

    async def _run(self) -> None:
        delay = self.retry_initial
        failing = False
        while True:
            if not self._pending:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if (
                self.linger
                and not self._closed
                and not failing
                and len(self._pending) < self.batch_size
            ):
                # Before every batch that is not full, not only the first after a quiet
                # spell: records of stages ending together share one transaction. Saving
                # again as soon as a save returns made batches of two or three records under
                # steady load, each a commit that rewrote the same table and index pages and
                # a trip to the database thread that competed with the relay for the core.
                await self._backoff(self.linger)
            batch = list(islice(self._pending.values(), self.batch_size))
            self._in_flight = {r.stage_id: r for r in batch}
            try:
                await self._save(batch)
            except Exception as exc:
                self.failed_attempts += 1
                log.warning(
                    "could not save stage records; will retry",
                    extra={
                        "error": f"{type(exc).__name__}: {exc}",
                        "pending": len(self._pending),
                        "retry_in": round(delay, 3),
                        "failed_attempts": self.failed_attempts,
                    },
                )
                failing = True
                await self._backoff(delay)
                delay = min(delay * 2, self.retry_max)
                continue
            finally:
                self._in_flight = {}
            if failing:
                log.info(
                    "saving stage records again",
                    extra={"pending": len(self._pending), "failed_attempts": self.failed_attempts},
                )
                failing = False
            delay = self.retry_initial

    async def _save(self, batch: Sequence[StageRecord]) -> None:
        try:
            await self.store.save_many(batch)
        except StoreDataError:
            if len(batch) == 1:
                self._reject(batch[0])
                return
            # One bad record must not hold back the rest: find it by saving one at a time.
            for record in batch:
                try:
                    await self.store.save(record)
                except StoreDataError:
                    self._reject(record)
                else:
                    self._done((record,))
            return
        self._done(batch)

    def _done(self, records: Sequence[StageRecord]) -> None:
        for record in records:
            self.saved += 1
            # Unless a newer record of the stage arrived meanwhile; that one is still to save.
            if self._pending.get(record.stage_id) is record:
                del self._pending[record.stage_id]

    def _reject(self, record: StageRecord) -> None:
        self.rejected += 1
        if self._pending.get(record.stage_id) is record:
            del self._pending[record.stage_id]
        log.error(
            "stage record refused by the store; dropped",
            extra={"stage_id": record.stage_id, "rejected": self.rejected},
            exc_info=True,
        )

    async def _backoff(self, delay: float) -> None:
        # Jitter keeps replicas that lost the same database from retrying in lockstep.
        pause = delay * random.uniform(0.5, 1.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._hurry.wait(), pause)
        # Cut short only once: at shutdown, retrying without pause would spin on a dead link.
        self._hurry.clear()
