"""``stagecast cases run`` as a real subprocess against a gateway and the fake model server."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.cli.helpers import run_cli
from tests.conftest import Gateway, GatewayFactory, role
from tests.peers.fake_upstream import FakeUpstream, text_script
from tests.test_toolchain import DIALECTS, TOOLS_CONFIG

MIXED = """
[defaults]
role = "fake"
max_tokens = 64

[[cases]]
name = "lisbon-answer"
user_prompt = "Plan a spring trip to Lisbon."
expect.text_contains = ["LISBON", "spring"]

[[cases]]
name = "wants-porto"
user_prompt = "Plan a spring trip to Lisbon."
expect.text_contains = "Porto"

[[cases]]
name = "adds-with-tools"
mode = "tools"
user_prompt = "Add 2 and 3, and 10 and -4."
tools = ["add"]
tool_choice = "add"
expect.tool_called = "add"

[[cases]]
name = "wants-weather"
mode = "tools+synthesis"
user_prompt = "Add things."
expect.tool_called = ["add", "get_weather"]
"""


@pytest.fixture
def tool_gateway(make_gateway: GatewayFactory, upstream: FakeUpstream) -> Gateway:
    return make_gateway(models={"fake": role(upstream.url)}, tools=TOOLS_CONFIG)


def write(tmp_path: Path, text: str, name: str = "cases.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def rows(stdout: str) -> dict[str, str]:
    """Table rows by case name (the first cell), folded cells joined back into one line."""
    out: dict[str, list[list[str]]] = {}
    last = ""
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.split("│")][1:-1]
        if not cells:
            continue
        if cells[0]:
            last = cells[0]
            out[last] = [[c] for c in cells]
        elif last:
            for column, cell in zip(out[last], cells, strict=True):
                column.append(cell)
    return {
        name: " │ ".join(" ".join(p for p in c if p) for c in cols) for name, cols in out.items()
    }


def test_passing_and_failing_cases_table_and_junit(
    tool_gateway: Gateway, upstream: FakeUpstream, tmp_path: Path
) -> None:
    answer = ["Lisbon ", "in spring: ", "pack layers."]
    upstream.enqueue(
        text_script(answer),
        text_script(answer),
        DIALECTS["openai_interleaved"](),
        DIALECTS["openai_interleaved"](),
        text_script(["5 and 6."]),
    )
    junit = tmp_path / "out.xml"
    cases = write(tmp_path, MIXED)
    result = run_cli(
        "cases", "run", str(cases), "-s", tool_gateway.url, "--concurrency", "1",
        "--junit", str(junit),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    table = rows(result.stdout)
    assert "PASS" in table["lisbon-answer"]
    assert "FAIL: text lacks 'Porto'" in table["wants-porto"]
    assert "PASS" in table["adds-with-tools"]
    assert "add, add" in table["adds-with-tools"]
    assert "FAIL: get_weather not called (called: add, add)" in table["wants-weather"]
    header = next(line for line in result.stdout.splitlines() if "TTFT" in line)
    for column in ("case", "role", "mode", "status", "result", "duration", "tokens", "tools"):
        assert column in header
    assert "2 passed, 2 failed" in result.stdout
    # Progress goes to stderr: in a log, one line per finished case.
    assert "PASS lisbon-answer" in result.stderr
    assert "FAIL wants-porto" in result.stderr

    root = ET.parse(junit).getroot()
    assert (root.tag, root.get("tests"), root.get("failures")) == ("testsuites", "4", "2")
    testcases = root.findall("./testsuite/testcase")
    assert [c.get("name") for c in testcases] == [
        "lisbon-answer",
        "wants-porto",
        "adds-with-tools",
        "wants-weather",
    ]
    failures = {c.get("name"): c.find("failure") for c in testcases}
    assert failures["lisbon-answer"] is None and failures["adds-with-tools"] is None
    assert failures["wants-porto"] is not None
    assert failures["wants-porto"].get("message") == "text lacks 'Porto'"
    props = {p.get("name"): p.get("value") for p in testcases[2].iter("property")}
    assert props["mode"] == "tools" and props["role"] == "fake"
    assert props["stage_id"].startswith("case-adds-with-tools-")

    # The requests were built from the file: defaults, tools, tool_choice, synthesis.
    sent = [r.body for r in upstream.chat_requests()]
    assert sent[0]["max_tokens"] == 64
    assert sent[2]["tool_choice"] == {"type": "function", "function": {"name": "add"}}
    assert [t["function"]["name"] for t in sent[2]["tools"]] == ["add"]


def test_all_pass_is_exit_0_and_filter_selects(
    gateway: Gateway, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.fallback = text_script(["Lisbon ", "in spring."])
    cases = write(
        tmp_path,
        "".join(
            f'[[cases]]\nname = "travel-{i}"\nuser_prompt = "Lisbon?"\n'
            'expect.text_contains = "lisbon"\nexpect.no_error = true\nexpect.within_s = 60\n\n'
            for i in range(6)
        ),
    )
    result = run_cli("cases", "run", str(cases), "-s", gateway.url, "--concurrency", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 passed, 0 failed" in result.stdout
    assert len(upstream.chat_requests()) == 6
    only = run_cli("cases", "run", str(cases), "-s", gateway.url, "--filter", "TRAVEL-4")
    assert only.returncode == 0
    assert list(rows(only.stdout)) == ["travel-4"]
    none = run_cli("cases", "run", str(cases), "-s", gateway.url, "--filter", "nothing")
    assert none.returncode == 2
    assert "no case" in none.stderr and "'nothing'" in none.stderr


def test_a_case_over_its_time_budget_fails_and_is_stopped(
    gateway: Gateway, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.enqueue(text_script([f"{i} " for i in range(100)], pace=0.1))
    cases = write(tmp_path, '[[cases]]\nname = "slow"\nuser_prompt = "x"\nexpect.within_s = 1\n')
    result = run_cli("cases", "run", str(cases), "-s", gateway.url)
    assert result.returncode == 1
    assert "FAIL: did not finish within 1 s" in rows(result.stdout)["slow"]
    # Leaving the stream stopped the stage: the model request was closed.
    upstream.wait_disconnected(0)


def test_errors_and_refusals_are_failures(
    gateway: Gateway, upstream: FakeUpstream, tmp_path: Path
) -> None:
    from tests.peers.fake_upstream import Script, Step, chunk, data

    upstream.enqueue(Script(data(chunk({"content": "half"})) + [Step("cut")]))
    cases = write(
        tmp_path,
        '[[cases]]\nname = "broken"\nuser_prompt = "x"\n\n'
        '[[cases]]\nname = "no-role"\nrole = "nope"\nuser_prompt = "x"\n',
    )
    result = run_cli("cases", "run", str(cases), "-s", gateway.url, "--concurrency", "1")
    assert result.returncode == 1
    table = rows(result.stdout)
    assert "status error (upstream_disconnected" in table["broken"]
    assert "expected done" in table["broken"]
    assert "FAIL: refused: HTTP 404 unknown_role" in table["no-role"]


BAD_FILES = {
    "syntax": ('[[cases]]\nname = "a"\nuser_prompt = "x\n', ["is not valid TOML", "line 3"]),
    "unknown_field": (
        '[[cases]]\nname = "weather"\nmode = "tools"\nuser_prompt = "x"\n'
        'expect.tool_caled = "get_weather"\n',
        ["case 'weather' (cases[0])", "expect.tool_caled: unknown field"],
    ),
    "no_prompt": ('[[cases]]\nname = "empty"\n', ["case 'empty'", "give user_prompt or messages"]),
    "bad_mode": (
        '[[cases]]\nname = "m"\nmode = "toolz"\nuser_prompt = "x"\n',
        ["case 'm'", "mode: Input should be 'chat', 'tools' or 'tools+synthesis'"],
    ),
    "tools_in_chat": (
        '[[cases]]\nname = "c"\nuser_prompt = "x"\nexpect.tool_called = "add"\n',
        ["case 'c'", "expect.tool_called need mode 'tools' or 'tools+synthesis'"],
    ),
    "bad_numbers": (
        '[[cases]]\nname = "n"\nuser_prompt = "x"\nmax_tokens = 0\nexpect.within_s = -1\n',
        ["case 'n'", "max_tokens.0: Input should be greater than or equal to 1", "expect.within_s"],
    ),
    "duplicate": (
        '[[cases]]\nname = "d"\nuser_prompt = "x"\n[[cases]]\nname = "d"\nuser_prompt = "y"\n',
        ["case 'd': name used twice"],
    ),
    "no_cases": ('[defaults]\nrole = "x"\n', ["no cases"]),
    "missing_name": ('[[cases]]\nuser_prompt = "x"\n', ["cases[0]: name: Field required"]),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_bad_file_is_exit_2_naming_the_case_and_field(tmp_path: Path, kind: str) -> None:
    text, messages = BAD_FILES[kind]
    # No gateway is needed: the file is refused before any request.
    result = run_cli("cases", "run", str(write(tmp_path, text)), "-s", "http://127.0.0.1:9")
    assert result.returncode == 2, result.stdout + result.stderr
    flat = " ".join(result.stderr.split())
    for message in messages:
        assert message in flat, result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_file_is_exit_2(tmp_path: Path) -> None:
    result = run_cli("cases", "run", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert "cannot read" in result.stderr


def test_the_shipped_examples_file_is_valid(tmp_path: Path) -> None:
    # Every case filtered out is the cheapest full validation of the file.
    examples = Path(__file__).parents[2] / "examples" / "cases.toml"
    result = run_cli("cases", "run", str(examples), "--filter", "no-such-case")
    assert result.returncode == 2
    assert "no case in" in result.stderr
