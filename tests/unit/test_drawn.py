"""Concepts semlens draws for a search (``interventions.drawn``): which queries name one, what is drawn, and the
model's response scored by the variant that raises a unit most, and a drawing's shape control."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from semlens.interventions.drawn import COLOURS, PLACEMENTS, blurred, control, drawn_concept, named_concept, scattered, strongest_variant
from semlens.interventions.effects import RELIANCE_ODDS, SHAPE_ODDS, activation_aucs, concept_tests, pasted_in_turn, variant_aucs
from semlens.model.loading import LoadedModel
from semlens.model.preprocess import Preprocessing
from semlens.model.units import LayerSpec


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("watermark", ("watermark", [])), ("Watermarks", ("watermark", [])), ("copyright text", ("watermark", [])),
        ("a red frame", ("frame", ["red"])), ("gray borders", ("frame", ["grey"])), ("emblem", ("logo", [])),
        ("orange tint", ("colour cast", ["orange"])), ("colour cast", ("colour cast", [])), ("scale bar", ("ruler", [])),
        ("bicycle frame", None), ("text frame", None), ("white", None), ("dog", None), ("", None), ("scale", None),
    ],
)  # fmt: skip
def test_a_query_names_a_drawn_concept_only_in_its_names_colours_and_filler_words(query, named) -> None:
    assert named_concept(query) == named


def test_a_concept_is_drawn_in_its_colours_the_same_every_time_inside_the_view() -> None:
    frames = drawn_concept("frame", (48, 40))
    assert frames.name == "frame" and list(frames.variants) == list(COLOURS)
    assert all(len(placements) == PLACEMENTS for placements in frames.variants.values())
    red = drawn_concept("red frame", (48, 40))
    assert list(red.variants) == ["red"] and red.variants["red"] == frames.variants["red"]  # seeded by concept and colour
    background = Image.new("RGB", (48, 40), (0, 128, 0))
    for text in ("watermark", "frame", "logo", "ruler"):
        for artefact in drawn_concept(text, (48, 40)).variants["white" if text != "ruler" else "yellow"]:
            region = artefact.region(48, 40)
            pasted = np.asarray(artefact.apply(background))
            assert region is not None and region.any() and not region.all()  # something drawn, and the view shows
            assert (pasted[region.numpy()] != (0, 128, 0)).any(axis=-1).any()
    cast = drawn_concept("tint", (48, 40))
    assert "white" not in cast.variants and all(artefact.region(48, 40) is None for artefact in cast.variants["blue"])
    assert "12 colours" in frames.describe() and "(red)" in red.describe()


class _RedDetector(torch.nn.Module):
    """One unit: how red the image is (r - g - b, normalised pixels), mean-pooled."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 1), torch.nn.ReLU())
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1))
            self.features[0].bias.fill_(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def test_a_units_response_is_measured_variant_by_variant() -> None:
    """A red frame raises the red detector on every image (AUC 1); blue frames and green ones lower it. Pooled over the
    variants it scores under 1; by variant, 1 for the red."""
    model = LoadedModel(_RedDetector().eval(), "red", Preprocessing(input_size=32, resize=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)), ["a"])
    rng = np.random.default_rng(0)
    backgrounds = [Image.fromarray(rng.integers(0, 80, (32, 32, 3), dtype=np.uint8)) for _ in range(8)]
    frames = drawn_concept("frame", (32, 32))
    shown = [frames.variants[colour][index].apply(view) for colour in ("blue", "red", "green") for index, view in enumerate(backgrounds)]
    spec = [LayerSpec("features.1")]
    pooled = activation_aucs(model, backgrounds, shown, spec)["features.1"]
    by_variant = variant_aucs(model, backgrounds, shown, spec, groups=(8, 8, 8))["features.1"]
    assert by_variant.shape == (3, 1) and by_variant[1].tolist() == [1.0] and by_variant[[0, 2]].max() < 0.5 and float(pooled) < 0.9


