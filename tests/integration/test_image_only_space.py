"""A Lens embedded by a foundation model of images only (DINOv2): everything that needs no text works (map,
unit pages, report, image search), and what needs texts says so and what would do instead."""

from __future__ import annotations

import pytest
from tiny_foundation import SAVERS
from typer.testing import CliRunner

from semlens import BuildConfig, Lens, build_lens
from semlens._util.errors import TextNotSupportedError
from semlens.cli import app as cli_app

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from semlens.web.app import create_app  # noqa: E402

TEXT_ADVICE = r"needs texts embedded, and this Lens's foundation model hf:.* embeds images only; add a space of a text-image model"


@pytest.fixture(scope="module")
def lens(tmp_path_factory, colour_folder) -> Lens:
    root = tmp_path_factory.mktemp("image-only")
    SAVERS["dinov2"](root / "dino")
    config = BuildConfig(
        model="py:tiny_models:tiny_cnn", layers=["features.0", "features.3", "head"], data=f"folder:{colour_folder}", foundation=f"hf:{root / 'dino'}", k=5, workers=0
    )  # fmt: skip
    return build_lens(config, root / "dino.lens", progress=False)


def test_the_map_clusters_units_without_concept_names(lens) -> None:
    overview = lens.overview()
    assert overview.cluster_names == [f"cluster {index + 1}" for index in range(len(overview.cluster_names))]
    assert overview.category_names == ["units"] and len(overview.units) > 0


def test_labels_dissection_and_graphs_say_they_need_texts_and_how_to_get_them(lens) -> None:
    with pytest.raises(TextNotSupportedError, match=TEXT_ADVICE + r".*semlens embed LENS --foundation"):
        lens.label()
    with pytest.raises(TextNotSupportedError, match="dissection .*" + TEXT_ADVICE):
        lens.labels.dissect()
    with pytest.raises(TextNotSupportedError, match="attribution graph .*" + TEXT_ADVICE):
        lens.attribution_graph("red")


def test_the_report_and_the_explorer_s_unit_pages_and_map_answer_without_labels(lens, tmp_path) -> None:
    result = CliRunner().invoke(cli_app, ["report", str(lens.path), "--out", str(tmp_path / "report.html")])
    assert result.exit_code == 0, result.output
    assert "clarity nan" not in (tmp_path / "report.html").read_text()
    client = TestClient(create_app([lens.path]))
    page = client.get("/api/lenses/0/layers/features.3/units/1")
    assert page.status_code == 200, page.text
    assert page.json()["candidates"] == []
    overview = client.get("/api/lenses/0/map")
    assert overview.status_code == 200, overview.text


def test_two_lenses_in_a_space_of_images_compare_without_concepts(lens) -> None:
    comparison = lens.compare(lens)
    assert comparison.shared_concepts == comparison.only_a == comparison.only_b == []
    assert len(comparison.best_match) > 0
