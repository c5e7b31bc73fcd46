"""The web chat UI in real headless Chromium, against a real gateway and the fake model server.

Every wait is Playwright's auto-waiting ``expect`` (or a bounded poll) with a generous
timeout; nothing here asserts how long anything took.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
from playwright.sync_api import expect

from stagecast.api.app import create_app
from stagecast.api.ui import install_ui
from stagecast.config import Settings
from stagecast.protocol.sse import SSEDecoder
from tests.conftest import role
from tests.peers.fake_upstream import Script, chunk, data, done, error_script, text_script
from tests.peers.tcp_proxy import tcp_proxy
from tests.ui.conftest import UI_KEY, WAIT_MS, UIGateway, screenshot, tool_call_script

WORDS = [f"w{i} " for i in range(30)]
SLOW = [f"s{i} " for i in range(200)]


def open_ui(page: Any, url: str) -> None:
    page.goto(url + "/")
    # The role picker is filled from /v1/models once the modules have run.
    expect(page.get_by_label("Model role")).to_be_enabled()


def send(page: Any, text: str) -> None:
    box = page.get_by_label("Message")
    box.fill(text)
    box.press("Enter")


def last_turn(page: Any) -> Any:
    return page.locator("article.turn").last


def status(page: Any) -> Any:
    return last_turn(page).locator(".status")


def answer(page: Any) -> Any:
    return last_turn(page).locator(".answer")


def test_install_ui_is_idempotent_and_leaves_the_api_alone(ui_gateway: UIGateway) -> None:
    before = len(ui_gateway.app.router.routes)
    install_ui(ui_gateway.app)
    assert len(ui_gateway.app.router.routes) == before
    with httpx.Client(base_url=ui_gateway.url) as http:
        index = http.get("/")
        assert index.status_code == 200
        assert index.headers["content-type"].startswith("text/html")
        assert index.headers["cache-control"] == "no-cache"
        assert '<script type="module" src="/ui/app.js">' in index.text
        module = http.get("/ui/app.js")
        assert module.status_code == 200
        assert "javascript" in module.headers["content-type"]
        assert http.get("/ui/nope.js").status_code == 404
        # API routes keep answering as before.
        models = http.get("/v1/models").json()
        assert {m["id"] for m in models["data"]} == {"fake", "spare"}
        assert http.get("/healthz").status_code in (200, 503)
        assert "/" not in http.get("/openapi.json").json()["paths"]


def test_chat_answer_streams_in(new_page: Any, ui_gateway: UIGateway) -> None:
    upstream = ui_gateway.upstream
    pieces = ["Hello ", "**world**", ", this ", "is `code` ", "and <b>no html</b>. "]
    pieces += [f"more{i} " for i in range(12)]
    upstream.enqueue(text_script(pieces, pace=0.15))
    page = new_page()
    open_ui(page, ui_gateway.url)
    role_picker = page.get_by_label("Model role")
    expect(role_picker).to_have_value("fake")  # the default role, not the first listed
    expect(role_picker.locator("option")).to_have_count(2)

    send(page, "Say hello")
    expect(last_turn(page).locator(".msg.user")).to_have_text("Say hello")
    expect(answer(page)).to_contain_text("Hello")
    partial = answer(page).inner_text()
    final = "Hello world, this is code and <b>no html</b>. " + " ".join(
        f"more{i}" for i in range(12)
    )
    assert partial.strip() != final.strip()
    assert final.startswith(partial.strip())
    expect(status(page)).to_have_text("done")
    expect(answer(page)).to_have_text(final.strip())
    # Markdown, but model text is never HTML.
    expect(answer(page).locator("strong")).to_have_text("world")
    expect(answer(page).locator("code")).to_have_text("code")
    expect(answer(page).locator("b")).to_have_count(0)
    timeline = last_turn(page).locator(".timeline")
    for step in ("started", "connected", "first token", "done"):
        expect(timeline.locator(".what", has_text=step).first).to_be_attached()
    expect(page.get_by_role("button", name="Stop")).to_be_hidden()
    [request] = upstream.chat_requests()
    assert request.body["model"] == "fake-model"
    assert request.body["messages"] == [{"role": "user", "content": "Say hello"}]
    screenshot(page, "chat")


def test_reasoning_is_shown_apart_in_a_collapsible_section(
    new_page: Any, ui_gateway: UIGateway
) -> None:
    steps = data(chunk({"role": "assistant", "content": ""}))
    for piece in ["Let me ", "think about ", "this."]:
        steps += data(chunk({"reasoning_content": piece}), 0.05)
    for piece in ["The ", "answer."]:
        steps += data(chunk({"content": piece}), 0.05)
    steps += data(chunk({}, finish="stop")) + done()
    ui_gateway.upstream.enqueue(Script(steps))
    page = new_page()
    open_ui(page, ui_gateway.url)
    send(page, "Think first")
    expect(status(page)).to_have_text("done")
    reasoning = last_turn(page).locator("details.reasoning")
    expect(reasoning).to_be_visible()
    expect(reasoning.locator("summary")).to_have_text("Reasoning")
    expect(reasoning.locator(".reasoning-body")).to_be_hidden()
    reasoning.locator("summary").click()
    expect(reasoning.locator(".reasoning-body")).to_have_text("Let me think about this.")
    expect(answer(page)).to_have_text("The answer.")
    screenshot(page, "reasoning")


def test_tools_with_synthesis_shows_tool_cards_and_summary(
    new_page: Any, ui_gateway: UIGateway
) -> None:
    upstream = ui_gateway.upstream
    upstream.enqueue(
        tool_call_script(
            [
                ("call_calc", "calculate", {"expression": "6 * 7"}),
                ("call_time", "get_time", {"timezone": "UTC"}),
            ],
            pace=0.1,
        ),
        text_script(
            ["Six times seven ", "is **42**. ", "The clock ", "in UTC was read ", "too."],
            pace=0.1,
        ),
    )
    page = new_page(height=1000)
    open_ui(page, ui_gateway.url)
    page.get_by_label("Mode", exact=True).select_option("synthesis")
    picker = page.locator("#tools-picker")
    expect(picker).to_be_visible()
    expect(picker.locator("summary")).to_have_text(re.compile(r"^(\d+) of \1$"))
    picker.locator("summary").click()
    expect(page.get_by_label("calculate")).to_be_checked()
    picker.locator("summary").click()

    send(page, "What is 6 * 7, and what time is it?")
    cards = last_turn(page).locator(".tool-card")
    expect(cards).to_have_count(2)
    calc = cards.filter(has_text="calculate")
    expect(calc.locator(".tool-args")).to_contain_text('"expression": "6 * 7"')
    expect(calc).to_have_attribute("data-state", "ok")
    expect(calc.locator(".tool-result")).to_contain_text("42")
    expect(cards.filter(has_text="get_time")).to_have_attribute("data-state", "ok")
    expect(status(page)).to_have_text("done")
    expect(answer(page)).to_have_text("Six times seven is 42. The clock in UTC was read too.")
    expect(answer(page).locator("strong")).to_have_text("42")
    timeline = last_turn(page).locator(".timeline")
    for step in ("tool call calculate", "tool results", "synthesis", "done"):
        expect(timeline.locator(".what", has_text=step).first).to_be_attached()
    tool_request = upstream.chat_requests()[0].body
    offered = {t["function"]["name"] for t in tool_request["tools"]}
    assert {"calculate", "get_time"} <= offered
    last_turn(page).locator(".timeline summary").click()
    screenshot(page, "tools-synthesis")
    page.emulate_media(color_scheme="dark")
    screenshot(page, "tools-synthesis-dark")


def test_tools_mode_without_synthesis_shows_results_only(
    new_page: Any, ui_gateway: UIGateway
) -> None:
    ui_gateway.upstream.enqueue(
        tool_call_script([("call_1", "calculate", {"expression": "2 ** 10"})])
    )
    page = new_page()
    open_ui(page, ui_gateway.url)
    page.get_by_label("Mode", exact=True).select_option("tools")
    send(page, "2 to the 10th?")
    expect(status(page)).to_have_text("done")
    card = last_turn(page).locator(".tool-card")
    expect(card.locator(".tool-result")).to_contain_text("1024")
    expect(answer(page)).to_be_hidden()
    # Exactly one model call: no synthesis.
    assert len(ui_gateway.upstream.chat_requests()) == 1
    screenshot(page, "tools")


def test_stop_cancels_and_closes_the_upstream(new_page: Any, ui_gateway: UIGateway) -> None:
    upstream = ui_gateway.upstream
    upstream.enqueue(text_script(SLOW, pace=0.1))
    page = new_page()
    open_ui(page, ui_gateway.url)
    send(page, "Count slowly")
    expect(answer(page)).to_contain_text("s2")
    stop = page.get_by_role("button", name="Stop")
    expect(stop).to_be_visible()
    stop.click()
    expect(status(page)).to_have_text("cancelled")
    record = upstream.wait_disconnected(0, timeout=WAIT_MS / 1000)
    assert record.finished_at is None
    expect(stop).to_be_hidden()
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    text = answer(page).inner_text().strip()
    assert text and "".join(SLOW).startswith(text)
    assert not text.endswith("s199")
    screenshot(page, "stopped")


def test_escape_stops_the_running_stage(new_page: Any, ui_gateway: UIGateway) -> None:
    ui_gateway.upstream.enqueue(text_script(SLOW, pace=0.1))
    page = new_page()
    open_ui(page, ui_gateway.url)
    send(page, "Count slowly")
    expect(answer(page)).to_contain_text("s1")
    page.keyboard.press("Escape")
    expect(status(page)).to_have_text("cancelled")
    ui_gateway.upstream.wait_disconnected(0, timeout=WAIT_MS / 1000)


def test_leaving_the_page_cancels_the_stage(new_page: Any, ui_gateway: UIGateway) -> None:
    """The UI asks for on_disconnect "continue", so leaving must cancel explicitly."""
    ui_gateway.upstream.enqueue(text_script(SLOW, pace=0.1))
    page = new_page()
    open_ui(page, ui_gateway.url)
    send(page, "Count slowly")
    expect(answer(page)).to_contain_text("s1")
    stage_id = last_turn(page).locator(".stage-id").inner_text()
    page.goto("about:blank")
    record = ui_gateway.upstream.wait_disconnected(0, timeout=WAIT_MS / 1000)
    assert record.finished_at is None
    decoder = SSEDecoder()
    events = []
    with httpx.Client(base_url=ui_gateway.url, timeout=WAIT_MS / 1000) as http:
        with http.stream("GET", f"/stream/v1/stages/{stage_id}") as replay:
            for raw in replay.iter_raw():
                events += decoder.feed(raw)
    assert events[-1].event == "cancel"


def test_network_drop_resumes_without_duplicate_text(new_page: Any, ui_gateway: UIGateway) -> None:
    ui_gateway.upstream.enqueue(text_script(WORDS, pace=0.1))
    with tcp_proxy("127.0.0.1", ui_gateway.port) as proxy:
        page = new_page()
        # Page and API traffic both go through the proxy, so cutting it is a network drop.
        open_ui(page, proxy.url)
        send(page, "Count")
        expect(answer(page)).to_contain_text("w3")
        connections = proxy.connections
        proxy.cut()
        expect(status(page)).to_have_text("reconnecting…")
        screenshot(page, "reconnecting")
        expect(status(page)).to_have_text("done", timeout=WAIT_MS * 2)
        assert proxy.connections > connections
    expected = " ".join(w.strip() for w in WORDS)
    expect(answer(page)).to_have_text(expected)
    text = answer(page).inner_text()
    for word in WORDS:
        assert text.split().count(word.strip()) == 1
    timeline = last_turn(page).locator(".timeline")
    expect(timeline.locator(".what", has_text="reconnecting…").first).to_be_attached()
    expect(timeline.locator(".what", has_text="resumed").first).to_be_attached()
    # The stage survived the drop: the gateway was told to keep it running.
    [request] = ui_gateway.upstream.chat_requests()
    assert request.finished_at is not None
    assert request.disconnected_at is None or request.disconnected_at >= request.finished_at
    last_turn(page).locator(".timeline summary").click()
    screenshot(page, "resumed")


def test_request_body_asks_to_continue_and_carries_history(
    new_page: Any, ui_gateway: UIGateway
) -> None:
    upstream = ui_gateway.upstream
    upstream.enqueue(text_script(["First ", "answer."]), text_script(["Second ", "answer."]))
    page = new_page()
    open_ui(page, ui_gateway.url)
    bodies: list[Any] = []
    page.on(
        "request",
        lambda r: bodies.append(r.post_data_json) if r.url.endswith("/stream/v1/chat") else None,
    )
    page.get_by_label("Model role").select_option("spare")
    send(page, "one")
    expect(status(page)).to_have_text("done")
    send(page, "two")
    expect(page.locator("article.turn")).to_have_count(2)
    expect(status(page)).to_have_text("done")
    assert [b["on_disconnect"] for b in bodies] == ["continue", "continue"]
    assert bodies[1]["model_container"] == "spare"
    assert bodies[0]["stage_id"] != bodies[1]["stage_id"]
    assert "user_prompt" not in bodies[1]
    assert upstream.chat_requests()[1].body["messages"] == [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": "two"},
    ]
    assert upstream.chat_requests()[1].body["model"] == "spare-model"
    # A new chat starts without history.
    page.get_by_role("button", name="New chat").click()
    expect(page.locator("article.turn")).to_have_count(0)
    upstream.enqueue(text_script(["Fresh."]))
    send(page, "three")
    expect(status(page)).to_have_text("done")
    assert upstream.chat_requests()[2].body["messages"] == [{"role": "user", "content": "three"}]


def test_error_event_shows_message_and_code(new_page: Any, ui_gateway: UIGateway) -> None:
    ui_gateway.upstream.enqueue(error_script(500, "the model fell over"))
    page = new_page()
    open_ui(page, ui_gateway.url)
    send(page, "break")
    expect(status(page)).to_have_text("error")
    alert = last_turn(page).get_by_role("alert")
    expect(alert).to_contain_text("the model fell over")
    expect(alert.locator(".error-code")).not_to_be_empty()
    screenshot(page, "error")


def test_keyboard_and_phone_width(new_page: Any, ui_gateway: UIGateway) -> None:
    long_line = "x = [" + ", ".join(str(i) for i in range(120)) + "]"
    unbroken = "supercalifragilistic" * 8
    ui_gateway.upstream.enqueue(
        text_script(
            ["Here:\n\n", "```python\n", long_line + "\n", "```\n\n", unbroken + "\n\n"]
            + ["- one\n", "- two\n", "https://example.org/" + "a" * 80],
            pace=0.05,
        )
    )
    page = new_page(width=375, height=740, is_mobile=True, has_touch=True)
    open_ui(page, ui_gateway.url)
    box = page.get_by_label("Message")
    expect(box).to_be_focused()
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    expect(box).to_have_value("first line\nsecond line")
    page.keyboard.press("Enter")
    expect(last_turn(page).locator(".msg.user")).to_have_text("first line\nsecond line")
    expect(box).to_have_value("")
    expect(status(page)).to_have_text("done")
    expect(answer(page).locator("pre code")).to_have_text(long_line)
    expect(answer(page).locator("li")).to_have_count(2)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert page.evaluate("document.body.scrollWidth") <= 375
    # Every control has an accessible name.
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('button, select, textarea, input')]
            .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                         && !e.textContent.trim())
            .map(e => e.outerHTML)"""
    )
    assert unlabelled == []
    # Keyboard focus is visible.
    page.get_by_label("Mode", exact=True).focus()
    page.keyboard.press("Shift+Tab")
    focused = page.evaluate(
        """() => { const s = getComputedStyle(document.activeElement);
                   return [document.activeElement.id, s.outlineStyle, s.outlineWidth]; }"""
    )
    assert focused[0] == "role"
    assert focused[1] != "none" and focused[2] != "0px"
    screenshot(page, "phone")
    # The tool checklist fits too.
    page.get_by_label("Mode", exact=True).select_option("synthesis")
    page.locator("#tools-picker summary").click()
    expect(page.locator("#tools-list input").first).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    screenshot(page, "phone-tools")


