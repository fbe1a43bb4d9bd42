"""Known answers for the calibrated audit: alignments judged against their layer's null, verdicts with a
margin, "both" in the flagged share, signed layers counted once, image probes judged by the same null, and the
concept test on a tiny model whose planted unit reads the artefact (and on one that ignores it), and where
the test finds a unit firing (NetDissect's IoU with the pasted artefact)."""

from __future__ import annotations

import artefact_world as world
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from semlens import LoadedModel
from semlens._util.errors import SemlensError
from semlens.analysis.alignment import alignment
from semlens.analysis.audit import (
    AlignmentRule,
    AuditedLayers,
    audit_layers,
    audit_units,
    null_stats,
    null_z,
    relevance_by_verdict,
    tight_shift,
    verdicts,
)
from semlens.interventions.effects import (
    CONFIRM_AUC,
    CONFIRM_SHARE,
    LOCATE_ENOUGH,
    LOCATE_IOU,
    LOCATE_PRECISION,
    LOCATE_SHARE,
    Artifact,
    UnitToTest,
    concept_tests,
    located,
    rank_auc,
)
from semlens.model.receptive import LOCAL_CONCENTRATION
from semlens.model.units import LayerSpec


def test_null_z_is_the_robust_z_among_the_units_of_the_same_layer():
    # layer 0: nine units at the null level (median 0.05, MAD 0.01) and one planted unit at 0.20;
    # layer 1: the same values shifted by 0.3, so that a layer whose units all align more flags nothing
    level = torch.tensor([0.03, 0.04, 0.04, 0.05, 0.05, 0.05, 0.06, 0.06, 0.07, 0.20])
    alignments = torch.cat([level, level + 0.3])[:, None]
    groups = torch.tensor([0] * 10 + [1] * 10)
    z = null_z(alignments, groups, torch.ones(20, dtype=torch.bool))[:, 0]
    scale = 1.4826 * 0.01
    assert z[9].item() == pytest.approx(0.15 / scale, rel=1e-4) and z[19].item() == pytest.approx(0.15 / scale, rel=1e-4)
    assert z[3].item() == pytest.approx(0.0, abs=1e-4) and z[:9].abs().max() < 2
    assert verdicts(torch.zeros(20), z) == (["unexpected"] * 9 + ["spurious"]) * 2
    # the null is made of members only: without the planted unit among them nothing changes here,
    # with a layer of identical alignments the spread is floored (no division by zero)
    members = torch.ones(20, dtype=torch.bool)
    members[9] = False
    assert torch.allclose(null_z(alignments, groups, members), null_z(alignments, groups, torch.ones(20, dtype=torch.bool)))
    flat = null_z(torch.full((5, 1), 0.3), torch.zeros(5, dtype=torch.long), torch.ones(5, dtype=torch.bool))
    assert torch.equal(flat, torch.zeros(5, 1))


def test_verdicts_need_the_null_and_the_margin():
    z_valid = torch.tensor([5.0, 0.5, 4.0, 4.5, 2.5, 0.0, float("nan")])
    z_spur = torch.tensor([0.0, 4.0, 4.5, 2.0, 2.9, 3.5, 9.0])
    rule = AlignmentRule(z=3.0, margin=1.0)
    assert verdicts(z_valid, z_spur, rule) == ["valid", "spurious", "both", "valid", "unexpected", "spurious", "unexpected"]
    # a unit just over the null with the other kind close behind is "both", not one-sided
    assert verdicts(torch.tensor([2.6]), torch.tensor([3.2]), rule) == ["both"]
    assert verdicts(torch.tensor([2.6]), torch.tensor([3.2]), AlignmentRule(z=3.0, margin=0.5)) == ["spurious"]


def test_a_spurious_concept_counts_only_where_the_unit_looks():
    # one layer, MAD 0.01 (spread 0.014826): units 8 and 9 align with the watermark (0.20) in their usual boxes;
    # in the tight boxes unit 8 keeps it (0.19, a shift of -0.67 spreads), unit 9 loses it (0.17, -2.02):
    # its examples show the watermark beside what it looks at
    usual = torch.tensor([0.03, 0.04, 0.04, 0.05, 0.05, 0.05, 0.06, 0.06, 0.20, 0.20])[:, None]
    tight = usual.clone()
    tight[8], tight[9] = 0.19, 0.17
    members = torch.ones(10, dtype=torch.bool)
    shift = tight_shift(usual, tight, null_stats(usual, torch.zeros(10, dtype=torch.long), members)[1])[:, 0]
    assert shift[8].item() == pytest.approx(-0.01 / (1.4826 * 0.01), rel=1e-3)
    assert shift[9].item() == pytest.approx(-0.03 / (1.4826 * 0.01), rel=1e-3) and shift[:8].abs().max() < 1e-5
    z_spur = null_z(usual, torch.zeros(10, dtype=torch.long), members)[:, 0]
    rule = AlignmentRule(z=3.0, margin=1.0)
    assert verdicts(torch.zeros(10), z_spur, rule, shift >= -rule.margin)[8:] == ["spurious", "unexpected"]
    # a unit whose class alignment is also high stays valid when the spurious concept is not where it looks
    assert verdicts(torch.tensor([4.0, 4.0]), torch.tensor([9.0, 9.0]), rule, torch.tensor([True, False])) == ["spurious", "valid"]
    # the audit records each unit's shift and judges by it
    result = audit([0.0, 0.0], [9.0, 9.0], [0.1, 0.1], shift=torch.tensor([-0.5, -2.0]))
    assert [(u.unit, u.verdict, u.tight_shift) for u in result.units] == [("l/0", "spurious", -0.5), ("l/1", "unexpected", -2.0)]
    assert audit([0.0], [9.0], [0.1]).units[0].tight_shift is None  # a Lens without tight boxes: no shift, as before


