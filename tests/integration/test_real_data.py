"""Real data without friction: ImageNet-style folders named by WordNet id, the units most relevant to a class,
the report's audit with the concept test, ``--version`` and image probes with transparency."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_models import IMAGENET_FOLDERS, colour_images
from typer.testing import CliRunner

from semlens import BuildConfig, Lens, build_lens
from semlens.cli import app
from semlens.lens.search import probe_backgrounds

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def wnid_folder(tmp_path_factory) -> Path:
    """The colour images in folders named by WordNet id, as ImageNet's own: n01440764/ (tench), ..."""
    root = tmp_path_factory.mktemp("imagenet-style")
    for index, (image, label) in enumerate(colour_images(18)):
        folder = root / list(IMAGENET_FOLDERS)[label]
        folder.mkdir(exist_ok=True)
        image.save(folder / f"{index:03d}.png")
    return root


@pytest.fixture(scope="module")
def wnid_lens(tmp_path_factory, wnid_folder: Path, tiny_clip_dir: Path) -> Lens:
    config = BuildConfig(
        model="py:tiny_models:imagenet_named_cnn", layers=["features.3", "head"], data=f"folder:{wnid_folder}",
        foundation=f"hf:{tiny_clip_dir}", k=3, workers=0,
    )  # fmt: skip
    return build_lens(config, tmp_path_factory.mktemp("wnid") / "wnid.lens", progress=False)


def test_wordnet_id_folders_are_the_model_s_classes(wnid_lens: Lens, wnid_folder: Path) -> None:
    from semlens.data import load_data
    from semlens.interventions.effects import class_targets, load_views
    from semlens.model.loading import load_model

    assert wnid_lens.manifest["relevance"]["targets"] == "labels"  # not the predicted classes
    assert wnid_lens.units.class_index("n01443537") == wnid_lens.units.class_index("goldfish") == 1
    model, data = load_model("py:tiny_models:imagenet_named_cnn"), load_data(f"folder:{wnid_folder}")
    _, labels = load_views(model, data)
    assert class_targets(model, data, labels).tolist() == labels  # what correcting the model trains on


def test_folders_the_model_has_no_class_of_take_predictions_and_the_others_keep_their_labels(wnid_folder: Path, tmp_path) -> None:
    """One folder named by no class of the model: its images take their predicted classes, the others their labels."""
    import shutil

    from semlens.data import load_data
    from semlens.model.loading import class_mapping, load_model

    mixed = tmp_path / "mixed"
    shutil.copytree(wnid_folder, mixed)
    (mixed / "n01484850").rename(mixed / "building")
    mapping, targets, warning, _ = class_mapping(load_model("py:tiny_models:imagenet_named_cnn"), load_data(f"folder:{mixed}"))
    assert targets == "labels of 2 of 3 data classes (not among the model's: building)"
    assert mapping == {1: 0, 2: 1}  # folders sorted: building, n01440764 (tench), n01443537 (goldfish)
    assert warning == f"class relevance of predicted classes where the data's labels name no class of the model: {targets}"


def test_a_data_class_the_model_has_not_is_named_as_such_with_the_classes_the_data_shows(wnid_lens: Lens, monkeypatch) -> None:
    from semlens import SemlensError

    monkeypatch.setitem(wnid_lens.manifest, "classes", [*wnid_lens.manifest["classes"], "building"])
    with pytest.raises(SemlensError, match=r"'Building' is a class of the probe data, not of the model.*the data shows tench, goldfish, great white shark"):
        wnid_lens.units.class_index("Building")
    with pytest.raises(SemlensError, match=r"unknown class 'skyscraper'.*e\.g\. tench, goldfish"):
        wnid_lens.units.class_index("skyscraper")


