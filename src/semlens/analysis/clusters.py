"""The concepts in a unit's examples: the two k-means clusters of the polysemanticity measure
(``measures._two_means``), kept apart only where they are two concepts and not one concept's spread.

k-means always splits, and a unit's few examples (k = 20 or 30) in a space of hundreds of dimensions
split cleanly whatever they are: any n points in n - 1 dimensions are linearly separable. So the split is
judged against splits of one concept, as in SigClust (Liu, Hayes, Nobel and Marron 2008, "Statistical
significance of clustering for high-dimension, low-sample size data"): the unit's cluster index (the share
of its examples' spread left within the two clusters) is compared with the cluster indices of
``REFERENCES`` copies of its examples whose first principal coordinate is redrawn from a Gaussian of the
same spread: one mode along the axis where two concepts would lie apart, and the examples' own spread,
count and rank everywhere else. (SigClust's reference, one Gaussian with the examples' sample covariance,
drawn in their n - 1 dimensions, is far more clustered than n examples in hundreds of dimensions: measured
on planted units, it kept almost no split of two concepts.) Two concepts leave less within the clusters
than such copies do.

Pure torch over whole layers at once, as ``measures``; the draws are the same for every unit (seeded), so
a unit's answer does not depend on the units it is asked with.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .measures import _cluster_means, _directions, _two_means

# Cluster means whose cosine is above 1 - this are one concept whatever the test says: examples that are all
# but identical split significantly on a trace of structure (the world CNN's two-concept units: 0.25 to 0.63).
MIN_SEPARATION = 0.05
# Most chance of a split of one concept's spread being kept (one-sided, from the draws' mean and spread).
SPLIT_P = 0.01
# Draws of one concept per unit; their cluster indices' mean and spread give the p-value.
REFERENCES = 64
# Reference examples held at once: 2**24 float32 = 64 MiB per copy, whatever the layer size.
_BLOCK_ELEMENTS = 2**24


def cluster_index(units: Tensor, usable: Tensor, means: Tensor, sizes: Tensor) -> Tensor:
    """The share of each unit's spread (sum of squared distances to the mean) left within its two clusters
    ``[U]``: 1 for no structure, 0 for two points; NaN without spread."""
    squares = units.pow(2).sum(dim=-1).masked_fill(~usable, 0).sum(dim=-1)
    count = usable.sum(dim=-1).clamp_min(1)
    total = squares - units.sum(dim=-2).pow(2).sum(dim=-1) / count
    within = squares - (sizes * means.pow(2).sum(dim=-1)).sum(dim=-1)
    return (within / total).masked_fill(total <= 1e-12, float("nan"))


def _principal_coordinates(units: Tensor, usable: Tensor) -> tuple[Tensor, Tensor]:
    """Each unit's centred examples in the coordinates of their principal axes ``[U, n, n]`` (the last axis is
    the first principal direction; zeros in unusable rows) and the eigenvalues ``[U, n]``, ascending."""
    count = usable.sum(dim=-1, keepdim=True).clamp_min(1)
    centred = (units - units.sum(dim=-2, keepdim=True) / count.unsqueeze(-1)).masked_fill(~usable.unsqueeze(-1), 0)
    eigenvalues, vectors = torch.linalg.eigh(centred @ centred.transpose(-1, -2))
    eigenvalues = eigenvalues.clamp_min(0)
    return vectors * eigenvalues.sqrt().unsqueeze(-2), eigenvalues


def split_test(
    units: Tensor, usable: Tensor, index: Tensor, references: int = REFERENCES, seed: int = 0, iterations: int = 20
) -> Tensor:
    """One-sided p-value ``[U]`` of each unit's cluster index ``index`` under one concept: the chance that the
    unit's examples with their first principal coordinate made unimodal (Gaussian draws of the same mean and
    spread, ``references`` times) split as cleanly, from the draws' cluster indices' mean and standard
    deviation on the log scale (a normal tail, as SigClust's; the log keeps it right for a handful of
    examples, whose indices cannot go below 0); NaN without spread."""
    count, n = units.shape[0], units.shape[1]
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(references, n, generator=generator).to(units.device)  # [R, point]
    mean, spread = torch.empty(count, device=units.device), torch.empty(count, device=units.device)
    block = max(1, _BLOCK_ELEMENTS // (references * n * n))
    for start in range(0, count, block):
        mask = usable[start : start + block]
        coordinates, eigenvalues = _principal_coordinates(units[start : start + block], mask)
        unused = ~mask.unsqueeze(1)
        drawn = noise.unsqueeze(0).masked_fill(unused, 0)  # [B, R, n]: centred on the usable examples, scaled
        drawn = (drawn - drawn.sum(dim=-1, keepdim=True) / mask.sum(dim=-1)[:, None, None].clamp_min(1)).masked_fill(unused, 0)
        drawn = drawn / drawn.norm(dim=-1, keepdim=True).clamp_min(1e-12) * eigenvalues[:, None, -1:].sqrt()
        draws = coordinates.unsqueeze(1).repeat(1, references, 1, 1)
        draws[..., -1] = drawn
        draws, drawn_usable = draws.flatten(0, 1), mask.repeat_interleave(references, dim=0)
        _, means, sizes = _two_means(draws, drawn_usable, iterations)
        indices = cluster_index(draws, drawn_usable, means, sizes).view(-1, references).clamp_min(1e-12).log()
        mean[start : start + block], spread[start : start + block] = indices.mean(dim=-1), indices.std(dim=-1)
    return torch.special.ndtr((index.clamp_min(1e-12).log() - mean) / spread.clamp_min(1e-6))


def concept_clusters(
    examples: Tensor,
    valid: Tensor | None = None,
    min_separation: float = MIN_SEPARATION,
    split_p: float = SPLIT_P,
    iterations: int = 20,
) -> tuple[Tensor, Tensor, Tensor]:
    """The concepts in each unit's examples: the two clusters of ``measures.polysemanticity``, kept apart only
    where the split is significant against one concept's spread (:func:`split_test`, p below ``split_p``),
    each cluster has at least two examples and the means are at least ``min_separation`` apart (1 - cosine).

    Parameters
    ----------
    examples : Tensor ``[U, n, d]``
    valid : Tensor ``[U, n]`` of bool, optional
        As for ``measures.clarity``.

    Returns
    -------
    members : Tensor ``[U, n]`` of int64
        Each example's cluster, 0 or 1 (1 only in units with two concepts); -1 for unusable examples.
    means : Tensor ``[U, 2, d]``
        Each cluster's mean of the unit-length examples (zeros for a cluster without members).
    p : Tensor ``[U]``
        The split's p-value under one concept (NaN for units without spread: fewer than two distinct examples).
    """
    units, usable = _directions(examples, valid)
    second, means, sizes = _two_means(units, usable, iterations)
    p = split_test(units, usable, cluster_index(units, usable, means, sizes), iterations=iterations)
    directions = _directions(means, None)[0]
    separation = 1 - (directions[..., 0, :] * directions[..., 1, :]).sum(dim=-1)
    split = (p < split_p) & (separation >= min_separation) & (sizes.min(dim=-1).values > 1)
    second &= split.unsqueeze(-1)
    members = torch.where(usable, second.long(), -1)
    return members, _cluster_means(units, usable, second, torch.zeros_like(means))[0], p
