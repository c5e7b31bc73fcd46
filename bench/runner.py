"""Side-by-side benchmark: the same workloads direct, through stagecast and through LiteLLM.

``python -m bench.runner [--quick | --smoke] [--rounds N] [--out bench/results/latest.json]``

One run starts the mock upstream, stagecast and (when installed) LiteLLM's proxy, then for
every round runs each workload against each target back to back, rotating the order of the
targets every round, so that the noise of a shared machine falls on all of them alike. Memory
per idle stream is measured last, on fresh gateway processes. Metrics are medians over rounds
with min and max; "added" values are the gateway's value minus the direct value of the same
round. See bench/README.md for what each metric means and how it is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.load_client import (
    ClosePlan,
    IdleStreams,
    Target,
    Workload,
    http_json,
    percentile,
    run_client,
    run_workload,
    validate_samples,
)
from bench.mock_upstream import raise_nofile_limit
from bench.peers import (
    HOST,
    PEERS_VENV,
    Proc,
    Processes,
    pin_client,
)
from bench.profiling import profile_gateway
from bench.report import (
    LADDER,
    METRICS,
    foreign_load,
    ladder_step_ok,
    problems,
    render_markdown,
    render_table,
    summarise,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latest.json"
# Time for opening idle streams through one gateway (a slow gateway stops short of 5,000).
RSS_BUDGET_S = 25.0
# Ladder steps that exist only for the ladder: skipped once a lower step failed.
LADDER_ONLY = ("r10", "r5")


@dataclass
class Plan:
    """Sizes of one run: ``full`` (make bench), ``quick`` (< 30 s) or ``smoke`` (CI)."""

    mode: str
    rounds: int
    latency: dict[str, Workload]
    close: dict[str, Workload]
    close_wait_s: float
    rss_steps: list[int]
    warmup: list[Workload] = field(default_factory=list)


def _wl(name: str, streams: int, chunks: int, iv: float, **kw: Any) -> Workload:
    wl = Workload(name, streams, chunks, interval_ms=iv, **kw)
    # Bounded in time whatever the target does: 1.5 times the nominal length plus 3 s. A
    # target that has not finished by then is too slow (reported), not wrong.
    nominal = wl.ramp_s + wl.delay_ms / 1000 + chunks * iv / 1000
    if wl.sequential:
        nominal *= streams
    if wl.window_s is not None:
        nominal = wl.window_s
    wl.timeout_s = max(8.0, 1.5 * nominal + 3)
    return wl


@dataclass(frozen=True)
class _Sizes:
    seq: int  # sequential streams for time to first token
    s1: int  # chunks of the single stream
    s100: tuple[int, int]  # (streams, chunks) of the "100 streams" workload
    s500: tuple[int, int]  # (streams, chunks) of the "500 streams" workload
    flat: tuple[int, float]  # (streams, seconds) flat out
    close: int  # streams per close workload
    rss: list[int]  # idle-stream counts of the memory ladder
    rounds: int


SIZES = {
    "smoke": _Sizes(5, 20, (10, 20), (20, 20), (2, 0.5), 5, [0, 50, 100], 1),
    "quick": _Sizes(10, 40, (100, 40), (500, 30), (5, 0.5), 10, [0, 400, 800], 1),
    "full": _Sizes(
        40, 100, (100, 100), (500, 100), (10, 2.0), 40, [0, 1000, 2000, 3000, 4000, 5000], 5
    ),
}


def make_plan(mode: str, rounds: int | None) -> Plan:
    """The workloads of a run; every size is written down in the JSON output."""
    z = SIZES[mode]
    (n100, c100), (n500, c500), (nflat, window) = z.s100, z.s500, z.flat
    # In ladder order: 100 streams at 20, 10 and 5 ms, then 500 at 20 ms (5k..25k chunks/s).
    latency = {
        "ttft": _wl("ttft", z.seq, 2, 20.0, sequential=True),
        "s1": _wl("s1", 1, z.s1, 20.0),
        "s100": _wl("s100", n100, c100, 20.0, ramp_s=0.5 if mode == "full" else 0.3),
        "r10": _wl("r10", n100, c100, 10.0, ramp_s=0.3),
        "r5": _wl("r5", n100, 2 * c100, 5.0, ramp_s=0.3),
        "s500": _wl("s500", n500, c500, 20.0, ramp_s={"smoke": 0.2, "quick": 0.5}.get(mode, 1.0)),
        # Flat out over a fixed window: as many chunks as the path moves (streams never end).
        "flat": _wl("flat", nflat, 100_000, 0.0, window_s=window, keep_samples=0),
    }
    close = {
        "close_first_token": _wl(
            "close_first_token",
            z.close,
            5,
            20.0,
            delay_ms=5000.0,
            ramp_s=0.4,
            close=ClosePlan(after_s=0.25),
        ),
        "close_streaming": _wl(
            "close_streaming", z.close, 250, 20.0, ramp_s=0.4, close=ClosePlan(after_chunks=10)
        ),
    }
    warmup = [
        _wl("warmup", 20, 20, 5.0, ramp_s=0.1),
        _wl("warmup_seq", 5, 2, 20.0, sequential=True),
    ]
    return Plan(
        mode=mode,
        rounds=rounds or z.rounds,
        latency=latency,
        close=close,
        close_wait_s=2.0,
        rss_steps=z.rss,
        warmup=warmup,
    )


@dataclass
class Bench:
    """A target under test: how to reach it and, for gateways, its process."""

    name: str
    target: Target
    proc: Proc | None


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    return {
        "nproc": int(nproc) if nproc.isdigit() else os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "loadavg_start": loadavg(),
    }


def loadavg() -> list[str]:
    """The 1, 5 and 15 minute load averages."""
    return Path("/proc/loadavg").read_text().split()[:3]


def core_busy() -> dict[int, tuple[int, int]]:
    """Per core (busy, total) jiffies from /proc/stat, to see other work on the machine."""
    out: dict[int, tuple[int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            name, *vals = line.split()
            v = [int(x) for x in vals[:8]]
            busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
            out[int(name[3:])] = (busy, busy + v[3] + v[4])
    return out


def _busy_fraction(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], core: int
) -> float:
    b0, t0 = before.get(core, (0, 0))
    b1, t1 = after.get(core, (0, 0))
    return (b1 - b0) / (t1 - t0) if t1 > t0 else float("nan")


class Runner:
    """Runs a plan and keeps every measurement as a plain record."""

    def __init__(
        self, plan: Plan, procs: Processes, mock: Proc, log: Callable[[str], None]
    ) -> None:
        self.plan = plan
        self.procs = procs
        self.mock = mock
        self.log = log
        self.records: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.gateways: list[Proc] = []
        # How often a gateway was still busy when the next workload had to start.
        self.busy_after: dict[str, int] = {}
        # Upstream streams the mock ended because no gateway had closed them 3 s after a
        # workload (flat-out streams a gateway kept reading after its clients left).
        self.aborted_upstream = 0
        # Set by run() from what it saw before pinning itself (then it sees one core only).
        self.client_core, self.gateway_core = 0, 0

    async def mock_json(self, method: str, path: str) -> Any:
        _, obj = await http_json(HOST, self.mock.port, method, path, timeout=10)
        return obj

    async def settle(self, quiet_timeout: float = 3.0) -> None:
        """Before a workload: no stream left at the mock, every gateway quiet (both bounded).

        The gateways share a core, so one still busy with the last workload (a proxy that
        keeps reading upstream after its client left, say) would slow the next one down.
        """
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if (await self.mock_json("GET", "/_bench/stats"))["active"] == 0:
                break
            await asyncio.sleep(0.05)
        else:
            aborted = (await self.mock_json("POST", "/_bench/abort"))["aborted"]
            self.aborted_upstream += int(aborted)
        for proc in self.gateways:
            if not await _quiet(proc, quiet_timeout):
                self.busy_after[proc.name] = self.busy_after.get(proc.name, 0) + 1
        await asyncio.sleep(0.05)

    async def measure(self, bench: Bench, key: str, wl: Workload, rnd: int) -> dict[str, Any]:
        """Run one workload against one target and describe it as a record.

        The other gateways share the measured one's core: while it is measured they are
        frozen (SIGSTOP), so work one of them has left over (a proxy still relaying streams
        its clients left) cannot take the core from it. They run again between workloads.
        """
        t0 = time.monotonic()
        await self.settle()
        settle_s = time.monotonic() - t0
        with self.alone(bench):
            return await self._measure(bench, key, wl, rnd, settle_s)

    @contextlib.contextmanager
    def alone(self, bench: Bench) -> Iterator[None]:
        """Every gateway but ``bench``'s frozen (SIGSTOP) for the block, then continued."""
        others = [p for p in self.gateways if p is not bench.proc]
        for proc in others:
            proc.freeze()
        try:
            yield
        finally:
            for proc in others:
                proc.thaw()

    async def _measure(
        self, bench: Bench, key: str, wl: Workload, rnd: int, settle_s: float
    ) -> dict[str, Any]:
        if wl.close is not None:
            await self.mock_json("GET", "/_bench/closes")  # drop anything logged before
        gw0 = bench.proc.cpu_seconds() if bench.proc else 0.0
        mock0 = self.mock.cpu_seconds()
        self0 = time.process_time()
        busy0 = core_busy()
        res = await run_workload(bench.target, wl, f"r{rnd}-{key}-{bench.name}")
        busy1 = core_busy()
        gw1 = bench.proc.cpu_seconds() if bench.proc else 0.0
        mock1 = self.mock.cpu_seconds()
        self1 = time.process_time()
        wall = res.duration_s
        chunks = res.chunks
        lat = res.latencies_ns
        ttft = res.ttfts_ns()
        checked, invalid, problem = validate_samples(res, bench.target.flavour)
        gw_util = (gw1 - gw0) / wall if bench.proc else None
        rec: dict[str, Any] = {
            "round": rnd,
            "workload": key,
            "target": bench.name,
            "streams": wl.streams,
            "chunks_per_stream": wl.chunks,
            "interval_ms": wl.interval_ms,
            "window_s": wl.window_s,
            "settle_s": settle_s,  # waiting for the previous workload to drain, before this one
            "chunks": chunks,
            "duration_s": wall,
            "rate": res.rate,
            "lat_p50_us": percentile(lat, 50) / 1e3,
            "lat_p99_us": percentile(lat, 99) / 1e3,
            "lat_max_us": max(lat) / 1e3 if lat else float("nan"),
            "ttft_p50_ms": percentile(ttft, 50) / 1e6,
            "ttft_p99_ms": percentile(ttft, 99) / 1e6,
            "gateway_cpu_us_per_chunk": (gw1 - gw0) * 1e6 / chunks
            if bench.proc and chunks
            else None,
            "gateway_util": gw_util,
            "mock_util": (mock1 - mock0) / wall,
            "client_util": (self1 - self0) / wall,
            "core_busy": {
                "client_core": _busy_fraction(busy0, busy1, self.client_core),
                "gateway_core": _busy_fraction(busy0, busy1, self.gateway_core),
            },
            "counts": res.counts(),
            "errors": res.errors(),
            "notes": res.notes,
            "samples_checked": checked,
            "samples_invalid": invalid,
            "sample_problem": problem,
        }
        if wl.close is not None:
            rec.update(await self._closes(res.streams, key))
        self.records.append(rec)
        self.log(
            f"  r{rnd} {key:<18} {bench.name:<9} {chunks:>6} chunks {res.rate:>8.0f}/s "
            f"p50 {rec['lat_p50_us']:>8.0f} µs p99 {rec['lat_p99_us']:>8.0f} µs"
            + (
                f" cpu {rec['gateway_cpu_us_per_chunk']:.1f} µs/chunk"
                if rec["gateway_cpu_us_per_chunk"]
                else ""
            )
            + (
                f" close p99 {rec['close_p99_ms']:.2f} ms {rec['closed_fraction']:.0%}"
                if "close_p99_ms" in rec
                else ""
            )
            + (f" PROBLEMS {rec['counts']} {rec['errors']}" if problems(rec) else "")
        )
        return rec

    async def _closes(self, streams: list[Any], key: str) -> dict[str, Any]:
        """Match the client's closes with the upstream closes the mock logged."""
        closed = {s.sid: s.t_close for s in streams if s.t_close}
        seen: dict[str, tuple[int, str]] = {}
        deadline = time.monotonic() + self.plan.close_wait_s
        while time.monotonic() < deadline:
            for sid, ns, _sent, phase in (await self.mock_json("GET", "/_bench/closes"))["closes"]:
                seen[sid] = (ns, phase)
            if all(sid in seen for sid in closed):
                break
            await asyncio.sleep(0.05)
        await self.mock_json("POST", "/_bench/abort")  # streams whose upstream was left open
        delays = [(seen[sid][0] - t) / 1e6 for sid, t in closed.items() if sid in seen]
        want = "first_token" if key == "close_first_token" else "streaming"
        return {
            "client_closes": len(closed),
            "upstream_closes": len(delays),
            "closed_fraction": len(delays) / len(closed) if closed else float("nan"),
            "close_p50_ms": percentile(delays, 50),
            "close_p99_ms": percentile(delays, 99),
            "close_max_ms": max(delays) if delays else float("nan"),
            "close_phase_mismatch": sum(
                1 for sid in closed if sid in seen and seen[sid][1] != want
            ),
        }

    async def warm(self, bench: Bench) -> None:
        """Unmeasured streams first: imports, pools and caches settle before any timing."""
        for wl in self.plan.warmup:
            await self.settle()
            res = await run_workload(bench.target, wl, f"warm-{bench.name}")
            bad = res.counts()["failed_streams"]
            if bad:
                raise RuntimeError(f"{bench.name}: {bad} warm-up streams failed: {res.errors()}")

    async def rounds(self, benches: list[Bench]) -> None:
        """Every workload against every target, interleaved, for each round."""
        for rnd in range(self.plan.rounds):
            order = benches[rnd % len(benches) :] + benches[: rnd % len(benches)]
            self.log(f"round {rnd + 1}/{self.plan.rounds}: {', '.join(b.name for b in order)}")
            failed_step: set[str] = set()
            for key, wl in {**self.plan.latency, **self.plan.close}.items():
                for bench in order:
                    if key in LADDER_ONLY and bench.name in failed_step:
                        # A capacity ladder stops at its first failing step.
                        self.log(f"  r{rnd} {key:<18} {bench.name:<9} skipped (lower step failed)")
                        continue
                    await self.measure(bench, key, wl, rnd)
                if key in LADDER:
                    failed_step |= self._failed_step(key, rnd)

    def _failed_step(self, key: str, rnd: int) -> set[str]:
        """Targets whose ladder step ``key`` missed the added-p99 bound in round ``rnd``."""
        recs = {r["target"]: r for r in self.records if r["round"] == rnd and r["workload"] == key}
        base = recs.get("direct")
        failed = set()
        for name, rec in recs.items():
            if name == "direct" or base is None:
                continue
            if not ladder_step_ok(rec, base):
                failed.add(name)
        return failed

    async def rss_ladder(self, bench: Bench) -> dict[str, Any]:
        """Open idle streams in steps; RSS at each step; fit a slope.

        Runs on a freshly started (and warmed) gateway: memory freed by earlier work would be
        reused by the idle streams and hide their cost.
        """
        assert bench.proc is not None
        name = bench.name
        points: list[dict[str, Any]] = []
        notes: list[str] = []
        idle = IdleStreams(bench.target, f"rss-{name}")
        deadline = time.monotonic() + RSS_BUDGET_S
        try:
            await self.settle()
            await asyncio.sleep(0.5)
            for n in self.plan.rss_steps:
                t0 = time.monotonic()
                if t0 > deadline:
                    notes.append(f"ladder stopped before {n} streams: {RSS_BUDGET_S:g} s budget")
                    break
                need = n - len(idle.results)
                if need > 0:
                    await idle.open(need, concurrency=64, timeout=max(deadline - t0, 5.0))
                active = await self._wait_active(n, timeout=30)
                opened_s = time.monotonic() - t0
                await asyncio.sleep(0.3)  # let the burst of setup work finish
                samples = []
                for _ in range(3):
                    samples.append(bench.proc.rss_bytes())
                    await asyncio.sleep(0.1)
                rss = statistics.median(samples) / 2**20
                open_streams = sum(1 for r in idle.results if r.t_request and not r.error)
                points.append(
                    {
                        "streams": n,
                        "open": open_streams,
                        "upstream_active": active,
                        "rss_mib": rss,
                        "open_s": opened_s,
                    }
                )
                self.log(f"  rss {name:<9} {n:>5} idle streams ({active} upstream): {rss:7.1f} MiB")
                if active < n:
                    notes.append(
                        f"only {active} of {n} streams reached the upstream; ladder stopped"
                    )
                    break
        finally:
            await idle.close_all()
            # Streams whose upstream the gateway left open (the close phase measures that).
            await asyncio.sleep(0.5)
            with contextlib.suppress(Exception):
                await self.mock_json("POST", "/_bench/abort")
        fit = [(p["open"], p["rss_mib"]) for p in points]
        return {
            "target": name,
            "points": points,
            "mib_per_1000": _slope(fit) * 1000 if len(fit) >= 2 else float("nan"),
            "notes": notes,
        }

    async def profile(self, bench: Bench) -> dict[str, Any]:
        """py-spy on the gateway: per relayed chunk (500 streams) and per stream (setup).

        Frames are scaled by the CPU measured in the unprofiled rounds: per chunk from the
        500-stream workload, per stream from the time-to-first-token workload (two chunks each).
        """
        assert bench.proc is not None
        mine = [r for r in self.records if r["target"] == bench.name]
        per_chunk = [r["gateway_cpu_us_per_chunk"] for r in mine if r["workload"] == "s500"]
        per_stream = [
            r["gateway_cpu_us_per_chunk"] * r["chunks_per_stream"]
            for r in mine
            if r["workload"] == "ttft"
        ]
        # Many short streams, spread out: what is left per stream is setup and teardown.
        setup = _wl("setup", 200, 1, 20.0, ramp_s=4.0)
        out: dict[str, Any] = {}
        for key, wl, measured in (
            ("per_chunk", self.plan.latency["s500"], per_chunk),
            ("per_stream", setup, per_stream),
        ):
            await self.settle()
            self.log(f"profiling {bench.name} with py-spy: {key} ({wl.streams} streams)")
            with self.alone(bench):
                out[key] = await profile_gateway(
                    PEERS_VENV / "bin" / "py-spy",
                    bench.proc.pid,
                    bench.target,
                    wl,
                    self.procs.log_dir / f"profile-{bench.name}-{key}.txt",
                    statistics.median(measured) if measured else None,
                )
        return out

    async def _wait_active(self, n: int, *, timeout: float) -> int:
        """Wait until the mock has ``n`` streams, or until the count stops growing for 5 s."""
        deadline = time.monotonic() + timeout
        active, last, since = 0, -1, time.monotonic()
        while time.monotonic() < deadline:
            active = int((await self.mock_json("GET", "/_bench/stats"))["active"])
            if active >= n:
                break
            if active != last:
                last, since = active, time.monotonic()
            elif time.monotonic() - since > 5:
                break
            await asyncio.sleep(0.1)
        return active


