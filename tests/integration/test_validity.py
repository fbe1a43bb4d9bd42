"""Units without examples of their own (inactive or tied) are recorded at build time, counted in every
summary and left out of search, labels, the map, measures, comparisons and exports' validity columns; an audit
judges a tied unit by its twin's examples and leaves out only inactive units."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from semlens import BuildConfig, Lens, build_lens
from semlens.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def twin_lens(tmp_path_factory, colour_folder, tiny_clip_dir):
    path = tmp_path_factory.mktemp("twin") / "twin.lens"
    config = BuildConfig(
        model="py:tiny_models:twin_cnn", layers=["features.3", "head"], data=f"folder:{colour_folder}",
        foundation=f"hf:{tiny_clip_dir}", k=5, workers=0, crop="activation",
    )  # fmt: skip
    build_lens(config, path, progress=False)
    return path


def test_tied_units_are_recorded_and_counted(twin_lens) -> None:
    lens = Lens.open(twin_lens)
    inactive = lens.arrays.inactive("features.3")  # this conv's output (before its ReLU) is never positive for some units
    assert not inactive[2] and not inactive[3]
    assert lens.arrays.tied("features.3").tolist() == [False, False, False, True, False, False]
    assert torch.equal(lens.arrays.theta("features.3")[2], lens.arrays.theta("features.3")[3])
    assert lens.arrays.valid("features.3").tolist() == (~inactive & torch.tensor([True, True, True, False, True, True])).tolist()
    assert lens.manifest["layers"]["features.3"]["tied_units"] == 1
    shown = runner.invoke(app, ["info", str(twin_lens)])
    assert shown.exit_code == 0 and "tied" in shown.output


def test_invalid_units_are_left_out_of_every_analysis(twin_lens, tmp_path) -> None:
    lens = Lens.open(twin_lens)
    valid = lens.arrays.valid("features.3")
    count = int(valid.sum()) + int(lens.arrays.valid("head").sum())
    twin = "features.3/3"
    # search: the twin's theta equals another unit's, so it would rank next to it everywhere
    found = [hit.unit for hit in lens.search_similar(lens, "features.3/2", top=12)]
    assert twin not in found and len(found) == count - 1
    assert twin not in {hit.unit for hit in lens.search("red", top=12)}
    assert len(lens.search("red", top=12)) == count
    labelling = lens.label(threshold=-1.0, save=False, min_confidence=-math.inf)  # every valid unit gets a label at this gate
    assert labelling["features.3"].labelled.tolist() == valid.tolist()
    assert labelling.to_dict()["features.3"][3]["valid"] is False
    assert lens.labels.dissect()["features.3"]["inactive or tied"] == 6 - int(valid.sum())
    units, theta = lens.arrays.all_units()
    assert twin not in units and len(units) == theta.shape[0] == count
    assert twin not in lens.overview().units
    measured = lens.measures("features.3").of("features.3")
    assert all(math.isnan(float(values[3])) for values in measured.values())
    theta = torch.nn.functional.normalize(lens.arrays.theta("features.3").float(), dim=-1)
    others = [row for row in range(6) if row != 2 and bool(valid[row])]  # not its own copy, unit 3
    expected = max(float(theta[2] @ theta[row]) for row in others)
    assert float(measured["redundancy"][2]) == pytest.approx(expected, abs=1e-5)
    assert twin not in lens.compare(lens).to_dict()["best_match"]


def test_an_audit_judges_a_tied_unit_by_its_twin_s_examples_and_leaves_out_only_inactive_ones(twin_lens) -> None:
    """A tied unit's examples are real (the same crops as an earlier unit's): the audit judges it by them, so that
    the class's relevance it carries has a verdict; it stays out of the null. Inactive units are left out."""
    lens = Lens.open(twin_lens)
    result = lens.audit(lens.classes[0], valid=["red"], spurious=["noise"], cut=-1.0, layers=["features.3"])
    audited = {unit.unit: unit for unit in result.units}
    inactive = [f"features.3/{row}" for row in lens.arrays.inactive("features.3").nonzero().flatten().tolist()]
    assert "features.3/3" in audited and "features.3/3" not in result.left_out and sorted(result.left_out) == sorted(inactive)
    twin, original = audited["features.3/3"], audited["features.3/2"]
    assert (twin.a_valid, twin.a_spur, twin.z_valid, twin.z_spur) == (original.a_valid, original.a_spur, original.z_valid, original.z_spur)
    assert result.null_units == {"features.3": int(lens.arrays.valid("features.3").sum())}


