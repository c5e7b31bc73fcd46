"""The metrics of a benchmark run: per-round values, medians with min/max, targets, the table.

A metric's value for a target is computed per round from that round's records, then reduced
to median, min and max over the rounds. "Added" metrics subtract the direct value of the same
round and workload: the rounds interleave the targets, so both numbers saw the same noise.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

# The workloads whose offered chunk rates form the ladder for "chunks/s with added p99 <= 1 ms"
# (100 streams at 20, 10 and 5 ms, then 500 streams at 20 ms: 5k, 10k, 20k, 25k chunks/s).
LADDER = ("s100", "r10", "r5", "s500")
LADDER_P99_US = 1000.0


@dataclass(frozen=True)
class Metric:
    """One row of the table."""

    key: str
    label: str
    unit: str
    target: str
    workload: str | None = None
    field: str | None = None
    # Gateway value minus the direct value of the same round (direct shows its absolute value).
    added: bool = False
    limit: float | None = None
    higher_is_better: bool = False
    gateways_only: bool = False
    scale: float = 1.0


METRICS: list[Metric] = [
    Metric("ttft_p50", "added TTFT p50", "ms", "<= 1 ms", "ttft", "ttft_p50_ms", True, 1.0),
    Metric("ttft_p99", "added TTFT p99", "ms", "-", "ttft", "ttft_p99_ms", True),
    Metric(
        "lat1_p50",
        "added chunk latency p50, 1 stream",
        "µs",
        "<= 50 µs",
        "s1",
        "lat_p50_us",
        True,
        50.0,
    ),
    Metric("lat1_p99", "added chunk latency p99, 1 stream", "µs", "-", "s1", "lat_p99_us", True),
    Metric(
        "lat100_p50", "added chunk latency p50, 100 streams", "µs", "-", "s100", "lat_p50_us", True
    ),
    Metric(
        "lat100_p99", "added chunk latency p99, 100 streams", "µs", "-", "s100", "lat_p99_us", True
    ),
    Metric(
        "lat500_p50", "added chunk latency p50, 500 streams", "µs", "-", "s500", "lat_p50_us", True
    ),
    Metric(
        "lat500_p99",
        "added chunk latency p99, 500 streams",
        "µs",
        "<= 2 ms",
        "s500",
        "lat_p99_us",
        True,
        2000.0,
    ),
    Metric(
        "cpu100",
        "gateway CPU per chunk, 100 streams",
        "µs",
        "<= 40 µs, <= 1/3 LiteLLM",
        "s100",
        "gateway_cpu_us_per_chunk",
        limit=40.0,
        gateways_only=True,
    ),
    Metric(
        "cpu500",
        "gateway CPU per chunk, 500 streams",
        "µs",
        "<= 40 µs, <= 1/3 LiteLLM",
        "s500",
        "gateway_cpu_us_per_chunk",
        limit=40.0,
        gateways_only=True,
    ),
    Metric(
        "util500",
        "gateway core busy, 500 streams",
        "%",
        "-",
        "s500",
        "gateway_util",
        gateways_only=True,
        scale=100.0,
    ),
    Metric(
        "rate_p99",
        "chunks/s per core, added p99 <= 1 ms",
        "chunks/s",
        "-",
        higher_is_better=True,
    ),
    Metric("flat", "chunks/s flat out", "chunks/s", "-", "flat", "rate", higher_is_better=True),
    Metric(
        "tput500",
        "throughput, 500 paced streams, vs direct",
        "%",
        ">= 97%",
        "s500",
        "rate",
        limit=97.0,
        higher_is_better=True,
    ),
    Metric("rss", "RSS per 1,000 idle streams", "MiB", "<= 30 MiB", limit=30.0, gateways_only=True),
    Metric(
        "close_ft_p50",
        "close -> upstream close p50, first-token wait",
        "ms",
        "-",
        "close_first_token",
        "close_p50_ms",
    ),
    Metric(
        "close_ft_p99",
        "close -> upstream close p99, first-token wait",
        "ms",
        "<= 10 ms",
        "close_first_token",
        "close_p99_ms",
        limit=10.0,
    ),
    Metric(
        "close_ft_closed",
        "upstream closed, first-token wait",
        "%",
        "100%",
        "close_first_token",
        "closed_fraction",
        limit=100.0,
        higher_is_better=True,
        scale=100.0,
    ),
    Metric(
        "close_st_p50",
        "close -> upstream close p50, mid-stream",
        "ms",
        "-",
        "close_streaming",
        "close_p50_ms",
    ),
    Metric(
        "close_st_p99",
        "close -> upstream close p99, mid-stream",
        "ms",
        "<= 10 ms",
        "close_streaming",
        "close_p99_ms",
        limit=10.0,
    ),
    Metric(
        "close_st_closed",
        "upstream closed, mid-stream",
        "%",
        "100%",
        "close_streaming",
        "closed_fraction",
        limit=100.0,
        higher_is_better=True,
        scale=100.0,
    ),
    Metric(
        "problems",
        "lost/dup/reordered/malformed + failed streams",
        "",
        "0",
        limit=0.0,
    ),
]


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else float("nan")


def _index(records: list[dict[str, Any]]) -> dict[tuple[int, str, str], dict[str, Any]]:
    return {(r["round"], r["workload"], r["target"]): r for r in records}


def problems(rec: dict[str, Any]) -> int:
    """Everything wrong in one record: must be zero in a correct run."""
    c = rec["counts"]
    bad = c["lost"] + c["duplicated"] + c["reordered"] + c["malformed"] + c["id_errors"]
    return int(bad + c["failed_streams"] + rec["samples_invalid"])


def _round_values(
    metric: Metric,
    target: str,
    records: list[dict[str, Any]],
    rss: list[dict[str, Any]],
) -> list[float]:
    if metric.gateways_only and target == "direct":
        return []
    if metric.key == "rss":
        return [_num(r.get("mib_per_1000")) for r in rss if r["target"] == target and "points" in r]
    if metric.key == "problems":
        return [float(sum(problems(r) for r in records if r["target"] == target))]
    if metric.key == "timeouts":
        mine = [r for r in records if r["target"] == target]
        return [float(sum(r["counts"].get("timed_out", 0) for r in mine))]
    idx = _index(records)
    rounds = sorted({r["round"] for r in records})
    out: list[float] = []
    for rnd in rounds:
        if metric.key == "rate_p99":
            out.append(_ladder_rate(idx, rnd, target))
            continue
        assert metric.workload is not None
        assert metric.field is not None
        rec = idx.get((rnd, metric.workload, target))
        base = idx.get((rnd, metric.workload, "direct"))
        if rec is None:
            continue
        value = _num(rec.get(metric.field))
        if metric.key == "tput500":
            value = value / _num(base.get(metric.field)) * 100 if base else float("nan")
        elif metric.added and target != "direct":
            value = value - _num(base.get(metric.field)) if base else float("nan")
        out.append(value * metric.scale)
    return out


def _ladder_rate(idx: dict[tuple[int, str, str], dict[str, Any]], rnd: int, target: str) -> float:
    """The highest delivered rate of a ladder step with added p99 <= 1 ms and no problems.

    For direct itself the condition is its own p99 <= 1 ms (its reference capacity).
    """
    best = 0.0
    for key in LADDER:
        rec = idx.get((rnd, key, target))
        base = idx.get((rnd, key, "direct"))
        if rec is None or base is None:
            continue
        if ladder_step_ok(rec, base):
            best = max(best, _num(rec["rate"]))
    return best


def ladder_step_ok(rec: dict[str, Any], base: dict[str, Any]) -> bool:
    """Every stream finished, correctly, with added p99 <= 1 ms (direct: its own p99)."""
    if problems(rec) or rec["counts"].get("timed_out"):
        return False
    p99 = _num(rec["lat_p99_us"])
    added = p99 if rec["target"] == "direct" else p99 - _num(base["lat_p99_us"])
    return added <= LADDER_P99_US


def _stats(values: list[float]) -> dict[str, Any] | None:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return (
            None
            if not values
            else {
                "median": float("nan"),
                "min": float("nan"),
                "max": float("nan"),
                "values": values,
            }
        )
    return {
        "median": statistics.median(finite),
        "min": min(finite),
        "max": max(finite),
        "values": values,
    }


def summarise(
    records: list[dict[str, Any]], rss: list[dict[str, Any]], targets: list[str]
) -> list[dict[str, Any]]:
    """Every metric for every target, with stagecast's pass/fail against its target."""
    out: list[dict[str, Any]] = []
    for metric in METRICS:
        values = {t: _stats(_round_values(metric, t, records, rss)) for t in targets}
        row: dict[str, Any] = {
            "key": metric.key,
            "label": metric.label,
            "unit": metric.unit,
            "target": metric.target,
            "values": values,
            "pass": _verdict(metric, values),
        }
        out.append(row)
    return out


