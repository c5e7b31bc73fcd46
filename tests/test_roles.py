"""The original deployment's six roles, each pointed at its own OpenAI-compatible server."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest

from stagecast.api.app import create_app
from stagecast.client import AsyncStagecast
from stagecast.config import load_settings
from tests.peers.fake_upstream import fake_upstream, text_script
from tests.peers.servers import serve
from tests.test_chat_stream import assert_protocol, collect, text_of

ROOT = Path(__file__).resolve().parents[1]
ROLES = [
    "traditional",
    "traditional_alt",
    "reasoning",
    "reasoning_alt",
    "local_gpu",
    "remote_openai",
]


async def test_every_seed_role_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    with ExitStack() as stack:
        fakes = {r: stack.enter_context(fake_upstream()) for r in ROLES}
        for name, fake in fakes.items():
            monkeypatch.setenv(f"STAGECAST_MODELS__{name.upper()}__BASE_URL", fake.url)
            fake.enqueue(text_script([f"answer from {name}"], model=name))
        monkeypatch.setenv("SEED_TEST_OPENAI_KEY", "sk-test")
        monkeypatch.setenv("STAGECAST_MODELS__REMOTE_OPENAI__API_KEY_ENV", "SEED_TEST_OPENAI_KEY")
        settings = load_settings(ROOT / "examples" / "ollama.toml")
        server = stack.enter_context(serve(create_app(settings)))
        async with AsyncStagecast(server.url) as client:
            for name in ROLES:
                _, events = await collect(
                    client, user_prompt="Plan a weekend in Lisbon", model_container=name
                )
                assert_protocol(events)
                assert text_of(events) == f"answer from {name}"
        for name, fake in fakes.items():
            [req] = fake.chat_requests()
            assert req.body["model"] == settings.models[name].model
        assert (
            fakes["remote_openai"].chat_requests()[0].headers["authorization"] == "Bearer sk-test"
        )
        assert "authorization" not in fakes["traditional"].chat_requests()[0].headers