def test_a_wordnet_id_names_its_imagenet_class_among_1000_even_where_display_names_repeat() -> None:
    from semlens.model.imagenet import imagenet_classes, model_class_index

    classes = imagenet_classes()
    assert classes[134] == classes[517] == "crane"  # the bird and the machine
    assert model_class_index("n02012849", classes) == 134 and model_class_index("n03126707", classes) == 517
    assert model_class_index("n01440764", ["Tinca tinca", "goldfish"]) == 0  # by a synonym
    assert model_class_index("n01440764", ["goldfish"]) is None and model_class_index("n99999999", classes) is None
    assert model_class_index("tabby cat", classes) == 281 and model_class_index("Scooter", classes) == classes.index("motor scooter")  # ImageNet's other names
    assert model_class_index("tabby cat", ["tabby", "dog"]) == 0 and model_class_index("cat", classes) is None
    wordnet_folders = ["n01440764", "n02102040", "n02979186"]  # a model that took its data's folder names
    assert [model_class_index(name, wordnet_folders) for name in ("tench", "English springer", "cassette player", "goldfish")] == [0, 1, 2, None]
    from semlens.model.imagenet import shown_class  # titles and tables: the id with its name

    assert shown_class("n01440764") == "n01440764 (tench)" and shown_class("star") == "star"
    from semlens.model.imagenet import readable_class  # an audit's default valid concept: words, not a WordNet id

    assert readable_class("n01440764") == "tench" and readable_class(" N02123045") == "tabby"
    assert readable_class("n99999999") == "n99999999" and readable_class("red") == "red"


def test_relevant_lists_a_class_s_units_by_share_of_relevance_per_layer(wnid_lens: Lens) -> None:
    result = invoke("relevant", wnid_lens.path, "--class", "n01440764", "--top", "2", "--json")
    assert result.exit_code == 0, result.output
    units = json.loads(result.output)
    assert [unit["layer"] for unit in units] == ["features.3", "features.3", "head"]  # the other logits take no share of tench's
    for unit in units:
        assert unit["max_share"] > 0
        layer, row = wnid_lens.units.index(unit["unit"])
        assert unit["mean_share"] == pytest.approx(float(wnid_lens.arrays.class_relevance(layer)["mean_share"][row, 0]))
        assert set(unit) == {"unit", "layer", "mean_share", "max_share", "label"}
    first = wnid_lens.arrays.class_relevance("features.3")["mean_share"][:, 0]
    assert units[0]["mean_share"] == pytest.approx(float(first.max()))
    shown = invoke("relevant", wnid_lens.path, "--class", "tench")
    assert shown.exit_code == 0 and "units most relevant for class tench" in shown.output and units[0]["unit"] in shown.output
    unknown = invoke("relevant", wnid_lens.path, "--class", "n09999999")
    assert unknown.exit_code == 2 and "unknown class 'n09999999'" in unknown.output


def test_classes_named_by_wordnet_id_are_shown_with_their_names_on_every_face(wnid_folder: Path, tiny_clip_dir: Path, tmp_path: Path) -> None:
    """A model whose classes are its data's folder names (``n01440764``): tables, reports, notebook pictures and the
    explorer show ``n01440764 (tench)``; JSON and the explorer's values keep the id the model knows."""
    from fastapi.testclient import TestClient

    from semlens.report.notebook import audit_html
    from semlens.web.app import create_app

    config = BuildConfig(
        model="py:tiny_models:wordnet_named_cnn", layers=["features.3", "head"], data=f"folder:{wnid_folder}",
        foundation=f"hf:{tiny_clip_dir}", k=3, workers=0,
    )  # fmt: skip
    lens = build_lens(config, tmp_path / "ids.lens", progress=False)
    assert lens.classes == list(IMAGENET_FOLDERS)
    audit = lens.audit("n01440764", spurious=["stripes"])
    assert audit.class_name == "n01440764" and "Audit of class n01440764 (tench)" in audit_html(audit)
    ranked = invoke("audit", lens.path, "--all", "--spurious", "stripes")
    assert ranked.exit_code == 0 and "n01443537" in ranked.output and "(goldfish)" in ranked.output, ranked.output  # whole words at 80 columns
    out = tmp_path / "report.html"
    assert invoke("report", lens.path, "--out", out, "--class", "n01440764", "--spurious", "stripes").exit_code == 0
    assert "Audit of class n01440764 (tench)" in out.read_text()
    client = TestClient(create_app([lens.path]))
    info = client.get("/api/lenses/0").json()
    assert info["classes"] == list(IMAGENET_FOLDERS) and info["class_titles"][0] == "n01440764 (tench)"
    classes = client.get("/api/lenses/0/layers/head/units/0").json()["classes"]
    assert classes and all(entry["title"] == f"{entry['class']} ({IMAGENET_FOLDERS[entry['class']]})" for entry in classes)


def test_version_prints_the_package_version() -> None:
    import semlens

    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"semlens {semlens.__version__}"


