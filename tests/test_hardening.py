"""Keys and ownership, request limits, metrics and request ids."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import httpx
import pytest

from stagecast.client import AsyncStagecast, StagecastHTTPError
from stagecast.config import ApiKeyConfig
from tests.conftest import Gateway, GatewayFactory, role
from tests.peers.fake_upstream import FakeUpstream, Script, error_script, text_script
from tests.test_chat_stream import collect

KEY_A, KEY_B, KEY_C = "sk-alpha-0001", "sk-bravo-0002", "sk-charlie-0003"


@pytest.fixture
def keyed(
    make_gateway: GatewayFactory, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> Gateway:
    monkeypatch.setenv("TEST_KEY_A", KEY_A)
    keys = [
        ApiKeyConfig(id="alpha", key_env="TEST_KEY_A", max_concurrent_stages=2),
        ApiKeyConfig(id="bravo", key_sha256=hashlib.sha256(KEY_B.encode()).hexdigest()),
        ApiKeyConfig(
            id="charlie", key_env="TEST_KEY_A", roles=["other"], rate_per_minute=60, burst=2
        ),
    ]
    # charlie shares alpha's env var only to keep the fixture small; give it its own value.
    monkeypatch.setenv("TEST_KEY_C", KEY_C)
    keys[2] = keys[2].model_copy(update={"key_env": "TEST_KEY_C"})
    return make_gateway(
        models={"fake": role(upstream.url), "other": role(upstream.url)},
        api_keys=keys,
        limits={"max_body_bytes": 4096, "max_messages": 3, "max_prompt_chars": 500},
    )


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


ROUTES: list[tuple[str, str]] = [
    ("POST", "/stream/v1/chat"),
    ("POST", "/completion/v1/chat"),
    ("POST", "/stream/v1/toolchain"),
    ("POST", "/completion/v1/toolchain"),
    ("GET", "/stream/v1/stages/some-stage"),
    ("POST", "/stream/v1/stages/some-stage/cancel"),
    ("GET", "/v1/models"),
    ("GET", "/v1/tools"),
]


async def test_without_a_key_every_route_but_health_and_metrics_is_401(keyed: Gateway) -> None:
    async with httpx.AsyncClient(base_url=keyed.url) as http:
        for method, path in ROUTES:
            r = await http.request(method, path, json={"user_prompt": "x"})
            assert r.status_code == 401, (path, r.text)
            assert r.json()["code"] == "unauthorized"
            r = await http.request(
                method, path, json={"user_prompt": "x"}, headers=auth("sk-wrong")
            )
            assert r.status_code == 401, path
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/metrics")).status_code == 200


async def test_a_stage_belongs_to_the_key_that_started_it(
    keyed: Gateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(text_script([f"{i} " for i in range(50)], pace=0.05))
    a = AsyncStagecast(keyed.url, api_key=KEY_A)
    b = AsyncStagecast(keyed.url, api_key=KEY_B)
    async with a, b:
        async with a.stream_chat(user_prompt="x", stage_id="mine") as stream:
            it = aiter(stream)
            await anext(it)
            for attempt in (b.cancel("mine"), _attach(b, "mine")):
                with pytest.raises(StagecastHTTPError) as info:
                    await attempt
                assert info.value.status == 404
            # The same 404 as a stage that never existed: ids leak nothing.
            with pytest.raises(StagecastHTTPError) as never:
                await b.cancel("never-existed")
            assert (
                never.value.body["message"].replace("never-existed", "mine")
                == (info.value.body["message"])
            )
            receipt = await a.cancel("mine")
    assert receipt["status_after"] == "cancelled"


async def _attach(client: AsyncStagecast, stage_id: str) -> None:
    async with client.attach(stage_id) as stream:
        async for _ in stream:
            pass


async def test_concurrent_stage_limit_is_429_with_retry_after(
    keyed: Gateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(*(text_script(["x"] * 40, pace=0.05) for _ in range(3)))
    async with AsyncStagecast(keyed.url, api_key=KEY_A) as a:
        async with a.stream_chat(user_prompt="1") as s1, a.stream_chat(user_prompt="2") as s2:
            async with httpx.AsyncClient(base_url=keyed.url) as http:
                r = await http.post(
                    "/stream/v1/chat", json={"user_prompt": "3"}, headers=auth(KEY_A)
                )
                assert r.status_code == 429
                assert r.headers["retry-after"] == "1"
                assert r.json()["code"] == "too_many_stages"
                # Another key is not affected.
                upstream.enqueue(text_script(["ok"]))
                r = await http.post(
                    "/completion/v1/chat", json={"user_prompt": "b"}, headers=auth(KEY_B)
                )
                assert r.status_code == 200
            await a.cancel(s1.stage_id or "")
            await a.cancel(s2.stage_id or "")
        # Slots come back when stages end.
        upstream.enqueue(text_script(["again"]))
        _, events = await collect(a, user_prompt="4")
        assert events[-1].event == "done"


async def test_rate_limit_and_allowed_roles(keyed: Gateway, upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=keyed.url) as http:
        r = await http.post(
            "/completion/v1/chat", json={"user_prompt": "x", "model": "fake"}, headers=auth(KEY_C)
        )
        assert r.status_code == 403
        assert "other" in r.json()["message"]
        upstream.enqueue(text_script(["1"]), text_script(["2"]))
        codes = []
        for _ in range(3):
            r = await http.post(
                "/completion/v1/chat",
                json={"user_prompt": "x", "model": "other"},
                headers=auth(KEY_C),
            )
            codes.append(r.status_code)
        # The 403 above cost no token; the burst of 2 passes, the third is limited.
        assert codes == [200, 200, 429], codes
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["code"] == "rate_limited"


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        ({"user_prompt": "x" * 5000}, 413, "over the limit of 4096 bytes"),
        ({"messages": [{"role": "user", "content": "x"}] * 4}, 422, "the limit is 3"),
        ({"user_prompt": "y" * 600}, 422, "the limit is 500"),
        ({"user_prompt": "x", "max_tool_rounds": 12}, 422, "max_tool_rounds"),
    ],
)
async def test_request_limits(keyed: Gateway, body: dict[str, Any], status: int, text: str) -> None:
    async with httpx.AsyncClient(base_url=keyed.url) as http:
        r = await http.post("/stream/v1/chat", json=body, headers=auth(KEY_B))
    assert r.status_code == status, r.text
    assert text in r.json()["message"]


async def test_chunked_body_over_the_limit_is_413(keyed: Gateway) -> None:
    async def body() -> Any:
        for _ in range(10):
            yield b'{"user_prompt": "' + b"z" * 1000

    async with httpx.AsyncClient(base_url=keyed.url) as http:
        r = await http.post("/stream/v1/chat", content=body(), headers=auth(KEY_B))
    assert r.status_code == 413


async def test_request_id_is_taken_or_made_and_returned(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        given = await http.get("/v1/models", headers={"X-Request-Id": "req-123"})
        made = await http.get("/v1/models")
    assert given.headers["x-request-id"] == "req-123"
    assert len(made.headers["x-request-id"]) == 32


def metric(text: str, metric_name: str, **labels: str) -> float:
    """Sum of the samples of ``metric_name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        name, _, label_text = sample.partition("{")
        if name != metric_name:
            continue
        if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(value)
    return total


