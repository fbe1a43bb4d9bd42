"""Comparing two embedding spaces (semlens.analysis.spaces) on hand-made values: a space against itself agrees
fully, a rotated copy keeps its layout, and hand-counted overlaps come out as counted."""

from __future__ import annotations

import math

import pytest
import torch

from semlens.analysis.spaces import (
    SpaceComparison,
    label_agreement,
    linear_cka,
    ranking_agreement,
    ranks,
    similarity_correlation,
    structure_agreement,
)


def test_a_space_agrees_fully_with_itself() -> None:
    theta = torch.randn(40, 16, generator=torch.Generator().manual_seed(0))
    scores = torch.randn(5, 40, generator=torch.Generator().manual_seed(1))
    concepts = torch.randint(0, 30, (40, 3), generator=torch.Generator().manual_seed(2))
    structure = structure_agreement(theta, theta)
    assert structure.cka == pytest.approx(1.0) and structure.similarity_correlation == pytest.approx(1.0)
    labels = label_agreement(concepts, concepts)
    assert labels.top1 == 1.0 and labels.top_overlap == 1.0
    search = ranking_agreement(list("abcde"), scores, scores, top=10)
    assert search.top_overlap == 1.0 and search.spearman == pytest.approx(1.0)


def test_layout_agreement_ignores_rotation_scale_and_dimension_but_not_shuffling() -> None:
    theta = torch.randn(60, 8, generator=torch.Generator().manual_seed(0))
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(1)))
    wider = torch.cat([theta @ rotation * 3.0, torch.zeros(60, 4)], dim=1)  # another dim, rotated and scaled
    assert linear_cka(theta, wider) == pytest.approx(1.0, abs=1e-9)
    assert similarity_correlation(theta, wider)[0] == pytest.approx(1.0, abs=1e-9)
    shuffled = theta[torch.randperm(60, generator=torch.Generator().manual_seed(3))]  # the units' rows swapped
    assert linear_cka(theta, shuffled) < 0.5 and abs(similarity_correlation(theta, shuffled)[0]) < 0.3


def test_linear_cka_of_a_hand_made_pair() -> None:
    # centred x = [-1, 0, 1], y = x with its middle unit moved: CKA of one-dimensional spaces is the squared correlation
    x = torch.tensor([[0.0], [1.0], [2.0]])
    y = torch.tensor([[0.0], [2.0], [2.0]])
    correlation = torch.corrcoef(torch.stack([x[:, 0], y[:, 0]]))[0, 1]
    assert linear_cka(x, y) == pytest.approx(float(correlation**2))  # 0.75


def test_label_agreement_counts_by_hand() -> None:
    a = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8], [1, 2, 3]])
    b = torch.tensor([[0, 9, 9], [4, 3, 5], [6, 8, 7], [3, 2, 1]])
    agreement = label_agreement(a, b)
    assert agreement.top1 == pytest.approx(2 / 4)  # units 0 and 2 share their best concept
    assert agreement.top_overlap == pytest.approx((1 / 3 + 1 + 1 + 1) / 4)
    assert agreement.units == 4 and agreement.top == 3


def test_ranking_agreement_by_hand() -> None:
    a = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    b = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 2.0, 3.0, 5.0, 4.0]])
    result = ranking_agreement(["first", "second"], a, b, top=2)
    # query 1: best two {0, 1} vs {4, 3}: nothing shared, ranks reversed; query 2: {4, 3} vs {3, 4}: all shared
    assert [row["top_overlap"] for row in result.per_query] == [0.0, 1.0]
    assert result.per_query[0]["spearman"] == pytest.approx(-1.0)
    assert result.per_query[1]["spearman"] == pytest.approx(1 - 6 * 2 / (5 * 24))  # one swap of neighbours: 0.9
    assert result.top_overlap == pytest.approx(0.5) and result.spearman == pytest.approx((-1 + 0.9) / 2)


def test_ranks_give_ties_their_mean_rank() -> None:
    assert ranks(torch.tensor([[3.0, 1.0, 1.0, 2.0]])).tolist() == [[3.0, 0.5, 0.5, 2.0]]


def test_similarity_correlation_samples_above_its_limit() -> None:
    theta = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    value, used = similarity_correlation(theta, theta, limit=20)
    assert used == 20 and value == pytest.approx(1.0)


def test_no_units_give_null_not_nan_in_json() -> None:
    empty = torch.empty(0, 3, dtype=torch.int64)
    result = SpaceComparison("a", "b", 0, structure_agreement(torch.randn(1, 4), torch.randn(1, 4)), label_agreement(empty, empty))
    shown = result.to_dict()
    assert shown["labels"]["top1"] is None and shown["structure"]["similarity_correlation"] is None
    assert not any(isinstance(value, float) and math.isnan(value) for value in shown["structure"].values())