def test_an_image_probe_with_transparent_parts_is_seen_over_the_lens_s_probe_images(wnid_lens: Lens, tmp_path: Path) -> None:
    """A watermark-like overlay on a transparent canvas whose hidden pixels are black: dropping its alpha would
    probe with black; it is pasted into the probe images the Lens's units met instead, and titled by its name."""
    from PIL import Image

    overlay = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    overlay.paste((250, 250, 250, 255), (4, 20, 28, 26))  # a white bar
    path = tmp_path / "watermark.png"
    overlay.save(path)
    backgrounds = probe_backgrounds(wnid_lens)
    assert len(backgrounds) == 16 and all(view.size == (32, 32) for view in backgrounds)
    pasted = [Image.alpha_composite(view.convert("RGBA"), overlay).convert("RGB") for view in backgrounds]
    searched = wnid_lens.search(images=[path], top=5, rank="alignment")
    assert [(hit.unit, round(hit.score, 5)) for hit in searched] == [(hit.unit, round(hit.score, 5)) for hit in wnid_lens.search(images=pasted, top=5, rank="alignment")]
    dropped = wnid_lens.search(images=[overlay.convert("RGB")], top=5, rank="alignment")
    assert [round(hit.score, 5) for hit in searched] != [round(hit.score, 5) for hit in dropped]
    result = invoke("search", wnid_lens.path, "--image", path)
    assert result.exit_code == 0 and "watermark.png" in result.output, result.output


def test_a_transparent_image_probe_without_probe_data_is_seen_over_neutral_gray(tiny_clip_dir: Path) -> None:
    from PIL import Image

    from semlens.foundation import load_foundation_model
    from semlens.lens.probes import NEUTRAL_GRAY, ProbeEncoder

    encoder = ProbeEncoder(load_foundation_model(f"hf:{tiny_clip_dir}"))
    overlay = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    overlay.paste((250, 250, 250, 255), (4, 20, 28, 26))
    gray = Image.alpha_composite(Image.new("RGBA", (32, 32), (*NEUTRAL_GRAY, 255)), overlay).convert("RGB")
    assert encoder.images([overlay]).allclose(encoder.images([gray]))


def test_the_report_s_audit_runs_the_concept_test_as_the_audit_command_does(wnid_lens: Lens, wnid_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    args = ("report", wnid_lens.path, "--out", out, "--class", "n01440764", "--spurious", "stripes", "--test-data", f"folder:{wnid_folder}")
    result = invoke(*args, "--tint", "0,0,255", "--json")
    assert result.exit_code == 0, result.output
    audit = json.loads(result.output)["audits"][0]
    assert audit["reliance"] is not None and audit["reliance"]["samples"] == [18, 18]
    page = out.read_text()
    assert "reliance on the concept</b>: class probability" in page and "no concept test was asked for" not in page
    half = invoke(*args)  # test images but nothing to paste into them
    assert half.exit_code == 2 and "exactly one of --artifact/--tint" in half.output


def test_pictures_of_examples_show_where_the_unit_fires(wnid_lens: Lens) -> None:
    """The crop of the box around the unit's own activation (the search rule's), not the paper's box that is most
    of the view at small inputs; where even that box is the whole view, the view with the heatmap over it."""
    from semlens.report.figures import WHOLE_VIEW, firing_picture, heat_overlay

    assert wnid_lens.arrays.search_rule == "active" and wnid_lens.arrays.crop_rules[0] == "peak"
    cropped = 0
    for row, name in enumerate(wnid_lens.units("features.3")):
        for example in wnid_lens.examples.concept_examples(f"features.3/{name}"):
            picture = firing_picture(wnid_lens, f"features.3/{name}", example)
            view = wnid_lens.examples.image(example, crop=False)
            x0, y0, x1, y1 = wnid_lens.arrays.boxes("features.3", "active")[row, example.rank].tolist()
            if (x1 - x0) * (y1 - y0) < WHOLE_VIEW * view.width * view.height:
                assert picture.tobytes() == view.crop((x0, y0, x1, y1)).tobytes()
                cropped += 1
            else:
                heat = wnid_lens.arrays.heatmaps("features.3")[row, example.rank].float().numpy()
                assert picture.tobytes() == heat_overlay(view, heat, example.box).tobytes()
    assert cropped > 0