def test_markdown_renderer_never_emits_model_html(new_page: Any, ui_gateway: UIGateway) -> None:
    page = new_page()
    open_ui(page, ui_gateway.url)
    hostile = [
        "<img src=x onerror=alert(1)>",
        "<script>alert(1)</script>",
        '[x](javascript:alert(1)) [y](https://ok.example/"onmouseover="alert(1))',
        "```\n</code></pre><img src=x>\n```",
        "`<b>` **<i>bold</i>** *<u>em</u>*",
        '" onclick="alert(1)',
    ]
    result = page.evaluate(
        """async (inputs) => {
            const { renderMarkdown } = await import('/ui/markdown.js');
            return inputs.map((md) => {
                const box = document.createElement('div');
                box.innerHTML = renderMarkdown(md);
                const tags = [...box.querySelectorAll('*')].map((e) => e.tagName.toLowerCase());
                const attrs = [...box.querySelectorAll('*')].flatMap(
                    (e) => [...e.attributes].map((a) => a.name));
                const hrefs = [...box.querySelectorAll('a')].map((a) => a.href);
                return { tags, attrs, hrefs, text: box.textContent };
            });
        }""",
        hostile,
    )
    allowed_tags = {"p", "code", "pre", "strong", "em", "a", "br"}
    allowed_attrs = {"href", "target", "rel", "class"}
    for source, out in zip(hostile, result, strict=True):
        assert set(out["tags"]) <= allowed_tags, (source, out)
        assert set(out["attrs"]) <= allowed_attrs, (source, out)
        assert all(h.startswith("https://") for h in out["hrefs"]), (source, out)
    assert "<img src=x onerror=alert(1)>" in result[0]["text"]
    assert "<script>alert(1)</script>" in result[1]["text"]