async def _quiet(proc: Proc, timeout: float, *, window: float = 0.1, share: float = 0.2) -> bool:
    """Wait until ``proc`` uses under ``share`` of a core over ``window`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = proc.run_ns()
        await asyncio.sleep(window)
        if proc.run_ns() - before < share * window * 1e9:
            return True
    return False


def _slope(points: list[tuple[float, float]]) -> float:
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    den = sum((p[0] - mx) ** 2 for p in points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / den if den else float("nan")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns the result document (also written to ``args.out``)."""
    # SIGTERM (make, CI, a user's kill) cancels the run, so every peer is still stopped.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    plan = make_plan(mode, args.rounds)
    machine = machine_info()  # before pinning: nproc counts the cores this process may use
    pin, pin_note, client_core, gateway_core = pin_client()
    raise_nofile_limit()
    want_litellm = not args.no_litellm and (mode == "full" or args.litellm)
    started = time.monotonic()

    def log(msg: str) -> None:
        # Progress goes to stderr, so stdout carries only the table.
        if not args.silent:
            print(msg, file=sys.stderr, flush=True)

    busy0 = core_busy()
    cpu0 = {"self": time.process_time()}
    with Processes(pin=pin) as procs:
        mock = await procs.start_mock(client_core)
        upstream = f"{mock.url}/v1"
        runner = Runner(plan, procs, mock, log)
        runner.client_core, runner.gateway_core = client_core, gateway_core
        runner.notes.append(pin_note)

        async def start_stagecast() -> Bench:
            proc = await procs.start_stagecast(upstream, gateway_core)
            target = Target("stagecast", HOST, proc.port, "stagecast", "/stream/v1/chat", "bench")
            return Bench("stagecast", target, proc)

        async def start_litellm() -> Bench | str:
            got = await procs.start_litellm(upstream, gateway_core)
            if isinstance(got, str):
                return got
            proc, key = got
            target = Target(
                "litellm",
                HOST,
                proc.port,
                "openai",
                "/v1/chat/completions",
                "bench",
                headers=(("Authorization", f"Bearer {key}"),),
            )
            return Bench("litellm", target, proc)

        direct = Bench(
            "direct",
            Target("direct", HOST, mock.port, "openai", "/v1/chat/completions", "mock"),
            None,
        )

        async def start_floor() -> Bench:
            proc = await procs.start_floor(mock.port, gateway_core)
            target = Target("floor", HOST, proc.port, "openai", "/v1/chat/completions", "mock")
            return Bench("floor", target, proc)

        if want_litellm:  # LiteLLM takes seconds to import: start both at once
            sc, got = await asyncio.gather(start_stagecast(), start_litellm())
        else:
            sc, got = await start_stagecast(), None
        benches = [direct, await start_floor(), sc]
        if got is not None:
            if isinstance(got, str):
                runner.notes.append(f"litellm skipped: {got}")
                log(f"litellm skipped: {got}")
            else:
                benches.append(got)
        else:
            runner.notes.append("litellm not run in this mode (pass --litellm to include it)")
        names = ", ".join(b.name for b in benches)
        log(f"mode {mode}: {plan.rounds} round(s); targets: {names}; {pin_note}")
        runner.gateways = [b.proc for b in benches if b.proc is not None]
        for bench in benches:
            await runner.warm(bench)
        await runner.rounds(benches)
        profile = None
        if args.profile:
            profile = await runner.profile(next(b for b in benches if b.name == "stagecast"))
        # Memory per idle stream, last, each gateway on a fresh process: in a used one, memory
        # freed by earlier work is reused and hides the cost; and a proxy can stay busy for a
        # minute after thousands of streams close, so nothing is measured after this.
        starters = {"floor": start_floor, "stagecast": start_stagecast, "litellm": start_litellm}
        rss = []
        for bench in benches:  # none of the used ones may take the core from the ladders
            if bench.proc is not None:
                procs.stop(bench.proc)
        for name in [b.name for b in benches if b.proc is not None]:
            fresh = await starters[name]()
            if isinstance(fresh, str):
                rss.append({"target": name, "skipped": fresh})
                continue
            assert fresh.proc is not None
            runner.gateways = [fresh.proc]
            await runner.warm(fresh)
            rss.append(await runner.rss_ladder(fresh))
            procs.stop(fresh.proc)
        mock_cpu = mock.cpu_seconds()
    elapsed = time.monotonic() - started
    busy1 = core_busy()
    targets = [b.name for b in benches]
    metrics = summarise(runner.records, rss, targets)
    machine["loadavg_end"] = loadavg()
    machine["core_busy_during_run"] = {
        f"core{c}": _busy_fraction(busy0, busy1, c) for c in sorted(busy1)
    }
    doc: dict[str, Any] = {
        "machine": machine,
        "mode": mode,
        "rounds": plan.rounds,
        "duration_s": elapsed,
        "targets": targets,
        "pinning": pin_note,
        "workloads": {
            k: vars(w) | {"close": vars(w.close) if w.close else None}
            for k, w in {**plan.latency, **plan.close}.items()
        },
        "rss_steps": plan.rss_steps,
        "metrics": metrics,
        "problems": {
            t: sum(problems(r) for r in runner.records if r["target"] == t) for t in targets
        },
        "client": {
            "max_util": max((r["client_util"] for r in runner.records), default=float("nan")),
            "mock_max_util": max((r["mock_util"] for r in runner.records), default=float("nan")),
            "cpu_s": time.process_time() - cpu0["self"],
            "mock_cpu_s": mock_cpu,
        },
        "foreign_load": foreign_load(runner.records),
        "notes": runner.notes
        + [
            f"{name} was still busy 3 s after {n} workload(s) (work left from its last workload)"
            for name, n in runner.busy_after.items()
        ]
        + (
            [
                f"{runner.aborted_upstream} upstream streams still open 3 s after their workload "
                "were ended by the mock"
            ]
            if runner.aborted_upstream
            else []
        ),
        "profile": profile,
        "records": runner.records,
        "rss": rss,
    }
    return doc


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; exit status 1 if a direct or stagecast stream was wrong.

    Never because of speed.
    """
    parser = argparse.ArgumentParser(description="stagecast side-by-side benchmark")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="one small round (< 30 s)")
    size.add_argument("--smoke", action="store_true", help="a few streams: correctness only (CI)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 5; 1 if quick)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON result file (default: results/latest.json for a full run, "
        "results/<mode>.json for --quick or --smoke, which never replace the full results)",
    )
    parser.add_argument("--litellm", action="store_true", help="include LiteLLM in --quick")
    parser.add_argument("--no-litellm", action="store_true", help="never start LiteLLM")
    parser.add_argument("--profile", action="store_true", help="py-spy stagecast at 500 streams")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument("--silent", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    try:
        doc = run_client(run(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("benchmark interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    if args.out is None:
        mode = "quick" if args.quick else "smoke" if args.smoke else None
        args.out = DEFAULT_OUT.with_name(f"{mode}.json") if mode else DEFAULT_OUT
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(
        orjson.dumps(_finite(doc), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    )
    render_table(doc)
    if args.markdown:
        print(render_markdown(doc))
    print(f"wrote {args.out}")
    # LiteLLM's own failures are reported, not an error of this benchmark or of stagecast.
    return 1 if doc["problems"].get("direct") or doc["problems"].get("stagecast") else 0


def _finite(obj: Any) -> Any:
    """JSON has no NaN: write null instead."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


__all__ = ["METRICS", "main", "make_plan", "run"]

if __name__ == "__main__":
    sys.exit(main())