async def test_metrics_move_with_each_outcome(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    from tests.test_toolchain import TOOLS_CONFIG, script, tc

    gw = make_gateway(models={"fake": role(upstream.url)}, tools=TOOLS_CONFIG)
    upstream.enqueue(
        text_script(["a", "b"]),
        error_script(500),
        Script(delay_headers=30),
        script([{"tool_calls": [tc(0, "c1", "add", '{"a": 1, "b": 2}')]}]),
        script([{"tool_calls": [tc(0, "c2", "explode", '{"reason": "x"}')]}]),
    )
    async with AsyncStagecast(gw.url) as client:
        await collect(client, user_prompt="ok")
        await collect(client, user_prompt="fails")
        async with client.stream_chat(user_prompt="slow", stage_id="m-cancel") as s:
            upstream.wait_requests(3)
            await client.cancel("m-cancel")
            [e async for e in s]
        for _ in range(2):
            async with client.stream_toolchain(user_prompt="t") as s:
                [e async for e in s]
        # Gauges fall when the server has finished with each stream, just after the client did.
        for _ in range(200):
            text = (await client.http.get("/metrics")).text
            if (
                metric(text, "stagecast_active_streams")
                == 0
                == metric(text, "stagecast_active_stages")
            ):
                break
            await asyncio.sleep(0.05)
    assert metric(text, "stagecast_stages_total", role="fake", mode="chat", status="done") == 1
    assert metric(text, "stagecast_stages_total", role="fake", mode="chat", status="error") == 1
    assert metric(text, "stagecast_stages_total", role="fake", mode="chat", status="cancelled") == 1
    assert metric(text, "stagecast_stages_total", role="fake", mode="toolchain", status="done") == 2
    assert metric(text, "stagecast_upstream_errors_total", code="upstream_status") == 1
    assert metric(text, "stagecast_tool_calls_total", name="add", status="ok") == 1
    assert metric(text, "stagecast_tool_calls_total", name="explode", status="error") == 1
    assert metric(text, "stagecast_relayed_chunks_total", role="fake") >= 4
    assert metric(text, "stagecast_ttft_seconds_count", role="fake") >= 3
    assert metric(text, "stagecast_active_stages") == 0
    assert metric(text, "stagecast_active_streams") == 0


def test_refuses_a_public_address_without_keys() -> None:
    from stagecast.api.auth import check_exposure
    from stagecast.config import Settings
    from stagecast.errors import ConfigError

    check_exposure(Settings(host="127.0.0.1"))
    check_exposure(Settings(host="::1"))
    check_exposure(Settings(host="0.0.0.0", insecure_no_auth=True))
    with pytest.raises(ConfigError, match="--insecure-no-auth"):
        check_exposure(Settings(host="0.0.0.0"))


@pytest.mark.redis
async def test_rate_limit_is_shared_by_replicas_through_redis(
    make_gateway: GatewayFactory,
    upstream: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    redis_prefix: str,
) -> None:
    monkeypatch.setenv("TEST_KEY_R", "sk-rate-0001")
    shared: dict[str, Any] = {
        "models": {"fake": role(upstream.url)},
        "api_keys": [ApiKeyConfig(id="r", key_env="TEST_KEY_R", rate_per_minute=6, burst=3)],
        "redis_url": redis_url,
        "redis_prefix": redis_prefix,
    }
    replicas = [make_gateway(**shared), make_gateway(**shared)]
    upstream.fallback = text_script(["ok"])
    codes = []
    async with httpx.AsyncClient(timeout=10) as http:
        for i in range(4):
            gw = replicas[i % 2]
            r = await http.post(
                f"{gw.url}/completion/v1/chat",
                json={"user_prompt": "x"},
                headers=auth("sk-rate-0001"),
            )
            codes.append(r.status_code)
    # A burst of 3 across both replicas together, not 3 on each.
    assert codes == [200, 200, 200, 429], codes
    assert int(r.headers["retry-after"]) >= 1
