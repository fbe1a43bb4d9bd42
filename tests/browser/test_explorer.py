"""The explorer in headless Chromium against tiny Lenses served by uvicorn: map → unit page, search, audit, and
every other page; no script or console error, no request leaves 127.0.0.1. A screenshot of each page is kept
in tests/output/screenshots/ (CI's artifact)."""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
playwright_api = pytest.importorskip("playwright.sync_api")
from live_server import live_server  # noqa: E402

from semlens.web.app import create_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LAUNCH_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SCREENSHOTS = Path(__file__).parents[1] / "output" / "screenshots"
SLOW = 120_000  # ms: the first map pays for UMAP's compilation

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def base_url(explorer_lenses):
    with live_server(create_app(explorer_lenses)) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def problems() -> list[str]:
    return []


@pytest.fixture
def page(browser, base_url, problems):
    with local_page(browser, base_url, problems) as opened:
        yield opened


@contextmanager
def local_page(browser, base_url: str, problems: list[str]):
    """A page that records script errors, console errors and any request that is not to the test server."""
    context = browser.new_context(viewport={"width": 1300, "height": 900}, accept_downloads=True)
    opened = context.new_page()
    opened.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    opened.on(
        "console", lambda message: problems.append(f"console: {message.text}") if message.type == "error" else None
    )

    def only_local(route) -> None:
        if route.request.url.startswith((base_url, "data:", "blob:")):
            route.continue_()
        else:
            problems.append(f"request: {route.request.url}")
            route.abort()

    opened.route("**/*", only_local)
    opened.set_default_timeout(30_000)
    yield opened
    context.close()
    assert problems == []


@pytest.fixture(scope="module")
def valid(explorer_lenses) -> list[str]:
    """The units of tiny.lens the explorer maps and ranks: those with examples of their own."""
    from semlens import Lens

    return Lens.open(explorer_lenses[0], trust=True).arrays.all_units()[0]


def goto(page, base_url: str, path: str) -> None:
    page.goto(f"{base_url}/{path}")


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def images_loaded(page, selector: str) -> int:
    """How many images match ``selector``, after asserting that every one of them has decoded."""
    page.wait_for_function(f"[...document.querySelectorAll({selector!r})].every(i => i.complete)")
    sizes = page.eval_on_selector_all(selector, "images => images.map(i => i.naturalWidth)")
    assert sizes and all(size > 0 for size in sizes), sizes
    return len(sizes)


def test_map_point_click_opens_its_unit_page_with_images(page, base_url, valid, explorer_lenses) -> None:
    goto(page, base_url, "?lens=0")
    page.wait_for_selector("#map[data-ready]", timeout=SLOW)
    points = page.locator("#map .scatterlayer .point")
    assert points.count() == len(valid)
    box = points.first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.wait_for_selector("#preview img")  # hover shows the unit's examples
    images_loaded(page, "#preview img")
    shot(page, "map")
    hovered = page.inner_text("#preview h3")
    page.mouse.click(x, y)
    page.wait_for_url("**/unit.html?**")
    page.wait_for_selector("#unit[data-ready]")
    assert page.inner_text("#title code") == hovered
    from semlens import Lens

    assert images_loaded(page, "#examples img") == len(Lens.open(explorer_lenses[0], trust=True).examples.concept_examples(hovered))
    assert images_loaded(page, "#heatmaps img") == min(6, len(Lens.open(explorer_lenses[0], trust=True).examples.concept_examples(hovered)))  # without a click
    assert images_loaded(page, "#full img") == 2 and page.inner_text("#full h3").startswith("example 0")  # the best one's view and heatmap
    page.wait_for_selector("#clusters .cluster")  # the same examples, grouped by concept
    assert images_loaded(page, "#clusters .cluster img") == len(Lens.open(explorer_lenses[0], trust=True).examples.concept_examples(hovered))
    assert images_loaded(page, "#unit .thumbs img") > 0  # similar units, in both Lenses
    assert page.locator("#unit > h3").all_inner_texts()[:2] == ["in tiny.lens", "in other.lens"]
    page.click("#examples figure >> nth=0")  # the full image, on demand, with its crop box
    images_loaded(page, "#full img")
    assert page.locator("#full .box").is_visible()
    assert images_loaded(page, "#full img") == 2  # the view with its crop box, and the heatmap the crop was cut from
    assert page.locator("#relevance-examples").count() == 0  # built without relevance examples: no such section
    shot(page, "unit")


