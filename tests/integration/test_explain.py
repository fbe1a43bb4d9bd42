"""``Lens.explain``, ``semlens explain`` and the explorer's explain endpoints on a Lens of the hand-made
model with a planted watermark unit (``planted.py``), labelled by the artefact world's oracle foundation
model: a watermarked image is called "red" because of unit features.1/0, labelled "watermark"."""

from __future__ import annotations

import io
import json

import artefact_world as world
import numpy as np
import pytest
import torch
from PIL import Image
from planted import BLUE, WHITE, picture, planted_model, probe_images
from typer.testing import CliRunner

from semlens import BuildConfig, Lens, build_lens
from semlens._util.errors import SemlensError
from semlens.cli import app

runner = CliRunner()
UNIT = f"features.1/{WHITE}"


@pytest.fixture(scope="module")
def planted_lens(tmp_path_factory) -> Lens:
    root = tmp_path_factory.mktemp("planted")
    world.write_folder(root / "probe", probe_images())
    config = BuildConfig(
        model="py:planted:planted_model", layers=["features.0:signed=true,pool=max", "features.1", "head"],
        data=f"folder:{root / 'probe'}", foundation="py:artefact_world:oracle", k=6, workers=0,
    )  # fmt: skip
    lens = build_lens(config, root / "planted.lens", progress=False)
    (root / "concepts.txt").write_text("red\ngreen\nblue\nwatermark\n")
    lens.label(root / "concepts.txt", threshold=0.01)
    picture().save(root / "watermarked.png")
    return lens


def test_the_planted_unit_drives_the_prediction_under_its_label(planted_lens) -> None:
    result = planted_lens.explain(planted_lens.path.parent / "watermarked.png")
    assert result.predicted and result.class_name == "red" and result.prediction[0]["class"] == "red"
    features = next(layer for layer in result.layers if layer.layer == "features.1")
    top = features.groups[0]
    assert top.label == "watermark" and [unit.unit for unit in top.units] == [UNIT]
    assert top.share == pytest.approx(0.672, abs=0.01)  # 3*36*1.5 / (3*36*1.5 + 64*1.23), by hand
    assert features.groups[1].label == "red" and features.left_out == 0
    heat = top.units[0].heatmap.clamp_min(0)
    assert float(heat[1:7, 1:7].sum() / heat.sum()) > 0.99  # where: on the watermark's pixels
    assert [example.sample for example in top.units[0].examples] == [e.sample for e in planted_lens.examples.concept_examples(UNIT)[:4]]
    # the signed (pre-ReLU) layer counts each channel once, under the copy where its relevance lies
    signed = next(layer for layer in result.layers if layer.layer == "features.0")
    assert [unit.unit for unit in signed.units] == [f"features.0/{WHITE}"] and not planted_lens.arrays.valid("features.0")[1]
    assert signed.units[0].share == pytest.approx(top.share, abs=1e-4)
    assert signed.left_out == pytest.approx(1 - top.share, abs=1e-4)  # the red channel: its max-pooled examples tie
    assert json.loads(json.dumps(result.to_dict()))["layers"][1]["groups"][0]["units"][0]["unit"] == UNIT


def test_a_unit_against_the_class_is_listed_apart_with_its_hand_computed_share(planted_lens, tmp_path) -> None:
    image = picture(blue=4)
    result = planted_lens.explain(image, class_name="red", layers=["features.1"])
    (features,) = result.layers
    model = planted_model().module
    with torch.no_grad():  # the red logit is 3 a_white + a_red - a_blue over pooled activations a
        pooled = model.pool(model.features(world.PREPROCESSING(image)[None])).flatten()
    total = 3 * pooled[WHITE] + pooled[1] + pooled[BLUE]
    assert [unit.unit for unit in features.against] == [f"features.1/{BLUE}"] and features.against[0].label == "blue"
    assert features.against[0].share == pytest.approx(float(-pooled[BLUE] / total), abs=1e-4) and float(pooled[BLUE] / total) > 0.05
    assert features.groups[0].share == pytest.approx(float(3 * pooled[WHITE] / total), abs=1e-4)  # for it, as before
    assert all(unit.share > 0 for unit in features.units) and features.sae_error is None  # no SAE here
    payload = result.to_dict()["layers"][0]
    assert payload["against"][0]["unit"] == f"features.1/{BLUE}" and payload["sae_error"] is None
    image.save(tmp_path / "blue.png")
    printed = runner.invoke(app, ["explain", str(planted_lens.path), str(tmp_path / "blue.png"), "-c", "red", "-l", "features.1", "-o", str(tmp_path / "out")])
    assert printed.exit_code == 0 and "against red" in printed.stdout and f"features.1/{BLUE}" in printed.stdout, printed.output
    overlay = np.asarray(Image.open(tmp_path / "out" / f"features.1_{BLUE}.png"), dtype=np.float32)
    changed = np.abs(overlay - np.asarray(image, dtype=np.float32)).sum(axis=2) > 1
    assert changed[2:6, 24:28].all() and changed.sum() == 16  # where it spoke against: the blue square


def test_a_given_class_a_sample_index_and_a_pil_image(planted_lens) -> None:
    given = planted_lens.explain(picture(), class_name="green", layers=["features.1"])
    assert not given.predicted and given.class_name == "green" and given.image == "image"
    assert [layer.layer for layer in given.layers] == ["features.1"] and not given.layers[0].groups  # no green on it
    sample = planted_lens.explain(0, top=1)
    assert sample.image.startswith("sample 0 (") and all(len(layer.units) <= 1 for layer in sample.layers)


