"""The units' semantic space: the map of units, per-unit measures, the similarity of two units and the
comparison of two Lenses; the part of ``Lens`` that hands theta and probes to ``semlens.analysis``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .._util.display import made_by
from .._util.errors import SemlensError
from ..analysis.alignment import alignment
from ..analysis.label import unit_categories
from ..analysis.vocabulary import Vocabulary
from .labels import labels_of

if TYPE_CHECKING:
    from ..analysis.compare import Comparison
    from ..analysis.measures import Measures
    from ..analysis.overview import OverviewMap
    from .lens import Lens


def overview(
    lens: Lens, layers: list[str] | None = None, clusters: int | None = None, seed: int = 0
) -> OverviewMap:
    """UMAP map of the units of the given (default: all) layers, k-means clusters named by the two labels their
    units show most often, units coloured by their label's category (see analysis.overview); labels the Lens with
    the default vocabulary for this process where it has none. In a space of images only, clusters numbered and
    one colour."""
    from ..analysis.overview import build_overview

    units, theta = lens.arrays.all_units(layers)
    if not lens.labels.ensure():  # a space of images only: clusters without concept names or categories
        return build_overview(units, theta, None, None, [], clusters, seed)
    shown: dict[str, tuple[str | None, str]] = {}
    for layer in lens.units.checked(layers):
        owners = unit_categories(lens.labels.of(layer), lens.labels.vocabulary.categories)
        for name, label, category in zip(lens.units(layer), lens.labels.shown(layer), owners):
            shown[f"{layer}/{name}"] = (label, category)
    labels, categories = [shown[unit][0] for unit in units], [shown[unit][1] for unit in units]
    category_names = [*lens.labels.vocabulary.category_names(), "unlabelled"]
    return build_overview(units, theta, labels, categories, category_names, clusters, seed)


def measures(lens: Lens, layers: str | list[str] | None = None, examples: str = "activation") -> Measures:
    """Per unit of the given (default: all) layers: clarity, polysemanticity (Eq. 7, 10) and redundancy within its
    layer (Eq. 9), of the activation or the relevance examples, and the typical similarity to the layer's other
    units, which redundancy is read against (``measures.of(layer)["clarity"]``; ``summary``, ``extremes``)."""
    from ..analysis.measures import Measures, clarity, polysemanticity, redundancy, typical_pair

    values = {}
    for layer in lens.units.checked([layers] if isinstance(layers, str) else layers):
        left_out = ~lens.examples.valid(layer, examples)
        embeddings = lens.examples.embeddings(layer, examples).masked_fill(left_out[:, None, None], float("nan"))
        theta = lens.examples.theta(layer, examples).masked_fill(left_out[:, None], float("nan"))  # takes part in no unit's redundancy
        values[layer] = {"clarity": clarity(embeddings), "polysemanticity": polysemanticity(embeddings), "redundancy": redundancy(theta), "typical": typical_pair(theta)}
    return made_by(Measures(values, {layer: lens.units(layer) for layer in values}, examples), lens)


def similarity(lens: Lens, unit: str, other_unit: str, other: Lens | None = None) -> float:
    """Cosine similarity of two units' theta (Eq. 8), in this Lens or across two Lenses."""
    other = other or lens
    if other.embedding.foundation_id != lens.embedding.foundation_id:
        raise SemlensError("units of Lenses embedded by different foundation models cannot be compared")
    layer, row = lens.units.index(unit)
    other_layer, other_row = other.units.index(other_unit)
    return float(alignment(lens.arrays.theta(layer)[row : row + 1], other.arrays.theta(other_layer)[other_row : other_row + 1], None))


def compare(lens: Lens, other: Lens, vocabulary: Vocabulary | str | Path | Sequence[str] | None = None) -> Comparison:
    """S_{M->N} / S_{N->M} per layer pair, best matches, and shared and unique concepts (of two views
    in one space, ``Lens.in_space``, for another space: both embedded by the same foundation model; no
    concepts in a space of images only)."""
    from ..analysis.compare import Comparison, best_matches, concept_sets, overlap_matrices

    if lens.embedding.foundation_id != other.embedding.foundation_id:
        raise SemlensError(
            f"cannot compare Lenses embedded by different foundation models ({lens.embedding.foundation_id} vs "
            f"{other.embedding.foundation_id}); rebuild one of them with the other's foundation model"
        )
    a_to_b, b_to_a, typical = overlap_matrices(
        {layer: lens.arrays.theta(layer)[lens.arrays.valid(layer)] for layer in lens.layers},
        {layer: other.arrays.theta(layer)[other.arrays.valid(layer)] for layer in other.layers},
    )
    units_a, theta_a = lens.arrays.all_units()
    units_b, theta_b = other.arrays.all_units()
    shared, only_a, only_b = [], [], []  # no concepts to name in a space of images only
    if lens.embedding.embeds_text:
        vocab = lens.labels.vocabulary_or(vocabulary)
        shared, only_a, only_b = concept_sets(_concept_labels(lens, vocab), _concept_labels(other, vocab))
    matches = best_matches(units_a, theta_a, units_b, theta_b)
    return Comparison(lens.layers, other.layers, a_to_b, b_to_a, matches, shared, only_a, only_b, typical)


def _concept_labels(lens: Lens, vocabulary: Vocabulary) -> set[str]:
    """The concepts the units show labelled with ``vocabulary`` as every face labels them (the default method and
    confidence gate; the stored labels where they are of this vocabulary; else made here, neither stored nor held).
    A raw alignment threshold instead named the demo world's Lenses as sharing "dog", "fire" and "person"."""
    stored = lens.labels.vocabulary
    if stored is not None and stored.concepts == vocabulary.concepts and lens.labels.method == lens.labels.default_method:
        return {label for layer in lens.layers for label in lens.labels.shown(layer) if label is not None}
    found = set()
    for labels in labels_of(lens, vocabulary, lens.labels.default_method).values():
        found |= {vocabulary.concepts[index] for index in labels.concepts[labels.labelled, 0].tolist()}
    return found