def test_the_unit_page_shows_relevance_examples_when_the_lens_has_them(browser, colour_folder, tiny_clip_dir, tmp_path) -> None:
    from semlens import BuildConfig, build_lens

    config = BuildConfig(
        model="py:tiny_models:tiny_cnn", layers=["features.3"], data=f"folder:{colour_folder}", foundation=f"hf:{tiny_clip_dir}",
        k=5, workers=0, relevance_examples=True,
    )  # fmt: skip
    lens, problems = build_lens(config, tmp_path / "relevance.lens", progress=False), []
    with live_server(create_app([lens])) as url, local_page(browser, url, problems) as page:
        goto(page, url, "unit.html?lens=0&unit=features.3/1")
        page.wait_for_selector("#unit[data-ready]")
        assert images_loaded(page, "#relevance-examples img") == len(lens.examples.concept_examples("features.3/1", by="relevance"))
        assert images_loaded(page, "#examples img") == len(lens.examples.concept_examples("features.3/1"))
        page.click("#relevance-examples figure >> nth=0")  # its full image and the CRP heatmap its crop was cut from
        assert images_loaded(page, "#full img") == 2
        shot(page, "unit-relevance")
        goto(page, url, "search.html?lens=0&q=red&examples=relevance")  # search by the relevance examples' theta
        page.wait_for_selector("#results[data-ready]")
        assert page.locator("#examples").is_enabled() and page.input_value("#examples") == "relevance"
        hits = [hit.unit for hit in lens.search("red", top=20, examples="relevance")]
        assert page.locator("#results a.unit-link").all_inner_texts()[: len(hits)] == hits
        goto(page, url, "search.html?lens=0&q=white%20frame")  # a concept semlens draws: ranked by the model, the caption says so
        page.wait_for_selector("#results[data-ready]")
        assert "units ranked by how much pasting frames semlens drew (white) into the Lens's probe images" in page.inner_text("#results caption")
        assert page.locator("#results a.unit-link").all_inner_texts()[:3] == [hit.unit for hit in lens.search("white frame", top=3)]
    assert problems == []


def test_a_lens_served_without_its_images_says_so_once_and_lists_sources(browser, explorer_lenses, tmp_path) -> None:
    """The probe data out of reach (a moved folder here): a banner for the visit, the examples' sources in place of
    pictures, and not one request for an image (every thumbnail failed before, about 80 a page)."""
    from semlens import Lens

    lens, problems, asked = Lens.open(explorer_lenses[0], data=str(tmp_path / "moved")), [], []
    with live_server(create_app([lens])) as url, local_page(browser, url, problems) as page:
        page.on("request", lambda request: asked.append(request.url) if "/examples/" in request.url else None)
        goto(page, url, "unit.html?lens=0&unit=features.3/1")
        page.wait_for_selector("#unit[data-ready]")
        assert "example images cannot be shown" in page.inner_text("#images-note") and "moved" in page.inner_text("#images-note")
        sources = [example.source for example in lens.examples.concept_examples("features.3/1")]
        assert page.locator("#examples img").count() == 0 and page.locator("#examples .source").all_inner_texts() == sources
        goto(page, url, "search.html?lens=0&q=red")
        page.wait_for_selector("#results[data-ready]")
        assert page.locator("#results img").count() == 0 and "(no images)" in page.inner_text("#results")
        assert page.locator("#images-note").count() == 1
    assert asked == [] and problems == []


def test_search_a_word_ranks_units_with_thumbnails(page, base_url, valid, explorer_lenses) -> None:
    goto(page, base_url, "search.html?lens=0")
    page.wait_for_function("document.getElementById('examples-note').textContent.length > 0")  # set once the Lens is read
    assert page.locator("#examples").is_disabled() and "no relevance examples" in page.inner_text("#examples-note")
    assert page.input_value("#rank") == ""  # the API's default ranking: named for a text
    page.fill("#q", "red")
    page.click("button[type=submit]")
    page.wait_for_selector("#results[data-ready]")
    assert "name, then alignment" in page.inner_text("#results caption")
    rows = page.locator("#results tr.hit")
    assert rows.count() == len(valid)  # inactive and tied units are never ranked
    from semlens import Lens

    expected = Lens.open(explorer_lenses[0], trust=True).search("red", top=len(valid))  # by alignment and response, both shown
    assert page.locator("#results a.unit-link").all_inner_texts() == [hit.unit for hit in expected]
    shown = [float(text) for text in page.locator("#results tr.hit td.response").all_inner_texts()]
    assert shown == pytest.approx([hit.response for hit in expected], abs=1e-3)
    assert images_loaded(page, "#results img") >= len(valid)
    shot(page, "search")
    page.select_option("#rank", "alignment")  # the paper's ranking: alignment alone, best first
    page.click("button[type=submit]")
    page.wait_for_function("document.getElementById('results').dataset.ready && location.search.includes('rank=alignment')")
    aligned = [float(text) for text in page.locator("#results tr.hit td.alignment").all_inner_texts()]
    assert aligned == sorted(aligned, reverse=True) and len(aligned) == len(valid)
    page.select_option("#rank", "both")
    page.uncheck("#layers input[value='features.0']")
    page.click("button[type=submit]")
    page.wait_for_selector("#results[data-ready]")
    assert rows.count() == len([unit for unit in valid if not unit.startswith("features.0/")])
    assert "features.0" not in page.inner_text("#results")
    page.locator("#results a.unit-link").first.click()
    page.wait_for_selector("#unit[data-ready]")


