"""bench.inside times the 500-stream workload's chunks inside the gateway as well as at the
client, and checks every stream (correctness only, never speed)."""

from __future__ import annotations

import re

from tests.bench import run_bench


def test_inside_times_pushed_chunks_in_the_gateway_and_checks_every_stream() -> None:
    proc = run_bench("inside", "--rounds", "1", "--streams", "10", "--chunks", "10", timeout=300)
    # The module itself exits 1 if any stream lost, duplicated or reordered an event.
    assert proc.returncode == 0, proc.stderr[-3000:]
    n = r"([\d.]+)"
    match = re.fullmatch(
        rf"r0 client p50 {n} p99 {n} \| gateway p50 {n} p99 {n} max {n} \| loop lag p99 {n}"
        rf" max {n} \| gc (\d+) passes {n} ms max {n} \(([\d.: ]*)\)"
        rf" \| chunks (\d+) pushed (\d+)\n",
        proc.stdout,
    )
    assert match is not None, proc.stdout
    chunks, pushed = int(match.group(12)), int(match.group(13))
    # Each pass as generation:ms:freed, one per pass counted.
    passes = match.group(11).split()
    assert len(passes) == int(match.group(8))
    assert all(re.fullmatch(r"[012]:[\d.]+:\d+", p) for p in passes), passes
    assert chunks == 100
    # Nearly every chunk is written on the upstream read; each of those was timed, from the
    # mock's timestamp, so it took some time and no more than the client saw.
    assert 0 < pushed <= chunks
    gateway_p50, client_p99 = float(match.group(3)), float(match.group(2))
    assert 0 < gateway_p50 <= client_p99
