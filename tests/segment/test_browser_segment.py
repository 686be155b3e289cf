"""The web page's outline overlay in headless Chromium: upload, type a phrase, see the tinted mask."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"needs Chromium at {CHROMIUM}")


@pytest.mark.slow
def test_outline_overlay(seg_phantoms: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the 'playwright' Python package is not installed")
    import torch
    import uvicorn

    from medvl.models import create_model
    from medvl.models.encoder import CLIPEncoder
    from medvl.serve.app import create_app

    torch.manual_seed(0)
    clip = create_model("clip-tiny", image={"image_size": 32}, tokenizer_texts=["left pleural effusion", "heart"])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(CLIPEncoder(clip, "clip"), None), log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    image = next((seg_phantoms.parent / "images").glob("*_s1.png"))
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            errors: list[str] = []
            # This server has no case index: the upload's /v1/search answers 409 (the page shows it); any other
            # console error is a bug.
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "409" not in m.text else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"http://127.0.0.1:{port}/")
            page.set_input_files("#file", str(image))
            page.fill("#seg-q", "left pleural effusion")
            page.click("#seg-btn")
            page.wait_for_selector("#segment:not(.hidden)", timeout=20000)
            assert page.locator("#seg-mode").inner_text() == "(zero-shot grounding map)"
            assert page.locator("#seg-summary").inner_text()
            assert page.eval_on_selector("#seg-canvas", "c => c.width") == 32
            browser.close()
        assert not errors, errors
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
