"""Concept clusters of a unit's examples (analysis.clusters.concept_clusters): two planted concepts come back as
clusters with the right members; one concept's spread, isotropic or along one long axis, stays one cluster,
though k-means always splits it; the same in the world foundation model's own embedding geometry."""

from __future__ import annotations

import pytest
import torch

from semlens.analysis.clusters import SPLIT_P, cluster_index, concept_clusters
from semlens.analysis.measures import polysemanticity


def unit_vectors(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def planted(
    units: int, n: int, d: int, cosine: float | None, noise: float, seed: int, long_axis: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Examples ``[U, n, d]`` around one concept (``cosine`` None) or two with that cosine, shuffled, and which
    examples were drawn from the second concept ``[U, n]``. ``long_axis``: one concept's examples also spread
    along one great circle through it, by a Gaussian angle of this standard deviation (radians)."""
    generator = torch.Generator().manual_seed(seed)
    a = unit_vectors(torch.randn(units, d, generator=generator))
    other = unit_vectors(torch.randn(units, d, generator=generator))
    other = unit_vectors(other - (other * a).sum(-1, keepdim=True) * a)
    b = a if cosine is None else cosine * a + (1 - cosine**2) ** 0.5 * other
    second = torch.rand(units, n, generator=generator).argsort(dim=1) < n // 3  # a third from the second concept
    if cosine is None:
        second[:] = False
    angle = long_axis * torch.randn(units, n, 1, generator=generator)
    centres = torch.where(second[..., None], b[:, None], torch.cos(angle) * a[:, None] + torch.sin(angle) * other[:, None])
    return unit_vectors(centres + noise * torch.randn(units, n, d, generator=generator) / d**0.5), second


def test_two_planted_groups_come_back_as_two_clusters_with_their_members() -> None:
    examples, truth = planted(units=50, n=30, d=256, cosine=0.4, noise=1.0, seed=0)
    members, means, p = concept_clusters(examples)
    assert (p < SPLIT_P).all()
    # the cluster numbers are arbitrary: the members must match the planted groups up to swapping them
    agree = (members == truth.long()).all(dim=1) | (members == (~truth).long()).all(dim=1)
    assert agree.all()
    # each mean lies along its group's concept, nearer its own examples than the other group's
    own = (unit_vectors(means)[torch.arange(50)[:, None], members] * examples).sum(-1)
    assert (own > 0.4).all()


@pytest.mark.parametrize(("noise", "long_axis"), [(0.5, 0.0), (1.0, 0.0), (2.0, 0.0), (0.3, 0.5), (1.0, 0.8)])
def test_one_concept_isotropic_or_elongated_stays_one_cluster(noise: float, long_axis: float) -> None:
    examples, _ = planted(units=50, n=30, d=256, cosine=None, noise=noise, seed=1, long_axis=long_axis)
    members, means, p = concept_clusters(examples)
    assert (members == 0).all()  # though k-means always splits, and polysemanticity is above 0
    assert (polysemanticity(examples) > 0).all() and (p > SPLIT_P).all()
    assert (means[:, 1] == 0).all()
    torch.testing.assert_close(means[:, 0], examples.mean(dim=1))


def test_the_test_is_calibrated_on_one_concept_and_finds_two_at_k_20() -> None:
    """At k = 20, p below 0.05 about as often as chance says for one concept; two concepts at cosine 0.3 mostly split."""
    one, _ = planted(units=200, n=20, d=512, cosine=None, noise=1.0, seed=4, long_axis=0.6)
    assert (concept_clusters(one)[2] < 0.05).float().mean() < 0.1
    two, _ = planted(units=200, n=20, d=512, cosine=0.3, noise=0.7, seed=4)
    assert ((concept_clusters(two)[0] == 1).any(dim=1)).float().mean() > 0.8


def test_cluster_index_by_hand() -> None:
    points = torch.tensor([[[0.0, 0.0], [0.0, 2.0], [4.0, 0.0], [4.0, 2.0]]])  # total spread 20, within the x halves 4
    second = torch.tensor([[False, False, True, True]])
    means = torch.tensor([[[0.0, 1.0], [4.0, 1.0]]])
    index = cluster_index(points, torch.ones(1, 4, dtype=torch.bool), means, torch.tensor([[2.0, 2.0]]))
    assert second.any() and index.item() == pytest.approx(4 / 20)


def test_empty_slots_belong_to_no_cluster_and_identical_examples_to_one() -> None:
    examples, truth = planted(units=2, n=12, d=64, cosine=0.0, noise=0.3, seed=2)
    examples[0, 3] = float("nan")
    members, _, p = concept_clusters(examples)
    kept = torch.arange(12) != 3
    assert members[0, 3] == -1
    assert len(set(zip(members[0, kept].tolist(), truth[0, kept].tolist()))) == 2  # the clusters are the groups
    same = torch.ones(1, 5, 8)
    members, _, p = concept_clusters(same)
    assert (members == 0).all() and p.isnan().all()  # no spread: nothing to test
    few = torch.full((1, 6, 8), float("nan"))
    few[0, :2] = torch.eye(8)[:2]  # two valid examples, orthogonal: each cluster would be one example
    members, _, _ = concept_clusters(few)
    assert members[0].tolist() == [0, 0, -1, -1, -1, -1]


def test_a_single_stray_example_is_no_second_concept() -> None:
    examples, _ = planted(units=10, n=20, d=128, cosine=None, noise=0.2, seed=5)
    examples[:, 7] = unit_vectors(torch.randn(10, 128, generator=torch.Generator().manual_seed(6)))  # far from the rest
    members, _, _ = concept_clusters(examples)
    assert (members == 0).all()  # k-means puts it alone: a cluster of one is no concept


def test_all_but_identical_examples_are_one_concept_below_the_minimum_separation() -> None:
    examples, truth = planted(units=20, n=30, d=256, cosine=0.99, noise=0.01, seed=3)  # means 1 - cos = 0.01 apart
    assert (concept_clusters(examples)[0] == 0).all()
    members, _, _ = concept_clusters(examples, min_separation=0.0)  # the structure is there: the groups, exactly
    assert ((members == truth.long()).all(dim=1) | (members == (~truth).long()).all(dim=1)).all()


def test_the_world_foundation_model_splits_two_colours_and_two_backgrounds_not_one() -> None:
    """Real embedding geometry: each concept's own images (``concept_image``: a square in a colour, a background
    alone, at varied places and sizes), embedded by the shipped world foundation model."""
    from semlens.foundation import load_foundation_model
    from semlens.world.render import WorldConfig, concept_image

    config = WorldConfig.load()
    foundation = load_foundation_model("world", device="cpu")
    for family in ("color", "background"):
        names = list(config.concepts[family])[:4]
        images = {name: foundation.encode_images([concept_image(config, name, i).image for i in range(20)]) for name in names}
        one = torch.stack([images[name] for name in names])
        two = torch.stack([torch.cat([images[a][:13], images[b][13:]]) for a, b in zip(names, names[1:] + names[:1])])
        assert (concept_clusters(one)[0] == 0).all(), family
        members = concept_clusters(two)[0]
        assert (members[:, :13] == members[:, :1]).all() and (members[:, 13:] != members[:, :1]).all(), family
