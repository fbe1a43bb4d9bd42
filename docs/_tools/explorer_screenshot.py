"""The README's picture of the explorer: its search page on the demo's Lens, for the word "watermark".

    semlens demo --out semlens-demo
    python docs/_tools/explorer_screenshot.py semlens-demo/world.lens docs/images/explorer-search.png

Serves the Lens on 127.0.0.1 with ``semlens serve`` and drives Chromium with Playwright (``executable_path``:
see ENVIRONMENT notes in docs/development.md)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main(lens: str, out: str, query: str = "watermark") -> None:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "semlens.cli", "serve", lens, "--port", str(port)])
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/api/lenses", timeout=2)
                break
            except OSError:
                time.sleep(1)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 720})
            page.goto(f"{base}/search.html?lens=0")
            page.wait_for_function("document.getElementById('examples-note').textContent.length > 0")
            page.fill("#q", query)
            page.click("button[type=submit]")
            page.wait_for_selector("#results[data-ready]")
            page.wait_for_timeout(1500)  # thumbnails
            page.screenshot(path=out)
            browser.close()
    finally:
        server.terminate()
        server.wait()
    print(f"wrote {Path(out)}")


if __name__ == "__main__":
    main(*sys.argv[1:])
