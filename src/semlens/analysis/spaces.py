"""Comparing two embedding spaces of one Lens: the same units, the same concept examples, embedded by two
foundation models. Do they give the units the same labels, rank them alike for the same queries, and lay
them out alike (which units are close to which)?

The paper uses different foundation models for search, labels and measures; these numbers say how much
a finding depends on that choice. Every agreement is 1 for a space compared with itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .alignment import cosine

#: units whose unit-unit similarities are correlated (a seeded sample above it: the matrix grows as units²)
SIMILARITY_UNITS = 2000


@dataclass
class LabelAgreement:
    """How often the two spaces give a unit the same best concept, and how much their best ``top`` overlap."""

    top1: float  # share of units whose best concept is the same
    top_overlap: float  # mean share of a unit's best ``top`` concepts found in the other space's best ``top``
    top: int
    units: int


@dataclass
class RankingAgreement:
    """How alike the two spaces rank the units for the same text queries (means over the queries)."""

    queries: list[str]
    top: int
    top_overlap: float  # mean share of one space's ``top`` units that are also the other's
    spearman: float  # mean Spearman rank correlation of the scores over all units
    per_query: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class StructureAgreement:
    """How alike the two spaces lay the units out: linear CKA of theta, and the Pearson correlation of the
    unit-unit cosine similarities (over ``sampled`` units)."""

    cka: float
    similarity_correlation: float
    sampled: int


@dataclass
class SpaceComparison:
    """Everything ``Lens.compare_spaces`` reports; ``to_dict`` is the JSON shape of ``semlens compare-spaces``.

    ``labels`` and ``search`` are None when a space's foundation model embeds no text."""

    a: str
    b: str
    units: int
    structure: StructureAgreement = field(metadata={"description": "cka: linear CKA of theta; similarity_correlation: of unit-unit cosines"})
    labels: LabelAgreement | None = field(default=None, metadata={"description": "top1: same best concept; top_overlap: shared best concepts"})
    search: RankingAgreement | None = field(
        default=None, metadata={"description": "top_overlap and spearman, averaged over the queries, and per query"}
    )
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def rounded(value: Any) -> Any:
            if isinstance(value, float):
                return round(value, 5) if math.isfinite(value) else None  # NaN: nothing to compare (no units)
            if isinstance(value, dict):
                return {key: rounded(item) for key, item in value.items()}
            if isinstance(value, list):
                return [rounded(item) for item in value]
            return value

        parts = {name: None if part is None else rounded(dict(part.__dict__)) for name, part in
                 (("labels", self.labels), ("search", self.search), ("structure", self.structure))}  # fmt: skip
        return {"a": self.a, "b": self.b, "units": self.units, **parts, "notes": self.notes}


def label_agreement(concepts_a: torch.Tensor, concepts_b: torch.Tensor) -> LabelAgreement:
    """Agreement of two label rankings ``[U, top]`` (concept indices, best first) of the same units."""
    units, top = concepts_a.shape
    if units == 0:
        return LabelAgreement(float("nan"), float("nan"), top, 0)
    same = (concepts_a[:, 0] == concepts_b[:, 0]).float().mean()
    return LabelAgreement(float(same), float(overlap(concepts_a, concepts_b).mean()), top, units)


def overlap(chosen_a: torch.Tensor, chosen_b: torch.Tensor) -> torch.Tensor:
    """Per row of ``chosen_a`` ``[n, m]`` (indices), the share of its entries also in the same row of ``chosen_b``."""
    return (chosen_a[:, :, None] == chosen_b[:, None, :]).any(dim=2).float().mean(dim=1)


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """Ranks (0 = lowest) of each row's values; ties get their mean rank, as Spearman's rho needs."""
    order = scores.argsort(dim=-1, stable=True)
    plain = torch.empty_like(scores)
    plain.scatter_(-1, order, torch.arange(scores.shape[-1], dtype=scores.dtype).expand_as(scores).contiguous())
    result = torch.empty_like(scores)
    for row in range(scores.shape[0]):  # one pass per query, vectorised over units
        values, inverse = torch.unique(scores[row], return_inverse=True)
        total = torch.zeros(values.numel(), dtype=scores.dtype).index_add_(0, inverse, plain[row])
        count = torch.zeros(values.numel(), dtype=scores.dtype).index_add_(0, inverse, torch.ones_like(plain[row]))
        result[row] = (total / count)[inverse]
    return result


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of matching rows of ``a`` and ``b`` ``[n, m]`` (over the last axis)."""
    a, b = a - a.mean(dim=-1, keepdim=True), b - b.mean(dim=-1, keepdim=True)
    return (a * b).sum(dim=-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)


def ranking_agreement(queries: list[str], scores_a: torch.Tensor, scores_b: torch.Tensor, top: int = 10) -> RankingAgreement:
    """Agreement of two spaces' scores ``[Q, U]`` of the same units for the same ``queries``: the overlap of
    their ``top`` units and the Spearman correlation of all scores, per query and on average."""
    top = min(top, scores_a.shape[1])
    shared = overlap(scores_a.topk(top, dim=1).indices, scores_b.topk(top, dim=1).indices)
    spearman = pearson(ranks(scores_a.double()), ranks(scores_b.double())).float()
    per_query = [
        {"query": query, "top_overlap": float(o), "spearman": float(s)} for query, o, s in zip(queries, shared, spearman)
    ]
    return RankingAgreement(list(queries), top, float(shared.mean()), float(spearman.mean()), per_query)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear centred kernel alignment of two representations ``[U, d_x]`` and ``[U, d_y]`` of the same units
    (Kornblith et al. 2019): 1 for spaces equal up to rotation and scale; works across dimensions and
    costs O(U d²), never a U x U matrix."""
    x, y = x.double() - x.double().mean(dim=0), y.double() - y.double().mean(dim=0)
    cross = (y.T @ x).norm() ** 2
    return float(cross / ((x.T @ x).norm() * (y.T @ y).norm()).clamp_min(1e-24))


def similarity_correlation(x: torch.Tensor, y: torch.Tensor, limit: int = SIMILARITY_UNITS, seed: int = 0) -> tuple[float, int]:
    """Pearson correlation of the two spaces' unit-unit cosine similarities (pairs of distinct units), on at
    most ``limit`` units (a seeded random sample), and how many units were used."""
    units = x.shape[0]
    if units > limit:
        chosen = torch.randperm(units, generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        x, y, units = x[chosen], y[chosen], limit
    pairs = torch.triu_indices(units, units, offset=1)
    if pairs.shape[1] < 2:
        return float("nan"), units
    flat_x, flat_y = cosine(x, x)[pairs[0], pairs[1]], cosine(y, y)[pairs[0], pairs[1]]
    return float(pearson(flat_x[None].double(), flat_y[None].double())[0]), units


def structure_agreement(theta_a: torch.Tensor, theta_b: torch.Tensor, limit: int = SIMILARITY_UNITS) -> StructureAgreement:
    correlation, sampled = similarity_correlation(theta_a, theta_b, limit)
    return StructureAgreement(linear_cka(theta_a, theta_b), correlation, sampled)