def test_tools_checklist_says_no_tools_when_the_gateway_has_none(
    new_page: Any, upstream: Any
) -> None:
    from tests.peers.servers import serve

    settings = Settings(models={"fake": role(upstream.url)}, tools={"builtins": False})
    app = create_app(settings)
    install_ui(app)
    upstream.enqueue(text_script(["Nothing to call."]))
    with serve(app) as server:
        page = new_page()
        open_ui(page, server.url)
        page.get_by_label("Mode", exact=True).select_option("synthesis")
        picker = page.locator("#tools-picker")
        picker.locator("summary").click()
        expect(picker).to_contain_text("no tools")
        # Still usable: the stage runs to its end.
        send(page, "anything")
        expect(status(page)).to_have_text(re.compile(r"^(done|error)$"))


def test_sse_parser_gives_the_same_events_at_every_split(
    new_page: Any, ui_gateway: UIGateway
) -> None:
    page = new_page()
    open_ui(page, ui_gateway.url)
    stream = (
        '\ufeffid: 1\nevent: chat_completion_chunk\nretry: 2000\ndata: {"a":1}\n\n'
        ": keep-alive\n\n"
        "id: 2\r\nevent: tool_summary\r\ndata: line one\r\ndata:line two\r\n\r\n"
        "id: 3\revent: done\rdata: {}\r\r"
        "id: 4\nevent: ignored-without-data\n\n"
    )
    result = page.evaluate(
        """async (text) => {
            const { SSEParser } = await import('/ui/sse.js');
            const run = (parts) => {
                const p = new SSEParser();
                const events = parts.flatMap((part) => p.feed(part));
                return { events, retry: p.retry, last: p.lastEventId };
            };
            const whole = run([text]);
            const splits = [];
            for (let i = 1; i < text.length; i++) {
                splits.push(run([text.slice(0, i), text.slice(i)]));
            }
            splits.push(run([...text]));
            return { whole, splits };
        }""",
        stream,
    )
    whole = result["whole"]
    assert whole["events"] == [
        {"event": "chat_completion_chunk", "data": '{"a":1}', "id": "1"},
        {"event": "tool_summary", "data": "line one\nline two", "id": "2"},
        {"event": "done", "data": "{}", "id": "3"},
    ]
    assert whole["retry"] == 2000
    assert whole["last"] == "4"
    assert all(split == whole for split in result["splits"])


