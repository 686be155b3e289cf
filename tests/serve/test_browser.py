"""The web page in headless Chromium: upload an image, see result cards and probability bars,
search by text, stay readable on a phone, and log no console errors."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason=f"headless browser test needs Chromium at {CHROMIUM} (Debian package "
                                       f"'chromium'), which is not installed")


@pytest.fixture(scope="module")
def server_url(encoder, index_dir: Path) -> Iterator[str]:
    """uvicorn on a free loopback port, in a thread, serving the tiny model and the phantom index."""
    import uvicorn

    from medvl.serve.app import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(encoder, index_dir), log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the 'playwright' Python package is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def _watch(page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))
    return errors


def test_upload_shows_cards_and_probability_bars(browser, server_url: str, phantoms: Path) -> None:
    from medvl.data.manifest import load_manifest

    manifest = load_manifest(phantoms)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = _watch(page)
    page.goto(server_url + "/")
    page.wait_for_selector("#model:has-text('indexed cases')")
    page.set_input_files("#file", str(phantoms.parent / manifest.samples[0].image[0]))
    page.wait_for_selector(".result-card")
    page.wait_for_selector(".bar-row")
    cards = page.locator(".result-card")
    assert cards.count() == 12 or cards.count() == len(manifest.split("train").samples)
    first = cards.first
    assert first.locator("img").get_attribute("src").startswith("data:image/png;base64,")
    assert "similarity" in first.inner_text()
    assert first.locator(".report").inner_text().startswith("FINDINGS")
    bars = page.locator(".bar-row")
    assert bars.count() == len(manifest.card.class_names)
    values = [float(v) for v in page.locator(".bar-track").evaluate_all(
        "els => els.map(e => e.getAttribute('aria-valuenow'))")]
    assert all(0 <= v <= 100 for v in values) and values == sorted(values, reverse=True)
    width = page.locator(".bar-fill").first.evaluate("e => e.style.width")
    assert width.endswith("%") and float(width[:-1]) == pytest.approx(values[0], abs=0.05)
    assert page.locator("#findings").is_visible()
    assert not page.locator("#error").is_visible()
    assert errors == []
    page.close()


def test_text_search_on_a_phone_viewport(browser, server_url: str) -> None:
    page = browser.new_page(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    errors = _watch(page)
    page.goto(server_url + "/")
    page.wait_for_selector("#model:has-text('indexed cases')")
    page.fill("#q", "small left pleural effusion")
    page.click("#search-btn")
    page.wait_for_selector(".result-card")
    assert page.locator(".result-card").count() > 0
    assert not page.locator("#findings").is_visible()  # text search shows cases only
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"page is {overflow}px wider than a phone screen"
    card_width = page.locator(".result-card").first.bounding_box()["width"]
    assert card_width > 300  # one card per row, full width on a phone
    # An unsupported file shows a clear message, not a broken page.
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}])
    page.wait_for_selector("#error:not(.hidden)")
    assert "unsupported file type" in page.locator("#error").inner_text()
    assert [e for e in errors if "415" not in e and "Unsupported Media Type" not in e] == []
    page.close()
