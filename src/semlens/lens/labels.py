"""A Lens's stored labels: written by ``Lens.label`` beside the Lens (or in the user cache when the Lens
is read-only), read by search hits, maps, audits, graphs, the explorer and the report."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._util.errors import SemlensError
from ..analysis.label import Labels, dissect, label_units, unit_categories
from ..analysis.vocabulary import Vocabulary, load_vocabulary
from .store import layer_file

if TYPE_CHECKING:
    from .lens import Lens

LABELS = "labels.json"
GRAPH_THRESHOLD = 0.01  # the paper's lower labelling threshold for attribution graphs


class Labelling(Mapping[str, Labels]):
    """What ``Lens.label`` returns: each layer's ``Labels``, readable with the units and concepts they name."""

    def __init__(self, layers: dict[str, Labels], units: dict[str, list[str]], vocabulary: Vocabulary) -> None:
        self._layers, self.units, self.vocabulary = layers, units, vocabulary

    def __getitem__(self, layer: str) -> Labels:
        return self._layers[layer]

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def most_common(self, layer: str, top: int = 6) -> list[tuple[str, int]]:
        """The layer's most frequent labels with their unit counts."""
        labels = self._layers[layer]
        counts: dict[str, int] = {}
        for concept in labels.concepts[labels.labelled, 0].tolist():
            name = self.vocabulary.concepts[concept]
            counts[name] = counts.get(name, 0) + 1
        return sorted(counts.items(), key=lambda item: -item[1])[:top]

    def to_dict(self) -> dict[str, Any]:
        concepts = self.vocabulary.concepts
        return {
            layer: [
                {
                    "unit": f"{layer}/{name}",
                    "label": concepts[int(labels.concepts[row, 0])] if bool(labels.labelled[row]) else None,
                    "valid": labels.valid is None or bool(labels.valid[row]),
                    "candidates": [
                        {"concept": concepts[int(c)], "alignment": round(float(a), 5)}
                        for c, a in zip(labels.concepts[row], labels.scores[row])
                    ],
                }
                for row, name in enumerate(self.units[layer])
            ]
            for layer, labels in self._layers.items()
        }


class LensLabels:
    """Reads and writes one Lens's labels (``Lens`` delegates its label methods here)."""

    def __init__(self, lens: Lens) -> None:
        self.lens = lens
        self._held: tuple[Vocabulary, dict[str, Labels]] | None = None

    def label(
        self, vocabulary: Vocabulary | str | Path | None, threshold: float, templates: str | list[str], top: int, save: bool
    ) -> Labelling:
        lens = self.lens
        vocab = vocabulary if isinstance(vocabulary, Vocabulary) else load_vocabulary(vocabulary)
        concepts = lens.probes.concepts(vocab.concepts, templates)
        null = lens.probes.null(templates)
        results = {layer: label_units(lens.theta(layer), concepts, null, threshold, top, lens.valid(layer)) for layer in lens.layers}
        if save:
            for layer, labels in results.items():
                lens.derived.write_tensors(layer_file(layer, "labels"), {"concepts": labels.concepts, "scores": labels.scores})
            lens.derived.write_json(LABELS, {"vocabulary": vocab.to_dict(), "threshold": threshold, "templates": templates})
        self._held = (vocab, results)
        return Labelling(results, {layer: lens.units(layer) for layer in lens.layers}, vocab)

    def _stored(self) -> tuple[Vocabulary, dict[str, Labels]] | None:
        """The labels ``label`` made in this process, else those stored with the Lens (read once), else None."""
        if self._held is None and self.lens.derived.path(LABELS).is_file():
            stored = self.lens.derived.read_json(LABELS)
            vocab = Vocabulary(stored["vocabulary"]["name"], tuple(stored["vocabulary"]["concepts"]), tuple(stored["vocabulary"]["categories"]))
            arrays = {layer: self.lens.derived.read_tensors(layer_file(layer, "labels")) for layer in self.lens.layers}
            self._held = (
                vocab,
                {layer: Labels(a["concepts"], a["scores"], stored["threshold"], self.lens.valid(layer)) for layer, a in arrays.items()},
            )
        return self._held

    @property
    def vocabulary(self) -> Vocabulary | None:
        stored = self._stored()
        return None if stored is None else stored[0]

    def labels(self, layer: str) -> Labels | None:
        self.lens.units(layer)  # a clear error for an unknown layer
        stored = self._stored()
        return None if stored is None else stored[1][layer]

    def label_of(self, unit: str) -> str | None:
        layer, row = self.lens.unit_index(unit)
        labels = self.labels(layer)
        if labels is None or not bool(labels.labelled[row]):
            return None
        return self.vocabulary.concepts[int(labels.concepts[row, 0])]

    def candidates(self, unit: str) -> list[tuple[str, float]]:
        layer, row = self.lens.unit_index(unit)
        labels = self.labels(layer)
        if labels is None:
            return []
        return [(self.vocabulary.concepts[int(c)], float(a)) for c, a in zip(labels.concepts[row], labels.scores[row])]

    def dissect(self) -> dict[str, dict[str, int]]:
        if self.vocabulary is None:
            raise SemlensError("this Lens has no labels yet: run `semlens label LENS` (or Lens.label()) first")
        categories = self.vocabulary.category_names()
        return {layer: dissect(self.labels(layer), categories, self.vocabulary.categories) for layer in self.lens.layers}

    def category_units(self, layer: str, category: str) -> list[str]:
        self.lens.units(layer)  # a clear error for an unknown layer
        counts = self.dissect()[layer]
        if category not in counts:
            raise SemlensError(f"unknown category {category!r}; the categories are {', '.join(counts)}")
        owners = unit_categories(self.labels(layer), self.vocabulary.categories)
        return [f"{layer}/{name}" for name, owner in zip(self.lens.units(layer), owners) if owner == category]

    def graph_labels(self, layer: str) -> list[str | None]:
        """Labels for attribution graphs, at the paper's lower threshold."""
        labels = self.labels(layer)
        return [
            self.vocabulary.concepts[int(concept)] if float(score) >= GRAPH_THRESHOLD else None
            for concept, score in zip(labels.concepts[:, 0], labels.scores[:, 0])
        ]

    def vocabulary_or(self, vocabulary: Vocabulary | str | Path | None) -> Vocabulary:
        """The given vocabulary, else the stored labels' one, else the built-in one."""
        if isinstance(vocabulary, Vocabulary):
            return vocabulary
        if vocabulary is None and self.vocabulary is not None:
            return self.vocabulary
        return load_vocabulary(vocabulary)