# --- a gateway that requires API keys ------------------------------------------------------


def key_panel(page: Any) -> Any:
    return page.locator("#key-panel")


def key_field(page: Any) -> Any:
    return page.get_by_label("API key", exact=True)


def enter_key(page: Any, url: str, key: str = UI_KEY) -> None:
    """Open the UI on a keyed gateway, answer its key prompt, wait for the roles."""
    page.goto(url + "/")
    expect(key_panel(page).get_by_role("alert")).to_contain_text("needs an API key")
    key_field(page).fill(key)
    key_field(page).press("Enter")
    expect(page.get_by_label("Model role")).to_be_enabled()
    expect(key_panel(page)).to_be_hidden()


def authorization_of(requests: list[Any], path: str) -> list[str | None]:
    return [r.all_headers().get("authorization") for r in requests if r.url.endswith(path)]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def replay(url: str, stage_id: str, key: str) -> list[Any]:
    """Every event of a stage, read back from the gateway with ``key``."""
    decoder = SSEDecoder()
    events = []
    with httpx.Client(base_url=url, timeout=WAIT_MS / 1000, headers=auth(key)) as http:
        with http.stream("GET", f"/stream/v1/stages/{stage_id}") as answer_stream:
            assert answer_stream.status_code == 200
            for raw in answer_stream.iter_raw():
                events += decoder.feed(raw)
    return events


