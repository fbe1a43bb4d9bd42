"""The explorer's correction endpoint on a tiny Lens: a projection and a fine-tuning measured before and
after on half of each class of the probe data, held out; one beyond the accuracy tolerance reported as
failed; bad requests refused with a message (never a 500)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from semlens.web.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def client(explorer_lenses):
    return TestClient(create_app(explorer_lenses))


def corner_png() -> bytes:
    """A white 6x6 artefact, its alpha the mask."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((6, 6, 4), 255, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_projection_and_finetuning_report_the_artefact_test_before_and_after(client) -> None:
    projected = client.post("/api/lenses/0/correct", data={"class": "red", "tint": "255,0,0", "layer": "features.3"})
    assert projected.status_code == 200, projected.text
    result = projected.json()
    assert result["class"] == "red" and result["method"] == "project" and result["settings"]["layer"] == "features.3"
    assert result["settings"]["held_out"] and result["samples"] == result["settings"]["train_samples"] == 15
    assert set(result["before"]) == {"samples", "clean", "artifact", "change"} and result["before"]["clean"]["accuracy"] is not None
    assert result["settings"]["test_classes"] == {"red": 5, "green": 5, "blue": 5}  # half of each class, held out
    assert result["artifact_effect"][0] == pytest.approx(result["before"]["change"]["class_probability"])
    assert result["artifact_effect"][1] == pytest.approx(result["after"]["change"]["class_probability"])
    chosen = client.post("/api/lenses/0/correct", data={"class": "green", "tint": "0,255,0"}).json()["settings"]
    trials = chosen["layer_trials"]  # every Lens layer but the output tried, the kept one among them
    assert list(trials) == ["features.0", "features.3"] and chosen["layer"] in trials
    kept = [layer for layer, trial in trials.items() if trial["accuracy_drop"] <= 0.02]
    if kept:
        assert abs(trials[chosen["layer"]]["effect"]) == min(abs(trials[layer]["effect"]) for layer in kept)
    tuned = client.post("/api/lenses/tiny.lens/correct", data={"class": "red", "method": "finetune", "epochs": "1", "at": "2,2"},
                        files={"artifact": ("corner.png", corner_png(), "image/png")})  # fmt: skip
    assert tuned.status_code == 200, tuned.text
    assert tuned.json()["settings"]["modules"] == ["head"] and tuned.json()["settings"]["epochs"] == 1


@pytest.mark.parametrize(
    ("form", "status", "words"),
    [
        ({"class": "red"}, 400, "exactly one of an image (artifact) or a tint"),
        ({"class": "red", "tint": "300,0,0"}, 400, "from 0 to 255"),
        ({"class": "purple", "tint": "1,2,3"}, 400, "purple"),
        ({"class": "red", "tint": "1,2,3", "layer": "features.9"}, 400, "no layer 'features.9'"),
        ({"class": "red", "tint": "1,2,3", "method": "prune"}, 422, "project"),
        ({"class": "red", "tint": "1,2,3", "method": "finetune", "last": "9"}, 422, "8"),
    ],
)
def test_bad_corrections_are_refused_with_a_message(client, form, status, words) -> None:
    response = client.post("/api/lenses/0/correct", data=form)
    assert response.status_code == status, response.text
    assert words in str(response.json()["detail"])


def test_both_artefacts_at_once_are_refused(client) -> None:
    response = client.post("/api/lenses/0/correct", data={"class": "red", "tint": "1,2,3"}, files={"artifact": ("a.png", corner_png(), "image/png")})
    assert response.status_code == 400 and "exactly one" in response.json()["detail"]




def test_a_correction_beyond_the_tolerance_is_reported_as_failed(client) -> None:
    form = {"class": "green", "tint": "255,255,255", "method": "finetune", "epochs": "10"}  # the random model forgets every class
    failed = client.post("/api/lenses/0/correct", data=form)
    assert failed.status_code == 200, failed.text
    result = failed.json()
    assert result["clean_accuracy"] == pytest.approx([1 / 3, 0.0]) and result["tolerance"] == 0.02
    assert result["ok"] is False and result["failed"] == "clean accuracy fell from 0.333 to 0.000, more than the tolerance of 0.02"
    allowed = client.post("/api/lenses/0/correct", data={**form, "tolerance": "0.5"}).json()
    assert allowed["ok"] is True and allowed["failed"] is None and allowed["clean_accuracy"] == result["clean_accuracy"]
