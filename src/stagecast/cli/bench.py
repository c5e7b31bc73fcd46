"""``stagecast cases run``: run a cases file against a gateway, check it, report it.

Cases run concurrently (bounded), each as a streamed stage read with the SDK, so a case
measures what a front end sees: time to first token, duration, tokens, tools called.
Exit codes: 0 every case passed, 1 some case failed, 2 the file (or the filter) is unusable.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from stagecast.cli.cases import Case, CasesFileError, load_cases
from stagecast.client import (
    AsyncStagecast,
    StageAnswer,
    StagecastClientError,
    StagecastHTTPError,
)

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_BAD_FILE = 2


@dataclass
class CaseResult:
    """How one case went: the answer (if the stage ran) and the failed expectations."""

    case: Case
    stage_id: str
    answer: StageAnswer | None = None
    failures: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def passed(self) -> bool:
        """True when every expectation held."""
        return not self.failures

    @property
    def status(self) -> str:
        """The stage's final status, or ``failed`` if it never ran."""
        return self.answer.status if self.answer is not None else "failed"


def check(case: Case, answer: StageAnswer, elapsed_s: float) -> list[str]:
    """The expectations of ``case`` that ``answer`` does not meet, each as a short reason."""
    expect = case.expect
    reasons: list[str] = []
    if answer.status != expect.status:
        detail = f" ({answer.error_code}: {answer.error})" if answer.status == "error" else ""
        reasons.append(f"status {answer.status}{detail}, expected {expect.status}")
    called = answer.tools_called
    for name in expect.tool_called:
        if name not in called:
            reasons.append(f"{name} not called (called: {', '.join(called) or 'none'})")
    text = answer.text.casefold()
    for needle in expect.text_contains:
        if needle.casefold() not in text:
            reasons.append(f"text lacks {needle!r}")
    if expect.within_s is not None and elapsed_s > expect.within_s:
        reasons.append(f"took {elapsed_s:.1f} s, limit {expect.within_s:g} s")
    if expect.no_error:
        if answer.status == "error" and expect.status == "error":
            reasons.append(f"error event ({answer.error_code}: {answer.error})")
        for call in answer.tool_calls:
            if call.error:
                reasons.append(f"tool {call.name} failed: {call.error}")
    return reasons