@pytest.mark.parametrize(
    ("image", "options", "message"),
    [
        ("missing.png", {}, "no image file missing.png"),
        ("watermarked.png", {"class_name": "purple"}, "unknown class 'purple'"),
        ("watermarked.png", {"layers": ["nowhere"]}, "has no layer 'nowhere'"),
        ("watermarked.png", {"top": 0}, "top must be at least 1"),
        (999, {}, "probe sample 999 does not exist"),
        (Image.new("RGB", (2, 2)), {}, r"image is 2x2 px: too small to show anything \(at least 4 px a side\); a build skips such an image"),
    ],
)
def test_bad_input_is_a_clear_error(planted_lens, image, options, message) -> None:
    target = planted_lens.path.parent / image if isinstance(image, str) and image != "missing.png" else image
    with pytest.raises(SemlensError, match=message):
        planted_lens.explain(target, **options)


def test_explain_command_prints_json_and_writes_overlays(planted_lens, tmp_path) -> None:
    image = planted_lens.path.parent / "watermarked.png"
    result = runner.invoke(app, ["explain", str(planted_lens.path), str(image), "--layer", "features.1", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["class"] == "red" and payload["layers"][0]["groups"][0]["label"] == "watermark"
    overlay = np.asarray(Image.open(payload["files"][UNIT]), dtype=np.float32)
    view = np.asarray(Image.open(payload["files"]["view"]), dtype=np.float32)
    changed = np.abs(overlay - view).sum(axis=2) > 1
    assert changed[1:7, 1:7].all() and changed.sum() == 36  # reddened exactly on the watermark
    printed = runner.invoke(app, ["explain", str(planted_lens.path), str(image), "--class", "red"])
    assert printed.exit_code == 0 and "watermark" in printed.stdout and "explaining class red (given)" in printed.stdout
    refused = runner.invoke(app, ["explain", str(planted_lens.path), str(image), "--class", "purple"])
    assert refused.exit_code == 2 and "unknown class 'purple'" in refused.output


def test_explain_says_when_only_inactive_units_carry_a_layer(planted_lens, tmp_path, monkeypatch) -> None:
    from dataclasses import replace

    from semlens.lens.lens import Lens

    image = tmp_path / "blue.png"
    Image.new("RGB", (32, 32), (0, 0, 255)).save(image)
    explain = Lens.explain
    emptied = lambda self, *args, **kwargs: (lambda found: replace(found, layers=[replace(layer, groups=[]) for layer in found.layers]))(explain(self, *args, **kwargs))  # noqa: E731
    monkeypatch.setattr(Lens, "explain", emptied)  # as when the class's units are all inactive
    printed = runner.invoke(app, ["explain", str(planted_lens.path), str(image), "--class", "red"])
    assert printed.exit_code == 0 and "no active unit carries relevance here" in " ".join(printed.stdout.split())


def test_explain_endpoints(planted_lens) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from semlens.web.app import create_app

    client = TestClient(create_app([planted_lens]))
    buffer = io.BytesIO()
    picture().save(buffer, format="PNG")
    uploaded = client.post("/api/lenses/0/explain", files={"image": ("w.png", buffer.getvalue(), "image/png")}, params={"layer": "features.1"})
    assert uploaded.status_code == 200, uploaded.text
    body = uploaded.json()
    top = body["layers"][0]["groups"][0]
    assert body["class"] == "red" and top["label"] == "watermark" and top["units"][0]["unit"] == UNIT
    assert body["view"].startswith("data:image/png;base64,") and top["units"][0]["overlay"].startswith("data:image/png;base64,")
    assert top["units"][0]["examples"][0]["thumbnail"].startswith(f"/api/lenses/0/layers/features.1/units/{WHITE}/examples/")
    assert body["layers"][0]["against"] == [] and body["layers"][0]["sae_error"] is None  # nothing against red on it
    buffer = io.BytesIO()
    picture(blue=4).save(buffer, format="PNG")
    blue = client.post("/api/lenses/0/explain", files={"image": ("b.png", buffer.getvalue(), "image/png")}, params={"layer": "features.1"})
    (against,) = blue.json()["layers"][0]["against"]
    assert against["unit"] == f"features.1/{BLUE}" and against["share"] < 0 and against["overlay"].startswith("data:image/png;base64,")
    assert against["examples"][0]["thumbnail"].startswith(f"/api/lenses/0/layers/features.1/units/{BLUE}/examples/")
    sample = client.get("/api/lenses/0/explain", params={"sample": 0, "class": "green", "top": 2})
    assert sample.status_code == 200 and sample.json()["class"] == "green" and not sample.json()["predicted"]
    for response, words in (
        (client.get("/api/lenses/0/explain", params={"sample": 0, "class": "purple"}), "unknown class"),
        (client.get("/api/lenses/0/explain", params={"sample": 10_000}), "does not exist"),
        (client.post("/api/lenses/0/explain", files={"image": ("x.png", b"not an image", "image/png")}), "not an image"),
    ):
        assert response.status_code == 400 and words in response.json()["detail"], response.text
    assert client.get("/api/lenses/0/explain", params={"sample": -1}).status_code == 422
    assert client.get("/explain.html").status_code == 200