class _RedClassifier(torch.nn.Module):
    """Two classes: "plain" (logit 0) and "red" (logit: 20 x the image's mean redness, r - g - b clipped at 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.detector = _RedDetector()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = 20 * self.detector(x).mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(red), red], dim=1)


def test_an_audit_draws_the_variant_that_raises_the_class_most() -> None:
    """Of the twelve frame colours, the red one raises the "red" class's probability most; for the "plain" class, a
    colour that leaves redness as it is (every colour but red and the warm ones lowers or keeps it)."""
    model = LoadedModel(_RedClassifier().eval(), "red", Preprocessing(input_size=32, resize=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)), ["plain", "red"])
    rng = np.random.default_rng(0)
    views = [Image.fromarray(rng.integers(0, 80, (32, 32, 3), dtype=np.uint8)) for _ in range(8)]
    frames = drawn_concept("frame", (32, 32))
    colour, probabilities = strongest_variant(model, views, 1, frames)
    assert colour == "red" and list(probabilities) == list(COLOURS)
    assert probabilities["red"] > max(p for name, p in probabilities.items() if name != "red")
    plain, _ = strongest_variant(model, views, 0, frames)
    assert plain not in ("red", "orange", "pink")
    assert strongest_variant(model, views, 1, drawn_concept("blue frame", (32, 32)))[0] == "blue"  # a named colour alone


def test_a_frames_control_has_its_pixels_in_other_places() -> None:
    """The scattered frame covers as many pixels in the same colour, no longer all round the border; the same every
    time; a colour cast, whose concept is its colour, has no control."""
    frames = drawn_concept("red frame", (64, 64)).variants["red"]
    control_frames = scattered(frames, (64, 64))
    assert len(control_frames) == len(frames) and control_frames == scattered(frames, (64, 64))
    for drawn, moved in zip(frames, control_frames):
        before, after = np.asarray(drawn.overlay(64, 64)), np.asarray(moved.overlay(64, 64))
        assert (after[..., 3] > 0).sum() == (before[..., 3] > 0).sum()
        assert {tuple(pixel) for pixel in after[after[..., 3] > 0][:, :3]} == {COLOURS["red"]}
        assert (after[0, :, 3] > 0).mean() < 0.9 and (before[0, :, 3] > 0).all()  # the top row: all frame before, not after
        assert (after[8:-8, 8:-8, 3] > 0).any()  # and some of it away from the border
    assert control("frame", frames, (64, 64))[0] == control_frames and "scattered" in control("frame", frames, (64, 64))[1]
    assert control("colour cast", drawn_concept("tint", (64, 64)).variants["red"], (64, 64)) is None


def test_a_watermarks_control_is_its_colour_blurred_where_it_is() -> None:
    """Text is a texture of strokes that scattering keeps: a watermark's control is blurred, its colour kept (opacity
    weighted: no dark fringe), spread about the same place."""
    texts = drawn_concept("white watermark", (64, 64)).variants["white"]
    assert control("watermark", texts, (64, 64))[0] == blurred(texts, (64, 64)) and "blurred" in control("watermark", texts, (64, 64))[1]
    for text, smudge in zip(texts, blurred(texts, (64, 64))):
        before, after = np.asarray(text.overlay(64, 64)).astype(float), np.asarray(smudge.overlay(64, 64)).astype(float)
        # its opacity spread (what falls past the view's edge is lost), no stroke left opaque
        assert 0.6 * before[..., 3].sum() < after[..., 3].sum() <= 1.01 * before[..., 3].sum() and after[..., 3].max() < 0.6 * before[..., 3].max()
        seen = after[..., 3] > 8
        assert (after[seen][:, :3] >= 235).all()  # white where it shows
        grid = np.indices((64, 64)).reshape(2, -1)
        centre_before, centre_after = (grid @ before[..., 3].ravel()) / before[..., 3].sum(), (grid @ after[..., 3].ravel()) / after[..., 3].sum()
        assert np.abs(centre_after - centre_before).max() < 64 / 8  # within the blur's sigma of where the text was


class _RedBorderClassifier(torch.nn.Module):
    """Two classes: "plain" (logit 0) and "framed" (logit: 8 x the mean redness of the outer 3 pixels of a 32 px view)."""

    def __init__(self) -> None:
        super().__init__()
        self.detector = _RedDetector()
        border = torch.ones(32, 32)
        border[3:-3, 3:-3] = 0
        self.register_buffer("border", border / border.sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = 8 * (self.detector(x)[:, 0] * self.border).sum(dim=(1, 2))
        return torch.stack([torch.zeros_like(red), red], dim=1)


@pytest.mark.parametrize(("classifier", "relies"), [(_RedClassifier, False), (_RedBorderClassifier, True)])
def test_a_class_relies_on_a_drawing_only_where_its_shape_raises_the_class_more_than_its_pixels_scattered(classifier, relies) -> None:
    """Red frames raise both classes. The redness classifier is raised as much by the frame's pixels scattered (the
    same red over the same area): it answers to the colour, not to a frame. The border classifier answers to red on the
    border, which the scattered pixels mostly leave: it relies on the frame."""
    model = LoadedModel(classifier().eval(), "red", Preprocessing(input_size=32, resize=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)), ["plain", "red"])
    rng = np.random.default_rng(0)
    views = [Image.fromarray(rng.integers(0, 80, (32, 32, 3), dtype=np.uint8)) for _ in range(16)]
    frames = drawn_concept("red frame", (32, 32)).variants["red"]
    with_frame, with_scattered = pasted_in_turn(frames, views), pasted_in_turn(control("frame", frames, (32, 32))[0], views)
    reliance, tests = concept_tests(model, views, with_frame, 1, [], control=with_scattered)
    assert reliance["log_odds"] >= math.log(RELIANCE_ODDS) and tests == []  # the frame raises the class either way
    assert (reliance["log_odds_over_control"] >= math.log(SHAPE_ODDS)) == relies and reliance["relies"] == relies
    assert math.isclose(reliance["log_odds"], reliance["log_odds_control"] + reliance["log_odds_over_control"], rel_tol=1e-6)
    assert concept_tests(model, views, with_frame, 1, [])[0]["relies"]  # without the control: a reliance either way


@pytest.mark.parametrize(
    ("log_odds", "relies", "said"),
    [(2.0, False, "raises the class as much or more (log-odds +3.00): it answers to the colour, not to a frame"), (2.0, True, "raises the class less: log-odds +3.00"), (0.1, False, "shape): log-odds +3.00")],
)  # fmt: skip
def test_an_audit_says_what_the_drawings_control_found(log_odds, relies, said) -> None:
    from semlens.lens.audits import _control_said

    words = "its pixels scattered, its colours without its shape"
    found = _control_said({"log_odds": log_odds, "relies": relies, "log_odds_control": 3.0}, words, "frame")
    assert found.startswith(f"; its control ({words})") and found.endswith(said)
    assert _control_said({"log_odds": log_odds, "relies": relies}, "", "colour cast") == ""  # a cast has no control
