"""Labelling and dissection: each unit's best concept from a vocabulary, and counts per category.

Every unit with examples of its own gets its best concept by a labelling method, with runner-ups, and a
confidence: the robust z of that concept's alignment (Eq. 4) with the unit against the same concept's
alignment with the other units of its layer (``alignment.robust_null``, the null the audit judges by; a layer
of fewer than ``MIN_NULL_UNITS`` units is judged against every unit of the Lens). A raw alignment threshold (the
paper's 0.025 for CLIP) does not carry over: each foundation model has its own scale, and in the concept world's
all but 10 of 134 units fell under it while their best concept was right for 87 %. A unit shows "no concept"
only where the evidence says so: its best concept aligns with it less than ``MIN_CONFIDENCE`` robust spreads
above its layer's median unit, i.e. nothing in the vocabulary sets it apart from its layer. Those are the
"unexpected" units, the ones worth a look.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .alignment import alignment, robust_null

PAPER_THRESHOLD = 0.025  # the paper's raw alignment threshold for CLIP, an optional floor (``threshold``)
MIN_CONFIDENCE = 1.0  # robust z under which a unit's best concept does not set it apart from its layer
MIN_NULL_UNITS = 10  # a layer of fewer units (a classifier's head) takes every unit of the Lens as its null
LEFT_OUT = "inactive or tied"  # dissection's name for units without examples of their own


@dataclass
class Labels:
    """Per unit the ``top`` best concepts (indices into the vocabulary) and their scores by ``method``, best
    first; ``alignments``: the same candidates' Eq. 4 alignments where the method scores otherwise;
    ``confidence``: their robust z against the layer's null (``label_confidence``)."""

    concepts: torch.Tensor  # [U, top] int64
    scores: torch.Tensor  # [U, top] float32
    threshold: float | None  # an optional floor on the best concept's raw alignment (None: none)
    valid: torch.Tensor | None = None  # [U] bool: units with examples of their own (the others get no label)
    method: str = "alignment"
    alignments: torch.Tensor | None = None  # [U, top] float32; None: the scores are the alignments
    confidence: torch.Tensor | None = None  # [U, top] float32; None: labels stored before confidences (threshold alone)
    min_confidence: float = MIN_CONFIDENCE

    @property
    def candidate_alignments(self) -> torch.Tensor:
        return self.scores if self.alignments is None else self.alignments

    @property
    def labelled(self) -> torch.Tensor:
        """True for valid units whose best concept sets them apart from their layer (confidence at least
        ``min_confidence``) and, with a ``threshold``, whose alignment reaches it; whatever the method that ranked it."""
        reached = torch.ones(self.concepts.shape[0], dtype=torch.bool)
        if self.confidence is not None:
            reached &= self.confidence[:, 0] >= self.min_confidence
        if self.threshold is not None:
            reached &= self.candidate_alignments[:, 0] >= self.threshold
        return reached if self.valid is None else reached & self.valid

    def coverage(self) -> dict[str, float | int | None]:
        """How many valid units show a concept, and how confidently (median robust z of the labels shown)."""
        valid = torch.ones_like(self.labelled) if self.valid is None else self.valid
        shown = self.labelled
        confidence = None if self.confidence is None or not bool(shown.any()) else float(self.confidence[shown, 0].median())
        count = int(valid.sum())
        return {
            "valid_units": count, "labelled": int(shown.sum()), "coverage": int(shown.sum()) / count if count else None,
            "median_confidence": confidence,
        }  # fmt: skip


def label_confidence(aligned: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
    """Robust z ``[U, C]`` of each unit's alignment with each concept against the ``null`` units' alignments
    ``[N, C]`` with the same concepts (``alignment.robust_null``): how far a concept sets a unit apart. NaN (no
    label) without null units."""
    if not len(null):
        return torch.full_like(aligned, float("nan"))
    centre, scale = robust_null(null)
    return (aligned - centre) / scale


def label_units(
    theta: torch.Tensor,
    concepts: torch.Tensor,
    null: torch.Tensor | None,
    threshold: float | None = None,
    top: int = 3,
    valid: torch.Tensor | None = None,
    null_theta: torch.Tensor | None = None,
    min_confidence: float = MIN_CONFIDENCE,
) -> Labels:
    """Rank the vocabulary's concept embeddings ``[C, d]`` for every unit ``theta`` ``[U, d]`` by alignment, with
    confidences against the units ``null_theta`` (default: the valid units of ``theta``); units not ``valid`` (no
    examples of their own) are ranked too but never labelled."""
    aligned = alignment(theta, concepts, null)
    if null_theta is None:
        reference = aligned if valid is None else aligned[valid]
    else:
        reference = alignment(null_theta, concepts, null)
    confidence = label_confidence(aligned, reference)
    return rank_concepts(aligned, None, confidence, threshold, top, valid, min_confidence=min_confidence)


def rank_concepts(
    scores: torch.Tensor,
    alignments: torch.Tensor | None,
    confidence: torch.Tensor | None,
    threshold: float | None = None,
    top: int = 3,
    valid: torch.Tensor | None = None,
    method: str = "alignment",
    min_confidence: float = MIN_CONFIDENCE,
) -> Labels:
    """The ``top`` best concepts of every unit by a method's ``scores`` ``[U, C]``, with their ``alignments``
    ``[U, C]`` (None: the scores are the alignments) and ``confidence`` ``[U, C]`` that decide whether a unit is
    labelled (None: ranked only, every valid unit counts as labelled)."""
    best = scores.topk(min(top, scores.shape[1]), dim=1)
    gate = None if alignments is None else alignments.gather(1, best.indices)
    return Labels(best.indices, best.values, threshold, valid, method, gate, None if confidence is None else confidence.gather(1, best.indices), min_confidence)


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
