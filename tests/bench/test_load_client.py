"""The load client keeps its own garbage collector out of the latencies it measures."""

from __future__ import annotations

import gc

from bench.load_client import collector_paused


def test_collector_is_off_and_the_heap_frozen_while_a_workload_runs() -> None:
    assert gc.isenabled()
    kept = [[i] for i in range(1_000)]  # containers the collector would otherwise scan
    with collector_paused():
        assert not gc.isenabled()
        assert gc.get_freeze_count() >= len(kept)
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_collector_stays_off_after_if_it_was_off_before() -> None:
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_collector_is_restored_when_the_workload_fails() -> None:
    try:
        with collector_paused():
            raise RuntimeError("workload failed")
    except RuntimeError:
        pass
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0
