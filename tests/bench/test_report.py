"""The table's verdicts: a value at its bound meets it, whatever the float arithmetic did."""

from __future__ import annotations

from typing import Any

from bench.report import METRICS, _verdict

BY_KEY = {m.key: m for m in METRICS}


def stats(median: float) -> dict[str, Any]:
    return {"median": median, "min": median, "max": median, "values": [median]}


def test_a_cpu_figure_at_the_limit_meets_it() -> None:
    cpu = BY_KEY["cpu100"]
    # 400 ms of CPU (between readings of 12.34 s and 12.74 s) over 10,000 chunks, as the
    # runner computes it.
    at_limit = (12.74 - 12.34) * 1e6 / 10_000
    assert at_limit != 40.0
    assert _verdict(cpu, {"stagecast": stats(at_limit), "litellm": None}) is True
    assert _verdict(cpu, {"stagecast": stats(41.0), "litellm": None}) is False


def test_cpu_must_also_be_a_third_of_litellms_or_less() -> None:
    cpu = BY_KEY["cpu500"]
    assert _verdict(cpu, {"stagecast": stats(30.0), "litellm": stats(90.0)}) is True
    assert _verdict(cpu, {"stagecast": stats(30.0), "litellm": stats(89.0)}) is False


def test_higher_is_better_limits_and_latency_limits() -> None:
    tput = BY_KEY["tput500"]
    assert _verdict(tput, {"stagecast": stats(97.0)}) is True
    assert _verdict(tput, {"stagecast": stats(96.9)}) is False
    ttft = BY_KEY["ttft_p50"]
    assert _verdict(ttft, {"stagecast": stats(1.0)}) is True
    assert _verdict(ttft, {"stagecast": stats(1.01)}) is False
    assert _verdict(ttft, {"stagecast": stats(float("nan"))}) is False