def _verdict(metric: Metric, values: dict[str, dict[str, Any] | None]) -> bool | None:
    if metric.limit is None:
        return None
    mine = values.get("stagecast")
    if mine is None or not math.isfinite(mine["median"]):
        return False
    v = mine["median"]
    ok = _at_least(v, metric.limit) if metric.higher_is_better else _at_least(metric.limit, v)
    if metric.key in ("cpu100", "cpu500"):
        peer = values.get("litellm")
        if peer is not None and math.isfinite(peer["median"]):
            ok = ok and _at_least(peer["median"] / 3, v)
    return ok


def _at_least(a: float, b: float) -> bool:
    """``a >= b``, where a value equal to its bound but for the rounding of the arithmetic
    that made it (400 ms of CPU over 10,000 chunks is 40.00000000000021 µs) counts as equal."""
    return a >= b or math.isclose(a, b, rel_tol=1e-9)


def fmt(value: float | None) -> str:
    """A number at a precision that suits its size."""
    if value is None or not math.isfinite(value):
        return "-"
    a = abs(value)
    if a >= 1000:
        return f"{value:,.0f}"
    if a >= 100:
        return f"{value:.0f}"
    if a >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cell(stats: dict[str, Any] | None) -> str:
    """``median (min-max)``, or just the median when there is one round."""
    if stats is None:
        return "n/a"
    med, lo, hi = stats["median"], stats["min"], stats["max"]
    if len([v for v in stats["values"] if math.isfinite(v)]) <= 1 or fmt(lo) == fmt(hi):
        return fmt(med)
    return f"{fmt(med)} ({fmt(lo)}..{fmt(hi)})"


