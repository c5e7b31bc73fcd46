"""Starting a streamed stage: every way a request can arrive gets the routes' own answer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from stagecast.protocol.sse import SSEDecoder
from tests.conftest import Gateway, GatewayFactory, role
from tests.peers.fake_upstream import FakeUpstream, text_script

BODY = b'{"user_prompt": "hello", "stage_id": "start-1"}'


def events_of(raw: bytes) -> list[str]:
    return [e.event for e in SSEDecoder().feed(raw)]


async def test_json_subtypes_stream(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(text_script(["a"]), text_script(["b"]))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        for i, ctype in enumerate(("application/json; charset=utf-8", "application/x-stage+json")):
            body = BODY.replace(b"start-1", b"start-ct-%d" % i)
            r = await http.post("/stream/v1/chat", content=body, headers={"content-type": ctype})
            assert r.status_code == 200, r.text
            assert events_of(r.content)[-1] == "done"
            assert r.headers["x-request-id"]


async def test_a_body_that_is_not_json_typed_is_422(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.post("/stream/v1/chat", content=BODY, headers={"content-type": "text/plain"})
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_request"


async def test_a_body_sent_in_pieces_streams(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(text_script(["in", " pieces"]))

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(BODY), 7):
            yield BODY[i : i + 7]

    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.post(
            "/stream/v1/chat", content=pieces(), headers={"content-type": "application/json"}
        )
    assert r.status_code == 200, r.text
    assert events_of(r.content)[-1] == "done"


async def test_refusals_keep_their_status_and_words(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.post("/stream/v1/chat", json={"user_prompt": "x", "model_container": "nope"})
        assert r.status_code == 404, r.text
        assert r.json()["code"] == "unknown_role"
        assert "configured roles: fake" in r.json()["message"]
        r = await http.post("/stream/v1/chat", content=b"{not json")
        assert r.status_code == 422, r.text


async def test_cors_applies_to_stream_starts(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    origin = "https://app.example"
    gw = make_gateway(models={"fake": role(upstream.url)}, cors_origins=[origin])
    upstream.enqueue(text_script(["cors"]))
    async with httpx.AsyncClient(base_url=gw.url) as http:
        pre = await http.options(
            "/stream/v1/chat",
            headers={
                "origin": origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type",
            },
        )
        assert pre.status_code == 200, pre.text
        assert pre.headers["access-control-allow-origin"] == origin
        r = await http.post("/stream/v1/chat", content=BODY, headers={"origin": origin})
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == origin
        assert "x-stage-id" in r.headers["access-control-expose-headers"].lower()
        assert events_of(r.content)[-1] == "done"
        bad = await http.post(
            "/stream/v1/chat", json={"user_prompt": 5}, headers={"origin": origin}
        )
        assert bad.status_code == 422
        assert bad.headers["access-control-allow-origin"] == origin
