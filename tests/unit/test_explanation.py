"""Explaining one prediction, known answers on a hand-made model with a planted unit (``planted.py``):
channel 0 of ``features.1`` fires only on the white watermark and feeds the "red" logit three times over,
channel 1 fires only on red blobs, channel 3 on blue ones counts against "red"; the background noise fires nothing."""

from __future__ import annotations

import pytest
import torch
from artefact_world import PREPROCESSING
from planted import BLUE, WHITE, picture, planted_model

from semlens._util.errors import SemlensError
from semlens.analysis.explain import (
    ExplainedUnit, channel_units, error_share, group_by_label, rank_channels, relevance_shares, top_classes,
)  # fmt: skip
from semlens.model.units import LayerSpec
from semlens.relevance.explain import conditional_heatmaps, image_relevance
from semlens.relevance.lrp import RelevanceModel

RED = 1
SPECS = [LayerSpec("features.1"), LayerSpec("head")]


@pytest.fixture(scope="module")
def planted():
    model = planted_model()
    inputs = PREPROCESSING(picture())[None]
    return model, inputs, RelevanceModel(model.module, inputs)


def test_the_planted_unit_has_the_hand_computed_top_share_of_the_predicted_class(planted) -> None:
    model, inputs, lrp = planted
    result = image_relevance(lrp, inputs, None, SPECS)
    assert result.target == int(model.module(inputs).argmax()) == 0  # the default is the argmax: "red"
    # the head is linear over pooled activations a: the red logit's relevance is 3 a_white + a_red
    with torch.no_grad():
        pooled = model.module.pool(model.module.features(inputs)).flatten()
    expected = torch.tensor([3 * pooled[WHITE], pooled[RED], 0, 0]) / (3 * pooled[WHITE] + pooled[RED])
    shares = relevance_shares(result.relevance["features.1"])
    torch.testing.assert_close(shares, expected, atol=1e-4, rtol=0)
    assert float(expected[WHITE]) == pytest.approx(0.672, abs=0.01)  # 3*36*1.5 / (3*36*1.5 + 64*1.23)
    assert rank_channels(shares, torch.ones(4, dtype=torch.bool), 6).tolist() == [WHITE, RED]  # no units without share
    torch.testing.assert_close(result.probabilities.sum(), torch.tensor(1.0))


def test_a_unit_that_speaks_against_the_class_is_ranked_apart_with_its_hand_computed_negative_share(planted) -> None:
    model, _, _ = planted
    inputs = PREPROCESSING(picture(blue=4))[None]
    result = image_relevance(RelevanceModel(model.module, inputs), inputs, 0, SPECS)
    # the red logit is 3 a_white + a_red - a_blue over pooled activations a: the blue unit's relevance is -a_blue
    with torch.no_grad():
        pooled = model.module.pool(model.module.features(inputs)).flatten()
    expected = -pooled[BLUE] / (3 * pooled[WHITE] + pooled[RED] + pooled[BLUE])
    shares = relevance_shares(result.relevance["features.1"])
    assert float(shares[BLUE]) == pytest.approx(float(expected), abs=1e-4) and float(expected) < -0.05
    every = torch.ones(4, dtype=torch.bool)
    assert rank_channels(shares, every, 6, against=True).tolist() == [BLUE]  # the only unit against "red"
    assert rank_channels(shares, every, 6).tolist() == [WHITE, RED]  # those for it, as before
    assert rank_channels(shares, torch.tensor([True, True, True, False]), 6, against=True).tolist() == []  # valid units only
    heat = conditional_heatmaps(RelevanceModel(model.module, inputs), inputs, 0, "features.1", [BLUE])[0]
    assert float(heat.clamp_max(0)[2:6, 24:28].sum() / heat.clamp_max(0).sum()) > 0.99  # it spoke against on the blue pixels


def test_an_sae_layers_error_term_counts_in_its_shares() -> None:
    features, error = torch.tensor([[3.0, -1.0, 0.0], [0.0, 0.0, 0.0]]), torch.tensor([-1.0, 0.0])
    shares, rest = relevance_shares(features, error), error_share(features, error)
    assert shares[0].tolist() == pytest.approx([0.6, -0.2, 0.0]) and float(rest[0]) == pytest.approx(-0.2)
    assert float(shares[0].abs().sum() + rest[0].abs()) == pytest.approx(1.0)
    assert shares[1].abs().sum() == 0 and rest[1] == 0  # no relevance: no shares, not NaN