def test_fallbacks_name_what_was_done_instead_of_what_was_asked() -> None:
    from semlens.pipeline.builder import fallbacks

    manifest = {
        "identity": {"embed": {"crop": "auto"}},
        "layers": {
            "a": {"crop": {"mode": "relevance", "why": "relevance conserved"}},
            "b": {"crop": {"mode": "activation", "why": "relevance not possible (no LRP rule here for GELU)"}},
            "c": {"crop": {"mode": "relevance", "why": "relevance conserved"}, "map_shift": [0.0, 0.0], "map_shift_failed": "RuntimeError: odd model"},
        },
        "stages": {"relevance": {"skipped": "LRP does not support this model"}},
    }
    found = fallbacks(manifest)
    assert len(found) == 3 and "layer b: activation crops instead of relevance crops" in found[0] and "GELU" in found[0]
    assert found[1] == "layer c: map cells taken on the even grid, their placement not measured (RuntimeError: odd model)"
    assert "no class relevance" in found[2]
    manifest["identity"]["embed"]["crop"] = "activation"
    manifest["layers"] = {"b": {"crop": {"mode": "activation", "why": "as asked", "whole_views": [89, 100]}}}
    manifest["stages"] = {}
    assert fallbacks(manifest) == []
    manifest["relevance"] = {"targets": "labels of 2 of 3 data classes (not among the model's: building)", "warning": "its labels name no class"}
    manifest["layers"]["b"]["crop"]["whole_views"] = [0, 100]
    assert fallbacks(manifest) == ["its labels name no class"]  # the class relevance stage's own words
    manifest["relevance"], manifest["k_asked"], manifest["identity"]["collect"] = {}, 500, {"k": 60}
    manifest["stages"] = {"collect": {"failed": 2}}  # 60 files, 2 of them unreadable: k is 60, 58 examples at most
    assert fallbacks(manifest) == ["k = 60 instead of 500: the data has only 60 samples, 2 of them unreadable (skipped): each unit has at most 58 examples"]


def test_heatmaps_follow_the_crop_mode_and_the_explorer_draws_them(twin_lens) -> None:
    from fastapi.testclient import TestClient

    from semlens.web.app import create_app

    lens = Lens.open(twin_lens, trust=True)
    assert lens.arrays.heatmaps("features.3") is lens.arrays.maps("features.3")  # activation crops: cut from the activation maps
    assert lens.arrays.heatmaps("head") is None  # no map: whole images
    client = TestClient(create_app([lens]))
    spatial = client.get("/api/lenses/0/layers/features.3/units/2/examples").json()[0]
    assert client.get(spatial["heatmap"]).headers["content-type"] == "image/jpeg"
    whole = client.get("/api/lenses/0/layers/head/units/0/examples").json()[0]
    assert whole["heatmap"] is None
    missing = client.get(whole["image"].replace("/image", "/heatmap"))
    assert missing.status_code == 404 and "whole images" in missing.json()["detail"]


def test_a_tied_unit_shows_its_twin_s_label_and_is_explained_with_it(twin_lens, tmp_path) -> None:
    """Explanations and graphs list a tied unit (its relevance is its own) under the label of the unit whose crops it
    shares; only inactive units' relevance is left out. Before, a tied unit showed no concept and its share was
    counted as left out."""
    import shutil

    path = shutil.copytree(twin_lens, tmp_path / "twin.lens")
    lens = Lens.open(path)
    lens.label(threshold=-1.0, min_confidence=-math.inf)
    from semlens.lens.labels import shown_by

    assert shown_by(lens)["features.3"][3] == 2 and shown_by(lens)["features.3"][2] == 2
    assert lens.labels.label_of("features.3/3") == lens.labels.label_of("features.3/2") is not None
    assert lens.labels.shown("features.3")[3] == lens.labels.shown("features.3")[2]
    explained = lens.explain(0, layers=["features.3"], top=6).layers[0]
    listed = {unit.unit: unit for group in explained.groups for unit in group.units}
    assert "features.3/3" in listed and listed["features.3/3"].label == lens.labels.label_of("features.3/2")
    inactive = [f"features.3/{row}" for row in lens.arrays.inactive("features.3").nonzero().flatten().tolist()]
    assert inactive and not set(inactive) & set(listed)
    everything = sum(unit.share for unit in listed.values()) - sum(unit.share for unit in explained.against) + abs(explained.left_out)
    assert everything == pytest.approx(1.0, abs=1e-4)  # absolute shares, each unit once: the twin's is listed, not left out
