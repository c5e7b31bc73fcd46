"""Where a gateway's CPU goes per relayed chunk: py-spy samples folded into top frames.

py-spy (installed into the peers venv by ``make bench-peers``) records the gateway with
``--native`` while it relays a workload, so that C frames (uvloop, syscalls, the garbage
collector, orjson) are visible instead of being charged to the Python frame that called them.
Samples whose leaf is the event loop's ``epoll_wait`` are idle time that py-spy could not tell
from work; they are left out. Shares are then scaled to microseconds per relayed chunk with
the CPU time measured in the unprofiled rounds (``--native`` stops the process to unwind its
stack, so the CPU measured while profiling is inflated).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bench.load_client import Target, Workload, run_workload

IDLE_LEAVES = ("epoll_wait", "epoll_pwait", "epoll_pwait2")


def fold(raw: str, us_per_unit: float, top: int = 15) -> dict[str, Any]:
    """Top self frames, and top Python frames by inclusive time, from collapsed stacks."""
    self_t: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = idle = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        leaf = frames[-1]
        if leaf.split(" ", 1)[0] in IDLE_LEAVES or _blocked_thread(leaf, frames):
            idle += n
            continue
        total += n
        self_t[frames[-1]] = self_t.get(frames[-1], 0) + n
        for f in set(frames):
            if ".py:" in f:
                incl[f] = incl.get(f, 0) + n
    if not total:
        return {"samples": 0, "idle_samples": idle}

    def rank(d: dict[str, int], *, skip_wrappers: bool = False) -> list[list[Any]]:
        # Frames on (almost) every stack are the server's entry points: no information.
        items = [(f, n) for f, n in d.items() if not (skip_wrappers and n / total > 0.9)]
        items.sort(key=lambda kv: -kv[1])
        return [[f, n / total, n / total * us_per_unit] for f, n in items[:top]]

    gc = sum(n for f, n in self_t.items() if f.startswith(("gc_collect", "collect ", "deduce_")))
    return {
        "samples": total,
        "idle_samples": idle,
        "gc_share": gc / total,
        "top_self": rank(self_t),
        "top_inclusive": rank(incl, skip_wrappers=True),
    }


def _blocked_thread(leaf: str, frames: list[str]) -> bool:
    # A helper thread (aiosqlite's worker, a thread pool) parked on a lock or queue shows as
    # one unresolved libc address: py-spy cannot tell that it is waiting, so it is left out.
    return (
        leaf.startswith("0x")
        and "(libc" in leaf
        and any(f.startswith("Thread._bootstrap ") for f in frames)
    )


async def profile_gateway(
    py_spy: Path,
    pid: int,
    target: Target,
    workload: Workload,
    out: Path,
    us_per_unit: float | None,
) -> dict[str, Any]:
    """Record ``pid`` with py-spy while ``workload`` runs against ``target``."""
    if not await asyncio.to_thread(py_spy.exists):
        return {"skipped": f"py-spy not found at {py_spy} (make bench-peers installs it)"}
    duration = max(2, int(workload.ramp_s + workload.chunks * workload.interval_ms / 1000))
    spy = await asyncio.create_subprocess_exec(
        str(py_spy),
        "record",
        "--pid",
        str(pid),
        "--rate",
        "250",
        "--native",
        "--duration",
        str(duration),
        "--format",
        "raw",
        "--output",
        str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.sleep(0.5)  # py-spy attaches before the load starts
        res = await run_workload(target, workload, f"profile-{target.name}")
        try:
            async with asyncio.timeout(duration + 30):
                _, err = await spy.communicate()
        except TimeoutError:
            err = b"py-spy did not finish in time"
    finally:
        if spy.returncode is None:
            spy.kill()
            await spy.wait()
    raw = await asyncio.to_thread(_read, out)
    if raw is None:
        return {"skipped": f"py-spy produced no profile: {err.decode(errors='replace')[-300:]}"}
    scale = us_per_unit if us_per_unit is not None else float("nan")
    return {
        "workload": workload.name,
        "streams": workload.streams,
        "chunks": res.chunks,
        "cpu_us": scale,
        "raw": str(out),
        **fold(raw, scale),
    }


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
