"""Fixtures of the web UI tests: headless Debian Chromium driven by Playwright, and a gateway
with the UI installed whose roles point at the fake model server."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from stagecast.api.app import create_app
from stagecast.api.ui import install_ui
from stagecast.config import ApiKeyConfig, Settings
from tests.conftest import require_services, role
from tests.peers.fake_upstream import FakeUpstream, Script, Step, chunk, data, done
from tests.peers.servers import ServerThread, serve

CHROMIUM = os.environ.get("STAGECAST_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "ui"
# Generous: these wait for streams, reconnects and cancels, never measure them.
WAIT_MS = 30_000
# The key of ``keyed_ui_gateway`` (read by the gateway from this environment variable).
UI_KEY = "sk-ui-test-key-0001"
UI_KEY_ENV = "UI_TEST_STAGECAST_KEY"


def _unavailable(reason: str) -> NoReturn:
    if require_services():
        pytest.fail(f"{reason} (STAGECAST_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per test module (the Debian package, never a download)."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)) and not shutil.which(
        CHROMIUM
    ):
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    with sync_playwright() as pw:
        try:
            chromium = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
        except Exception as exc:
            _unavailable(f"Chromium at {CHROMIUM} did not start: {exc}")
        try:
            yield chromium
        finally:
            chromium.close()


class PageErrors(list[str]):
    """Uncaught exceptions of the page's scripts."""


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


@pytest.fixture
def new_page(browser: Any, page_errors: PageErrors) -> Iterator[Any]:
    """``new_page(width=..., height=...)``: a page in a fresh context (no shared storage)."""
    contexts: list[Any] = []

    def factory(width: int = 1100, height: int = 820, **options: Any) -> Any:
        context = browser.new_context(viewport={"width": width, "height": height}, **options)
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: page_errors.append(str(exc)))
        return page

    yield factory
    for context in contexts:
        context.close()
    assert not page_errors, f"uncaught errors in the page: {page_errors}"


@dataclass
class UIGateway:
    """A gateway serving the UI; both roles are the fake model server."""

    server: ServerThread
    app: Any
    upstream: FakeUpstream

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port


@pytest.fixture
def ui_gateway(upstream: FakeUpstream) -> Iterator[UIGateway]:
    """Roles ``fake`` (the default) and ``spare``, both answered by ``upstream``."""
    settings = Settings(
        models={
            "spare": role(upstream.url, model="spare-model"),
            "fake": role(upstream.url),
        },
        default_model="fake",
    )
    app = create_app(settings)
    install_ui(app)
    with serve(app) as server:
        yield UIGateway(server, app, upstream)


@pytest.fixture
def keyed_ui_gateway(
    upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> Iterator[UIGateway]:
    """Like ``ui_gateway``, but every API call needs ``Authorization: Bearer UI_KEY``."""
    monkeypatch.setenv(UI_KEY_ENV, UI_KEY)
    settings = Settings(
        models={
            "spare": role(upstream.url, model="spare-model"),
            "fake": role(upstream.url),
        },
        default_model="fake",
        api_keys=[ApiKeyConfig(id="ui", key_env=UI_KEY_ENV)],
    )
    app = create_app(settings)
    install_ui(app)
    with serve(app) as server:
        yield UIGateway(server, app, upstream)


def screenshot(page: Any, name: str) -> Path:
    """Save ``test-artifacts/ui/<name>.png`` (the directory is git-ignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path


def tool_call_script(
    calls: list[tuple[str, str, dict[str, Any]]], *, pace: float = 0.0, pieces: int = 3
) -> Script:
    """A model reply that calls tools: per call, a first delta with index, id and name, then
    the JSON arguments in ``pieces`` fragments, ``pace`` seconds apart; then finish."""
    steps: list[Step] = data(chunk({"role": "assistant", "content": None}))
    for index, (call_id, name, arguments) in enumerate(calls):
        first = {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        steps += data(chunk({"tool_calls": [first]}), pace)
        text = json.dumps(arguments)
        size = max(1, -(-len(text) // pieces))
        for start in range(0, len(text), size):
            fragment = {"index": index, "function": {"arguments": text[start : start + size]}}
            steps += data(chunk({"tool_calls": [fragment]}), pace)
    steps += data(chunk({}, finish="tool_calls"))
    steps += done()
    return Script(steps)
