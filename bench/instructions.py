"""Exact instructions per relayed chunk and per stream, of the real gateway process.

``python -m bench.instructions`` runs stagecast as ``make bench`` does (and, with
``--gateways stagecast floor``, the bare splice relay too) under ``valgrind --tool=callgrind``,
sends it the load client's streams from the mock upstream, and counts the user-space
instructions the gateway process executes (all its threads; the kernel's work is not in them)
while each workload runs:

- **idle**: nothing sent for a few seconds (timers and other work that runs by the clock);
- **short** and **long**: the same streams with fewer and more chunks;
- **many**: many streams of two chunks each.

From those: instructions per chunk = (long - short - idle for the extra time) / extra chunks,
and per stream = (many - its chunks - idle for its time) / its streams. Counts do not depend
on how busy the machine is and move by only a few percent between runs (how reads and timers
happen to fall), so two versions of the code compare far more closely than with the wall-time
figures of ``make bench``. Callgrind slows the gateway some fifty times, so the streams are
paced slowly (50 ms) and the numbers here are counts, never times.

Prints one line per gateway: ``<name> per_chunk N per_stream N idle_per_s N``, and exits 1
if any stream lost, duplicated, reordered or malformed an event. With ``--keep DIR`` the
callgrind dumps stay in DIR (one per workload, named ``cg.<pid>.<n>``; the line
``desc: Trigger: dump <workload>`` in each names its workload), for ``callgrind_annotate``
to tell which C functions the counts went to.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.load_client import Target, Workload, WorkloadResult, run_workload
from bench.mock_upstream import raise_nofile_limit
from bench.peers import HOST, Proc, Processes

# Generous: the gateway's imports alone take a minute or more under callgrind.
START_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Sizes:
    streams: int  # streams of the short and long workloads
    short: int  # their chunks per stream
    long: int
    many: int  # streams of two chunks
    idle_s: float


SIZES = {
    "full": Sizes(streams=5, short=40, long=240, many=20, idle_s=5.0),
    "smoke": Sizes(streams=2, short=4, long=12, many=3, idle_s=1.0),
}


def callgrind_control(pid: int, *args: str) -> None:
    """Zero (``-z``) or dump (``-d NAME``) the counts of a process under callgrind."""
    subprocess.run(
        ["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=120
    )


def dumped_instructions(out_dir: Path, pid: int, name: str, timeout: float = 60.0) -> int:
    """The instruction count of the dump named ``name`` (callgrind writes it a moment later)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in out_dir.glob(f"cg.{pid}.*"):
            text = path.read_text(errors="replace")
            if f"desc: Trigger: dump {name}\n" not in text:
                continue
            for line in text.splitlines():
                if line.startswith("summary:"):
                    return int(line.split()[1])
        time.sleep(0.2)
    raise RuntimeError(f"callgrind wrote no dump named {name!r} for pid {pid}")


def checked(res: WorkloadResult) -> WorkloadResult:
    """``res``, if every stream got every event whole and in order."""
    bad = {k: v for k, v in res.counts().items() if k != "streams" and v}
    if bad:
        raise RuntimeError(f"{res.target} {res.workload.name}: {bad} {res.errors()}")
    return res


async def measure(
    name: str, procs: Processes, mock: Proc, sizes: Sizes, out_dir: Path
) -> dict[str, float]:
    """Start ``name`` under callgrind and count its instructions per chunk and per stream."""
    callgrind = (
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out_dir}/cg.%p",
        "--dump-instr=no",
    )
    if name == "stagecast":
        proc = await procs.start_stagecast(
            f"{mock.url}/v1", None, wrapper=callgrind, timeout=START_TIMEOUT_S
        )
        target = Target(name, HOST, proc.port, "stagecast", "/stream/v1/chat", "bench")
    else:
        proc = await procs.start_floor(mock.port, None, wrapper=callgrind, timeout=START_TIMEOUT_S)
        target = Target(name, HOST, proc.port, "openai", "/v1/chat/completions", "mock")
    pid = proc.pid

    async def counted(label: str, workload: Workload | None) -> tuple[int, float, int]:
        """(instructions, seconds, chunks) of one workload (None: ``sizes.idle_s`` idle)."""
        await asyncio.to_thread(callgrind_control, pid, "-z")
        started = time.monotonic()
        chunks = 0
        if workload is None:
            await asyncio.sleep(sizes.idle_s)
        else:
            chunks = checked(await run_workload(target, workload, f"{name}-{label}")).chunks
            await asyncio.sleep(0.5)  # the last stream's teardown and record
        seconds = time.monotonic() - started
        await asyncio.to_thread(callgrind_control, pid, "-d", label)
        count = await asyncio.to_thread(dumped_instructions, out_dir, pid, label)
        return count, seconds, chunks

    def paced(label: str, streams: int, chunks: int) -> Workload:
        return Workload(label, streams, chunks, interval_ms=50.0, ramp_s=1.0, timeout_s=600.0)

    # Imports, pools and caches settle first, as in ``make bench``.
    checked(await run_workload(target, paced("warmup", sizes.streams, 10), f"{name}-warmup"))
    idle, idle_s, _ = await counted("idle", None)
    per_s = idle / idle_s
    short, short_s, short_chunks = await counted(
        "short", paced("short", sizes.streams, sizes.short)
    )
    long, long_s, long_chunks = await counted("long", paced("long", sizes.streams, sizes.long))
    many, many_s, many_chunks = await counted("many", paced("many", sizes.many, 2))
    per_chunk = (long - short - per_s * (long_s - short_s)) / (long_chunks - short_chunks)
    per_stream = (many - per_s * many_s - per_chunk * many_chunks) / sizes.many
    procs.stop(proc)
    return {"per_chunk": per_chunk, "per_stream": per_stream, "idle_per_s": per_s}


async def main_async(args: argparse.Namespace) -> int:
    sizes = SIZES["smoke" if args.smoke else "full"]
    names = list(dict.fromkeys(args.gateways))
    raise_nofile_limit()
    with (
        tempfile.TemporaryDirectory(prefix="stagecast-instructions-") as tmp,
        Processes(pin=False) as procs,
    ):
        out_dir = Path(tmp)
        if args.keep is not None:
            out_dir = args.keep
            out_dir.mkdir(parents=True, exist_ok=True)
        mock = await procs.start_mock(None)
        for name in names:
            got = await measure(name, procs, mock, sizes, out_dir)
            print(
                f"{name} per_chunk {got['per_chunk']:.0f} per_stream {got['per_stream']:.0f}"
                f" idle_per_s {got['idle_per_s']:.0f}",
                flush=True,
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--gateways",
        nargs="+",
        choices=["stagecast", "floor"],
        default=["stagecast"],
        help="whose instructions to count (default: stagecast)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few streams: correctness only (the counts are rough)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="keep the callgrind dumps in DIR (for callgrind_annotate)",
    )
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind (with callgrind_control) is not installed", file=sys.stderr)
        return 2
    try:
        return asyncio.run(main_async(args))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    # The gateways inherit it: the same hashing, so the same dict and set work, in every run.
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
