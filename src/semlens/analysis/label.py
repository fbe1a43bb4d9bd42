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
    """Per unit the ``top`` best concepts (indices into the vocabulary) and their alignments, best first."""

    concepts: torch.Tensor  # [U, top] int64
    scores: torch.Tensor  # [U, top] float32
    threshold: float
    valid: torch.Tensor | None = None  # [U] bool: units with examples of their own (the others get no label)

    @property
    def labelled(self) -> torch.Tensor:
        """True where the best alignment reaches the threshold (valid units only)."""
        reached = self.scores[:, 0] >= self.threshold
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
    scores = alignment(theta, concepts, null)
    best = scores.topk(min(top, concepts.shape[0]), dim=1)
    return Labels(best.indices, best.values, threshold, valid)


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
