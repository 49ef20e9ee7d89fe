"""The search page in a real headless Chromium: text search, a click for related pins, image search.

Needs Debian's /usr/bin/chromium (driven by Playwright); talks only to a server on 127.0.0.1.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serve_fakes import COLORS, FakeEmbedder, color_png, embedded_index

from pinclip.serve.app import create_app
from pinclip.serve.serve_cli import load_pins_meta
from pinclip.serve.service import image_roots_of

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]


@pytest.fixture
def server_url(tmp_path) -> Iterator[str]:
    """The app on a free 127.0.0.1 port, served by uvicorn in a background thread."""
    import uvicorn

    pins_path, index = embedded_index(tmp_path / "data", 30)
    app = create_app(FakeEmbedder(), index, load_pins_meta(pins_path), token=None,
                     image_roots=image_roots_of(pins_path))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture
def page(tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True,
            viewport={"width": 1100, "height": 900},
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def card_titles(page, grid: str) -> list[str]:
    return page.locator(f"{grid} .card .title").all_inner_texts()


def test_search_click_related_and_screenshot(server_url, page, tmp_path):
    page.goto(server_url + "/")
    page.wait_for_function("document.getElementById('health').textContent.includes('30 pins')")
    page.fill("#q", "blue circle")
    page.press("#q", "Enter")
    page.wait_for_selector("#results .card", timeout=15_000)
    titles = card_titles(page, "#results")
    assert len(titles) == 24  # the page asks for k=24
    assert sorted(titles[:2]) == ["blue circle 2", "blue circle 20"]
    assert all(s.startswith("score ") for s in page.locator("#results .card .score").all_inner_texts())
    first_image = page.locator("#results .card img").first
    first_image.wait_for()
    page.wait_for_function("[...document.querySelectorAll('#results .card img')].slice(0, 4).every(i => i.complete)")
    assert page.evaluate("document.querySelector('#results .card img').naturalWidth") == 48

    page.locator("#results .card").first.click()
    page.wait_for_selector("#related:not([hidden]) #related-grid .card", timeout=15_000)
    clicked = titles[0]
    assert page.inner_text("#related-title") == clicked
    related = card_titles(page, "#related-grid")
    assert len(related) == 12 and clicked not in related
    assert "related pins" in page.inner_text("#status")

    shot = tmp_path / "search.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.shape[1] == 1100 and pixels.std() > 20  # a real page, not a blank one
    assert len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)) > 50  # drawings, text and colors


def test_image_search_from_the_drop_zone(server_url, page, tmp_path):
    query = tmp_path / "query.png"
    query.write_bytes(color_png(COLORS["green"], "stripe"))
    page.goto(server_url + "/")
    page.set_input_files("#file", str(query))
    page.wait_for_selector("#results .card", timeout=15_000)
    assert page.inner_text("#results-title") == "Pins like query.png"
    assert card_titles(page, "#results")[0].startswith("green")
    page.fill("#q", "   ")
    page.press("#q", "Enter")  # blank queries are not sent
    assert page.inner_text("#results-title") == "Pins like query.png"