def _verdict_text(ok: bool | None) -> str:
    return "-" if ok is None else "pass" if ok else "FAIL"


def _rows(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    targets = doc["targets"]
    header = ["metric", "target", *targets, "stagecast meets it"]
    rows = []
    for m in doc["metrics"]:
        label = f"{m['label']} ({m['unit']})" if m["unit"] else m["label"]
        rows.append(
            [
                label,
                m["target"],
                *(cell(m["values"].get(t)) for t in targets),
                _verdict_text(m["pass"]),
            ]
        )
    return header, rows


def foreign_load(records: list[dict[str, Any]]) -> dict[str, float]:
    """Median share of each core used by other work while a workload ran (noise indicator).

    Busy time of the core from /proc/stat minus what the benchmark's own processes used on it.
    """
    gw: list[float] = []
    client: list[float] = []
    for r in records:
        busy = r["core_busy"]
        if r.get("gateway_util") is not None:
            gw.append(max(0.0, busy["gateway_core"] - r["gateway_util"]))
        elif r["target"] == "direct":
            gw.append(busy["gateway_core"])
        client.append(max(0.0, busy["client_core"] - r["mock_util"] - r["client_util"]))
    return {
        "gateway_core": statistics.median(gw) if gw else float("nan"),
        "client_core": statistics.median(client) if client else float("nan"),
    }


def footer(doc: dict[str, Any]) -> list[str]:
    """Machine, conditions and notes printed under the table."""
    m = doc["machine"]
    c = doc["client"]
    busy = ", ".join(f"{k} {v:.0%}" for k, v in m.get("core_busy_during_run", {}).items())
    lines = [
        f"machine: {m['nproc']} cores, {m['cpu_model']}, Linux {m['kernel']}, "
        f"Python {m['python']}, {m['date']}; load average {' '.join(m['loadavg_start'])} at "
        f"start, {' '.join(m.get('loadavg_end', []))} at end; cores busy during the run: {busy}",
        f"mode {doc['mode']}, {doc['rounds']} round(s), {doc['duration_s']:.0f} s; "
        f"{doc['pinning']}; values are median (min..max) over rounds",
        f"load client busiest at {c['max_util']:.0%} of its core, mock upstream at "
        f"{c['mock_max_util']:.0%}; other work on the machine took a median "
        f"{doc['foreign_load']['gateway_core']:.0%} of the gateway's core and "
        f"{doc['foreign_load']['client_core']:.0%} of the client's core during the workloads",
    ]
    lines += [f"note: {n}" for n in doc["notes"]]
    for key, unit in (("per_chunk", "chunk"), ("per_stream", "stream")):
        prof = (doc.get("profile") or {}).get(key)
        if not prof:
            continue
        if not prof.get("top_self"):
            lines.append(f"profile {key}: {prof.get('skipped', 'no samples')}")
            continue
        lines.append(
            f"py-spy --native on stagecast, {prof['streams']} streams: "
            f"{fmt(prof['cpu_us'])} µs CPU per {unit} (unprofiled rounds), garbage "
            f"collector {prof['gc_share']:.0%}; top frames by self time, then Python frames by "
            f"inclusive time (share of CPU, µs per {unit}):"
        )
        for frame, share, us in prof["top_self"][:12]:
            lines.append(f"  self {share:6.1%} {fmt(us):>7}  {frame}")
        for frame, share, us in prof["top_inclusive"][:15]:
            lines.append(f"  incl {share:6.1%} {fmt(us):>7}  {frame}")
    return lines


def render_table(doc: dict[str, Any]) -> None:
    """Print the table with rich, then the machine and the notes."""
    from rich.console import Console
    from rich.table import Table

    header, rows = _rows(doc)
    table = Table(title="stagecast side-by-side benchmark", title_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i < 2 else "right", no_wrap=i > 0)
    for row in rows:
        style = "red" if row[-1] == "FAIL" else None
        table.add_row(*row, style=style)
    console = Console(width=200)
    console.print(table)
    for line in footer(doc):
        console.print(line, highlight=False, markup=False)


def render_markdown(doc: dict[str, Any]) -> str:
    """The same table in Markdown, for bench/README.md."""
    header, rows = _rows(doc)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines.append("")
    lines += [f"- {line.strip()}" for line in footer(doc)]
    return "\n".join(lines)
