"""Labelling and dissection: each unit's best concept from a vocabulary, and counts per category.

A unit gets its most aligned concept (Eq. 4 alignment), with runner-ups, or no label when even the
best alignment is under a threshold (0.025 in the paper's dissection): those are the "unexpected"
units, the ones worth a look.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .alignment import alignment

DEFAULT_THRESHOLD = 0.025
LEFT_OUT = "inactive or tied"  # dissection's name for units without examples of their own


@dataclass
class Labels:
    """Per unit the ``top`` best concepts (indices into the vocabulary) and their scores by ``method``, best
    first; ``alignments``: the same candidates' Eq. 4 alignments where the method scores otherwise."""

    concepts: torch.Tensor  # [U, top] int64
    scores: torch.Tensor  # [U, top] float32
    threshold: float
    valid: torch.Tensor | None = None  # [U] bool: units with examples of their own (the others get no label)
    method: str = "alignment"
    alignments: torch.Tensor | None = None  # [U, top] float32; None: the scores are the alignments

    @property
    def candidate_alignments(self) -> torch.Tensor:
        return self.scores if self.alignments is None else self.alignments

    @property
    def labelled(self) -> torch.Tensor:
        """True where the best concept's alignment reaches the threshold (valid units only), whatever the
        method that ranked it."""
        reached = self.candidate_alignments[:, 0] >= self.threshold
        return reached if self.valid is None else reached & self.valid


def label_units(
    theta: torch.Tensor,
    concepts: torch.Tensor,
    null: torch.Tensor | None,
    threshold: float = DEFAULT_THRESHOLD,
    top: int = 3,
    valid: torch.Tensor | None = None,
) -> Labels:
    """Rank the vocabulary's concept embeddings ``[C, d]`` for every unit ``theta`` ``[U, d]``; units not
    ``valid`` (no examples of their own) are ranked too but never labelled."""
    return rank_concepts(alignment(theta, concepts, null), None, threshold, top, valid)


def rank_concepts(
    scores: torch.Tensor,
    alignments: torch.Tensor | None,
    threshold: float = DEFAULT_THRESHOLD,
    top: int = 3,
    valid: torch.Tensor | None = None,
    method: str = "alignment",
) -> Labels:
    """The ``top`` best concepts of every unit by a method's ``scores`` ``[U, C]``, with their ``alignments``
    ``[U, C]`` (None: the scores are the alignments) that decide whether a unit is labelled."""
    best = scores.topk(min(top, scores.shape[1]), dim=1)
    gate = None if alignments is None else alignments.gather(1, best.indices)
    return Labels(best.indices, best.values, threshold, valid, method, gate)


def unit_categories(labels: Labels, concept_categories: tuple[str, ...]) -> list[str]:
    """Each unit's parent category of its label; ``"unlabelled"`` for valid units without one and
    ``LEFT_OUT`` for units without examples of their own."""
    valid = [True] * len(labels.labelled) if labels.valid is None else labels.valid.tolist()
    return [
        concept_categories[concept] if labelled else "unlabelled" if ok else LEFT_OUT
        for concept, labelled, ok in zip(labels.concepts[:, 0].tolist(), labels.labelled.tolist(), valid)
    ]


def dissect(labels: Labels, categories: list[str], concept_categories: tuple[str, ...]) -> dict[str, int]:
    """Units per parent category of their label; then ``"unlabelled"`` and ``LEFT_OUT`` units."""
    counts = {**dict.fromkeys(categories, 0), "unlabelled": 0, LEFT_OUT: 0}
    for category in unit_categories(labels, concept_categories):
        counts[category] += 1
    return counts
