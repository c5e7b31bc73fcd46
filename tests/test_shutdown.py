"""SIGTERM: stop taking stages, let running ones finish within grace, end the rest cleanly."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx

from tests.peers.fake_upstream import FakeUpstream, text_script
from tests.peers.servers import gateway_process, wait_for


def test_stages_past_the_grace_period_end_with_server_shutdown(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    config = tmp_path / "stagecast.toml"
    config.write_text(
        f'shutdown_grace = 1\ndatabase_path = "{tmp_path}/records.db"\n'
        f'[models.fake]\nbase_url = "{upstream.url}"\nmodel = "m"\n'
    )
    upstream.enqueue(text_script([f"{i} " for i in range(100)], pace=0.1))
    with gateway_process(config) as (proc, url):
        with httpx.Client(base_url=url, timeout=30) as http:
            with http.stream("POST", "/stream/v1/chat", json={"user_prompt": "x"}) as r:
                raw = r.iter_raw()
                head = next(raw)
                assert b"chat_completion_chunk" in head
                proc.send_signal(signal.SIGTERM)
                # New stages are refused while draining.
                assert wait_for(
                    lambda: (
                        httpx.post(
                            url + "/stream/v1/chat", json={"user_prompt": "y"}, timeout=2
                        ).status_code
                        == 503
                    ),
                    5,
                )
                body = head + b"".join(raw)
        out, _ = proc.communicate(timeout=20)
    assert b"event: error" in body
    assert b'"code":"server_shutdown"' in body
    assert b'"retryable":true' in body
    assert b"event: done" not in body
    assert "Traceback" not in out
    upstream.wait_disconnected(0)
