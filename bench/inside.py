"""The 500-stream workload's latency seen from inside the gateway, apart from the client's.

``make bench`` measures a chunk's latency where the load client reads it: from the mock's
timestamp (taken as it hands the chunk to its socket) to the client's read. At 500 streams
the load client and the mock share one core, so that number also holds their own queueing,
which moves a lot from one round to the next on a shared machine. ``python -m bench.inside``
runs the same workload (500 streams of 100 chunks at 20 ms, started within 1 s) through
stagecast, started by the benchmark's launcher with ``--inside``, which measures in the
gateway process itself:

- **gateway**: for every chunk the gateway writes to its client on the upstream read (the
  pushed path, nearly all of them), the time from the mock's timestamp to that write: the
  mock's socket, the gateway's read, its work and its event loop's queue;
- **loop lag**: how late a timer due every 2 ms runs, so how long the loop was busy with
  other work (or paused by the garbage collector) when it was due;
- **gc**: the garbage collector's passes, each as its generation, its pause in ms and the
  unreachable objects it freed
  (``gc.callbacks``).

It prints one line per round, the client's own view beside the gateway's, and exits 1 if any
stream lost, duplicated, reordered or malformed an event. The gateway's timing adds a little
work per chunk (a parse of the mock's timestamp), so its CPU is not ``make bench``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.peers import Proc

LAG_EVERY_S = 0.002


class _Inside:
    """The in-process side (``install``): samples kept until the next report."""

    def __init__(self) -> None:
        self.gateway_ns: list[int] = []
        self.lag_s: list[float] = []
        self.gc_ms: list[float] = []
        self.gc_gens: list[int] = []
        self.gc_freed: list[int] = []
        self._gc_t0 = 0.0
        self.probing = False

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_t0 = time.perf_counter()
        else:
            self.gc_ms.append((time.perf_counter() - self._gc_t0) * 1000)
            self.gc_gens.append(info["generation"])
            self.gc_freed.append(info["collected"])

    def start_probe(self) -> None:
        """Start the loop-lag timer (from inside the running loop)."""
        if self.probing:
            return
        self.probing = True
        loop = asyncio.get_running_loop()
        perf = time.perf_counter

        def tick(due: float) -> None:
            now = perf()
            self.lag_s.append(now - due)
            loop.call_later(LAG_EVERY_S, tick, perf() + LAG_EVERY_S)

        loop.call_soon(tick, perf())

    def report(self, signum: int, frame: object) -> None:
        """SIGUSR2: the samples since the last report, summarised on stderr; then reset."""
        gateway = sorted(self.gateway_ns)
        lag = sorted(self.lag_s)
        out = {
            "chunks": len(gateway),
            "gateway_p50_ms": _pct(gateway, 0.5) / 1e6,
            "gateway_p99_ms": _pct(gateway, 0.99) / 1e6,
            "gateway_max_ms": (gateway[-1] / 1e6) if gateway else 0.0,
            "lag_p99_ms": _pct(lag, 0.99) * 1000,
            "lag_max_ms": (lag[-1] * 1000) if lag else 0.0,
            "gc_passes": len(self.gc_ms),
            "gc_total_ms": sum(self.gc_ms),
            "gc_max_ms": max(self.gc_ms, default=0.0),
            # Each pass as generation:milliseconds:objects freed (unreachable), in order.
            "gc_each": " ".join(
                f"{g}:{ms:.1f}:{n}"
                for g, ms, n in zip(self.gc_gens, self.gc_ms, self.gc_freed, strict=True)
            ),
        }
        self.gateway_ns.clear()
        self.lag_s.clear()
        self.gc_ms.clear()
        self.gc_gens.clear()
        self.gc_freed.clear()
        print("inside " + json.dumps(out), file=sys.stderr, flush=True)


def _pct(xs: list[Any], q: float) -> Any:
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0


def install(*, collector: bool = True) -> None:
    """In the gateway process, before it serves: time every pushed chunk, probe the loop,
    log the collector's passes, and report on SIGUSR2 (see the module's docstring). With
    ``collector`` False the garbage collector is disabled (only to compare: memory in
    reference cycles is then never freed)."""
    from stagecast.api.push import BodyPush

    inside = _Inside()
    write = BodyPush.__call__
    clock = time.monotonic_ns  # the mock's timestamps are monotonic_ns of the same machine

    def timed(self: BodyPush, body: bytes) -> bool:
        if not write(self, body):
            return False
        now = clock()
        # The mock's marker: "s=<seq> t=<19 digits> ", once in every content chunk.
        at = body.rfind(b" t=")
        if at >= 0:
            stamp = body[at + 3 : at + 22]
            if stamp.isdigit():
                inside.gateway_ns.append(now - int(stamp))
        if not inside.probing:
            inside.start_probe()
        return True

    BodyPush.__call__ = timed  # type: ignore[method-assign]
    gc.callbacks.append(inside.on_gc)
    if not collector:
        gc.disable()
    signal.signal(signal.SIGUSR2, inside.report)


_REPORT = re.compile(rb"^inside (\{.*\})$", re.MULTILINE)


async def _report(proc: Proc, timeout: float = 30.0) -> dict[str, Any]:
    """Ask the gateway for its report (SIGUSR2) and read it from its log."""
    seen = len(_REPORT.findall(proc.log_path.read_bytes()))
    os.kill(proc.pid, signal.SIGUSR2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _REPORT.findall(proc.log_path.read_bytes())
        if len(found) > seen:
            return dict(json.loads(found[seen]))
        await asyncio.sleep(0.05)
    raise RuntimeError("stagecast reported nothing from inside")


async def measure(
    rounds: int, streams: int, chunks: int, *, collector: bool = True, flat_s: float = 0.0
) -> list[dict[str, Any]]:
    from bench.load_client import Target, Workload, run_workload
    from bench.mock_upstream import raise_nofile_limit
    from bench.peers import HOST, Processes, pin_client

    raise_nofile_limit()
    pin, _, client_core, gateway_core = pin_client()
    rows = []
    with Processes(pin=pin) as procs:
        mock = await procs.start_mock(client_core)
        flags = ("--inside",) if collector else ("--inside", "--collector-off")
        proc = await procs.start_stagecast(f"{mock.url}/v1", gateway_core, args=flags)
        target = Target("stagecast", HOST, proc.port, "stagecast", "/stream/v1/chat", "bench")
        warm = Workload("warmup", streams, 20, interval_ms=20.0, ramp_s=1.0, timeout_s=60.0)
        await run_workload(target, warm, "inside-warmup")
        for rnd in range(rounds):
            if flat_s:
                # As in ``make bench``, where the flat-out workload comes before the next
                # round's 500 streams: what it leaves behind is paid for in that round.
                flat = Workload(
                    "flat", 10, 1_000_000, 0.0, window_s=flat_s, timeout_s=flat_s + 10.0
                )
                await run_workload(target, flat, f"inside-flat-{rnd}")
            await asyncio.sleep(1.5)  # the last workload's records and teardown
            await _report(proc)  # drop what came before
            wl = Workload("s500", streams, chunks, interval_ms=20.0, ramp_s=1.0, timeout_s=120.0)
            res = await run_workload(target, wl, f"inside-{rnd}")
            got = await _report(proc)
            bad = {k: v for k, v in res.counts().items() if k != "streams" and v}
            if bad:
                raise RuntimeError(f"streams went wrong: {bad} {res.errors()}")
            lat = sorted(res.latencies_ns)
            got["client_p50_ms"] = _pct(lat, 0.5) / 1e6
            got["client_p99_ms"] = _pct(lat, 0.99) / 1e6
            got["client_chunks"] = res.chunks
            rows.append(got)
        procs.stop(proc)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--chunks", type=int, default=100, help="per stream")
    parser.add_argument(
        "--collector-off",
        action="store_true",
        help="disable the gateway's garbage collector (to compare; never in production)",
    )
    parser.add_argument(
        "--flat",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each round, 10 streams flat out for this long (as make bench runs them)",
    )
    args = parser.parse_args(argv)
    from bench.load_client import run_client

    try:
        rows = run_client(
            measure(
                args.rounds,
                args.streams,
                args.chunks,
                collector=not args.collector_off,
                flat_s=args.flat,
            )
        )
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for i, r in enumerate(rows):
        print(
            f"r{i} client p50 {r['client_p50_ms']:.2f} p99 {r['client_p99_ms']:.2f}"
            f" | gateway p50 {r['gateway_p50_ms']:.2f} p99 {r['gateway_p99_ms']:.2f}"
            f" max {r['gateway_max_ms']:.1f} | loop lag p99 {r['lag_p99_ms']:.2f}"
            f" max {r['lag_max_ms']:.1f} | gc {r['gc_passes']} passes"
            f" {r['gc_total_ms']:.1f} ms max {r['gc_max_ms']:.1f} ({r['gc_each']}) | chunks"
            f" {r['client_chunks']} pushed {r['chunks']}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
