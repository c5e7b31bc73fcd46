"""bench.objects counts the objects the gateway's garbage collector tracks per live stream and
per ended stage, and checks every stream (correctness only)."""

from __future__ import annotations

import re

from tests.bench import run_bench


def test_objects_counts_what_live_streams_and_ended_stages_keep() -> None:
    proc = run_bench("objects", "--streams", "20", timeout=300)
    # The module itself exits 1 if any stream lost, duplicated or reordered an event.
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = re.fullmatch(
        r"stagecast live_per_stream (-?[\d.]+) retained_per_stage (-?[\d.]+)\n", proc.stdout
    )
    assert match is not None, proc.stdout
    live, retained = float(match.group(1)), float(match.group(2))
    # A live stream holds at least its request's protocol, its task and its stage's log (140
    # objects on the code of this line); an ended stage keeps its log and its info for replay
    # (11 before the hub's expiry used one timer and an ended log let go of its containers).
    assert 20 < live < 200
    assert 0 < retained < 4
