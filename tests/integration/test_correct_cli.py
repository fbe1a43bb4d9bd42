"""``semlens correct`` on a tiny Lens: the saved correction, applied by ``test-artifact --correction``, gives
exactly the "after" of the correction's own artefact test (and without it, the "before"); the corrected
model, named ``corrected:FILE``, rebuilds into a Lens that gives that "after" too, and its exported weights
load into the plain architecture; a correction that costs clean accuracy fails loudly and writes nothing;
the held-out split tests every class."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from semlens import ImageData, Lens, load_data, load_model
from semlens.cli import app

runner = CliRunner()


def ask(*args):
    result = runner.invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("method", ["project", "finetune"])
def test_a_saved_correction_reproduces_its_measured_effect(explorer_lenses, colour_folder, tmp_path, method) -> None:
    lens, data, saved = explorer_lenses[0], f"folder:{colour_folder}", tmp_path / "fix.safetensors"
    options = ["--layer", "features.3"] if method == "project" else ["--epochs", "2", "--tolerance", "1"]  # the random model: see below
    made = ask("correct", lens, "--class", "red", "--method", method, "--data", data, "--tint", "255,0,0", *options, "--out", saved, "--json")
    assert made["saved"] == str(saved) and made["method"] == method and made["samples"] == 30
    tested = ask("test-artifact", lens, "--class", "red", "--data", data, "--tint", "255,0,0", "--correction", saved, "--json")
    assert tested["correction"] == str(saved) and tested["insertion"] == made["after"]
    plain = ask("test-artifact", lens, "--class", "red", "--data", data, "--tint", "255,0,0", "--json")
    assert plain["insertion"] == made["before"]


def test_a_projection_learns_its_direction_from_concept_images(explorer_lenses, colour_folder) -> None:
    made = ask("correct", explorer_lenses[0], "--class", "red", "--tint", "255,0,0", "--layer", "features.3",
               "--concept-data", f"folder:{colour_folder / 'red'}", "--json")  # fmt: skip
    assert made["settings"]["concept"] == "concept images" and made["settings"]["layer"] == "features.3"


def test_correct_refuses_bad_input(explorer_lenses) -> None:
    lens = explorer_lenses[0]
    for args, words in (
        (["--tint", "1,2,3", "--method", "prune"], "valid: project, finetune"),
        ([], "give the artefact to correct for"),
        (["--tint", "1,2,3", "--layer", "features.9"], "no layer 'features.9'"),
        (["--tint", "1,2,3", "--tolerance", "2"], "tolerance=2.0 must lie between 0 and 1"),
    ):
        result = runner.invoke(app, ["correct", str(lens), "--class", "red", *args])
        assert result.exit_code != 0 and words in result.output, result.output


def test_exporting_weights_chooses_a_projection_they_can_hold_and_refuses_one_they_cannot_up_front(explorer_lenses, tmp_path) -> None:
    from semlens.lens.correction import _foldable

    model = load_model("py:tiny_models:tiny_cnn")
    assert _foldable(model, ["features.4", "features.3"], [], chosen=False) == ["features.3"]  # a ReLU's output: no weight holds it
    weights = tmp_path / "weights.safetensors"
    refused = runner.invoke(app, ["correct", str(explorer_lenses[0]), "--class", "red", "--tint", "255,0,0", "--layer", "features.4",
                                  "--export-weights", str(weights)])  # fmt: skip
    assert refused.exit_code == 2 and not weights.exists(), refused.output
    assert "the layer given cannot (features.4: it is a ReLU, not a linear map of the channels)" in refused.output
    assert "e.g. features.0, features.3)" in refused.output and "--method finetune" in refused.output


def test_a_correction_beyond_the_tolerance_fails_shows_its_figures_and_writes_nothing(explorer_lenses, colour_folder, tmp_path) -> None:
    saved, weights = tmp_path / "fix.safetensors", tmp_path / "weights.safetensors"
    args = ["correct", explorer_lenses[0], "--class", "red", "--method", "finetune", "--epochs", "2", "--data", f"folder:{colour_folder}",
            "--tint", "255,0,0", "--out", saved, "--export-weights", weights]  # fmt: skip
    failed = runner.invoke(app, [str(arg) for arg in args])
    assert failed.exit_code == 1, failed.output
    assert "clean accuracy" in failed.output and "0.1" in failed.output  # the figures, still shown
    assert "failed: clean accuracy fell from 0.333 to 0.100, more than the tolerance of 0.02; nothing was written" in failed.output
    as_json = runner.invoke(app, [str(arg) for arg in args] + ["--json"])
    assert as_json.exit_code == 1
    result = json.loads(as_json.stdout)
    assert result["ok"] is False and result["failed"].startswith("clean accuracy fell") and result["saved"] is result["exported"] is None
    assert not saved.exists() and not weights.exists()


def test_a_corrected_model_rebuilds_into_a_lens_and_exports_as_plain_weights(explorer_lenses, colour_folder, tiny_clip_dir, tmp_path) -> None:
    from safetensors.torch import load_file
    from tiny_models import TinyCNN

    data, saved = f"folder:{colour_folder}", tmp_path / "fix.safetensors"
    # a projection of a ReLU's output: no weight holds it, so the corrected model carries it as a hook
    made = ask("correct", explorer_lenses[0], "--class", "red", "--layer", "features.4", "--data", data, "--tint", "255,0,0", "--out", saved, "--json")
    corrected = f"corrected:{saved}:py:tiny_models:tiny_cnn"  # a py: model is followed only where the user names it
    built = runner.invoke(app, ["run", "--model", corrected, "--layer", "features.3", "--layer", "head", "--data", data,
                                "--foundation", f"hf:{tiny_clip_dir}", "--out", str(tmp_path / "corrected.lens"), "-k", "3", "--workers", "0", "--no-progress"])  # fmt: skip
    assert built.exit_code == 0, built.output
    tested = ask("test-artifact", tmp_path / "corrected.lens", "--class", "red", "--data", data, "--tint", "255,0,0", "--json")
    assert tested["insertion"] == made["after"]  # the Lens's model is the corrected one
    on_base = runner.invoke(app, ["test-artifact", str(explorer_lenses[0]), "--class", "red", "--data", data, "--tint", "1,2,3", "--model", corrected])
    assert on_base.exit_code == 2 and "a corrected model is one: build a Lens of it" in on_base.output, on_base.output
    lens = Lens.open(tmp_path / "corrected.lens")
    assert lens.sources.model().spec == corrected and lens.explain(0, top=2).to_dict()["layers"]
    # a fine-tuning exports as the architecture's own weights
    weights = tmp_path / "weights.safetensors"
    tuned = ask("correct", explorer_lenses[0], "--class", "red", "--method", "finetune", "--epochs", "1", "--tolerance", "1", "--data", data,
                "--tint", "255,0,0", "--out", tmp_path / "tuned.safetensors", "--export-weights", weights, "--json")  # fmt: skip
    assert tuned["exported"] == str(weights)
    plain = TinyCNN().eval()
    plain.load_state_dict(load_file(str(weights)))
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(plain(pixels), load_model(f"corrected:{tmp_path / 'tuned.safetensors'}:py:tiny_models:tiny_cnn").module(pixels), atol=1e-6)


class Reordered(ImageData):
    """Another data set's samples in the order ``order``."""

    def __init__(self, data: ImageData, order: list[int]) -> None:
        self.data, self.order, self.classes, self.spec = data, order, data.classes, f"{data.spec} reordered"

    def __len__(self) -> int:
        return len(self.order)

    def load(self, index: int):
        return self.data.load(self.order[index])

    def label(self, index: int) -> int | None:
        return self.data.label(self.order[index])

    def fingerprint(self) -> str:
        return f"{self.data.fingerprint()}-{self.order}"


