"""bench.instructions counts a gateway's instructions under callgrind and checks every stream.
Correctness only, on the floor relay (stagecast's start under callgrind takes minutes)."""

from __future__ import annotations

import re
import shutil

import pytest

from tests.bench import run_bench


@pytest.mark.skipif(shutil.which("callgrind_control") is None, reason="valgrind is not installed")
def test_instructions_counts_the_floor_relays_work_per_chunk_and_per_stream() -> None:
    proc = run_bench("instructions", "--smoke", "--gateways", "floor", timeout=600)
    # The module itself exits 1 if any stream lost, duplicated or reordered an event.
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = re.fullmatch(
        r"floor per_chunk (-?\d+) per_stream (-?\d+) idle_per_s (\d+)\n", proc.stdout
    )
    assert match is not None, proc.stdout
    # Relaying a chunk runs at least the event loop's read and write.
    assert int(match.group(1)) > 0