def test_a_units_best_concept_by_its_responses_decides_where_it_is_an_audited_concept():
    # l/0: its examples stand out with the watermark, but its responses name the star: valid; l/1: at the null
    # level, named the watermark: spurious; l/2: named a concept the audit did not ask about: the alignment
    # rule judges it; l/3: no responses kept (None): likewise
    labels = ["star", "watermark", "grass", None]
    result = audit([0.1, 0.0, 0.2, 0.1], [6.0, 0.3, 6.0, 6.0], [0.4, 0.3, 0.2, 0.1], labels=labels)
    assert [(u.unit, u.verdict, u.responses_label) for u in result.units] == [
        ("l/0", "valid", "star"), ("l/1", "spurious", "watermark"), ("l/2", "spurious", "grass"), ("l/3", "spurious", None)
    ]  # fmt: skip
    alone = audit([0.1, 0.0, 0.2, 0.1], [6.0, 0.3, 6.0, 6.0], [0.4, 0.3, 0.2, 0.1], labels=labels, rule=AlignmentRule(by_label=False))
    assert [u.verdict for u in alone.units] == ["spurious", "unexpected", "spurious", "spurious"]  # the alignment alone
    # a signed layer's channel takes the label of the copy that names it (the better aligned one)
    signed = audit([0.0, 0.0], [0.2, 0.1], [0.4, 0.3], units=["l/0", "l/0-"], channel=torch.tensor([0, 0]), labels=["watermark", "star"])
    assert [(u.unit, u.verdict, u.responses_label) for u in signed.units] == [("l/0", "spurious", "watermark")]


def test_audit_layers_judges_each_unit_against_its_own_layer_and_merges_a_signed_channel():
    # layer a: unit a/0 stands out of its 12 units; layer b (signed, 6 channels): every unit aligns as high as
    # a/0, b/0- the better of its channel's copies, and the null of its own layer finds nothing there
    spur_a = torch.cat([torch.tensor([0.30]), torch.linspace(0.0, 0.02, 11)])
    spur_b = torch.cat([torch.full((6,), 0.30) + torch.linspace(0.0, 0.01, 6), torch.tensor([0.31]), torch.full((5,), 0.30) + torch.linspace(0.0, 0.01, 5)])
    units = [f"a/{i}" for i in range(12)] + [f"b/{i}" for i in range(6)] + [f"b/{i}-" for i in range(6)]
    share = torch.zeros(24).index_fill(0, torch.tensor([0, 12, 18]), 0.5)
    layers = AuditedLayers(
        units, sizes=[12, 12], bases=[12, 6], examples=torch.ones(24, dtype=torch.bool), max_share=share, mean_share=share,
        a_valid=torch.zeros(24, 1), a_spur=torch.cat([spur_a, spur_b])[:, None],
    )
    result = audit_layers("star", layers, ["star"], ["watermark"])
    assert [(unit.unit, unit.verdict, unit.copies) for unit in result.units] == [("a/0", "spurious", []), ("b/0-", "unexpected", ["b/0"])]
    assert result.units[1].z_spur < result.units[0].z_spur


def test_a_wide_layers_default_cut_falls_with_its_width_and_a_narrow_one_keeps_the_papers():
    """A 320-channel layer whose relevance is spread (every share under 2.8 %) keeps the units that stand out of the
    even share: its cut is 2.8 % x 64 / 320; a 64-channel layer keeps the paper's 2.8 %; a cut the user gives holds
    for every layer."""
    wide = torch.full((320,), 0.9 / 315).index_fill(0, torch.tensor([3, 7, 11, 40, 99]), 0.019)  # the largest 0.019
    narrow = torch.full((64,), 0.01).index_fill(0, torch.tensor([5]), 0.03).index_fill(0, torch.tensor([6]), 0.02)
    share = torch.cat([wide, narrow])
    units = [f"blocks.15/{i}" for i in range(320)] + [f"head/{i}" for i in range(64)]
    layers = AuditedLayers(
        units, sizes=[320, 64], bases=[320, 64], examples=torch.ones(384, dtype=torch.bool), max_share=share, mean_share=share,
        a_valid=torch.zeros(384, 1), a_spur=torch.zeros(384, 1),
    )
    result = audit_layers("cat", layers, ["cat"], ["frame"])
    assert sorted(unit.unit for unit in result.units) == ["blocks.15/11", "blocks.15/3", "blocks.15/40", "blocks.15/7", "blocks.15/99", "head/5"]
    assert result.cuts == pytest.approx({"blocks.15": 0.028 * 64 / 320, "head": 0.028}) and result.cut == 0.028
    assert "blocks.15" in result.cut_text and result.to_dict()["cuts"] == result.cuts
    given = audit_layers("cat", layers, ["cat"], ["frame"], cut=0.028)
    assert [unit.unit for unit in given.units] == ["head/5"] and set(given.cuts.values()) == {0.028}


def test_both_is_counted_in_the_flagged_share():
    shares = relevance_by_verdict(torch.tensor([0.5, 0.3, 0.2, -0.4]), ["valid", "both", "spurious", "spurious"])
    assert shares == pytest.approx({"valid": 0.5, "spurious": 0.2, "both": 0.3, "unexpected": 0.0, "spurious_or_both": 0.5})


def audit(z_valid, z_spur, max_share, **kwargs):
    units = kwargs.pop("units", [f"l/{i}" for i in range(len(z_valid))])
    z_valid, z_spur, max_share = torch.tensor(z_valid), torch.tensor(z_spur), torch.tensor(max_share)
    return audit_units("star", units, max_share, max_share / 2, z_valid / 10, z_spur / 10, z_valid, z_spur,
                       ["star"], ["watermark"], cut=0.028, **kwargs)  # fmt: skip


def test_audit_units_flags_a_planted_unit_and_not_those_at_the_null_level():
    result = audit([0.1, 5.0, -0.3, 0.5], [6.0, 0.2, 0.4, 1.9], [0.4, 0.3, 0.2, 0.1])
    assert [(unit.unit, unit.verdict) for unit in result.units] == [
        ("l/0", "spurious"), ("l/1", "valid"), ("l/2", "unexpected"), ("l/3", "unexpected")
    ]  # fmt: skip
    assert result.shares["spurious"] == pytest.approx(0.4) and result.shares["spurious_or_both"] == pytest.approx(0.4)
    assert result.to_dict()["rule"] == {"null": result.rule.to_dict()["null"], "z": 3.0, "margin": 1.0, "by_label": True, "by_location": True, "by_rise": True, "locate_share": LOCATE_SHARE, "locate_enough": LOCATE_ENOUGH}
    assert result.to_dict()["units"][0]["z_spur"] == pytest.approx(6.0)


