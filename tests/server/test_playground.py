"""The playground page (GET /) in a real headless browser: both answers stream in, the span is highlighted.

Chromium comes from the system (Debian's ``chromium``; scripts/setup.sh installs it as root), not from
Playwright's own download, which needs its CDN.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image, ImageStat
from playwright.sync_api import Browser, Page, expect, sync_playwright
from server_support import running

from pasta_rag.server import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH: apt-get install chromium "
                                "(scripts/setup.sh does when run as root)")

CONTEXT = "Paris is in France. The sky is green today."
QUESTION = "What colour is the sky?"
EMPHASIS = "The sky is green"
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


def ask(page: Page) -> None:
    """Fill the form of the open page and wait for both answers."""
    page.fill("#context", CONTEXT)
    page.fill("#question", QUESTION)
    page.fill("#emphasis", EMPHASIS)
    page.fill("#max-tokens", str(MAX_TOKENS))
    page.click("#submit")
    expect(page.locator("#submit")).to_be_enabled(timeout=60_000)  # both streams have ended
    assert page.text_content("#status") == ""


def api_answer(url: str, headers: dict, **extra) -> str:
    """The non-streamed answer to the page's request, straight from the API."""
    body = {"model": "tiny-llama", "max_tokens": MAX_TOKENS, "emphasis": [EMPHASIS],
            "messages": [{"role": "user", "content": f"Context: {CONTEXT}\nQuestion: {QUESTION}"}], **extra}
    reply = httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=60)
    reply.raise_for_status()
    return reply.json()["choices"][0]["message"]["content"]


def is_blank(png: bytes) -> bool:
    """One colour everywhere: nothing was drawn."""
    low, high = ImageStat.Stat(Image.open(io.BytesIO(png)).convert("L")).extrema[0]
    return low == high


def test_the_page_streams_both_answers_and_highlights_the_emphasis(model, browser, tmp_path):
    with running(create_app(model)) as url:
        page = browser.new_page()
        page.goto(url + "/")
        ask(page)
        assert page.is_hidden("#key-field")  # no --api-key, no key field
        unsteered, steered = page.text_content("#unsteered"), page.text_content("#steered")
        assert unsteered and steered
        assert unsteered == api_answer(url, {}, pasta={"steer": False})
        assert steered == api_answer(url, {})
        marks = page.locator("#shown-context mark")
        assert marks.count() == 1 and marks.text_content() == EMPHASIS
        assert page.text_content("#shown-context") == CONTEXT
        mark_colour = marks.evaluate("mark => getComputedStyle(mark).backgroundColor")
        assert mark_colour not in ("rgba(0, 0, 0, 0)", "transparent")

        screenshot = page.screenshot(path=tmp_path / "playground.png", full_page=True)
        assert not is_blank(screenshot)
        for box in ("#unsteered", "#steered", "#shown-context mark"):
            assert not is_blank(page.locator(box).screenshot()), f"{box} shows no text"
        page.close()


def test_a_server_with_an_api_key_gets_a_key_field(model, browser):
    with running(create_app(model, api_key="secret")) as url:
        page = browser.new_page()
        page.goto(url + "/")
        expect(page.locator("#key-field")).to_be_visible()
        page.fill("#api-key", "secret")
        ask(page)
        assert page.text_content("#steered") == api_answer(url, {"Authorization": "Bearer secret"})
        page.close()


def test_a_wrong_key_is_reported_on_the_page(model, browser):
    with running(create_app(model, api_key="secret")) as url:
        page = browser.new_page()
        page.goto(url + "/")
        page.fill("#api-key", "wrong")
        page.click("#submit")
        expect(page.locator("#status")).to_contain_text("Incorrect API key")
        page.close()