def test_the_held_out_split_tests_every_class_where_labels_cycle(explorer_lenses, colour_folder) -> None:
    folder = load_data(f"folder:{colour_folder}")
    by_class = {name: [i for i in range(len(folder)) if folder.label(i) == folder.classes.index(name)] for name in ("red", "green", "blue")}
    # red, green, blue, green, ...: even samples hold red and blue, odd samples green alone
    order = []
    for turn in range(5):
        order += [by_class["red"][turn], by_class["green"][2 * turn], by_class["blue"][turn], by_class["green"][2 * turn + 1]]
    cycling = Reordered(folder, order)
    assert {folder.classes[cycling.label(i)] for i in range(1, len(order), 2)} == {"green"}
    lens = Lens.open(explorer_lenses[0])
    result = lens.correct("red", _tint(), layer="features.3", train=cycling, progress=False).to_dict()
    assert result["settings"]["held_out"] and result["settings"]["split_seed"] == 0
    assert sorted(result["settings"]["test_classes"].items()) == [("blue", 2), ("green", 5), ("red", 3)] or sorted(
        result["settings"]["test_classes"].items()
    ) == [("blue", 3), ("green", 5), ("red", 2)]


def _tint():
    from semlens.interventions.effects import Artifact

    return Artifact(tint=(255, 0, 0))


def test_test_images_without_some_of_the_classes_learnt_on_are_refused(explorer_lenses, colour_folder, tmp_path) -> None:
    shutil.copytree(colour_folder / "red", tmp_path / "reds" / "red")
    result = runner.invoke(app, ["correct", str(explorer_lenses[0]), "--class", "red", "--tint", "1,2,3", "--data", f"folder:{tmp_path / 'reds'}"])
    assert result.exit_code == 2 and "classes 'green', 'blue' are among the learning images but not the test images" in result.output, result.output
