"""Prometheus metrics of one gateway, in a registry of its own (no process-global state).

Counting happens when a stage ends, not per chunk, so the relay path pays nothing for it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class RecordCounters(Protocol):
    """What the metrics read from the record writer."""

    @property
    def pending(self) -> int: ...

    dropped: int
    failed_attempts: int


TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """The gateway's counters, gauges and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.stages = Counter(
            "stagecast_stages",
            "Stages that ended, by role, mode and status",
            ["role", "mode", "status"],
            registry=r,
        )
        self.ttft = Histogram(
            "stagecast_ttft_seconds",
            "Time from stage start to its first relayed chunk",
            ["role"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.chunks = Counter(
            "stagecast_relayed_chunks", "Chunks relayed to clients", ["role"], registry=r
        )
        self.active_streams = Gauge("stagecast_active_streams", "Open SSE responses", registry=r)
        self.active_stages = Gauge("stagecast_active_stages", "Stage runs in progress", registry=r)
        self.upstream_errors = Counter(
            "stagecast_upstream_errors",
            "Stages ended by an upstream failure, by code",
            ["role", "code"],
            registry=r,
        )
        self.tool_calls = Counter(
            "stagecast_tool_calls",
            "Tool calls, by tool and status",
            ["name", "status"],
            registry=r,
        )
        self.hub_batch = Histogram(
            "stagecast_hub_lag_events",
            "Events a reader was behind when it wrote (coalesced into one write)",
            buckets=(2, 4, 8, 16, 64, 256, 1024),
            registry=r,
        )
        # The labelled children that every stage end updates, by (role, mode, status).
        self._per_stage: dict[tuple[str, str, str], tuple[Counter, Histogram, Counter]] = {}

    def watch_records(self, writer: RecordCounters) -> None:
        """Expose the record writer's queue and failure counters."""
        for name, doc, attr in (
            ("stagecast_records_pending", "Stage records waiting to be written", "pending"),
            ("stagecast_records_dropped", "Stage records given up (overflow, shutdown)", "dropped"),
            ("stagecast_records_failed_attempts", "Failed writes, retried", "failed_attempts"),
        ):
            gauge = Gauge(name, doc, registry=self.registry)
            gauge.set_function(functools.partial(_read, writer, attr))

    def stage_ended(
        self,
        *,
        role: str,
        mode: str,
        status: str,
        ttft: float | None,
        chunks: int,
        error_code: str | None,
        tools: Iterable[tuple[str, bool]],
    ) -> None:
        """Record one finished stage."""
        children = self._per_stage.get((role, mode, status))
        if children is None:
            # ``labels`` validates and locks on every call: once per label set is enough.
            children = self._per_stage[(role, mode, status)] = (
                self.stages.labels(role, mode, status),
                self.ttft.labels(role),
                self.chunks.labels(role),
            )
        stages, ttfts, relayed = children
        stages.inc()
        if ttft is not None:
            ttfts.observe(ttft)
        if chunks:
            relayed.inc(chunks)
        if error_code is not None and error_code.startswith(("upstream", "role_busy", "embedded")):
            self.upstream_errors.labels(role, error_code).inc()
        for name, ok in tools:
            self.tool_calls.labels(name, "ok" if ok else "error").inc()

    def render(self) -> bytes:
        """The exposition text for ``GET /metrics``."""
        return generate_latest(self.registry)


def _read(obj: object, attr: str) -> float:
    return float(getattr(obj, attr))