def test_shares_of_a_layer_sum_to_one_in_absolute_value() -> None:
    relevance = torch.tensor([[2.0, -1.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]])
    shares = relevance_shares(relevance)
    assert float(shares[0].abs().sum()) == pytest.approx(1.0) and shares[0, 1] == pytest.approx(-1 / 3.5)
    assert shares[1].abs().sum() == 0  # no relevance: no shares, not NaN


def test_a_units_conditional_heatmap_lies_on_its_features_pixels_and_carries_its_relevance(planted) -> None:
    _, inputs, lrp = planted
    result = image_relevance(lrp, inputs, 0, SPECS)
    heatmaps = conditional_heatmaps(lrp, inputs, 0, "features.1", [WHITE, RED])
    white, red = heatmaps.clamp_min(0)
    assert float(white[1:7, 1:7].sum() / white.sum()) > 0.99
    assert float(red[16:24, 16:24].sum() / red.sum()) > 0.99
    # CRP: the relevance through a unit, summed over the pixels, is the unit's relevance
    torch.testing.assert_close(heatmaps.sum(dim=(1, 2)), result.relevance["features.1"][[WHITE, RED]], atol=1e-4, rtol=1e-3)


def test_a_given_class_is_explained_and_a_class_out_of_range_is_refused(planted) -> None:
    _, inputs, lrp = planted
    assert image_relevance(lrp, inputs, 2, SPECS).relevance["features.1"].abs().sum() == 0  # no blue on it
    with pytest.raises(SemlensError, match="out of range: the model has 3 outputs"):
        image_relevance(lrp, inputs, 3, SPECS)


def test_a_signed_layers_channel_is_named_once_by_the_copy_that_carries_its_relevance() -> None:
    relevance, negative = torch.tensor([0.5, -0.4, 0.3, 0.0]), torch.tensor([0.1, -0.3, 0.25, 0.0])
    assert channel_units(relevance, negative, signed=True).tolist() == [0, 5, 6, 3]
    assert channel_units(relevance, negative, signed=False).tolist() == [0, 1, 2, 3]


def test_relevance_of_a_pre_activation_lies_where_it_is_positive(planted) -> None:
    """The planted unit's pre-ReLU map is negative almost everywhere, yet its relevance lies on the watermark,
    where it is positive: a signed layer names the channel by its positive copy."""
    _, inputs, lrp = planted
    result = image_relevance(lrp, inputs, 0, [LayerSpec("features.0", signed=True)])
    assert result.scores["features.0"][WHITE] < 0 < result.relevance["features.0"][WHITE]  # mean pooled: negative
    assert result.negative["features.0"][WHITE] == 0
    assert channel_units(result.relevance["features.0"], result.negative["features.0"], True)[WHITE] == WHITE


def test_only_valid_units_with_a_positive_share_are_ranked() -> None:
    shares = torch.tensor([0.4, 0.3, -0.2, 0.1, 0.0])
    valid = torch.tensor([False, True, True, True, True])
    assert rank_channels(shares, valid, 5).tolist() == [1, 3]
    assert rank_channels(shares, valid, 1).tolist() == [1]


def test_units_are_grouped_by_label_and_unlabelled_ones_stand_alone() -> None:
    units = [
        ExplainedUnit("l/0", 0.3, 1.0, "stripes"), ExplainedUnit("l/1", 0.25, 1.0, None),
        ExplainedUnit("l/2", 0.2, 1.0, "stripes"), ExplainedUnit("l/3", 0.1, 1.0, None),
    ]  # fmt: skip
    groups = group_by_label(units)
    assert [(group.label, round(group.share, 6), [unit.unit for unit in group.units]) for group in groups] == [
        ("stripes", 0.5, ["l/0", "l/2"]), (None, 0.25, ["l/1"]), (None, 0.1, ["l/3"]),
    ]  # fmt: skip


def test_top_classes_are_the_most_probable_first() -> None:
    ranked = top_classes(torch.tensor([0.1, 0.6, 0.3]), ["a", "b", "c"], top=2)
    assert [(entry["class"], entry["index"]) for entry in ranked] == [("b", 1), ("c", 2)]
    assert top_classes(torch.tensor([0.2, 0.8]), None)[0]["class"] == "1"