def test_the_spurious_share_as_tested_counts_confirmed_findings_only():
    result = audit([0.1, 0.0, 5.0], [6.0, 5.0, 0.2], [0.4, 0.2, 0.2])  # l/0 and l/1 flagged spurious: 3/4 of the relevance
    assert result.spurious_share == pytest.approx(0.75) and result.to_dict()["spurious_share"] == pytest.approx(0.75)  # no test: as flagged
    result.reliance = {"relies": True}
    result.units[0].test, result.units[1].test = {"confirmed": True}, {"confirmed": False}
    assert result.confirmed == ["l/0"] and result.spurious_share == pytest.approx(0.5)  # l/1's test failed
    result.reliance = {"relies": False}  # a class that ignores the concept: no finding holds
    result.units[0].test = {"confirmed": False}
    assert result.shares["spurious"] == pytest.approx(0.75) and result.spurious_share == 0.0


def test_the_detectors_are_the_tested_units_that_detect_the_concept_flagged_or_not():
    result = audit([0.1, 0.0, 5.0], [6.0, 5.0, 0.2], [0.4, 0.2, 0.2])  # l/0 and l/1 flagged, l/2 valid
    result.reliance = {"relies": True}
    result.units[0].test = {"detects": True, "confirmed": True}
    result.units[1].test = {"detects": False, "confirmed": False}
    result.units[2].test = {"detects": True, "confirmed": False}  # a redundant detector the foundation model does not see
    assert result.detectors == ["l/0", "l/2"] and result.to_dict()["detectors"] == ["l/0", "l/2"]
    assert result.confirmed == ["l/0"] and result.carriers == [] and result.spurious_share == pytest.approx(0.5)  # l/2 detecting carries no share
    result.units[0].test = {"confirmed": True}  # a test stored before detectors were recorded
    assert result.detectors == ["l/2"]


def test_a_flagged_unit_firing_away_from_the_pasted_concept_loses_its_flag():
    # l/0 and l/1 flagged (l/1 also aligned with the valid concept: "both"), l/2 valid: relevance 0.4, 0.2, 0.2
    result = audit([0.1, 5.5, 5.0], [6.0, 6.0, 0.2], [0.4, 0.2, 0.2])
    assert [u.verdict for u in result.units] == ["spurious", "both", "valid"]
    tests = [{"located": False, "confirmed": False}, {"located": False, "confirmed": False}, {"located": None, "confirmed": False}]
    for unit, test in zip(result.units, tests):
        unit.test = test
    result.revise_by_test()
    # each falls back to its valid alignment: none for l/0 (unexpected), z 5.5 for l/1 (valid)
    assert [(u.verdict, u.verdict_before_test) for u in result.units] == [("unexpected", "spurious"), ("valid", "both"), ("valid", None)]
    assert result.unlocated == ["l/0", "l/1"] and result.to_dict()["unlocated"] == ["l/0", "l/1"] and result.judged_by_location
    assert result.shares["spurious_or_both"] == 0.0 and result.shares["valid"] == pytest.approx(0.5) and result.shares["unexpected"] == pytest.approx(0.5)
    located = audit([0.1, 5.5], [6.0, 6.0], [0.4, 0.2])
    located.units[0].test, located.units[1].test = {"located": True}, {"located": False}
    located.revise_by_test()
    assert [u.verdict for u in located.units] == ["spurious", "valid"] and located.judged_by_location
    kept = audit([0.1], [6.0], [0.4], rule=AlignmentRule(by_location=False))
    kept.units[0].test = {"located": False}
    kept.revise_by_test()
    assert kept.units[0].verdict == "spurious" and not kept.unlocated and not kept.judged_by_location


def test_a_flagged_unit_the_concept_does_not_raise_loses_its_flag():
    # l/0 and l/1 flagged spurious, l/2 "both" (z_valid 5.5): the concept raises l/1 only; l/0 fires where it is
    # pasted but the concept does not raise it; l/2 was tested with images that show the concept (no location)
    result = audit([0.1, 0.1, 5.5], [6.0, 6.0, 6.0], [0.4, 0.2, 0.2])
    assert [u.verdict for u in result.units] == ["spurious", "spurious", "both"]
    tests = [{"raised": False, "located": True, "confirmed": False}, {"raised": True, "located": True, "confirmed": True}, {"raised": False, "located": None, "confirmed": False}]
    for unit, test in zip(result.units, tests):
        unit.test = test
    result.revise_by_test()
    assert [(u.verdict, u.verdict_before_test) for u in result.units] == [("unexpected", "spurious"), ("spurious", None), ("valid", "both")]
    assert result.not_raised == ["l/0", "l/2"] and result.to_dict()["not_raised"] == ["l/0", "l/2"] and result.unlocated == []
    assert result.shares["spurious_or_both"] == pytest.approx(0.25)
    kept = audit([0.1], [6.0], [0.4], rule=AlignmentRule(by_rise=False))
    kept.units[0].test = {"raised": False, "located": True}
    kept.revise_by_test()
    assert kept.units[0].verdict == "spurious" and kept.not_raised == [] and kept.rule.to_dict()["by_rise"] is False


def test_a_contested_unit_raised_where_the_concept_is_pasted_is_both():
    # all three named "star" (the class) by their crop responses; l/0 and l/1 aligned with the watermark (z 6):
    # contested, so tested; l/2 at the null level: valid by its name alone, not tested
    result = audit([0.1, 0.1, 0.1], [6.0, 6.0, 0.3], [0.4, 0.2, 0.2], labels=["star", "star", "star"])
    assert [(u.verdict, u.contested) for u in result.units] == [("valid", True), ("valid", True), ("valid", False)]
    assert [u.unit for u in result.to_test()] == ["l/0", "l/1"]
    assert result.to_test(located=False) == []  # where the test cannot see where they fire, they could never become "both"
    # l/0 fires where the watermark is pasted and is raised by it; l/1 fires there but the watermark hardly raises it
    result.units[0].test = {"located": True, "raised": True, "confirmed": False}
    result.units[1].test = {"located": True, "raised": False, "confirmed": False}
    result.revise_by_test()
    assert [(u.verdict, u.verdict_before_test) for u in result.units] == [("both", "valid"), ("valid", None), ("valid", None)]
    assert result.both_by_location == ["l/0"] and result.to_dict()["both_by_location"] == ["l/0"] and result.unlocated == []
    assert result.shares["both"] == pytest.approx(0.5) and result.shares["spurious_or_both"] == pytest.approx(0.5)
    # without the label evidence nothing is contested (the alignment flags them); without the location rule nothing changes
    alone = audit([0.1, 0.1], [6.0, 6.0], [0.4, 0.2], labels=["star", "star"], rule=AlignmentRule(by_label=False))
    assert [(u.verdict, u.contested) for u in alone.units] == [("spurious", False), ("spurious", False)]
    kept = audit([0.1], [6.0], [0.4], labels=["star"], rule=AlignmentRule(by_location=False))
    kept.units[0].test = {"located": True, "raised": True}
    kept.revise_by_test()
    assert kept.units[0].verdict == "valid" and kept.both_by_location == []