def test_keyed_gateway_asks_for_a_key_then_chats(
    new_page: Any, keyed_ui_gateway: UIGateway
) -> None:
    gateway = keyed_ui_gateway
    gateway.upstream.enqueue(text_script(["Keyed ", "**hello** ", "from ", "the ", "gateway."]))
    page = new_page()
    requests: list[Any] = []
    page.on("request", lambda r: requests.append(r))
    page.goto(gateway.url + "/")

    # The first calls answer 401: the page says why and opens the key field.
    panel = key_panel(page)
    expect(panel).to_be_visible()
    expect(panel.get_by_role("alert")).to_contain_text("This gateway needs an API key")
    expect(panel).to_contain_text("Stored in this browser only")
    expect(key_field(page)).to_be_focused()
    key_button = page.get_by_role("button", name="API key")
    expect(key_button).to_have_attribute("aria-expanded", "true")
    expect(key_button).to_have_attribute("data-state", "needed")
    expect(key_button).to_have_attribute("title", re.compile("stored in this browser only"))
    expect(page.get_by_label("Model role")).to_be_disabled()
    expect(page.get_by_label("Model role")).to_have_value("")
    screenshot(page, "api-key-prompt")

    # A wrong key is refused and the field stays open.
    key_field(page).fill("sk-not-the-key")
    key_field(page).press("Enter")
    expect(panel.get_by_role("alert")).to_contain_text("did not accept the saved key")
    expect(key_field(page)).to_be_focused()
    expect(page.get_by_label("Model role")).to_be_disabled()

    # The right one loads the roles (and tools) and closes the panel.
    requests.clear()
    key_field(page).fill(f"  {UI_KEY}  ")
    key_field(page).press("Enter")
    expect(panel).to_be_hidden()
    role_picker = page.get_by_label("Model role")
    expect(role_picker).to_be_enabled()
    expect(role_picker).to_have_value("fake")
    expect(role_picker.locator("option")).to_have_count(2)
    expect(key_button).to_have_attribute("data-state", "set")
    expect(page.get_by_label("Message")).to_be_focused()
    assert page.evaluate("localStorage.getItem('stagecast.apiKey')") == UI_KEY

    send(page, "Hello with a key")
    expect(status(page)).to_have_text("done")
    expect(answer(page)).to_have_text("Keyed hello from the gateway.")
    bearer = f"Bearer {UI_KEY}"
    for path in ("/v1/models", "/v1/tools", "/stream/v1/chat"):
        assert authorization_of(requests, path) == [bearer], path
    screenshot(page, "api-key-chat")

    # Keyboard: the key button opens the panel, Escape closes it and gives focus back.
    key_button.focus()
    page.keyboard.press("Enter")
    expect(panel).to_be_visible()
    expect(key_field(page)).to_be_focused()
    expect(key_field(page)).to_have_value("")  # the saved key is never shown
    page.keyboard.press("Escape")
    expect(panel).to_be_hidden()
    expect(key_button).to_be_focused()

    # A reload finds the stored key: no prompt.
    page.reload()
    expect(page.get_by_label("Model role")).to_be_enabled()
    expect(panel).to_be_hidden()
    expect(key_button).to_have_attribute("data-state", "set")

    # "Forget key" clears it, and the gateway asks again.
    key_button.click()
    panel.get_by_role("button", name="Forget key").click()
    expect(panel.get_by_role("alert")).to_contain_text("This gateway needs an API key")
    expect(page.get_by_label("Model role")).to_be_disabled()
    expect(key_button).to_have_attribute("data-state", "needed")
    assert page.evaluate("localStorage.getItem('stagecast.apiKey')") is None
    expect(panel.get_by_role("button", name="Forget key")).to_be_disabled()


