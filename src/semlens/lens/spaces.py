"""Embedding spaces: one Lens, its concept examples embedded by several foundation models.

The build's foundation model gives the *default* space (``manifest["foundation"]``, theta in
``layers/<layer>.embed``, as every Lens has it). ``semlens embed`` (``semlens.pipeline.spaces``) embeds the
same crops with another model into a space of its own under ``spaces/<name>/``, recorded in
``manifest["spaces"]``. ``Lens.in_space(name)`` is the Lens seen in one space: its theta, example
embeddings, foundation model, probes, labels and search index are that space's; everything else (units,
concept examples, class relevance) is shared: ask the view any question.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .._util.errors import SemlensError
from ..analysis.alignment import alignment
from ..analysis.label import label_units
from ..analysis.spaces import SIMILARITY_UNITS, SpaceComparison, label_agreement, ranking_agreement, structure_agreement
from ..analysis.vocabulary import Vocabulary

if TYPE_CHECKING:
    from .lens import Lens

LABEL_TOP = 3  # concepts per unit whose overlap compare_spaces reports


def compare_spaces(
    lens: Lens,
    a: str | None = None,
    b: str | None = None,
    vocabulary: Vocabulary | str | Path | None = None,
    queries: list[str] | None = None,
    top: int = 10,
    layers: list[str] | None = None,
) -> SpaceComparison:
    """How far two embedding spaces of this Lens agree on its valid units: their labels from ``vocabulary``
    (default: the stored labels', else the built-in one), their search rankings for ``queries`` (default:
    the vocabulary's concepts) and their layout (linear CKA, correlation of unit-unit similarities)."""
    if top < 1:
        raise SemlensError(f"top={top} must be a positive number of units")
    first, second = lens.in_space(a), lens.in_space(b)
    units, theta_a = first.arrays.all_units(layers)
    _, theta_b = second.arrays.all_units(layers)
    names = [first.space or lens.default_space, second.space or lens.default_space]
    result = SpaceComparison(names[0], names[1], len(units), structure_agreement(theta_a, theta_b, SIMILARITY_UNITS))
    mute = [name for name, view in zip(names, (first, second)) if not view.foundation.supports_text]
    if mute:
        result.notes.append(f"no labels or search compared: the foundation model of {', '.join(mute)} embeds no text")
        return result
    vocab = lens.labels.vocabulary_or(vocabulary)
    asked = list(queries) if queries else list(vocab.concepts)
    if not asked or any(not query.strip() for query in asked):
        raise SemlensError("give at least one query, and no empty ones")
    result.labels = label_agreement(_top_concepts(first, theta_a, vocab), _top_concepts(second, theta_b, vocab))
    search_a, search_b = first.arrays.all_units(layers, first.arrays.search_rule)[1], second.arrays.all_units(layers, second.arrays.search_rule)[1]
    result.search = ranking_agreement(asked, _query_scores(first, search_a, asked), _query_scores(second, search_b, asked), top)
    return result


def _top_concepts(lens: Lens, theta: torch.Tensor, vocabulary: Vocabulary) -> torch.Tensor:
    """Each unit's best ``LABEL_TOP`` concepts ``[U, LABEL_TOP]`` in this space, as ``label`` ranks them."""
    concepts = lens.probes.concepts(vocabulary.concepts, "label")
    return label_units(theta, concepts, lens.probes.null("label"), top=LABEL_TOP).concepts


def _query_scores(lens: Lens, theta: torch.Tensor, queries: list[str]) -> torch.Tensor:
    """Each query's alignment with every unit ``[Q, U]`` in this space, as ``search`` scores them."""
    return alignment(theta, lens.probes.concepts(queries, "search"), lens.probes.null("search")).T
