"""bench.cpu_split separates what a stream and what a chunk cost the gateway, in user and in
system time, and checks every stream (correctness only, never speed)."""

from __future__ import annotations

import re

import pytest
from bench.cpu_split import split

from tests.bench import run_bench


def test_split_solves_for_the_cost_per_stream_and_per_chunk() -> None:
    # 1,000 short streams of 2 chunks and 100 long ones of 200 chunks, at 900 µs a stream
    # and 20 µs a chunk.
    short = (1000 * 900e-6 + 2000 * 20e-6, 1000, 2000)
    long = (100 * 900e-6 + 20000 * 20e-6, 100, 20000)
    per_stream, per_chunk = split(short, long)
    assert per_stream == pytest.approx(900e-6)
    assert per_chunk == pytest.approx(20e-6)


def test_split_refuses_workloads_that_cannot_tell_the_two_apart() -> None:
    with pytest.raises(ValueError, match="different chunks per stream"):
        split((1.0, 10, 20), (2.0, 20, 40))


def test_cpu_split_prints_both_gateways_and_checks_every_stream() -> None:
    proc = run_bench(
        "cpu_split",
        "--streams",
        "20",
        "--ramp",
        "0.5",
        "--long",
        "4",
        "--chunks",
        "10",
        timeout=300,
    )
    # The module itself exits 1 if any stream lost, duplicated or reordered an event.
    assert proc.returncode == 0, proc.stderr[-3000:]
    number = r"(-?[\d.]+)"
    line = rf"per_stream user {number} system {number} per_chunk user {number} system {number}"
    lines = proc.stdout.splitlines()
    assert [ln.split()[0] for ln in lines] == ["stagecast", "floor"], proc.stdout
    for ln in lines:
        assert re.fullmatch(rf"\w+ {line}", ln), ln
