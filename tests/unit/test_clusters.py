"""Concept clusters of a unit's examples (analysis.measures.concept_clusters): planted groups come back as
clusters with the right members; one concept with noise stays one cluster."""

from __future__ import annotations

import torch

from semlens.analysis.measures import concept_clusters, polysemanticity


def unit_vectors(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def planted(units: int, n: int, d: int, cosine: float | None, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Examples ``[U, n, d]`` around one concept (``cosine`` None) or two with that cosine, shuffled, and which
    examples were drawn from the second concept ``[U, n]``."""
    generator = torch.Generator().manual_seed(seed)
    a = unit_vectors(torch.randn(units, d, generator=generator))
    other = unit_vectors(torch.randn(units, d, generator=generator))
    other = unit_vectors(other - (other * a).sum(-1, keepdim=True) * a)
    b = a if cosine is None else cosine * a + (1 - cosine**2) ** 0.5 * other
    second = torch.rand(units, n, generator=generator).argsort(dim=1) < n // 3  # a third from the second concept
    if cosine is None:
        second[:] = False
    centres = torch.where(second[..., None], b[:, None], a[:, None])
    return unit_vectors(centres + noise * torch.randn(units, n, d, generator=generator) / d**0.5), second


def test_two_planted_groups_come_back_as_two_clusters_with_their_members() -> None:
    examples, truth = planted(units=50, n=30, d=256, cosine=0.4, noise=1.0, seed=0)
    members, means = concept_clusters(examples)
    # the cluster numbers are arbitrary: the members must match the planted groups up to swapping them
    agree = (members == truth.long()).all(dim=1) | (members == (~truth).long()).all(dim=1)
    assert agree.all()
    # each mean lies along its group's concept, nearer its own examples than the other group's
    own = (unit_vectors(means)[torch.arange(50)[:, None], members] * examples).sum(-1)
    assert (own > 0.4).all()


def test_one_concept_with_noise_stays_one_cluster() -> None:
    for noise in (0.5, 1.0, 2.0):
        examples, _ = planted(units=50, n=30, d=256, cosine=None, noise=noise, seed=1)
        members, means = concept_clusters(examples)
        assert (members == 0).all(), noise  # though k-means always splits, and polysemanticity is above 0
        assert (polysemanticity(examples) > 0).all()
        assert (means[:, 1] == 0).all()
        torch.testing.assert_close(means[:, 0], examples.mean(dim=1))


def test_empty_slots_belong_to_no_cluster_and_identical_examples_to_one() -> None:
    examples, truth = planted(units=2, n=12, d=64, cosine=0.0, noise=0.3, seed=2)
    examples[0, 3] = float("nan")
    members, _ = concept_clusters(examples)
    kept = torch.arange(12) != 3
    assert members[0, 3] == -1
    assert len(set(zip(members[0, kept].tolist(), truth[0, kept].tolist()))) == 2  # the clusters are the groups
    same = torch.ones(1, 5, 8)
    assert (concept_clusters(same)[0] == 0).all()


def test_all_but_identical_examples_are_one_concept_below_the_minimum_separation() -> None:
    examples, truth = planted(units=20, n=30, d=256, cosine=0.99, noise=0.01, seed=3)  # means 1 - cos = 0.01 apart
    assert (concept_clusters(examples)[0] == 0).all()
    members, _ = concept_clusters(examples, min_separation=0.0)  # the structure is there: the groups, exactly
    assert ((members == truth.long()).all(dim=1) | (members == (~truth).long()).all(dim=1)).all()