def test_key_prompt_fits_a_phone(new_page: Any, keyed_ui_gateway: UIGateway) -> None:
    page = new_page(width=375, height=740, is_mobile=True, has_touch=True)
    page.goto(keyed_ui_gateway.url + "/")
    expect(key_panel(page).get_by_role("alert")).to_contain_text("needs an API key")
    panel_box = key_panel(page).bounding_box()
    assert panel_box is not None
    assert panel_box["x"] >= 0 and panel_box["x"] + panel_box["width"] <= 375
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    screenshot(page, "api-key-phone")
    page.emulate_media(color_scheme="dark")
    page.wait_for_timeout(300)  # let the colour transitions finish before the picture
    screenshot(page, "api-key-phone-dark")
    # Sending anyway: the stage's own 401 is shown, and the key field stays open.
    send(page, "no key yet")
    expect(status(page)).to_have_text("error")
    expect(last_turn(page).locator(".error-code")).to_have_text("unauthorized")
    expect(key_panel(page)).to_be_visible()
    key_field(page).fill(UI_KEY)
    page.get_by_role("button", name="Save").tap()
    expect(page.get_by_label("Model role")).to_be_enabled()
    expect(key_panel(page)).to_be_hidden()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    screenshot(page, "api-key-phone-saved")


def test_stop_cancels_with_the_key(new_page: Any, keyed_ui_gateway: UIGateway) -> None:
    upstream = keyed_ui_gateway.upstream
    upstream.enqueue(text_script(SLOW, pace=0.1))
    page = new_page()
    enter_key(page, keyed_ui_gateway.url)
    cancels: list[Any] = []
    page.on("response", lambda r: cancels.append(r) if r.url.endswith("/cancel") else None)
    send(page, "Count slowly")
    expect(answer(page)).to_contain_text("s2")
    # The page may show "cancelled" before the cancel request's response has come back:
    # wait for that response itself, not for the page.
    with page.expect_response(lambda r: r.url.endswith("/cancel"), timeout=WAIT_MS) as sent:
        page.get_by_role("button", name="Stop").click()
    assert sent.value.status == 200
    expect(status(page)).to_have_text("cancelled")
    record = upstream.wait_disconnected(0, timeout=WAIT_MS / 1000)
    assert record.finished_at is None
    assert cancels and all(r.status == 200 for r in cancels)
    assert all(r.request.all_headers().get("authorization") == f"Bearer {UI_KEY}" for r in cancels)
    expect(key_panel(page)).to_be_hidden()