async def run_case(client: AsyncStagecast, case: Case, *, timeout: float) -> CaseResult:
    """Run one case as a streamed stage and check it."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", case.name).strip("-")[:60] or "case"
    result = CaseResult(case, f"case-{slug}-{uuid.uuid4().hex[:8]}")
    body = case.body(result.stage_id)
    limit = case.expect.within_s or timeout
    if case.mode == "chat":
        stream = client.stream_chat(raise_on_error=False, **body)
    else:
        stream = client.stream_toolchain(raise_on_error=False, **body)
    started = time.monotonic()
    try:
        async with asyncio.timeout(limit):
            async with stream:
                result.answer = await stream.final()
    except TimeoutError:
        # Leaving the stream closed the connection; the gateway stops a stage whose client
        # left (the default on_disconnect), so nothing keeps running.
        result.answer = stream.answer()
        result.failures.append(f"did not finish within {limit:g} s")
    except StagecastHTTPError as exc:
        result.failures.append(f"refused: HTTP {exc.status} {exc.code}: {exc.message}")
    except StagecastClientError as exc:
        result.failures.append(str(exc))
    result.elapsed_s = time.monotonic() - started
    if result.answer is not None and not result.failures:
        elapsed = result.answer.duration_s or result.elapsed_s
        result.failures = check(case, result.answer, elapsed)
    return result


async def run_cases(
    cases: list[Case],
    *,
    server: str | None,
    api_key: str | None,
    concurrency: int,
    timeout: float,
    on_result: Callable[[CaseResult], None] | None = None,
) -> list[CaseResult]:
    """Run ``cases``, at most ``concurrency`` at a time; results come back in file order."""
    limit = asyncio.Semaphore(concurrency)

    async def one(client: AsyncStagecast, case: Case) -> CaseResult:
        async with limit:
            result = await run_case(client, case, timeout=timeout)
        if on_result is not None:
            on_result(result)
        return result

    async with AsyncStagecast(server, api_key=api_key) as client:
        return list(await asyncio.gather(*(one(client, c) for c in cases)))


# --- reporting -------------------------------------------------------------------------
def _seconds(value: float | None) -> str:
    return f"{value:.2f} s" if value is not None else "-"


def results_table(results: list[CaseResult]) -> Table:
    """Case, role, mode, status, pass/fail with reasons, TTFT, duration, tokens, tools."""
    table = Table(title="stagecast cases", title_justify="left")
    table.add_column("case", style="bold", overflow="fold")
    table.add_column("role", overflow="fold")
    table.add_column("mode")
    table.add_column("status")
    table.add_column("result", overflow="fold")
    table.add_column("TTFT", justify="right")
    table.add_column("duration", justify="right")
    table.add_column("tokens", justify="right")
    table.add_column("tools", overflow="fold")
    for r in results:
        answer = r.answer
        verdict = (
            Text("PASS", style="green")
            if r.passed
            else Text("FAIL: " + "; ".join(r.failures), style="red")
        )
        tokens = answer.completion_tokens if answer is not None else None
        table.add_row(
            r.case.name,
            r.case.role or "(default)",
            r.case.mode,
            r.status,
            verdict,
            _seconds(answer.ttft_s if answer else None),
            _seconds(answer.duration_s if answer and answer.duration_s else r.elapsed_s),
            str(tokens) if tokens is not None else "-",
            ", ".join(answer.tools_called) if answer and answer.tools_called else "-",
        )
    return table


def write_junit(results: list[CaseResult], path: Path, *, suite: str, elapsed_s: float) -> None:
    """JUnit XML: one ``testcase`` per case, a ``failure`` with the reasons when it failed."""
    failures = sum(not r.passed for r in results)
    root = ET.Element(
        "testsuites",
        name="stagecast cases",
        tests=str(len(results)),
        failures=str(failures),
        errors="0",
        time=f"{elapsed_s:.3f}",
    )
    node = ET.SubElement(
        root,
        "testsuite",
        name=suite,
        tests=str(len(results)),
        failures=str(failures),
        errors="0",
        skipped="0",
        time=f"{elapsed_s:.3f}",
        timestamp=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    for r in results:
        case = ET.SubElement(
            node,
            "testcase",
            classname=f"stagecast.cases.{suite}",
            name=r.case.name,
            time=f"{r.elapsed_s:.3f}",
        )
        properties = ET.SubElement(case, "properties")
        for key, value in (
            ("stage_id", r.stage_id),
            ("role", r.case.role or ""),
            ("mode", r.case.mode),
            ("status", r.status),
        ):
            ET.SubElement(properties, "property", name=key, value=value)
        if not r.passed:
            failure = ET.SubElement(
                case, "failure", message="; ".join(r.failures), type="ExpectationFailed"
            )
            failure.text = "\n".join(r.failures)
        if r.answer is not None and r.answer.text:
            ET.SubElement(case, "system-out").text = r.answer.text
    tree = ET.ElementTree(root)
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)


def run_cases_command(
    path: Path,
    *,
    server: str | None,
    api_key: str | None,
    concurrency: int,
    name_filter: str | None,
    junit: Path | None,
    timeout: float,
) -> int:
    """The whole command: load, filter, run with progress, report; returns the exit code."""
    err = Console(stderr=True, highlight=False)
    # A pipe gets a wide table rather than rich's 80-column default, so rows stay whole.
    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS") or 160)
    out = Console(highlight=False, width=width)
    try:
        cases = load_cases(path)
    except CasesFileError as exc:
        err.print(Text(f"stagecast: {exc}", style="red"))
        return EXIT_BAD_FILE
    if name_filter:
        cases = [c for c in cases if name_filter.casefold() in c.name.casefold()]
        if not cases:
            err.print(Text(f"stagecast: no case in {path} matches {name_filter!r}", style="red"))
            return EXIT_BAD_FILE

    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    task = progress.add_task("running cases", total=len(cases))

    def on_result(result: CaseResult) -> None:
        progress.advance(task)
        if not err.is_terminal:
            # No live bar in a log: one line per finished case instead.
            verdict = "PASS" if result.passed else "FAIL"
            err.print(f"{verdict} {result.case.name} ({result.elapsed_s:.1f} s)", markup=False)

    started = time.monotonic()
    with progress:
        results = asyncio.run(
            run_cases(
                cases,
                server=server,
                api_key=api_key,
                concurrency=concurrency,
                timeout=timeout,
                on_result=on_result,
            )
        )
    elapsed = time.monotonic() - started
    out.print(results_table(results))
    failed = sum(not r.passed for r in results)
    summary = (
        f"{len(results) - failed} passed, {failed} failed ({len(results)} cases, {elapsed:.1f} s)"
    )
    out.print(Text(summary, style="red" if failed else "green"))
    if junit is not None:
        write_junit(results, junit, suite=path.stem, elapsed_s=elapsed)
    return EXIT_FAILED if failed else EXIT_PASSED
