"""Objects the garbage collector tracks per live stream and per ended stage, in the real
gateway process.

``python -m bench.objects`` starts stagecast as ``make bench`` does, streams through it from the
mock upstream, and asks it (SIGUSR1, see ``bench.peers``) how many objects the collector
tracks after a full collection: when idle, while ``--streams`` streams are all open, and once
they have ended (their stages are then retained for replay). It prints

    stagecast live_per_stream N retained_per_stage N

and exits 1 if any stream lost, duplicated, reordered or malformed an event.

Why these counts matter: each pass of CPython's collector walks the objects of the
generations it collects, and every other task waits meanwhile. The young generation is
collected after a fixed number of new objects (20,000 under ``stagecast serve``), so the more
objects each new stream keeps, the more often those passes come while streams start; the
older generations hold every object a live stream or a retained stage keeps, and their passes
grow with them. The counts are exact for a given version of the code (the streams are all
open, or all ended, when they are taken), so unlike the pauses themselves they compare two
versions on a busy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
import time

from bench.load_client import Target, Workload, run_workload
from bench.mock_upstream import raise_nofile_limit
from bench.peers import HOST, Proc, Processes

_COUNT = re.compile(rb"^tracked_objects (\d+)$", re.MULTILINE)


async def tracked_objects(proc: Proc, timeout: float = 30.0) -> int:
    """Ask the gateway for its count of tracked objects and read the answer from its log."""
    seen = len(_COUNT.findall(proc.log_path.read_bytes()))
    os.kill(proc.pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = _COUNT.findall(proc.log_path.read_bytes())
        if len(counts) > seen:
            return int(counts[seen])
        await asyncio.sleep(0.05)
    raise RuntimeError(f"stagecast reported no object count:\n{proc.log_tail()}")


async def measure(streams: int) -> dict[str, float]:
    raise_nofile_limit()
    with Processes(pin=False) as procs:
        mock = await procs.start_mock(None)
        proc = await procs.start_stagecast(f"{mock.url}/v1", None)
        target = Target("stagecast", HOST, proc.port, "stagecast", "/stream/v1/chat", "bench")
        # Imports, caches and the upstream connection pool settle first (as many streams at
        # once as measured, so the pool holds as many connections in every count below); the
        # warm-up's own stages stay retained in every count, so they cancel out.
        warm = Workload("warmup", streams, 20, interval_ms=20.0, ramp_s=0.2, timeout_s=60.0)
        await run_workload(target, warm, "objects-warmup")
        await asyncio.sleep(0.5)
        idle = await tracked_objects(proc)
        # Long enough that every stream is open when counted (after the ramp), never ending
        # before: 4 s of chunks after a 0.5 s ramp, counted 2 s in.
        wl = Workload("live", streams, 80, interval_ms=50.0, ramp_s=0.5, timeout_s=120.0)
        running = asyncio.ensure_future(run_workload(target, wl, "objects-live"))
        await asyncio.sleep(2.0)
        live = await tracked_objects(proc)
        res = await running
        bad = {k: v for k, v in res.counts().items() if k != "streams" and v}
        if bad:
            raise RuntimeError(f"streams went wrong: {bad} {res.errors()}")
        await asyncio.sleep(0.5)  # the last stream's teardown and record
        ended = await tracked_objects(proc)
        procs.stop(proc)
    return {
        "live_per_stream": (live - idle) / streams,
        "retained_per_stage": (ended - idle) / streams,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, default=200, help="streams open at once")
    args = parser.parse_args(argv)
    try:
        got = asyncio.run(measure(args.streams))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"stagecast live_per_stream {got['live_per_stream']:.1f}"
        f" retained_per_stage {got['retained_per_stage']:.1f}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
