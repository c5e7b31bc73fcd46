"""User and system CPU per stream and per relayed chunk, of stagecast and of the floor relay.

``python -m bench.cpu_split`` starts the mock upstream, stagecast (as ``make bench`` does) and
the floor relay, pinned as the runner pins them where the machine allows, and runs two
workloads through each gateway: many short streams (``--streams`` streams of two chunks,
started over ``--ramp`` seconds) and a few long ones (``--long`` streams of ``--chunks``
chunks). From the user and the system CPU time the gateway used in each (``/proc/<pid>/stat``,
all its threads) it solves for what one stream costs (its connection, request, stage start and
end, record) and what one relayed chunk costs, apart. One line per gateway, in µs:

    <gateway> per_stream user U system S per_chunk user U system S

It exits 1 if any stream lost, duplicated, reordered or malformed an event.

Why: ``make bench``'s CPU per chunk mixes the two (each chunk of a 100-chunk stream carries a
hundredth of its stream's cost), and the system time (the kernel's socket work, which no
gateway makes much smaller than one read and one write per chunk) with the user time (the
gateway's own code). CPU time comes in 10 ms ticks; at the default sizes each workload takes
about a second of the gateway's CPU, so a tick is about 1% of it. Run it on an otherwise idle
machine: the numbers are times, not counts.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass

from bench.load_client import Target, Workload, run_client, run_workload
from bench.mock_upstream import raise_nofile_limit
from bench.peers import HOST, Proc, Processes, pin_client, user_system_seconds


@dataclass(frozen=True)
class Sizes:
    streams: int  # short streams (two chunks each)
    ramp_s: float  # over which they start
    long: int  # long streams
    chunks: int  # chunks of each long stream


async def _used(proc: Proc, target: Target, wl: Workload) -> tuple[float, float, int, int]:
    """(user s, system s, streams, chunks) of the gateway for one checked workload."""
    user0, sys0 = user_system_seconds(proc.pids())
    res = await run_workload(target, wl, f"{target.name}-{wl.name}")
    await asyncio.sleep(0.5)  # the last streams' teardown and records
    user1, sys1 = user_system_seconds(proc.pids())
    bad = {k: v for k, v in res.counts().items() if k != "streams" and v}
    if bad:
        raise RuntimeError(f"{target.name} {wl.name}: {bad} {res.errors()}")
    return user1 - user0, sys1 - sys0, wl.streams, res.chunks


def split(short: tuple[float, int, int], long: tuple[float, int, int]) -> tuple[float, float]:
    """(seconds per stream, seconds per chunk) from two workloads' (seconds, streams, chunks):
    the solution of ``seconds = per_stream * streams + per_chunk * chunks`` for both."""
    (a1, n1, c1), (a2, n2, c2) = short, long
    det = n1 * c2 - n2 * c1
    if det == 0:
        raise ValueError("the two workloads need different chunks per stream")
    return (a1 * c2 - a2 * c1) / det, (n1 * a2 - n2 * a1) / det


async def measure(sizes: Sizes) -> dict[str, dict[str, float]]:
    raise_nofile_limit()
    pin, _, client_core, gateway_core = pin_client()
    out: dict[str, dict[str, float]] = {}
    with Processes(pin=pin) as procs:
        mock = await procs.start_mock(client_core)
        for name in ("stagecast", "floor"):
            if name == "stagecast":
                proc = await procs.start_stagecast(f"{mock.url}/v1", gateway_core)
                target = Target(name, HOST, proc.port, "stagecast", "/stream/v1/chat", "bench")
            else:
                proc = await procs.start_floor(mock.port, gateway_core)
                target = Target(name, HOST, proc.port, "openai", "/v1/chat/completions", "mock")
            # Imports, caches and the upstream pool settle first.
            warm = Workload("warmup", 100, 10, interval_ms=20.0, ramp_s=0.5, timeout_s=60.0)
            await _used(proc, target, warm)
            short = Workload(
                "short", sizes.streams, 2, interval_ms=20.0, ramp_s=sizes.ramp_s, timeout_s=120.0
            )
            long = Workload(
                "long", sizes.long, sizes.chunks, interval_ms=20.0, ramp_s=0.5, timeout_s=120.0
            )
            u1, s1, n1, c1 = await _used(proc, target, short)
            u2, s2, n2, c2 = await _used(proc, target, long)
            user = split((u1, n1, c1), (u2, n2, c2))
            system = split((s1, n1, c1), (s2, n2, c2))
            out[name] = {
                "per_stream_user": user[0] * 1e6,
                "per_stream_system": system[0] * 1e6,
                "per_chunk_user": user[1] * 1e6,
                "per_chunk_system": system[1] * 1e6,
            }
            procs.stop(proc)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, default=1000, help="short streams (2 chunks)")
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds they start over")
    parser.add_argument("--long", type=int, default=100, help="long streams")
    parser.add_argument("--chunks", type=int, default=200, help="chunks per long stream")
    args = parser.parse_args(argv)
    if args.chunks <= 2:
        parser.error("--chunks must be more than the short streams' 2")
    sizes = Sizes(args.streams, args.ramp, args.long, args.chunks)
    try:
        got = run_client(measure(sizes))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, v in got.items():
        print(
            f"{name} per_stream user {v['per_stream_user']:.0f} system"
            f" {v['per_stream_system']:.0f} per_chunk user {v['per_chunk_user']:.1f}"
            f" system {v['per_chunk_system']:.1f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
