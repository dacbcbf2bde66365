"""The page at ``/`` in a real headless browser: Debian's chromium driven by Playwright
(``executable_path``; ``playwright install`` downloads browsers and is never needed)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from charlstm.api import load_model
from tests.helpers import REPO_ROOT, ServerProcess, generated, invoke

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LONG = 10**6


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        reason = "chromium not installed (apt-get install chromium fonts-noto-cjk)"
        if os.environ.get("CHARLSTM_REQUIRE_SHARED") == "1":  # CI installs it
            pytest.fail(reason)
        pytest.skip(reason)
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def test_type_a_prefix_generate_stream_then_stop(browser, tiny_run: Path):
    server = ServerProcess(tiny_run, "--max-length", LONG)
    try:
        page = browser.new_page(viewport={"width": 900, "height": 640})
        page.goto(server.url + "/")
        page.wait_for_function("document.querySelector('#model').options.length > 0")
        page.fill("#prefix", "我们说好")
        page.fill("#length", str(LONG))
        page.click("#generate")
        # the text streams in: it begins with the prefix and keeps growing
        page.wait_for_function("document.querySelector('#output').textContent.length > 40")
        first = page.text_content("#output")
        assert first.startswith("我们说好")
        page.wait_for_function(
            f"document.querySelector('#output').textContent.length > {len(first) + 20}"
        )
        assert server.wait_metric("charlstm_requests_running", 1) == 1
        assert page.is_disabled("#generate") and page.is_enabled("#stop")
        # each written character shows its probability on hover
        page.hover("#output span.c >> nth=5")
        page.wait_for_selector("#tip", state="visible")
        assert re.search(r"^\".\": \d+\.\d+%\nlikeliest: ", page.text_content("#tip"))
        screenshot = os.environ.get("CHARLSTM_SCREENSHOT")
        if screenshot:  # docs/serve.png: CHARLSTM_SCREENSHOT=docs/serve.png pytest ...
            page.screenshot(path=str(REPO_ROOT / screenshot))
        page.click("#stop")
        page.wait_for_function("document.querySelector('#status').textContent.includes('stopped')")
        assert server.wait_metric("charlstm_requests_running", 0) == 0
        assert server.wait_metric("charlstm_rows_running", 0) == 0
        assert page.is_enabled("#generate")
        stopped = page.text_content("#output")
        assert stopped.startswith(first)
        page.close()
    finally:
        assert server.stop() == 0


def test_choose_a_form_and_an_acrostic_and_the_page_shows_the_poem(browser, tiny_run: Path):
    """Lines of set lengths with an acrostic, chosen on the page: the poem shown is the
    title, then four lines of four characters beginning with the acrostic's characters."""
    server = ServerProcess(tiny_run)
    try:
        page = browser.new_page(viewport={"width": 900, "height": 640})
        page.goto(server.url + "/")
        page.wait_for_function("document.querySelector('#model').options.length > 0")
        page.fill("#prefix", "")
        page.select_option("#form", "lines")
        page.fill("#line-lengths", "4,4,4,4")
        page.fill("#acrostic", "我分")
        page.fill("#seed", "3")
        page.click("#generate")
        page.wait_for_function("!document.querySelector('#generate').disabled")
        lines = page.text_content("#output").split("\n")
        assert [len(line) for line in lines[:4]] == [4, 4, 4, 4], lines
        assert lines[0][0] == "我" and lines[1][0] == "分"
        page.close()
    finally:
        assert server.stop() == 0


def test_a_seeded_text_and_a_seeded_poem_on_the_page_are_what_generate_writes(
    browser, tiny_run: Path
):
    """The page's seed, temperature (0.8) and top-p (0.95), as a user leaves them: the text
    it shows is the one ``charlstm generate`` writes with the same options, for running
    text and for a poem of set line lengths."""
    server = ServerProcess(tiny_run)
    try:
        page = browser.new_page(viewport={"width": 900, "height": 640})
        page.goto(server.url + "/")
        page.wait_for_function("document.querySelector('#model').options.length > 0")
        page.fill("#prefix", "我们说好")
        page.fill("#length", "60")
        page.fill("#seed", "7")
        page.click("#generate")
        page.wait_for_function("!document.querySelector('#generate').disabled")
        shown = page.text_content("#output")
        options = ["--temperature", "0.8", "--top-p", "0.95"]
        assert shown == "我们说好" + generated(tiny_run, "我们说好", 60, 7, *options)[0]

        page.fill("#prefix", "")
        page.select_option("#form", "lines")
        page.fill("#line-lengths", "4,4,4,4")
        page.fill("#seed", "3")
        page.click("#generate")
        page.wait_for_function("!document.querySelector('#generate').disabled")
        written = invoke(
            "generate", "--checkpoint", tiny_run, "--line-lengths", "4,4,4,4", "--seed", "3",
            *options, "--format", "jsonl",
        )  # fmt: skip
        assert written.exit_code == 0, written.output
        poem = json.loads(written.stdout)["text"]
        assert page.text_content("#output").strip("\n") == poem.strip("\n")
        page.close()
    finally:
        assert server.stop() == 0


def test_score_a_pasted_text_and_hover_its_characters(browser, tiny_run: Path):
    """Score shows the text with each character's probability (the first has none) and its
    perplexity, the one the Python API gives."""
    text = "我们说好不分开\n窗外的风吹过"
    server = ServerProcess(tiny_run)
    try:
        page = browser.new_page(viewport={"width": 900, "height": 640})
        page.goto(server.url + "/")
        page.wait_for_function("document.querySelector('#model').options.length > 0")
        page.fill("#prefix", text)
        page.click("#score")
        page.wait_for_function(
            "document.querySelector('#status').textContent.includes('perplexity')"
        )
        shown = float(re.search(r"perplexity ([\d.]+)", page.text_content("#status")).group(1))
        assert shown == pytest.approx(load_model(tiny_run).perplexity(text), abs=1e-3)
        assert page.text_content("#output") == text
        assert page.locator("#output span.c").count() == len(text)
        page.hover("#output span.c >> nth=0")
        assert "first character" in page.text_content("#tip")
        page.hover("#output span.c >> nth=2")
        assert page.text_content("#tip").startswith('"说": ')
        page.close()
    finally:
        assert server.stop() == 0


def test_with_an_api_key_the_page_asks_for_it_once(browser, tiny_run: Path):
    server = ServerProcess(tiny_run, "--api-key", "page-key")
    try:
        page = browser.new_page()
        asked: list[str] = []

        def answer(dialog) -> None:
            asked.append(dialog.message)
            dialog.accept("page-key")

        page.on("dialog", answer)
        page.goto(server.url + "/")
        page.wait_for_function("document.querySelector('#model').options.length > 0")
        page.fill("#prefix", "分开")
        page.fill("#length", "20")
        page.click("#generate")
        page.wait_for_function("document.querySelector('#status').textContent.includes('reached')")
        assert page.text_content("#output").startswith("分开")
        assert len(page.text_content("#output")) == 22
        assert len(asked) == 1 and "API key" in asked[0]
        assert page.evaluate("sessionStorage.getItem('charlstm-api-key')") == "page-key"
        page.close()
    finally:
        assert server.stop() == 0
