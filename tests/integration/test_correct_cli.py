"""``semlens correct`` on a tiny Lens: the saved correction, applied by ``test-artifact --correction``, gives
exactly the "after" of the correction's own artefact test (and without it, the "before")."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from semlens.cli import app

runner = CliRunner()


def ask(*args):
    result = runner.invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("method", ["project", "finetune"])
def test_a_saved_correction_reproduces_its_measured_effect(explorer_lenses, colour_folder, tmp_path, method) -> None:
    lens, data, saved = explorer_lenses[0], f"folder:{colour_folder}", tmp_path / "fix.safetensors"
    options = ["--layer", "features.3"] if method == "project" else ["--epochs", "2"]
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
    ):
        result = runner.invoke(app, ["correct", str(lens), "--class", "red", *args])
        assert result.exit_code != 0 and words in result.output, result.output
