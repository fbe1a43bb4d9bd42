"""Interpretability measures and knowledge overlap by known answers, brute force and scikit-learn."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semlens.analysis import measures
from semlens.analysis.measures import (
    clarity,
    knowledge_overlap,
    layer_redundancy,
    polysemanticity,
    redundancy,
    similarity,
    typical_pair,
)

NAN = float("nan")


def two_clusters(
    generator: torch.Generator, units: int, n: int, d: int, noise: float, first: torch.Tensor | None = None
) -> torch.Tensor:
    """Per unit: a random split of n examples around two random directions (or ``first`` and a random one)."""
    centres = torch.randn(units, 2, d, generator=generator)
    if first is not None:
        centres[:, 0] = first
    sizes = torch.randint(3, n - 2, (units,), generator=generator)  # 3 or more in each cluster
    side = (torch.arange(n) >= sizes[:, None]).long()  # [units, n]: 0 for the first sizes[u] examples
    examples = torch.take_along_dim(centres, side[..., None], dim=1)
    return examples + noise * torch.randn(units, n, d, generator=generator)


def basis(*indices: int, d: int = 5) -> torch.Tensor:
    return torch.eye(d)[list(indices)]


# ----------------------------------------------------------------------------------------------
# clarity (Eq. 7)


def test_clarity_of_identical_directions_is_one():
    v = torch.randn(1, 1, 16, generator=torch.Generator().manual_seed(0))
    examples = v * torch.tensor([1.0, 2.0, 0.5, 7.0])[None, :, None]  # same direction, any length
    assert clarity(examples).item() == pytest.approx(1.0, abs=1e-6)


def test_clarity_of_an_orthonormal_set_is_zero_and_a_regular_simplex_reaches_the_minimum():
    n = 6
    assert clarity(torch.eye(n)[None]).item() == pytest.approx(0.0, abs=1e-7)
    simplex = torch.eye(n) - 1 / n  # centred basis: unit vectors summing to zero, all pairs at -1/(n-1)
    assert clarity(simplex[None]).item() == pytest.approx(-1 / (n - 1), abs=1e-6)


def brute_force_clarity(examples: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    values = []
    for unit, mask in zip(examples, valid):
        kept = unit[mask].double()
        if len(kept) < 2:
            values.append(NAN)
            continue
        cos = F.cosine_similarity(kept[:, None], kept[None], dim=-1)
        values.append(((cos.sum() - cos.diagonal().sum()) / (len(kept) * (len(kept) - 1))).item())
    return torch.tensor(values)


def test_clarity_equals_brute_force_mean_pairwise_cosine_with_masked_slots():
    generator = torch.Generator().manual_seed(1)
    examples = torch.randn(40, 9, 12, generator=generator) + 0.5  # positive mean: clarity well above 0
    empty = torch.rand(40, 9, generator=generator) < 0.3
    empty[0], empty[1, 1:] = True, True  # a unit with no example and one with a single example
    examples[empty] = NAN
    before = examples.clone()
    value = clarity(examples)
    assert torch.equal(examples.isnan(), before.isnan()) and torch.equal(examples.nan_to_num(), before.nan_to_num())
    expected = brute_force_clarity(examples, ~empty).float()
    assert value.dtype == torch.float32
    assert value[:2].isnan().all()
    torch.testing.assert_close(value, expected, atol=1e-6, rtol=0, equal_nan=True)


def test_clarity_explicit_mask_and_rows_without_direction_are_left_out():
    generator = torch.Generator().manual_seed(2)
    examples = torch.randn(5, 8, 4, generator=generator, dtype=torch.float64)
    valid = torch.rand(5, 8, generator=generator) < 0.7
    examples[:, 0] = 0.0  # a zero row has no direction: ignored even where marked valid
    valid[:, 0] = True
    expected = brute_force_clarity(examples, valid & (torch.arange(8) > 0)).float()
    torch.testing.assert_close(clarity(examples, valid), expected, atol=1e-6, rtol=0, equal_nan=True)


# ----------------------------------------------------------------------------------------------
# polysemanticity (Eq. 10)


def tight(direction: torch.Tensor, n: int, generator: torch.Generator, noise: float = 0.01) -> torch.Tensor:
    return direction + noise * torch.randn(n, direction.shape[-1], generator=generator)


def test_polysemanticity_known_answers():
    generator = torch.Generator().manual_seed(3)
    e1, e2 = torch.eye(64)[:2]
    opposite = torch.cat([tight(e1, 12, generator), tight(-e1, 18, generator)])  # cos(c1, c2) = -1 -> 2
    orthogonal = torch.cat([tight(e1, 3, generator), tight(e2, 27, generator)])  # cos = 0 -> 1, unbalanced
    one = tight(e1, 30, generator)  # the two halves of one cluster point the same way -> 0
    shuffled = opposite[torch.randperm(30, generator=generator)]
    value = polysemanticity(torch.stack([opposite, orthogonal, one, shuffled]))
    torch.testing.assert_close(value, torch.tensor([2.0, 1.0, 0.0, 2.0]), atol=1e-2, rtol=0)


def test_polysemanticity_degenerate_units():
    v = torch.randn(8, generator=torch.Generator().manual_seed(4))
    identical = v.repeat(5, 1)  # no split: one cluster stays empty -> 0
    pair = torch.full((5, 8), NAN)
    pair[1], pair[3] = v, -v  # two usable examples: one per cluster, 1 - cos = 2
    single = torch.full((5, 8), NAN)
    single[2] = v
    value = polysemanticity(torch.stack([identical, pair, single, torch.full((5, 8), NAN)]))
    assert value[0].item() == 0.0
    assert value[1].item() == pytest.approx(2.0, abs=1e-6)
    assert value[2:].isnan().all()


def test_polysemanticity_vectorised_equals_one_unit_at_a_time():
    generator = torch.Generator().manual_seed(5)
    examples = torch.cat(
        [torch.randn(25, 20, 16, generator=generator), two_clusters(generator, 25, 20, 16, noise=0.3)]
    )
    empty = torch.rand(50, 20, generator=generator) < 0.2
    empty[7, 1:] = True
    examples[empty] = NAN
    before = examples.clone()
    together = polysemanticity(examples)
    alone = torch.cat([polysemanticity(examples[i : i + 1]) for i in range(50)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0, equal_nan=True)
    assert together[7].isnan() and together.isfinite().sum() == 49
    assert torch.equal(examples.nan_to_num(), before.nan_to_num())


def test_polysemanticity_agrees_with_scikit_learn_kmeans_on_separated_clusters():
    KMeans = pytest.importorskip("sklearn.cluster").KMeans
    generator = torch.Generator().manual_seed(6)
    units, n = 20, 25
    examples = two_clusters(generator, units, n, 32, noise=0.05)
    examples[:, [0, -1]] = NAN  # masked slots, one from each cluster
    expected = []
    for unit in F.normalize(examples[:, 1:-1].double(), dim=-1):
        labels = torch.from_numpy(KMeans(n_clusters=2, n_init=10, random_state=0).fit(unit.numpy()).labels_)
        means = torch.stack([unit[labels == 0].mean(0), unit[labels == 1].mean(0)])
        expected.append(1 - F.cosine_similarity(means[0], means[1], dim=0).item())
    expected = torch.tensor(expected, dtype=torch.float32)
    assert expected.min() > 0.3  # the clusters really point apart, so a wrong partition would show
    torch.testing.assert_close(polysemanticity(examples), expected, atol=1e-5, rtol=0)


def test_polysemanticity_runs_the_same_lloyd_iterations_as_scikit_learn_from_the_same_start():
    KMeans = pytest.importorskip("sklearn.cluster").KMeans
    examples = torch.randn(40, 20, 8, generator=torch.Generator().manual_seed(9))  # noise: several steps needed
    expected = []
    for unit in F.normalize(examples.double(), dim=-1).numpy():
        first = unit[(unit @ unit.sum(0)).argmin()]  # the documented start: farthest from the mean,
        start = np.stack([first, unit[(unit @ first).argmin()]])  # then farthest from that one
        labels = KMeans(n_clusters=2, init=start, n_init=1, algorithm="lloyd", tol=0).fit(unit).labels_
        a, b = unit[labels == 0].mean(0), unit[labels == 1].mean(0)
        expected.append(1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    expected = torch.tensor(expected, dtype=torch.float32)
    torch.testing.assert_close(polysemanticity(examples), expected, atol=1e-5, rtol=0)
    assert (polysemanticity(examples, iterations=1) - expected).abs().max() > 0.01  # one step is not enough


# ----------------------------------------------------------------------------------------------
# similarity (Eq. 8), redundancy (Eq. 9), knowledge overlap (Eq. 5)


def test_similarity_is_cosine_and_nan_for_thetas_without_direction():
    generator = torch.Generator().manual_seed(7)
    a, b = torch.randn(4, 6, generator=generator), torch.randn(3, 6, generator=generator)
    a[1], b[2] = 0.0, NAN
    value = similarity(a, b)
    expected = F.cosine_similarity(a[:, None], b[None], dim=-1)
    assert value.shape == (4, 3)
    torch.testing.assert_close(value[[0, 2, 3]][:, :2], expected[[0, 2, 3]][:, :2])
    assert value[1].isnan().all() and value[:, 2].isnan().all()


def test_redundancy_on_hand_made_thetas():
    r = 1 / math.sqrt(2)
    theta = torch.cat([basis(0, 1), (basis(0) + basis(1)) * r, torch.full((1, 5), NAN), -3 * basis(0)])
    # e1: max(e2 0, diag 1/sqrt2, -e1 -1); e2: 1/sqrt2; diag: 1/sqrt2; NaN: none; -e1: max(-1, 0, -1/sqrt2) = 0
    expected = torch.tensor([r, r, r, NAN, 0.0])
    torch.testing.assert_close(redundancy(theta), expected, equal_nan=True)
    assert layer_redundancy(theta) == pytest.approx(3 * r / 4)  # the NaN unit is not a concept
    assert layer_redundancy(torch.cat([basis(2), 2 * basis(2)])) == pytest.approx(1.0)  # duplicates
    assert math.isnan(layer_redundancy(basis(0)))  # nothing to compare with


def test_typical_pair_is_the_mean_cosine_with_the_other_units():
    r = 1 / math.sqrt(2)
    theta = torch.cat([basis(0, 1), (basis(0) + basis(1)) * r, torch.full((1, 5), NAN), -3 * basis(0)])
    # e1: (0 + r - 1) / 3; e2: (0 + r + 0) / 3; diag: (r + r - r) / 3; NaN: none; -e1: (-1 + 0 - r) / 3
    expected = torch.tensor([(r - 1) / 3, r / 3, r / 3, NAN, (-1 - r) / 3])
    torch.testing.assert_close(typical_pair(theta), expected, equal_nan=True)
    generator = torch.Generator().manual_seed(0)
    theta = torch.randn(40, 16, generator=generator) + 3.0  # a common direction, as ConSE's and CLIP's embeddings share
    cosines = F.normalize(theta, dim=1) @ F.normalize(theta, dim=1).T
    brute = (cosines.sum(dim=1) - cosines.diagonal()) / 39
    torch.testing.assert_close(typical_pair(theta), brute)
    assert redundancy(theta).mean() > typical_pair(theta).mean() > 0.8  # near 1 both: read one against the other
    assert typical_pair(basis(0)).isnan().all()  # nothing to compare with


def test_knowledge_overlap_on_hand_made_thetas_both_ways():
    r = 1 / math.sqrt(2)
    m = basis(0, 1)
    n = torch.cat([5 * basis(0), (basis(1) + basis(2)) * r, basis(3)])
    score, index, best = knowledge_overlap(m, n)
    assert score == pytest.approx((1 + r) / 2)
    assert index.tolist() == [0, 1]
    torch.testing.assert_close(best, torch.tensor([1.0, r]))
    score, index, best = knowledge_overlap(n, m)  # N's e4 has no counterpart in M: not symmetric
    assert score == pytest.approx((1 + r + 0) / 3)
    assert index.tolist() == [0, 1, 0]  # e4 ties at 0 with both: the first wins
    torch.testing.assert_close(best, torch.tensor([1.0, r, 0.0]))


def test_knowledge_overlap_skips_thetas_without_direction():
    m = torch.cat([basis(0), torch.full((1, 5), NAN), torch.zeros(1, 5)])
    n = torch.cat([torch.full((1, 5), NAN), basis(1), basis(0)])
    score, index, best = knowledge_overlap(m, n)
    assert score == pytest.approx(1.0)
    assert index.tolist() == [2, -1, -1]
    assert best[0] == pytest.approx(1.0) and best[1:].isnan().all()
    score, index, best = knowledge_overlap(m, torch.empty(0, 5))
    assert math.isnan(score) and index.tolist() == [-1, -1, -1]


@pytest.mark.parametrize("chunk_rows", [None, 1, 4, 7, 37])
def test_chunking_gives_the_same_as_one_block(chunk_rows, monkeypatch):
    monkeypatch.setattr(measures, "_BLOCK_ELEMENTS", 100)  # the automatic size: blocks of 100 // 23 = 4 rows
    generator = torch.Generator().manual_seed(8)
    m, n = torch.randn(37, 10, generator=generator), torch.randn(23, 10, generator=generator)
    m[5] = NAN
    score, index, best = knowledge_overlap(m, n, chunk_rows=chunk_rows)
    full = similarity(m, n)
    expected_best, expected_index = full.nan_to_num(-2.0).max(dim=-1)
    assert index[5] == -1 and best[5].isnan()
    keep = torch.arange(37) != 5
    assert torch.equal(index[keep], expected_index[keep])
    torch.testing.assert_close(best[keep], expected_best[keep])
    assert score == pytest.approx(expected_best[keep].mean().item())
    own = similarity(m, m).nan_to_num(-2.0).fill_diagonal_(-2.0).max(dim=-1).values
    torch.testing.assert_close(redundancy(m, chunk_rows=chunk_rows)[keep], own[keep])
