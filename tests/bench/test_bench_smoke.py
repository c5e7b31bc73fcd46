"""CI smoke of the benchmark harness: every event correct, every metric there. Never speed.

Runs ``python -m bench.runner --smoke`` (a few streams, one round; direct, the floor relay
and stagecast) in a subprocess, exactly as a person would, and reads the JSON it writes.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from bench.report import METRICS

from tests.bench import run_bench

TARGETS = ("direct", "floor", "stagecast")

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    proc = run_bench("runner", "--smoke", "--no-litellm", "--out", str(out), timeout=360)
    assert out.exists(), f"no result file; stderr:\n{proc.stderr[-4000:]}"
    doc: dict[str, Any] = json.loads(out.read_text())
    doc["_returncode"] = proc.returncode
    doc["_output"] = proc.stdout + proc.stderr
    return doc


def _measured(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in doc["records"] if r["target"] in TARGETS]


def test_no_event_lost_duplicated_reordered_or_malformed(smoke: dict[str, Any]) -> None:
    records = _measured(smoke)
    assert {r["target"] for r in records} == set(TARGETS)
    for rec in records:
        where = f"{rec['target']} {rec['workload']}: {rec['errors']}"
        assert rec["counts"] == {
            "streams": rec["streams"],
            "lost": 0,
            "duplicated": 0,
            "reordered": 0,
            "malformed": 0,
            "id_errors": 0,
            "failed_streams": 0,
            "timed_out": 0,  # the smoke's streams are tiny: a time-out means a hang
        }, where
        assert rec["samples_invalid"] == 0, f"{where}: {rec['sample_problem']}"
    assert smoke["problems"] == dict.fromkeys(TARGETS, 0)
    assert smoke["_returncode"] == 0, smoke["_output"][-4000:]


def test_every_paced_stream_delivers_every_chunk(smoke: dict[str, Any]) -> None:
    for rec in _measured(smoke):
        if rec["workload"].startswith("close_") or rec["window_s"] is not None:
            continue  # closed by the client on purpose
        assert rec["chunks"] == rec["streams"] * rec["chunks_per_stream"], rec["workload"]
        assert rec["samples_checked"] > 0, "the seed models validated no event"


def test_closed_streams_are_matched_with_upstream_closes(smoke: dict[str, Any]) -> None:
    for rec in _measured(smoke):
        if rec["workload"].startswith("close_"):
            assert rec["client_closes"] == rec["streams"], rec["workload"]
            assert rec["close_phase_mismatch"] == 0, rec["workload"]


def test_every_metric_is_present_and_finite(smoke: dict[str, Any]) -> None:
    rows = {m["key"]: m for m in smoke["metrics"]}
    assert set(rows) == {m.key for m in METRICS}
    for metric in METRICS:
        for target in TARGETS:
            stats = rows[metric.key]["values"][target]
            if metric.gateways_only and target == "direct":
                assert stats is None
                continue
            assert stats is not None, f"{metric.key} missing for {target}"
            for field in ("median", "min", "max"):
                value = stats[field]
                assert isinstance(value, int | float), f"{metric.key} {target} {field}"
                assert math.isfinite(value), f"{metric.key} {target} {field}"


def test_result_names_the_machine(smoke: dict[str, Any]) -> None:
    machine = smoke["machine"]
    for key in ("nproc", "cpu_model", "kernel", "python", "date"):
        assert machine[key], key
    assert "stagecast side-by-side benchmark" in smoke["_output"]
