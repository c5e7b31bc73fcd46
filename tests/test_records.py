"""Stage records through the gateway: written at the end of every stage, per owner, and
kept through a database outage without disturbing any stream."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stagecast.client import AsyncStagecast
from stagecast.config import ApiKeyConfig
from stagecast.store.base import RECORD_TEXT_MAX_CHARS, truncate, truncate_parts
from tests.conftest import Gateway, GatewayFactory, role
from tests.peers.fake_upstream import FakeUpstream, Script, error_script, text_script
from tests.peers.servers import wait_for
from tests.peers.tcp_proxy import tcp_proxy
from tests.store.conftest import postgres_admin_url, postgres_url, with_address
from tests.test_chat_stream import collect, text_of
from tests.test_toolchain import TOOLS_CONFIG, script, tc

__all__ = ["postgres_admin_url", "postgres_url"]


def record(gw: Gateway, stage_id: str, key: str | None = None) -> dict[str, Any] | None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.get(f"{gw.url}/v1/stages/{stage_id}", headers=headers, timeout=5)
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def wait_record(gw: Gateway, stage_id: str, key: str | None = None) -> dict[str, Any]:
    assert wait_for(lambda: record(gw, stage_id, key) is not None, 15), f"no record of {stage_id}"
    found = record(gw, stage_id, key)
    assert found is not None
    return found


async def test_every_outcome_is_recorded(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    gw = make_gateway(models={"fake": role(upstream.url)}, tools=TOOLS_CONFIG)
    upstream.enqueue(
        text_script(["Hello", " there"]),
        error_script(500, "boom"),
        Script(delay_headers=30),
        script([{"tool_calls": [tc(0, "c1", "add", '{"a": 2, "b": 5}')]}]),
        text_script(["Seven."]),
    )
    async with AsyncStagecast(gw.url) as client:
        await collect(client, user_prompt="hi", stage_id="r-done", system_prompt="Be brief.")
        await collect(client, user_prompt="hi", stage_id="r-error")
        async with client.stream_chat(user_prompt="slow", stage_id="r-cancel") as s:
            upstream.wait_requests(3)
            await client.cancel("r-cancel")
            [e async for e in s]
        async with client.stream_toolchain(
            user_prompt="add", stage_id="r-tools", synthesis=True
        ) as s:
            [e async for e in s]
    done = wait_record(gw, "r-done")
    assert done["status"] == "done"
    assert done["mode"] == "chat"
    assert done["role"] == "fake"
    assert done["text"] == "Hello there"
    assert done["usage"]["completion_tokens"] == 2
    assert done["request"]["system_prompt"] == "Be brief."
    assert done["ttft_ms"] is not None and done["duration_ms"] >= done["ttft_ms"]
    error = wait_record(gw, "r-error")
    assert error["status"] == "error"
    assert error["error"]["code"] == "upstream_status"
    cancelled = wait_record(gw, "r-cancel")
    assert cancelled["status"] == "cancelled"
    tools = wait_record(gw, "r-tools")
    assert tools["mode"] == "toolchain"
    assert tools["tool_results"] == {"c1": 7}
    assert tools["tool_calls"][0]["name"] == "add"
    assert tools["text"] == "Seven."
    listed = httpx.get(f"{gw.url}/v1/stages", params={"limit": 2}, timeout=5).json()
    seen = [r["stage_id"] for r in listed["data"]]
    while listed["next_cursor"]:
        listed = httpx.get(
            f"{gw.url}/v1/stages", params={"limit": 2, "cursor": listed["next_cursor"]}, timeout=5
        ).json()
        seen += [r["stage_id"] for r in listed["data"]]
    assert sorted(seen) == ["r-cancel", "r-done", "r-error", "r-tools"]


async def test_records_belong_to_their_key(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    keys = [
        ApiKeyConfig(id="a", key_sha256=hashlib.sha256(b"key-a").hexdigest()),
        ApiKeyConfig(id="b", key_sha256=hashlib.sha256(b"key-b").hexdigest()),
    ]
    gw = make_gateway(models={"fake": role(upstream.url)}, api_keys=keys)
    upstream.enqueue(text_script(["mine"]))
    async with AsyncStagecast(gw.url, api_key="key-a") as a:
        await collect(a, user_prompt="x", stage_id="a-1")
    assert wait_record(gw, "a-1", "key-a")["owner"] == "a"
    assert record(gw, "a-1", "key-b") is None
    listed = httpx.get(
        f"{gw.url}/v1/stages", headers={"Authorization": "Bearer key-b"}, timeout=5
    ).json()
    assert listed["data"] == []
    assert httpx.get(f"{gw.url}/v1/stages", timeout=5).status_code == 401


@pytest.mark.postgres
async def test_a_database_outage_never_breaks_streaming(
    make_gateway: GatewayFactory, upstream: FakeUpstream, postgres_url: str
) -> None:
    from urllib.parse import urlsplit

    target = urlsplit(postgres_url)
    with tcp_proxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        gw = make_gateway(
            models={"fake": role(upstream.url)},
            database_url=with_address(postgres_url, "127.0.0.1", proxy.port),
        )
        async with AsyncStagecast(gw.url) as client:
            upstream.enqueue(text_script(["before"]))
            await collect(client, user_prompt="x", stage_id="pg-before")
            assert wait_record(gw, "pg-before")["text"] == "before"
            # PostgreSQL goes away: streams carry on, and their records wait.
            proxy.pause()
            for i in range(3):
                upstream.enqueue(text_script(["during ", str(i)]))
                _, events = await collect(client, user_prompt="x", stage_id=f"pg-down-{i}")
                assert events[-1].event == "done"
                assert text_of(events) == f"during {i}"
            r = httpx.get(f"{gw.url}/v1/stages/pg-down-0", timeout=10)
            assert r.status_code == 503
            assert r.json()["code"] == "store_unavailable"
            assert gw.state.records.pending >= 1
            proxy.resume()
            for i in range(3):
                assert wait_record(gw, f"pg-down-{i}")["text"] == f"during {i}"
        assert gw.state.records.dropped == 0


async def test_a_runaway_answer_is_streamed_whole_and_recorded_cut(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    """A megabyte answer from a fast model server: the client gets all of it (also what came
    before the relay had taken over the upstream connection), the record keeps the first
    million characters and says how many it cut."""
    gw = make_gateway(models={"fake": role(upstream.url)})
    pieces = [f"{i:04d}" + "x" * 9_996 for i in range(101)]  # 1,010,000 characters
    upstream.enqueue(text_script(pieces))
    async with AsyncStagecast(gw.url) as client:
        _, events = await collect(client, user_prompt="go on", stage_id="r-long")
    assert text_of(events) == "".join(pieces)  # the client gets every character
    kept = wait_record(gw, "r-long")
    assert kept["text"] == "".join(pieces)[:RECORD_TEXT_MAX_CHARS] + "… [+10000 chars]"


@given(st.lists(st.text(max_size=8), max_size=12), st.integers(0, 60))
def test_a_cut_record_text_is_joined_only_up_to_the_cut(parts: list[str], limit: int) -> None:
    assert truncate_parts(parts, limit) == truncate("".join(parts), limit)