def test_audit_shows_the_scatter_verdicts_and_exports_json(page, base_url) -> None:
    goto(page, base_url, "audit.html?lens=0")
    page.wait_for_selector("#class option", state="attached")
    page.select_option("#class", "red")
    assert page.input_value("#valid") == "red"
    page.fill("#spurious", "noise\ntext")
    page.click("button[type=submit]")
    page.wait_for_selector("#scatter[data-ready]")
    assert page.locator("#scatter .scatterlayer .point").count() > 0
    verdicts = page.locator("#verdicts tr").count() - 1
    assert verdicts == page.locator("#scatter .scatterlayer .point").count()
    assert "spurious" in page.inner_text("#shares") and images_loaded(page, "#verdicts img") > 0
    shot(page, "audit")
    with page.expect_download() as download:
        page.click("#export")
    exported = json.loads(Path(download.value.path()).read_text())
    assert exported["class"] == "red" and exported["spurious"] == ["noise", "text"] and "figure" not in exported
    assert len(exported["units"]) == verdicts
    assert "concept test" not in page.inner_text("#shares")
    page.fill("#spurious", "frame")  # a concept semlens draws: tested on its drawings, the answer shown
    page.click("button[type=submit]")
    page.wait_for_function("document.querySelector('#shares').innerText.includes('concept test')")
    assert "frames semlens drew (" in page.inner_text("#shares") and "on it (probability" in page.inner_text("#shares")


def test_dissect_graph_compare_and_api_pages(page, base_url, valid) -> None:
    goto(page, base_url, "dissect.html?lens=0")
    page.wait_for_selector("#chart[data-ready]")
    bar = page.locator("#chart .bars .point path").first
    box = bar.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_selector("#units a.unit-link")
    assert "units" in page.inner_text("#listTitle")
    shot(page, "dissect")

    goto(page, base_url, "graph.html?lens=0&class=red")
    page.wait_for_selector("#graph[data-ready]")
    assert page.locator("#graph .sankey-node").count() > 1 and page.locator("#nodes a.unit-link").count() > 0
    shot(page, "graph")

    goto(page, base_url, "compare.html?lens=0")
    page.wait_for_selector("#matches[data-ready]")
    assert page.locator("#ab .heatmaplayer image").count() == page.locator("#ba .heatmaplayer image").count() == 1
    assert page.locator("#matches a.unit-link").count() == 2 * len(valid)
    images_loaded(page, "#matches img")
    shot(page, "compare")

    goto(page, base_url, "spaces.html?lens=0")  # one space: it against itself agrees fully
    page.wait_for_selector("#agreement[data-ready]")
    assert page.locator("#spaces tr").count() == 2 and "1.000" in page.inner_text("#agreement")
    shot(page, "spaces")

    goto(page, base_url, "api.html")
    page.wait_for_selector("#endpoints code")
    assert page.locator("#endpoints tr").count() == 20
    shot(page, "api")


def test_correct_page_runs_a_projection_and_shows_before_and_after(page, base_url) -> None:
    goto(page, base_url, "correct.html?lens=0&class=red")
    page.wait_for_selector("#layer option[value='features.3']", state="attached")
    page.fill("#tint", "255,0,0")
    page.select_option("#layer", "features.3")
    page.click("button[type=submit]")
    page.wait_for_selector("#measures[data-ready]", timeout=SLOW)
    assert page.locator("#measures tr").count() == 1 + 3 * 3  # clean, artifact, change: accuracy, probability, share
    assert "artefact effect on red" in page.inner_text("#summary") and "features.3" in page.inner_text("#summary")
    shot(page, "correct")


def test_bad_addresses_show_a_message_not_a_broken_page(page, base_url, problems) -> None:
    goto(page, base_url, "unit.html?lens=0&unit=head/99")
    page.wait_for_selector("#status.error")
    assert "has no unit '99'" in page.inner_text("#status")
    assert len(problems) == 1 and "404" in problems.pop()  # Chromium logs the refused request itself
    goto(page, base_url, "search.html?lens=9")
    page.wait_for_selector("#status.error")
    assert "tiny.lens" in page.inner_text("#status")


def test_explain_page_for_a_probe_sample_and_an_upload(page, base_url, tmp_path) -> None:
    goto(page, base_url, "explain.html?lens=0&sample=0")
    page.wait_for_selector("#result[data-ready]")
    assert "explaining class" in page.inner_text("#result") and page.locator("#result h2").count() == 3
    assert images_loaded(page, "#result img.overlay") > 1 and page.locator("#result a.unit-link").count() > 0
    shot(page, "explain")
    from PIL import Image

    Image.new("RGB", (40, 40), "blue").save(tmp_path / "blue.png")
    page.select_option("#class", "green")
    page.set_input_files("#image", str(tmp_path / "blue.png"))
    page.wait_for_selector("#result[data-ready]")
    assert "green (given)" in page.inner_text("#result")
