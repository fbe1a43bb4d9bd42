"""The HTML report opens in headless Chromium offline: no script errors, no network request, plots drawn."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from semlens import BuildConfig, build_lens
from semlens.cli import app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LAUNCH_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")


def test_report_renders_offline_without_errors(tmp_path, colour_folder, tiny_clip_dir) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    lens = tmp_path / "tiny.lens"
    config = BuildConfig(
        model="py:tiny_models:tiny_cnn", layers=["features.3", "head"], data=f"folder:{colour_folder}",
        foundation=f"hf:{tiny_clip_dir}", k=5, workers=0,
    )  # fmt: skip
    build_lens(config, lens, progress=False)
    report = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", str(lens), "--out", str(report), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["html"] == str(report)

    errors, requests = [], []
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)

        def only_local(route) -> None:
            url = route.request.url
            if url.startswith(("file:", "data:", "blob:")):
                route.continue_()
            else:
                requests.append(url)
                route.abort()

        page.route("**/*", only_local)
        page.goto(report.as_uri())
        page.wait_for_selector(".main-svg", timeout=30_000)
        headings = page.locator("h2").all_inner_texts()
        plots = page.locator(".js-plotly-plot").count()
        thumbnails = page.locator(".unit img").count()
        page.screenshot(path=str(tmp_path / "report.png"), full_page=False)
        browser.close()
    assert errors == [] and requests == []
    assert headings[:3] == ["Overview map", "Dissection: units per concept category", "Interpretability measures"]
    assert plots == 3 and thumbnails > 0