def test_network_drop_resumes_with_the_key(new_page: Any, keyed_ui_gateway: UIGateway) -> None:
    keyed_ui_gateway.upstream.enqueue(text_script(WORDS, pace=0.1))
    with tcp_proxy("127.0.0.1", keyed_ui_gateway.port) as proxy:
        page = new_page()
        enter_key(page, proxy.url)
        resumes: list[Any] = []
        page.on(
            "request",
            lambda r: resumes.append(r) if "/stream/v1/stages/" in r.url else None,
        )
        send(page, "Count")
        expect(answer(page)).to_contain_text("w3")
        proxy.cut()
        expect(status(page)).to_have_text("reconnecting…")
        expect(status(page)).to_have_text("done", timeout=WAIT_MS * 2)
    expect(answer(page)).to_have_text(" ".join(w.strip() for w in WORDS))
    assert resumes
    assert {r.method for r in resumes} == {"GET"}
    assert {r.all_headers().get("authorization") for r in resumes} == {f"Bearer {UI_KEY}"}


def test_leaving_the_page_cancels_with_a_keepalive_fetch(
    new_page: Any, keyed_ui_gateway: UIGateway
) -> None:
    """A beacon cannot carry the key (it would get 401 and the stage would run on)."""
    keyed_ui_gateway.upstream.enqueue(text_script(SLOW, pace=0.1))
    page = new_page()
    enter_key(page, keyed_ui_gateway.url)
    bodies: list[Any] = []
    page.on(
        "request",
        lambda r: bodies.append(r.post_data_json) if r.url.endswith("/stream/v1/chat") else None,
    )
    send(page, "Count slowly")
    expect(answer(page)).to_contain_text("s1")
    stage_id = last_turn(page).locator(".stage-id").inner_text()
    page.goto("about:blank")
    record = keyed_ui_gateway.upstream.wait_disconnected(0, timeout=WAIT_MS / 1000)
    assert record.finished_at is None
    events = replay(keyed_ui_gateway.url, stage_id, UI_KEY)
    assert events[-1].event == "cancel"
    # The stage was told to outlive its reader, so only the page's own cancel stopped it.
    assert [b["on_disconnect"] for b in bodies] == ["continue"]
