"""The web chat page in real headless Chromium (Debian's /usr/bin/chromium via Playwright): a
streamed reply from the live server, markdown and code highlighting, collapsible thinking, the
thinking toggle and sampling settings reaching the API, and the stop button aborting generation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api")

from test_server_support import MODEL_NAME, server  # noqa: E402,F401

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]
SCRIPTED = [  # an SSE reply with reasoning, markdown and code, for the rendering checks
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {"choices": [{"index": 0, "delta": {"reasoning_content": "The user wants a function."}}]},
    {"choices": [{"index": 0, "delta": {"content": "## Answer\n\nHere is **bold** and `code`:\n\n```python\n"}}]},
    {"choices": [{"index": 0, "delta": {"content": "def add(a, b):\n    return a + b  # sum\n```\n- one\n- two\n"}}]},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 12, "total_tokens": 17}},
]


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip("needs Debian's chromium: apt-get install -y chromium")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    page.goto(server.url + "/")
    sync_api.expect(page.locator("#model-name")).to_contain_text(MODEL_NAME, timeout=15000)
    yield page
    context.close()


def _send(page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def test_streamed_reply_from_the_live_server(page, server, tmp_path):
    page.fill("#max-tokens", "48")
    page.dispatch_event("#max-tokens", "change")
    page.evaluate("""() => { window.__paints = 0;
        new MutationObserver(() => window.__paints++).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true}); }""")
    with page.expect_request("**/v1/chat/completions") as request_info:
        _send(page, "Write hello world in Python")
    body = json.loads(request_info.value.post_data)
    assert body["stream"] is True and body["max_tokens"] == 48 and body["model"] == MODEL_NAME
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    stats = page.locator(".msg.assistant .stats")
    sync_api.expect(stats).to_contain_text("tokens/s", timeout=60000)
    sync_api.expect(page.locator("#send")).to_be_enabled(timeout=60000)
    sync_api.expect(stats).to_contain_text("length")
    assert page.locator(".msg.assistant .content").inner_text().strip()
    assert page.evaluate("window.__paints") > 5  # the reply arrived in many pieces
    shot = Path(os.environ.get("OPENQWEN_WEBUI_SCREENSHOT", tmp_path / "chat.png"))
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_markdown_code_and_collapsible_thinking(page):
    stream = "".join(f"data: {json.dumps(c)}\n\n" for c in SCRIPTED) + "data: [DONE]\n\n"
    page.route("**/v1/chat/completions", lambda route: route.fulfill(status=200, body=stream, headers={"content-type": "text/event-stream"}))
    page.check("#thinking")
    page.dispatch_event("#thinking", "change")
    with page.expect_request("**/v1/chat/completions") as request_info:
        _send(page, "add two numbers")
    assert json.loads(request_info.value.post_data)["chat_template_kwargs"] == {"enable_thinking": True}
    reply = page.locator(".msg.assistant").last
    sync_api.expect(reply.locator(".stats")).to_contain_text("12 tokens")
    thinking = reply.locator("details.thinking")
    sync_api.expect(thinking).to_be_visible()
    assert thinking.get_attribute("open") is None  # collapsed once the answer is done
    assert "The user wants a function." in thinking.locator(".body").text_content()
    content = reply.locator(".content")
    assert content.locator("h2").inner_text() == "Answer" and content.locator("strong").inner_text() == "bold"
    assert content.locator("pre code .tok-kw").first.inner_text() == "def"
    assert content.locator("pre code .tok-com").inner_text() == "# sum"
    assert content.locator("li").count() == 2
    assert page.evaluate("Markdown.render('<script>alert(1)</script>')").startswith("<p>&lt;script&gt;")


def test_stop_button_aborts_generation(page, server):
    page.fill("#max-tokens", "900")
    page.dispatch_event("#max-tokens", "change")
    _send(page, "Tell me a very long story")
    stop = page.locator("#stop")
    sync_api.expect(stop).to_be_visible()
    sync_api.expect(page.locator(".msg.assistant .stats").last).to_contain_text("tokens/s", timeout=60000)
    stop.click()
    sync_api.expect(page.locator(".msg.assistant .stats").last).to_contain_text("stopped", timeout=10000)
    sync_api.expect(page.locator("#send")).to_be_enabled()
    server.wait_idle(timeout=15)  # the server noticed the closed stream and freed the sequence