def test_located_iou_is_netdissects_iou_of_the_top_activations_with_the_pasted_region():
    # 4 images, 10x10 maps at the region's size (no up-sampling): 792 small values below 1, then per unit 4
    # cells at 4.0 and 4 at 5.0 on the images with the concept; the 0.995 quantile of the 800 values (with and
    # without) is the 796th: 4.0, so the 8 cells at or above it fire. The region is cells (0, 0) and (0, 1).
    region = torch.zeros(10, 10, dtype=torch.bool)
    region[0, :2] = True
    maps_with = torch.rand(4, 3, 10, 10, generator=torch.Generator().manual_seed(0)) * 0.9
    maps_without = torch.rand(4, 3, 10, 10, generator=torch.Generator().manual_seed(1)) * 0.9
    maps_with[:, 0, 0, 0], maps_with[:, 0, 0, 1] = 5.0, 4.0  # unit 0 fires where the concept is
    maps_with[:, 1, 0, 0], maps_with[:, 1, 5, 5] = 5.0, 4.0  # unit 1: half of its top cells there
    maps_with[:, 2, 9, 9], maps_with[:, 2, 9, 8] = 5.0, 4.0  # unit 2 is raised as much, in the far corner
    ious = located(maps_with, maps_without, region).iou
    # 8 fired cells, 8 region cells (2 on each of 4 images): unit 0 8 / 8, unit 1 4 / (8 + 8 - 4), unit 2 none
    assert ious.tolist() == pytest.approx([1.0, 1 / 3, 0.0])
    # a unit silent (0) on all but 0.4 % of its cells: its quantile is 0, and only the cells above it fire
    sparse = torch.zeros(4, 1, 10, 10)
    sparse[:3, 0, 0, 0] = 1.0
    assert located(sparse, torch.zeros(4, 1, 10, 10), region).iou.tolist() == pytest.approx([3 / 8])
    assert torch.equal(located(maps_with, maps_without, region, cells=1000).iou, ious)  # image by image: the same
    # the same region given image by image is the same test; a placement of its own per image moves the concept
    assert torch.equal(located(maps_with, maps_without, region.expand(4, 10, 10)).iou, ious)
    moved = region.expand(4, 10, 10).clone()
    moved[2:] = False
    moved[2:, 9, 8:] = True  # images 2 and 3 have the concept in the far corner, where unit 2 fires on every image
    # unit 0: 4 of its 8 cells on the first two images' regions; unit 2: 4 on the last two's; unit 1: 2 (images 0, 1)
    assert located(maps_with, maps_without, moved).iou.tolist() == pytest.approx([4 / 12, 2 / 14, 4 / 12])


def test_where_the_concept_is_larger_than_a_units_firing_cells_their_share_on_it_is_measured():
    # a frame one cell wide round 20x20 maps (76 cells an image, 0.19 of it) on 4 images; units silent but on a
    # few cells of the images with it (their quantile is 0: only those cells fire)
    region = torch.ones(20, 20, dtype=torch.bool)
    region[1:-1, 1:-1] = False
    maps = torch.zeros(4, 3, 20, 20)
    maps[:, 0, 0, 3:5] = 1.0  # unit 0: 2 frame cells an image, all its firing on the frame
    maps[:, 1, 9:11, 10] = 1.0  # unit 1: 2 cells in the middle, none on it
    maps[:, 2, 0, 5], maps[:, 2, 9:12, 9] = 1.0, 1.0  # unit 2: 1 of its 4 cells on it
    where = located(maps, torch.zeros_like(maps), region)
    # unit 0 keeps every firing cell on the frame, yet its IoU is 8 / 304, under NetDissect's 0.04: the frame's area caps it
    assert where.iou.tolist() == pytest.approx([8 / 304, 0.0, 4 / (16 + 304 - 4)]) and float(where.iou[0]) < LOCATE_IOU
    assert where.precision.tolist() == pytest.approx([1.0, 0.0, 0.25]) and where.larger.tolist() == [True, True, True]
    assert where.share == pytest.approx(76 / 400)
    corner = torch.zeros(20, 20, dtype=torch.bool)
    corner[0, 3] = True  # a concept smaller than where each unit fires (4 cells against 8 to 16): the IoU alone decides
    assert not located(maps, torch.zeros_like(maps), corner).larger.any()


class AwayNet(nn.Module):
    """``PlantedNet``'s watermark detector (channel 0) and a unit the watermark raises away from it (channel 1:
    the detector's maximum, written into the bottom-right 4x4 cells); the red class reads both."""

    def __init__(self) -> None:
        super().__init__()
        self.detector = nn.Sequential(nn.Conv2d(3, 1, 1), nn.ReLU())
        self.features = nn.Identity()
        self.head = nn.Linear(2, 3)
        with torch.no_grad():
            self.detector[0].weight.copy_(torch.ones(1, 3, 1, 1))
            self.detector[0].bias.fill_(-5.0)
            self.head.weight.copy_(torch.tensor([[0.5, 0.5], [0.0, 0.0], [0.0, 0.0]]))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        white = self.detector(x)
        away = torch.zeros_like(white)
        away[..., -4:, -4:] = white.amax(dim=(2, 3), keepdim=True)
        maps = self.features(torch.cat([white, away], dim=1))
        return self.head(maps.amax(dim=(2, 3)))


