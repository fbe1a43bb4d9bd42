"""A unit's concept clusters: the groups of its concept examples that the polysemanticity measure finds,
each named by the vocabulary concept that sets its mean embedding apart from the layer's units (one cluster: the
unit's own label); the part of ``Lens`` that hands
one unit's example embeddings to ``analysis.clusters.concept_clusters`` and the cluster means to labelling."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._util.display import HtmlResult, made_by
from ..analysis.clusters import concept_clusters as cluster_examples
from ..analysis.alignment import alignment
from ..analysis.label import MIN_CONFIDENCE, label_confidence, rank_concepts
from ..analysis.labelling_methods import MIN_CENTRED_UNITS
from ..analysis.measures import polysemanticity
from ..analysis.vocabulary import Vocabulary

if TYPE_CHECKING:
    import torch

    from .lens import Lens


@dataclass(frozen=True)
class ConceptCluster:
    """One group of a unit's concept examples: their ranks (as in ``concept_examples``), the vocabulary concept
    that sets the group's mean embedding apart from the layer's units (the unit's label where the group is all its
    examples) and its alignment (None without a vocabulary), and the
    label: that concept where it sets the group apart from the units of its layer as a unit's label must
    (``analysis.label``), else None."""

    ranks: list[int] = field(metadata={"description": "Ranks of the cluster's concept examples (as in the unit's examples)."})
    size: int
    concept: str | None = field(metadata={"description": "The vocabulary concept that sets the cluster's mean embedding apart from the layer's units (one cluster: the unit's label's)."})
    alignment: float | None
    label: str | None = field(metadata={"description": "The concept where its alignment reaches the labelling threshold, else null."})


@dataclass(frozen=True)
class UnitClusters(HtmlResult):
    """A unit's concept clusters (one for a monosemantic unit, two for a polysemantic one), largest first, and
    ``split_p``: the chance that one concept's spread splits as cleanly (two clusters only below
    ``analysis.clusters.SPLIT_P``; None without spread). In a notebook: each cluster with its concept examples."""

    unit: str
    examples: str = field(metadata={"description": "Which concept examples: by activation."})
    polysemanticity: float | None
    split_p: float | None = field(metadata={"description": "Chance that one concept's spread splits as cleanly; two clusters only below 0.01."})
    valid: bool = field(metadata={"description": "False for inactive or tied units: their examples are arbitrary or another unit's."})
    vocabulary: str | None
    clusters: list[ConceptCluster] = field(metadata={"description": "One for a monosemantic unit, two for a polysemantic one; largest first."})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __repr__(self) -> str:
        """Outside a notebook: the unit and each cluster's size and name (the dataclass's repr listed every rank)."""
        shown = "; ".join(f"{cluster.size} examples: {cluster.label or cluster.concept or '(unnamed)'}" for cluster in self.clusters)
        return f"UnitClusters({self.unit}: {len(self.clusters)} concept cluster{'s' * (len(self.clusters) != 1)}; {shown})"


def concept_clusters(
    lens: Lens, unit: str, vocabulary: Vocabulary | str | Path | Sequence[str] | None = None, examples: str = "activation"
) -> UnitClusters:
    """The groups of ``unit``'s concept examples (by ``"activation"`` or ``"relevance"``) that are distinct
    concepts (see ``analysis.clusters.concept_clusters``), each named from ``vocabulary``, else from the
    stored labels' vocabulary; unnamed when neither is there."""
    layer, row = lens.units.index(unit)
    embeddings = lens.examples.embeddings(layer, examples)[row : row + 1]
    members, means, p = cluster_examples(embeddings)
    ranks = [[rank for rank, member in enumerate(members[0].tolist()) if member == cluster] for cluster in (0, 1)]
    used = [cluster for cluster in (0, 1) if ranks[cluster]]
    vocab = None if vocabulary is None and lens.labels.vocabulary is None else lens.labels.vocabulary_or(vocabulary)
    stored = lens.labels.vocabulary
    own = lens.labels.candidates(unit) if len(used) == 1 and vocab is not None and stored is not None and stored.concepts == vocab.concepts else []
    if own:  # one concept: the unit's own label, as every face shows it
        concept, score, _ = own[0]
        names = [(concept, round(score, 5), lens.labels.label_of(unit))]
    elif vocab is not None and used:
        names = _cluster_names(lens, layer, means[0, used], vocab)
    else:
        names = [(None, None, None)] * len(used)
    clusters = [ConceptCluster(ranks[cluster], len(ranks[cluster]), *name) for cluster, name in zip(used, names)]
    clusters.sort(key=lambda cluster: (-cluster.size, cluster.ranks))
    value, chance = float(polysemanticity(embeddings)[0]), float(p[0])
    return made_by(UnitClusters(
        unit, examples, None if math.isnan(value) else round(value, 5), None if math.isnan(chance) else float(f"{chance:.3g}"),
        bool(lens.examples.valid(layer, examples)[row]),
        None if vocab is None else vocab.name, clusters,
    ), lens)  # fmt: skip


def _cluster_names(lens: Lens, layer: str, means: torch.Tensor, vocab: Vocabulary) -> list[tuple[str, float, str | None]]:
    """Per cluster mean: the best concept of ``vocab`` by the ``centred`` method (its alignment less that concept's
    mean alignment over the layer's valid units), its alignment and the label (the concept where its confidence
    against those units reaches the stored labels' gate, else the default one). By the raw alignment, a concept
    every crop leans to won: on the demo world "person" named the clusters of circle, ring and watermark units."""
    stored = lens.labels.read()
    gate = {} if stored is None else {"threshold": (first := next(iter(stored[1].values()))).threshold, "min_confidence": first.min_confidence}
    theta = lens.arrays.theta(layer)[lens.arrays.valid(layer)]
    concepts, null = lens.embedding.probes.concepts(vocab.concepts, "label"), lens.embedding.probes.null("label")
    aligned, reference = alignment(means, concepts, null), alignment(theta, concepts, null)
    centred = aligned - reference.mean(dim=0, keepdim=True) if len(theta) >= MIN_CENTRED_UNITS else aligned
    labels = rank_concepts(centred, aligned, label_confidence(aligned, reference), gate.get("threshold"), 1, None, "centred", gate.get("min_confidence", MIN_CONFIDENCE))
    found = []
    for concept, score, labelled in zip(labels.concepts[:, 0].tolist(), labels.candidate_alignments[:, 0].tolist(), labels.labelled.tolist()):
        name = vocab.concepts[concept]
        found.append((name, round(score, 5), name if labelled else None))
    return found
