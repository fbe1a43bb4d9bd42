"""Labelling methods on hand-made embeddings: each formula against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from semlens._util.errors import SemlensError
from semlens.analysis.label import rank_concepts
from semlens.analysis.labelling_methods import (
    MIN_CENTRED_UNITS,
    centred_scores,
    check_method,
    clip_dissect_scores,
    contrastive_scores,
    distinct_crops,
    look_alike_negatives,
    method_scores,
    random_sets,
    set_log_likelihood,
)

E1, E2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
CONCEPTS = torch.stack([E1, E2])
NAN = torch.full((2,), float("nan"))


def test_set_log_likelihood_by_hand() -> None:
    # temperature log 3: p(c1 | e1) = 3/4, p(c2 | e1) = 1/4; weights 1 and 0.5 (p_start 1, p_end 0, k 2)
    examples = torch.stack([E1, E2]).unsqueeze(0)
    got = set_log_likelihood(examples, CONCEPTS, temperature=math.log(3), p_start=1.0, p_end=0.0)
    expected = [math.log(0.75) + math.log(0.5 + 0.5 * 0.25), math.log(0.25) + math.log(0.5 + 0.5 * 0.75)]
    assert got[0].tolist() == pytest.approx(expected, abs=1e-5)
    empty_slot = set_log_likelihood(torch.stack([E1, NAN]).unsqueeze(0), CONCEPTS, math.log(3), 1.0, 0.0)
    assert empty_slot[0].tolist() == pytest.approx([math.log(0.75), math.log(0.25)], abs=1e-5)  # counts as no example


def test_clip_dissect_subtracts_the_prior_of_other_sets() -> None:
    unit = torch.stack([E1, E2]).unsqueeze(0)  # shows both concepts
    t = math.log(3)
    alone = clip_dissect_scores(unit, CONCEPTS, unit, temperature=t)
    assert alone.abs().max() < 1e-5  # the unit's own set as the only prior: nothing is special
    prior = torch.stack([torch.stack([E1, E1]), torch.stack([E1, E1])])  # every other set shows c1
    scores = clip_dissect_scores(unit, CONCEPTS, prior, temperature=t, lam=1.0)
    own = set_log_likelihood(unit, CONCEPTS, t)[0]
    background = set_log_likelihood(prior[:1], CONCEPTS, t)[0]
    assert scores[0].tolist() == pytest.approx((own - background).tolist(), abs=1e-5)
    assert int(scores[0].argmax()) == 1  # c1 is everywhere, so the unit's label is c2
    assert int(own.argmax()) == 0  # while its likelihood alone prefers c1
    no_prior = clip_dissect_scores(unit, CONCEPTS, unit[:0], temperature=t)
    assert no_prior[0].tolist() == pytest.approx(own.tolist())


def test_look_alike_negatives_skip_the_units_own_images() -> None:
    pool = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    pool_samples = torch.tensor([10, 11, 12, 13])
    theta = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    samples = torch.tensor([[10, -1], [12, 99], [10, 11]])
    one = look_alike_negatives(theta, samples, pool, pool_samples, count=1)
    assert one[0].tolist() == pytest.approx([0.9, 0.1])  # crop 10 is its own image: the next look-alike
    assert one[1].tolist() == pytest.approx([0.1, 0.9])
    assert one[2].tolist() == pytest.approx([0.1, 0.9])  # 10 and 11 are its own: 13 is the nearest left
    two = look_alike_negatives(theta, samples, pool, pool_samples, count=2)
    assert two[0].tolist() == pytest.approx([0.5, 0.5])  # mean of 11 and 13 (cosines 0.994, 0.110 > 0)
    everything = look_alike_negatives(theta[:1], pool_samples[None], pool, pool_samples, count=2)
    assert everything[0].tolist() == [0.0, 0.0]  # nothing left: no contrast


def test_contrastive_prefers_what_the_negatives_lack() -> None:
    theta = torch.tensor([[1.0, 1.1]])
    plain = contrastive_scores(theta, torch.zeros(1, 2), CONCEPTS, None)
    norm = math.sqrt(1 + 1.1**2)
    assert plain[0].tolist() == pytest.approx([1 / norm, 1.1 / norm])  # no negatives: the alignment, c2 best
    scores = contrastive_scores(theta, E2[None], CONCEPTS, None, weight=1.0)  # its look-alikes show c2
    assert scores[0].tolist() == pytest.approx([1 / norm, 1.1 / norm - 1.0])
    halved = contrastive_scores(theta, E2[None], CONCEPTS, None, weight=0.5)
    assert halved[0].tolist() == pytest.approx([1 / norm, 1.1 / norm - 0.5])


def test_random_sets_draw_k_of_the_images() -> None:
    images = torch.arange(6.0).reshape(3, 2)
    sets = random_sets(images, k=4, count=50)
    assert sets.shape == (50, 4, 2)
    assert set(map(tuple, sets.reshape(-1, 2).tolist())) == set(map(tuple, images.tolist()))  # only those, all seen
    assert torch.equal(sets, random_sets(images, k=4, count=50))  # seeded
    with pytest.raises(SemlensError, match="at least one"):
        random_sets(images[:0], 4)


def test_distinct_crops_count_a_shared_crop_once() -> None:
    examples = torch.stack([torch.stack([E1, E2]), torch.stack([E1, NAN])])
    samples = torch.tensor([[5, 6], [5, -1]])
    rows, ids = distinct_crops(examples, samples)
    assert sorted(map(tuple, rows.tolist())) == [(0.0, 1.0), (1.0, 0.0)]
    assert sorted(ids.tolist()) == [5, 6]


def test_method_scores_and_the_alignment_gate() -> None:
    theta = torch.tensor([[1.0, 1.1], [1.0, 0.0]])
    examples = torch.stack([torch.stack([E1, E2]), torch.stack([E1, E1])])
    samples = torch.tensor([[1, 2], [3, 4]])
    valid = torch.tensor([True, True])
    null = torch.tensor([1.0, 1.0])
    for method in ("alignment", "centred", "clip-dissect", "contrastive"):
        assert method_scores(method, theta, examples, samples, valid, CONCEPTS, null).shape == (2, 2)
    with pytest.raises(SemlensError, match="clip-dissect, contrastive"):
        check_method("nope")
    scores = torch.tensor([[0.0, 5.0], [5.0, 0.0]])
    alignments = torch.tensor([[0.3, 0.01], [0.3, 0.01]])
    confidence = torch.tensor([[3.0, 0.5], [3.0, 0.5]])
    labels = rank_concepts(scores, alignments, confidence, top=2, method="clip-dissect")
    assert labels.concepts[:, 0].tolist() == [1, 0] and labels.scores[:, 0].tolist() == [5.0, 5.0]
    assert labels.alignments[:, 0].tolist() == pytest.approx([0.01, 0.3])
    assert labels.confidence[:, 0].tolist() == [0.5, 3.0]
    assert labels.labelled.tolist() == [False, True]  # the best concept's confidence decides, not the score
    floor = rank_concepts(scores, alignments, torch.full((2, 2), 3.0), threshold=0.025, top=2, method="clip-dissect")
    assert floor.labelled.tolist() == [False, True]  # and a threshold is a floor on its alignment


def test_centred_takes_out_what_a_concept_shares_with_every_unit() -> None:
    # concept 1 is a hub: every unit aligns with it by 0.5 more than with anything else; unit 2 is invalid
    # five units as unit 0 and five as unit 1; the last unit has no examples of its own (invalid)
    alignments = torch.tensor([[0.30, 0.70, 0.0]] * 5 + [[0.0, 0.60, 0.20]] * 5 + [[9.0, 9.0, 9.0]])
    valid = torch.tensor([True] * 10 + [False])
    centred = centred_scores(alignments, valid)  # means over the ten valid units: 0.15, 0.65, 0.10
    torch.testing.assert_close(centred[[0, 5]], torch.tensor([[0.15, 0.05, -0.10], [-0.15, -0.05, 0.10]]))
    assert alignments[[0, 5]].argmax(dim=1).tolist() == [1, 1] and centred[[0, 5]].argmax(dim=1).tolist() == [0, 2]
    assert MIN_CENTRED_UNITS == 10 and torch.equal(centred_scores(alignments, valid.roll(1) & valid), alignments)  # 9 valid: as is
    theta, null = torch.tensor([[1.0, 0.2], [0.2, 1.0]] * 5), torch.tensor([0.5, 0.5])
    assert torch.equal(method_scores("centred", theta, None, None, valid[:10], CONCEPTS, null),
                       centred_scores(method_scores("alignment", theta, None, None, valid[:10], CONCEPTS, null), valid[:10]))