class TwoMapNet(nn.Module):
    """``AwayNet``'s white detector read as two channels that a subclass makes of its map (``maps``), the red class
    reading both channels' maxima with ``AwayNet``'s head."""

    def __init__(self) -> None:
        super().__init__()
        self.away = AwayNet()
        self.features = nn.Identity()

    def maps(self, white: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.features(self.maps(self.away.detector(x)))
        return self.away.head(maps.amax(dim=(2, 3)))


class CornerNet(TwoMapNet):
    """``AwayNet``'s white detector seen through two windows: channel 0 in the top-left 3x3 cells only (a part of
    a frame pasted round the image), channel 1 the detector's maximum written into the middle (where no frame is)."""

    def maps(self, white: torch.Tensor) -> torch.Tensor:
        corner, middle = torch.zeros_like(white), torch.zeros_like(white)
        corner[..., :3, :3] = white[..., :3, :3]
        middle[..., 12:20, 12:20] = white.amax(dim=(2, 3), keepdim=True)
        return torch.cat([corner, middle], dim=1)


def test_a_unit_keeping_to_part_of_a_frame_is_located_on_it_where_the_iou_cannot_say_so(views):
    without = views[0]
    side = without[0].size[0]
    frame = np.zeros((side, side, 4), dtype=np.uint8)
    frame[:2], frame[-2:], frame[:, :2], frame[:, -2:] = 255, 255, 255, 255  # white, 2 px all round
    artefact = Artifact(image=Image.fromarray(frame))
    with_frame = [artefact.apply(view) for view in without]
    model = LoadedModel(CornerNet().eval(), "test:corner", world.PREPROCESSING, world.CLASSES)
    units = [UnitToTest("features/0", LayerSpec("features"), 0, 0), UnitToTest("features/1", LayerSpec("features"), 1, 1)]
    _, (corner, middle) = concept_tests(model, without, with_frame, 0, units, region=artefact.region(side, side))
    assert corner["activation_auc"] == middle["activation_auc"] == 1.0  # the frame raises both
    # the corner unit fires on 8 of the frame's 240 cells (32 px views): IoU 8 / 240, under the bar, but all its cells are on it
    assert corner["located_iou"] < LOCATE_IOU <= corner["located_bar"]
    assert corner["located_precision"] == 1.0 and corner["located_precision_bar"] == LOCATE_PRECISION and corner["located"]
    assert middle["located_precision"] == 0.0 and middle["located"] is False


def test_the_concept_test_confirms_only_a_unit_that_fires_where_the_concept_is_pasted(views):
    watermark = Artifact(image=Image.fromarray(np.full((6, 6, 4), 255, dtype=np.uint8)), position=(1, 1))
    region = watermark.region(*views[0][0].size)
    assert region.sum() == 36 and region[1:7, 1:7].all()
    assert Artifact(tint=(255, 0, 0)).region(32, 32) is None  # a tint is everywhere
    model = LoadedModel(AwayNet().eval(), "test:away", world.PREPROCESSING, world.CLASSES)
    units = [UnitToTest("features/0", LayerSpec("features"), 0, 0), UnitToTest("features/1", LayerSpec("features"), 1, 1)]
    reliance, (detector, away) = concept_tests(model, *views, 0, units, region=region)
    assert reliance["relies"]
    # both are raised on every image (AUC 1) and carry half the reliance each; only the detector fires at the watermark
    assert detector["activation_auc"] == away["activation_auc"] == 1.0
    assert detector["located_iou"] >= LOCATE_IOU and detector["located"] and detector["detects"] and detector["confirmed"]
    assert away["located_iou"] == 0.0 and away["located"] is False and not away["detects"] and not away["confirmed"]
    _, (unlocated, _) = concept_tests(model, *views, 0, units)  # no region: location not measured, no part in the rule
    assert unlocated["located_iou"] is None and unlocated["located"] is None
    # a map whose cells each draw on the whole image cannot say where a unit fires: its location is not measured
    _, (spread, elsewhere) = concept_tests(model, *views, 0, units, region=region, localities={"features": 1.2})
    assert spread["located"] is None and elsewhere["located"] is None and elsewhere["detects"] and elsewhere["confirmed"]
    _, (_, measured) = concept_tests(model, *views, 0, units, region=region, localities={"features": LOCAL_CONCENTRATION})
    assert measured["located"] is False


class SharedNet(nn.Module):
    """Copies of ``AwayNet``'s watermark detector as channels, the red class reading each copy's maximum with its
    own weight: the class relies on the watermark through all of them, through the last copy (untested) most."""

    def __init__(self, weights: list[float]) -> None:
        super().__init__()
        self.away = AwayNet()
        self.features = nn.Identity()
        self.weights = torch.tensor(weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.features(self.away.detector(x).repeat(1, len(self.weights), 1, 1))
        red = (maps.amax(dim=(2, 3)) * self.weights).sum(dim=1, keepdim=True)
        return torch.cat([red, torch.zeros_like(red), torch.zeros_like(red)], dim=1)


def test_detectors_sharing_the_reliance_are_confirmed_when_they_carry_it_together(views):
    region = Artifact(image=Image.fromarray(np.full((6, 6, 4), 255, dtype=np.uint8)), position=(1, 1)).region(32, 32)
    tested = [UnitToTest(f"features/{i}", LayerSpec("features"), i, i) for i in range(3)]
    shared = LoadedModel(SharedNet([0.1, 0.1, 0.1, 3.0]).eval(), "test:shared", world.PREPROCESSING, world.CLASSES)
    reliance, tests = concept_tests(shared, *views, 0, tested, region=region)
    bar = CONFIRM_SHARE * reliance["log_odds"]
    # each detector removes 0.1 of the log odds ratio, under a twentieth of it alone; the three together 0.3, over it
    assert all(test["raised"] and test["located"] and test["reliance_removed"] < bar for test in tests)
    assert all(test["removed_together"] == pytest.approx(0.3, abs=1e-3) and 0.3 >= bar and test["confirmed"] for test in tests)
    assert tests[0]["together_with"] == ["features/1", "features/2"]
    # three that carry too little of it even together stay unconfirmed
    faint = LoadedModel(SharedNet([0.01, 0.01, 0.01, 3.0]).eval(), "test:faint", world.PREPROCESSING, world.CLASSES)
    reliance, tests = concept_tests(faint, *views, 0, tested, region=region)
    assert all(test["removed_together"] < CONFIRM_SHARE * reliance["log_odds"] and not test["confirmed"] for test in tests)
    assert all(test["detects"] for test in tests)  # yet each detects the watermark the class relies on


class StandInNet(SharedNet):
    """``SharedNet`` whose red class reads only the strongest of its copies (their maximum): each copy the class reads
    stands in for the others, and the copies with weight 0 are detectors the class does not read."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.features(self.away.detector(x).repeat(1, len(self.weights), 1, 1))
        red = 3.0 * (maps.amax(dim=(2, 3)) * (self.weights > 0)).amax(dim=1, keepdim=True)
        return torch.cat([red, torch.zeros_like(red), torch.zeros_like(red)], dim=1)


def test_detectors_standing_in_for_each_other_are_confirmed_by_what_each_gives_back_alone(views):
    """Three detectors the class reads through their maximum: zeroing one removes nothing (the others stand in), all
    three remove the reliance; each alone, the others zeroed, gives it back. A fourth, raised and located where the
    concept is but not read by the class, gives nothing back and stays unconfirmed."""
    region = Artifact(image=Image.fromarray(np.full((6, 6, 4), 255, dtype=np.uint8)), position=(1, 1)).region(32, 32)
    tested = [UnitToTest(f"features/{i}", LayerSpec("features"), i, i) for i in range(4)]
    model = LoadedModel(StandInNet([1.0, 1.0, 1.0, 0.0]).eval(), "test:stand-in", world.PREPROCESSING, world.CLASSES)
    reliance, tests = concept_tests(model, *views, 0, tested, region=region)
    assert reliance["relies"] and all(test["raised"] and test["located"] for test in tests)
    assert all(abs(test["reliance_removed"]) < 1e-4 for test in tests)  # alone: nothing
    assert tests[0]["removed_together"] == pytest.approx(reliance["log_odds"], abs=1e-3)  # together: all of it
    assert [test["confirmed"] for test in tests] == [True, True, True, False]
    assert all(test["restored_alone"] == pytest.approx(reliance["log_odds"], abs=1e-3) for test in tests[:3]) and abs(tests[3]["restored_alone"]) < 1e-4


class SpreadNet(TwoMapNet):
    """``AwayNet``'s watermark detector (channel 0) and a unit that fires at the watermark and as much again
    away from it (channel 1: the detector's map plus its maximum in the bottom-right 6x6 cells)."""

    def maps(self, white: torch.Tensor) -> torch.Tensor:
        spread = white.clone()
        spread[..., -6:, -6:] = white.amax(dim=(2, 3), keepdim=True)
        return torch.cat([white, spread], dim=1)


def test_a_unit_firing_where_the_concept_is_must_do_so_nearly_as_well_as_its_layers_best_or_well_enough(views):
    watermark = Artifact(image=Image.fromarray(np.full((6, 6, 4), 255, dtype=np.uint8)), position=(1, 1))
    region = watermark.region(*views[0][0].size)
    model = LoadedModel(SpreadNet().eval(), "test:spread", world.PREPROCESSING, world.CLASSES)
    detector, spread = UnitToTest("features/0", LayerSpec("features"), 0, 0), UnitToTest("features/1", LayerSpec("features"), 1, 1)
    uncapped = {"locate_enough": 1.0}  # the share alone: the bar as high as two thirds of the best asks
    _, (best, half) = concept_tests(model, *views, 0, [detector, spread], region=region, **uncapped)
    # the detector fires on the 36 watermark cells only: IoU 1; the spread unit on those and 36 more: 36 / 72
    assert best["located_iou"] == pytest.approx(1.0) and half["located_iou"] == pytest.approx(0.5)
    # both pass NetDissect's 0.04, but half of the layer's best is below two thirds of it
    assert best["located_bar"] == half["located_bar"] == pytest.approx(LOCATE_SHARE) and half["located_iou"] >= LOCATE_IOU
    assert best["located"] and half["located"] is False and not half["confirmed"]
    # by default the bar stops at LOCATE_ENOUGH: an IoU of 0.5 always suffices; a cap between 0.5 and 2/3 does not
    _, (_, capped) = concept_tests(model, *views, 0, [detector, spread], region=region)
    assert capped["located_bar"] == LOCATE_ENOUGH < capped["located_iou"] and capped["located"] and capped["confirmed"]
    _, (_, high) = concept_tests(model, *views, 0, [detector, spread], region=region, locate_enough=0.6)
    assert high["located_bar"] == pytest.approx(0.6) and high["located"] is False
    # an untested unit of the layer sets the bar as a tested one does; without it the spread unit is its layer's best
    _, (alone, peer) = concept_tests(model, *views, 0, [spread], region=region, peers=[detector], **uncapped)
    assert alone["located_bar"] == pytest.approx(LOCATE_SHARE) and alone["located"] is False
    # the peer is measured as the tested unit is, without being switched off: it detects the watermark, unconfirmed
    assert alone["zeroed"] and peer["zeroed"] is False and peer["located_iou"] == pytest.approx(1.0) and peer["located"]
    assert peer["detects"] == best["detects"] and peer["detects"] and peer["drop_with"] is None and not peer["confirmed"]
    _, (unopposed,) = concept_tests(model, *views, 0, [spread], region=region, **uncapped)
    assert unopposed["located_bar"] == pytest.approx(LOCATE_SHARE * 0.5) and unopposed["located"]
    # a lower share (AlignmentRule.locate_share) lets the spread unit pass beside the detector; 0 leaves NetDissect's 0.04
    _, (_, lower) = concept_tests(model, *views, 0, [detector, spread], region=region, locate_share=0.4, **uncapped)
    assert lower["located_bar"] == pytest.approx(0.4) and lower["located"]
    _, (_, netdissect) = concept_tests(model, *views, 0, [detector, spread], region=region, locate_share=0.0)
    assert netdissect["located_bar"] == LOCATE_IOU and netdissect["located"]
    # a peer the concept does not raise sets no bar (the spread unit alone, the watermark pasted where neither fires)
    _, (unraised, _) = concept_tests(model, views[0], views[0], 0, [spread], region=region, peers=[detector])
    assert unraised["located_bar"] == pytest.approx(LOCATE_IOU)


def test_the_location_bar_is_part_of_the_rule_and_checked():
    assert AlignmentRule().locate_share == LOCATE_SHARE and AlignmentRule(locate_share=0.5).to_dict()["locate_share"] == 0.5
    assert AlignmentRule().locate_enough == LOCATE_ENOUGH and AlignmentRule(locate_enough=0.1).to_dict()["locate_enough"] == 0.1
    for bad in (1.5, -0.1, "half", True):
        with pytest.raises(SemlensError, match="locate_share is a share of the layer's best located IoU, from 0 to 1"):
            AlignmentRule(locate_share=bad)
        with pytest.raises(SemlensError, match="locate_enough is an IoU with the pasted concept, from 0 to 1"):
            AlignmentRule(locate_enough=bad)


def test_a_signed_layer_counts_each_channel_once():
    # units 0, 1, 0-, 1-: the copies share their channel's relevance; channel 0's negative copy reads the watermark
    result = audit([0.0, 4.0, 0.5, 0.0], [0.5, 0.0, 5.0, 0.2], [0.3, 0.1, 0.3, 0.1],
                   units=["l/0", "l/1", "l/0-", "l/1-"], channel=torch.tensor([0, 1, 0, 1]))  # fmt: skip
    assert [(unit.unit, unit.verdict, unit.copies) for unit in result.units] == [
        ("l/0-", "spurious", ["l/0"]), ("l/1", "valid", ["l/1-"])
    ]  # fmt: skip
    assert result.shares["spurious"] == pytest.approx(0.75) and result.shares["valid"] == pytest.approx(0.25)


def test_small_nulls_are_named():
    result = audit([0.0], [4.0], [0.3])
    result.null_units = {"features.3": 8, "features.10": 64}
    assert result.small_nulls == {"features.3": 8} and result.to_dict()["null_units"] == result.null_units


def test_units_without_examples_of_their_own_are_left_out():
    result = audit([0.0, 4.0, 0.0], [6.0, 0.0, 6.0], [0.3, 0.2, 0.1], examples=torch.tensor([True, True, False]))
    assert [unit.unit for unit in result.units] == ["l/0", "l/1"] and result.left_out == ["l/2"]
    # a signed channel whose negative copy has no examples takes its alignments from the positive copy
    signed = audit([0.0, 0.0], [4.0, 9.0], [0.3, 0.3], units=["l/0", "l/0-"], channel=torch.tensor([0, 0]),
                   examples=torch.tensor([True, False]))  # fmt: skip
    assert [(unit.unit, unit.z_spur) for unit in signed.units] == [("l/0", 4.0)]


def test_image_probes_are_judged_against_the_null_so_a_generic_image_flags_nothing():
    # every unit's theta: a large part all images share, plus a part of its own (orthonormal, orthogonal to it)
    basis, _ = torch.linalg.qr(torch.randn(64, 41, generator=torch.Generator().manual_seed(0)))
    common, own = basis[:, 0], basis[:, 1:].T
    theta = 3 * common + own
    generic, specific = common, theta[7]  # an image like any other, and one that looks like unit 7's examples
    raw = alignment(theta, torch.stack([generic, specific]), None)
    assert torch.allclose(raw[:, 0], torch.full((40,), 3 / 10**0.5))  # by raw cosine "aligned" with every unit
    assert (raw[:, 0] > 0).all() and (raw[:, 1] > 0.89).all()
    z = null_z(raw, torch.zeros(40, dtype=torch.long), torch.ones(40, dtype=torch.bool))
    assert verdicts(torch.zeros(40), z[:, 0]).count("unexpected") == 40
    assert [unit for unit, verdict in enumerate(verdicts(torch.zeros(40), z[:, 1])) if verdict == "spurious"] == [7]


def test_rank_auc_counts_ties_half():
    positives, negatives = torch.tensor([[3.0, 1.0], [2.0, 1.0]]), torch.tensor([[1.0, 1.0], [2.0, 1.0]])
    assert rank_auc(positives, negatives).tolist() == pytest.approx([0.875, 0.5])


class PlantedNet(nn.Module):
    """A 1x1 conv with a watermark unit (channel 0: fires only on near-white pixels) and a red unit
    (channel 1: red over green and blue), max-pooled, and a head whose class 0 ("red") reads the red unit
    and, with ``reads_watermark``, the watermark unit too."""

    def __init__(self, reads_watermark: bool) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU())
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(2, 3)
        with torch.no_grad():  # inputs are normalised to (p - 0.5) / 0.25: white is 2 in every channel
            self.features[0].weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [1.0, -0.5, -0.5]])[:, :, None, None])
            self.features[0].bias.copy_(torch.tensor([-5.0, -2.0]))
            self.head.weight.copy_(torch.tensor([[1.0 if reads_watermark else 0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


def planted_model(reads_watermark: bool) -> LoadedModel:
    return LoadedModel(PlantedNet(reads_watermark).eval(), "test:planted", world.PREPROCESSING, world.CLASSES)


@pytest.fixture(scope="module")
def views():
    """Green and blue images without the watermark, and the same with a white 6x6 square pasted at (1, 1)."""
    rng = np.random.default_rng(0)
    without = [world.render(1 + index % 2, False, rng) for index in range(24)]
    watermark = Artifact(image=Image.fromarray(np.full((6, 6, 4), 255, dtype=np.uint8)), position=(1, 1))
    return without, [watermark.apply(view) for view in without]


def test_concept_test_confirms_the_unit_a_model_relies_on(views):
    units = [UnitToTest("features/0", LayerSpec("features"), 0, 0), UnitToTest("features/1", LayerSpec("features"), 1, 1)]
    reliance, (watermark, red) = concept_tests(planted_model(True), *views, 0, units)
    # the red logit goes from 0 to 1 when the watermark unit fires (white: 2 + 2 + 2 - 5): odds 1/2 -> e/2: p 1/3 -> e^1/(e^1+2)
    assert reliance["without"] == pytest.approx(1 / 3, abs=1e-4) and reliance["with"] == pytest.approx(np.e / (np.e + 2), abs=1e-4)
    assert reliance["log_odds"] == pytest.approx(1.0, abs=1e-4) and reliance["relies"]  # log(e/2) - log(1/2)
    assert watermark["activation_auc"] == 1.0 and watermark["confirmed"]
    assert watermark["drop_with"] == pytest.approx(reliance["effect"], abs=1e-4) and watermark["drop_without"] == pytest.approx(0.0)
    assert watermark["reliance_removed"] == pytest.approx(1.0, abs=1e-4)  # all of it
    assert red["activation_auc"] == 0.5 and not red["confirmed"]


def test_a_model_that_ignores_the_artefact_has_no_reliance_and_no_confirmed_unit(views):
    units = [UnitToTest("features/0", LayerSpec("features"), 0, 0)]
    reliance, (watermark,) = concept_tests(planted_model(False), *views, 0, units)
    assert reliance["effect"] == pytest.approx(0.0, abs=1e-6) and not reliance["relies"]
    assert watermark["activation_auc"] == 1.0  # it still sees the watermark, but the class does not read it
    assert watermark["reliance_removed"] == pytest.approx(0.0, abs=1e-6) and not watermark["confirmed"] and not watermark["detects"]


class NudgedNet(nn.Module):
    """Pooled watermark and red detectors (``features``, as in ``PlantedNet`` but a red blob gives 1.39) read
    by two units of ``fc``: fc/0 the watermark alone, fc/1 the red detector plus half the watermark (a class
    unit the watermark only nudges). The red class reads both, so the class relies on the watermark
    through both."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
        self.head = nn.Linear(2, 3)
        with torch.no_grad():  # normalised: white 2, the blob's class channel 0.67 and its others -1.53
            self.features[0].weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [2.0, -1.0, -1.0]])[:, :, None, None])
            self.features[0].bias.copy_(torch.tensor([-5.0, -3.0]))
            self.fc[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.5, 1.0]]))
            self.fc[0].bias.zero_()
            self.head.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]))
            self.head.bias.copy_(torch.tensor([0.0, 0.5, 0.5]))  # green and blue images are not predicted red

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.features(x)))


def test_a_class_unit_the_concept_only_nudges_is_not_confirmed():
    rng = np.random.default_rng(1)
    labels = [0 if index % 4 == 0 else 1 + index % 2 for index in range(24)]  # 6 red (the class), 6 green, 12 blue
    without = [world.render(label, False, rng) for label in labels]
    watermark = Artifact(image=Image.fromarray(np.full((6, 6, 4), 255, dtype=np.uint8)), position=(1, 1))
    with_concept = [watermark.apply(view) for view in without]
    model = LoadedModel(NudgedNet().eval(), "test:nudged", world.PREPROCESSING, world.CLASSES)
    units = [UnitToTest("fc/0", LayerSpec("fc"), 0, 0), UnitToTest("fc/1", LayerSpec("fc"), 1, 1)]
    classes = torch.tensor(labels)
    reliance, (detector, nudged) = concept_tests(model, without, with_concept, 0, units, classes=classes)
    assert reliance["log_odds"] > 1 and reliance["relies"]
    red = 2 * (170 / 255 - 0.5) / 0.25 + 2 * (0.5 - 30 / 255) / 0.25 - 3  # the red detector on the blob: 1.39
    # the watermark detector: raised by 1 on every image, not by the class; confirmed
    assert detector["concept_rise"] == pytest.approx(1.0, abs=1e-4) and detector["class_rise"] == pytest.approx(0.0, abs=1e-4)
    assert detector["confirmed"]
    # the class unit: raised by 0.5 on every image, by 1.39 on the class's own images; it passes the test's
    # other parts (AUC 1 - 3/4 * 1/4: only an other class's image with the watermark loses, to a red one without;
    # over a quarter of the reliance removed) but not the concept-over-class rule
    assert nudged["concept_rise"] == pytest.approx(0.5, abs=1e-4) and nudged["class_rise"] == pytest.approx(red, abs=1e-3)
    assert nudged["activation_auc"] == pytest.approx(13 / 16, abs=1e-4) and 13 / 16 >= CONFIRM_AUC and nudged["reliance_removed"] > 0.25 * reliance["log_odds"]
    assert not nudged["confirmed"] and not nudged["detects"] and detector["detects"]
    assert reliance["classes_from"] == "labels"
    # without labels the images are taken by the model's prediction (here the labels: red blobs are predicted red)
    unlabelled, (_, predicted) = concept_tests(model, without, with_concept, 0, units)
    assert unlabelled["classes_from"] == "predictions" and predicted["class_rise"] == pytest.approx(nudged["class_rise"], abs=1e-6)
    assert not predicted["confirmed"]
    # with fewer than CLASS_RISE_IMAGES of the class (here none) the class rise is not measured: the rule does not apply
    _, (_, others_only) = concept_tests(model, without, with_concept, 0, units, classes=torch.ones(24, dtype=torch.long))
    assert others_only["class_rise"] is None and others_only["confirmed"]
    # images of the other classes alone, and the class's own apart (a drawn test's): they measure the class rise only
    others = [index for index, label in enumerate(labels) if label != 0]
    own = [without[index] for index, label in enumerate(labels) if label == 0]
    apart, (kept, nudged_apart) = concept_tests(model, [without[i] for i in others], [with_concept[i] for i in others], 0, units, classes=classes[others], own=own)
    assert apart["samples"] == [18, 18] and nudged_apart["class_rise"] == pytest.approx(red, abs=1e-3)
    assert kept["detects"] and not nudged_apart["detects"]
    _, (_, unmeasured) = concept_tests(model, [without[i] for i in others], [with_concept[i] for i in others], 0, units, classes=classes[others])
    assert unmeasured["class_rise"] is None and unmeasured["detects"]  # without them: no class rise, the class unit passes


def test_an_artefacts_overlay_laid_over_a_view_is_the_view_with_the_artefact_inserted():
    view = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    half = np.full((6, 5, 4), 200, dtype=np.uint8)
    half[..., 3] = 128  # half transparent
    for artefact, tolerance in ((Artifact(image=Image.fromarray(half), position=(20, 3)), 1), (Artifact(tint=(255, 0, 0)), 1)):
        overlay = artefact.overlay(32, 32)
        laid = np.asarray(Image.alpha_composite(view.convert("RGBA"), overlay).convert("RGB"), dtype=int)
        assert overlay.size == (32, 32) and np.abs(laid - np.asarray(artefact.apply(view), dtype=int)).max() <= tolerance
    assert Artifact(image=Image.fromarray(half), position=(20, 3)).overlay(32, 32).getchannel("A").getbbox() == (20, 3, 25, 9)
