"""The chunk-path microbenchmark runs as documented and relays every chunk it feeds. Never speed."""

from __future__ import annotations

import re

import pytest

from tests.bench import run_bench


def test_chunk_path_relays_every_chunk_and_prints_its_cost() -> None:
    proc = run_bench(
        "chunk_path", "--chunks", "300", "--streams", "7", "--rounds", "2", timeout=120
    )
    # The module itself fails unless every chunk fed upstream was written to a client.
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = re.fullmatch(r"chunks 300 streams 7 us_per_chunk (\d+\.\d{3})\n", proc.stdout)
    assert match is not None, proc.stdout
    assert float(match.group(1)) > 0


def test_chunk_path_counts_the_bytecodes_of_each_function_on_the_path() -> None:
    proc = run_bench(
        "chunk_path",
        *("--bytecodes", "--chunks", "200", "--streams", "4", "--rounds", "1"),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, *rows = proc.stdout.splitlines()
    total = float(first.removeprefix("bytecodes_per_chunk "))
    per_function = {}
    for row in rows:
        count, name = row.split()
        per_function[name] = float(count)
    # Every chunk after each stream's first is spliced, appended and flushed once.
    for name in (
        "stagecast.stages.normalise:splice",
        "stagecast.hub.memory:append",
        "stagecast.hub.memory:flush",
        "stagecast.api.push:__call__",
    ):
        assert per_function[name] > 0, name
    assert sum(per_function.values()) == pytest.approx(total, abs=0.1 * len(rows))
