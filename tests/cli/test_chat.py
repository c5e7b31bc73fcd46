"""``stagecast chat`` as a real subprocess: pipes, JSON lines, a terminal, Ctrl-C, API keys."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess

import pytest

from stagecast.client import Stagecast
from stagecast.config import ApiKeyConfig
from tests.cli.helpers import BIN, cli_env, read_until, run_cli, run_in_terminal
from tests.conftest import Gateway, GatewayFactory, role
from tests.peers.fake_upstream import FakeUpstream, text_script
from tests.peers.servers import closed_port_url
from tests.test_toolchain import DIALECTS, TOOLS_CONFIG

SLOW = [f"w{i} " for i in range(60)]
FOOTER = re.compile(r"TTFT \d+\.\d\d s · (\d+) tokens · [\d.]+ tok/s · \d+\.\d\d s · done \(stop\)")


@pytest.fixture
def tool_gateway(make_gateway: GatewayFactory, upstream: FakeUpstream) -> Gateway:
    return make_gateway(models={"fake": role(upstream.url)}, tools=TOOLS_CONFIG)


def stage_events(gateway: Gateway, stage_id: str) -> list[str]:
    """The names of a stage's events, replayed from the gateway's log."""
    with Stagecast(gateway.url) as client:
        return [e.event for e in client.attach(stage_id, raise_on_error=False)]


# --- pipes -----------------------------------------------------------------------------
def test_tool_stages_in_a_pipe(tool_gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(DIALECTS["openai_interleaved"]())
    only_tools = run_cli("chat", "add", "--tools", "--tool", "add", "-s", tool_gateway.url)
    assert only_tools.returncode == 0, only_tools.stderr
    # A tool-only stage has no answer text: its results are the output, as JSON.
    assert json.loads(only_tools.stdout) == {"call_a": 5, "call_b": 6}
    upstream.enqueue(DIALECTS["openai_interleaved"](), text_script(["5 and ", "6."]))
    answered = run_cli("chat", "add", "--tool", "add", "-s", tool_gateway.url)
    assert answered.returncode == 0, answered.stderr
    assert answered.stdout == "5 and 6.\n"
    first, synthesis = upstream.chat_requests()[1:]
    assert [t["function"]["name"] for t in first.body["tools"]] == ["add"]
    assert synthesis.body["messages"][-1]["role"] == "tool"


def test_json_lines_are_the_events(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(text_script(["Lisbon ", "in ", "spring."]))
    result = run_cli("chat", "x", "--json", "--stage-id", "json-1", "-s", gateway.url)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(set(line) == {"id", "event", "data"} for line in lines)
    assert [line["id"] for line in lines] == list(range(1, len(lines) + 1))
    assert lines[-1]["event"] == "done"
    assert [line["event"] for line in lines[:-1]] == ["chat_completion_chunk"] * (len(lines) - 1)
    assert {line["data"]["stage_id"] for line in lines} == {"json-1"}
    text = "".join(
        c["delta"].get("content") or ""
        for line in lines[:-1]
        for c in line["data"]["chunk"]["choices"]
    )
    assert text == "Lisbon in spring."


def test_unreachable_gateway_is_exit_2() -> None:
    result = run_cli("chat", "x", "-s", closed_port_url().removesuffix("/v1"))
    assert result.returncode == 2
    assert "cannot reach the gateway" in result.stderr
    assert result.stdout == ""


# --- a terminal ------------------------------------------------------------------------
def test_terminal_shows_the_answer_and_a_footer(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(text_script(["Lisbon ", "in ", "spring."], pace=0.05))
    code, screen = run_in_terminal("chat", "Where?", "-s", gateway.url)
    assert code == 0, screen
    assert "Lisbon in spring." in screen
    footer = FOOTER.search(screen)
    assert footer is not None, screen
    assert footer.group(1) == "3"


def test_terminal_reasoning_is_shown_only_when_asked(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    thinking = ["<think>Porto ", "or Lisbon?</think>", "Lisbon."]
    upstream.enqueue(text_script(thinking), text_script(thinking))
    code, shown = run_in_terminal("chat", "x", "--show-reasoning", "-s", gateway.url)
    assert code == 0, shown
    assert "Porto or Lisbon?" in shown
    assert shown.index("Porto or Lisbon?") < shown.index("Lisbon.\n")
    code, hidden = run_in_terminal("chat", "x", "-s", gateway.url)
    assert code == 0, hidden
    assert "Porto" not in hidden
    assert "Lisbon." in hidden


def test_terminal_shows_tool_calls_and_their_results(
    tool_gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(DIALECTS["openai_interleaved"](), text_script(["Sums: ", "5 and 6."]))
    code, screen = run_in_terminal("chat", "add", "--synthesis", "-s", tool_gateway.url)
    assert code == 0, screen
    assert '⚙ add({"a": 2, "b": 3})' in screen
    assert '⚙ add({"a": 10, "b": -4})' in screen
    table = screen[screen.index("Tool results (round 1)") :]
    rows = [line for line in table.splitlines() if line.startswith("│ add")]
    assert [row.split("│")[3].strip() for row in rows] == ["5", "6"]
    assert "Sums: 5 and 6." in screen
    assert FOOTER.search(screen), screen


def test_terminal_error_goes_to_stderr_with_exit_1(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    from tests.peers.fake_upstream import Script, Step, chunk, data

    upstream.enqueue(Script(data(chunk({"content": "half"})) + [Step("cut")]))
    code, screen = run_in_terminal("chat", "x", "-s", gateway.url)
    assert code == 1
    assert "half" in screen
    assert "stage failed (upstream_disconnected)" in screen


# --- Ctrl-C ----------------------------------------------------------------------------
def interrupt(args: list[str], *, after: bytes) -> tuple[bytes, bytes, bytes, int]:
    """Run ``stagecast ARGS`` in pipes and send SIGINT once stdout shows ``after``.

    Returns what stdout had shown by then, the rest of stdout, stderr and the exit code.
    """
    with subprocess.Popen(
        [BIN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env()
    ) as proc:
        try:
            assert proc.stdout is not None
            head = read_until(proc.stdout.fileno(), after)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return head, out, err, proc.returncode


def test_ctrl_c_cancels_the_stage_and_prints_the_receipt(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(text_script(SLOW, pace=0.2))
    head, out, err, code = interrupt(
        ["chat", "x", "--stage-id", "cli-stop", "-s", gateway.url], after=b"w2 "
    )
    assert code == 130, err
    stderr = err.decode()
    assert "cancelled stage cli-stop: running -> cancelled" in stderr
    assert "model request aborted" in stderr
    assert "Traceback" not in stderr
    assert (head + out).decode().startswith("w0 w1 w2 ")
    upstream.wait_disconnected(0)
    assert stage_events(gateway, "cli-stop")[-1] == "cancel"


def test_ctrl_c_in_json_mode_ends_with_the_cancel_event(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(text_script(SLOW, pace=0.2))
    head, out, err, code = interrupt(
        ["chat", "x", "--json", "--stage-id", "cli-json-stop", "-s", gateway.url], after=b'"w1 "'
    )
    assert code == 130, err
    lines = [json.loads(line) for line in (head + out).decode().splitlines()]
    assert lines[-1]["event"] == "cancel"
    assert [line["id"] for line in lines] == list(range(1, len(lines) + 1))
    receipt = json.loads(err.decode().strip().splitlines()[-1])["receipt"]
    assert receipt["stage_id"] == "cli-json-stop"
    assert receipt["status_after"] == "cancelled"
    upstream.wait_disconnected(0)


def test_ctrl_c_in_a_terminal(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(text_script(SLOW, pace=0.2))
    code, screen = run_in_terminal(
        "chat", "x", "--stage-id", "cli-tty-stop", "-s", gateway.url, interrupt_after="w2 "
    )
    assert code == 130, screen
    assert "cancelled stage cli-tty-stop: running -> cancelled" in screen
    assert "Traceback" not in screen
    upstream.wait_disconnected(0)


# --- API keys --------------------------------------------------------------------------
def test_api_key_from_option_or_environment(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    digest = hashlib.sha256(b"sk-cli-0001").hexdigest()
    gw = make_gateway(
        models={"fake": role(upstream.url)},
        api_keys=[ApiKeyConfig(id="cli", key_sha256=digest)],
    )
    upstream.enqueue(text_script(["one"]), text_script(["two"]))
    refused = run_cli("chat", "x", "-s", gw.url)
    assert refused.returncode == 2
    assert "needs an API key" in refused.stderr
    by_option = run_cli("chat", "x", "-s", gw.url, "--api-key", "sk-cli-0001")
    assert (by_option.returncode, by_option.stdout) == (0, "one\n")
    by_env = run_cli("chat", "x", "-s", gw.url, env=cli_env(STAGECAST_API_KEY="sk-cli-0001"))
    assert (by_env.returncode, by_env.stdout) == (0, "two\n")
