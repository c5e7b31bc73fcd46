"""Real models: the embedded SmolLM2 backend, and a real ``llama_cpp.server`` upstream."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx
import pytest

from stagecast.backends.embedded import default_model_path
from stagecast.client import AsyncStagecast
from tests.conftest import GatewayFactory, no_leaks, role
from tests.peers.servers import free_port, wait_for
from tests.test_chat_stream import assert_protocol, collect, text_of

pytest.importorskip("llama_cpp", reason="needs the 'local' extra (llama-cpp-python)")
pytestmark = pytest.mark.llama


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m llama_cpp.server`` serving the SmolLM2 file on a free port."""
    port = free_port()
    # llama.cpp logs a lot: a file, not a pipe nobody drains (a full pipe would block it).
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    log_file = log_path.open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(default_model_path()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--chat_format",
            "chatml-function-calling",
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}/v1"
    probe = httpx.Client(timeout=1)

    def up() -> bool:
        try:
            return probe.get(url + "/models").status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None

    try:
        assert wait_for(up, timeout=90, interval=0.2)
        if proc.poll() is not None:
            pytest.fail(f"llama_cpp.server exited: {log_path.read_text()[-2000:]}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        probe.close()
        log_file.close()


async def test_embedded_default_role_streams_offline(make_gateway: GatewayFactory) -> None:
    gw = make_gateway()  # nothing configured: the embedded `local` role
    with no_leaks(gw):
        async with AsyncStagecast(gw.url) as client:
            _, events = await collect(client, user_prompt="Say hello.", max_tokens=12)
            result = await client.complete_chat(user_prompt="Name a colour.", max_tokens=8)
    assert_protocol(events)
    assert events[-1].event == "done"
    assert text_of(events).strip()
    assert result["type"] == "text" and result["text"].strip()
    assert result["usage"]["completion_tokens"] >= 1


async def test_embedded_generation_stops_when_cancelled(make_gateway: GatewayFactory) -> None:
    gw = make_gateway()
    async with (
        AsyncStagecast(gw.url) as client,
        client.stream_chat(
            user_prompt="Write a very long story about a lighthouse.",
            max_tokens=400,
            stage_id="emb-cancel",
            raise_on_error=False,
        ) as stream,
    ):
        it = aiter(stream)
        for _ in range(3):
            await anext(it)
        receipt = await client.cancel("emb-cancel")
        rest = [e async for e in it]
    assert rest[-1].event == "cancel"
    assert receipt["status_after"] == "cancelled"
    assert receipt["completion_tokens"] < 400
    # The worker thread noticed the flag and ended: generation stopped at the next token.
    assert wait_for(
        lambda: not any(t.name == "embedded-emb-cancel" for t in threading.enumerate()), 10
    )


async def test_llama_cpp_server_upstream(make_gateway: GatewayFactory, llama_server: str) -> None:
    gw = make_gateway(models={"llama": role(llama_server, model="smollm2", first_token_timeout=60)})
    with no_leaks(gw):
        async with AsyncStagecast(gw.url) as client:
            _, events = await collect(client, user_prompt="Say hello.", max_tokens=16)
            health = await client.health()
    assert_protocol(events)
    assert events[-1].event == "done"
    assert text_of(events).strip()
    assert health["backends"]["llama"]["ok"] is True


async def test_llama_cpp_server_client_disconnect(
    make_gateway: GatewayFactory, llama_server: str
) -> None:
    gw = make_gateway(models={"llama": role(llama_server, model="smollm2", first_token_timeout=60)})
    with no_leaks(gw):
        async with httpx.AsyncClient(base_url=gw.url, timeout=60) as http:
            body = {"user_prompt": "Tell a long story.", "max_tokens": 300}
            async with http.stream("POST", "/stream/v1/chat", json=body) as r:
                async for raw in r.aiter_raw():
                    if b"chat_completion_chunk" in raw:
                        break
    # The server accepts the next request promptly: the abandoned one was not left running.
    async with AsyncStagecast(gw.url) as client:
        _, events = await collect(client, user_prompt="Hi", max_tokens=4)
    assert events[-1].event == "done"


async def test_embedded_model_calls_a_named_tool(make_gateway: GatewayFactory) -> None:
    gw = make_gateway()
    async with AsyncStagecast(gw.url) as client:
        async with client.stream_toolchain(
            user_prompt="What is 12 times 7?",
            tool_choice="calculate",
            synthesis=True,
            max_tokens=[60, 40],
            temperature=0,
            raise_on_error=False,
        ) as stream:
            events = [e async for e in stream]
    assert_protocol(events)
    [summary] = [e for e in events if e.event == "tool_summary"]
    [detail] = summary.data.tool_calls  # type: ignore[union-attr]
    assert detail.name == "calculate"
    assert detail.error is None, detail
    assert events[-1].event == "done"


async def test_llama_cpp_server_forced_tool_call(
    make_gateway: GatewayFactory, llama_server: str
) -> None:
    gw = make_gateway(
        models={"llama": role(llama_server, model="smollm2", first_token_timeout=60)},
    )
    async with AsyncStagecast(gw.url) as client:
        async with client.stream_toolchain(
            user_prompt="What time is it in Tokyo?",
            tools=["get_time"],
            tool_choice="get_time",
            synthesis=True,
            max_tokens=[80, 40],
            temperature=0,
            raise_on_error=False,
        ) as stream:
            events = [e async for e in stream]
        result = await client.complete_toolchain(
            user_prompt="What time is it in Tokyo?",
            tools=["get_time"],
            tool_choice="get_time",
            max_tokens=[80, 40],
            temperature=0,
        )
    assert_protocol(events)
    [summary] = [e for e in events if e.event == "tool_summary"]
    [detail] = summary.data.tool_calls  # type: ignore[union-attr]
    assert detail.name == "get_time"
    assert events[-1].event == "done", events[-1].raw
    assert result["type"] == "tool_results"
    assert len(result["tool_results"]) == 1
