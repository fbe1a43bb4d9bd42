"""Comparing two models' units in one semantic space (the paper's Sec. 4.1.3 and Eq. 5).

S_{M->N} is the mean, over units of M, of the best cosine similarity to any unit of N: how much of
what M encodes N also encodes. It is asymmetric; computed for every pair of layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .._util.display import HtmlResult
from .measures import knowledge_overlap, typical_similarity


@dataclass
class Comparison(HtmlResult):
    """Everything ``semlens compare`` reports; ``to_dict`` is its JSON shape."""

    layers_a: list[str]
    layers_b: list[str]
    a_to_b: list[list[float]] = field(metadata={"description": "per layer pair; null where a layer has no valid units"})  # [len(layers_a)][len(layers_b)]: S_{A->B}
    b_to_a: list[list[float]]  # [len(layers_a)][len(layers_b)]: S_{B->A} per layer pair
    best_match: dict[str, tuple[str, float]] = field(default_factory=dict)  # unit of A -> (unit of B, cosine)
    shared_concepts: list[str] = field(default_factory=list)
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    typical: list[list[float]] = field(default_factory=list, metadata={
        "description": "per layer pair, the mean cosine of any unit of A with any unit of B: the scale S is read against (S near it: the matches are no closer than any pair)"
    })  # fmt: skip

    def to_dict(self) -> dict:
        return {
            "layers_a": self.layers_a,
            "layers_b": self.layers_b,
            "s_a_to_b": self.a_to_b,
            "s_b_to_a": self.b_to_a,
            "typical": self.typical,
            "best_match": {unit: {"unit": match, "similarity": round(score, 5)} for unit, (match, score) in self.best_match.items()},
            "shared_concepts": self.shared_concepts,
            "only_a": self.only_a,
            "only_b": self.only_b,
        }


def overlap_matrices(
    theta_a: dict[str, torch.Tensor], theta_b: dict[str, torch.Tensor]
) -> tuple[list[list[float]], list[list[float]], list[list[float]]]:
    """S_{A->B}, S_{B->A} and the typical cosine of a pair (``typical_similarity``) for every (layer of A, layer of B) pair."""
    a_to_b = [[knowledge_overlap(ta, tb)[0] for tb in theta_b.values()] for ta in theta_a.values()]
    b_to_a = [[knowledge_overlap(tb, ta)[0] for tb in theta_b.values()] for ta in theta_a.values()]
    typical = [[typical_similarity(ta, tb) for tb in theta_b.values()] for ta in theta_a.values()]
    return a_to_b, b_to_a, typical


def best_matches(units_a: list[str], theta_a: torch.Tensor, units_b: list[str], theta_b: torch.Tensor) -> dict[str, tuple[str, float]]:
    """For every unit of A, its most similar unit of B (over all of B's layers); none when B has no units."""
    if not units_b:
        return {}
    _, index, similarity = knowledge_overlap(theta_a, theta_b)
    return {unit: (units_b[int(i)], float(s)) for unit, i, s in zip(units_a, index.tolist(), similarity.tolist())}


def concept_sets(labels_a: set[str], labels_b: set[str]) -> tuple[list[str], list[str], list[str]]:
    """Concepts (labels) both models have, and those only one of them has."""
    return sorted(labels_a & labels_b), sorted(labels_a - labels_b), sorted(labels_b - labels_a)
