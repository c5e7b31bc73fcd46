"""The ``stagecast`` command, run as a real subprocess: ``serve`` and the basics of ``chat``."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.cli.helpers import BIN, cli_env, run_cli
from tests.conftest import Gateway
from tests.peers.fake_upstream import FakeUpstream, Script, Step, chunk, data, text_script
from tests.peers.servers import free_port, wait_for


def test_chat_prints_the_streamed_answer(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(text_script(["Lisbon ", "in ", "spring."]))
    result = run_cli("chat", "Where should I go?", "--server", gateway.url, "--model", "fake")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Lisbon in spring.\n"
    assert upstream.chat_requests()[0].body["messages"][-1]["content"] == "Where should I go?"


def test_chat_reports_errors_with_exit_codes(gateway: Gateway, upstream: FakeUpstream) -> None:
    result = run_cli("chat", "x", "--server", gateway.url, "--model", "nope")
    assert result.returncode == 2
    assert "unknown model_container 'nope'" in result.stderr
    upstream.enqueue(Script(data(chunk({"content": "par"})) + [Step("cut")]))
    result = run_cli("chat", "x", "--server", gateway.url)
    assert result.returncode == 1
    assert "upstream_disconnected" in result.stderr


def test_serve_with_config_then_sigterm_drains(tmp_path: Path, upstream: FakeUpstream) -> None:
    config = tmp_path / "stagecast.toml"
    # Stage records go to the test's directory, not the working directory.
    records = tmp_path / "records.db"
    config.write_text(
        f'shutdown_grace = 5\ndatabase_path = "{records}"\n'
        f'[models.fake]\nbase_url = "{upstream.url}"\nmodel = "m"\n'
    )
    upstream.enqueue(text_script([f"{i} " for i in range(10)], pace=0.1))
    port = free_port()
    env = cli_env()
    proc = subprocess.Popen(
        [BIN, "serve", "--config", str(config), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(up, timeout=30, interval=0.1)
        with httpx.Client(base_url=url, timeout=30) as http:
            with http.stream("POST", "/stream/v1/chat", json={"user_prompt": "x"}) as r:
                started = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                body = b"".join(r.iter_raw())
        # The running stage finished within the grace period, then the server exited.
        assert b"event: done" in body
        assert body.count(b"event: chat_completion_chunk") == 13
        assert time.monotonic() - started < 15
        out, _ = proc.communicate(timeout=20)
        # uvicorn re-raises the signal it handled once it is done: dying "by SIGTERM" after a
        # clean drain is the conventional exit status for a service.
        assert proc.returncode in (0, -signal.SIGTERM), out
        assert "Traceback" not in out
        assert "draining stages" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_serve_refuses_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[models.a]\nkind = "openai"\n')
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2
    assert "needs base_url" in result.stderr


def test_serve_refuses_a_public_address_without_keys() -> None:
    result = run_cli("serve", "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2
    assert "--insecure-no-auth" in result.stderr
