"""Concept examples: a unit's top samples read back as records (score, crop box, source) and as the images
the model saw; the part of ``Lens`` that joins its arrays with its sample table and probe data."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    from .lens import Lens


@dataclass(frozen=True)
class ConceptExample:
    """One of a unit's top samples: its score, its crop box in the model's input view, its source."""

    rank: int
    sample: int
    score: float
    box: tuple[int, int, int, int]
    source: str
    label: int | None


class LensExamples:
    """Part of ``Lens``: its units' concept examples, from its arrays, ``samples.json`` and probe data."""

    @cached_property
    def sample_table(self: Lens) -> dict[int, tuple[str, int | None]]:
        def parse(table: dict) -> dict[int, tuple[str, int | None]]:
            return {int(index): (str(path), label) for index, path, label in zip(table["ids"], table["paths"], table["labels"], strict=True)}

        return self.store.read_json("samples.json", parse)

    def concept_examples(self: Lens, unit: str, by: str = "activation") -> list[ConceptExample]:
        """A unit's concept examples, best first: its top samples by ``"activation"``, or by ``"relevance"`` for
        the model's output on the sample's class (scores are then relevance shares; Lenses built with
        ``relevance_examples``)."""
        layer, row = self.unit_index(unit)
        scores, ids = self.example_scores(layer, by)[row], self.example_samples(layer, by)[row]
        boxes = self.example_boxes(layer, by)[row]
        examples = []
        for rank, (score, sample, box) in enumerate(zip(scores.tolist(), ids.tolist(), boxes.tolist())):
            if sample >= 0 and box[0] >= 0:  # not an empty slot, nor one kept by chance (no crop: see arbitrary_slots)
                source, label = self.sample_table[sample]
                examples.append(ConceptExample(rank, sample, score, tuple(box), source, label))
        return examples

    def example_image(self: Lens, example: ConceptExample, crop: bool = True) -> Image.Image:
        """A concept example as the model saw it (its input view), cropped to its box unless ``crop=False``."""
        from ..model.preprocess import Preprocessing

        view = Preprocessing(**self.manifest["identity"]["preprocessing"]).view(self.probe_data.load(example.sample))
        return view.crop(example.box) if crop else view

    def failures(self: Lens) -> list[dict[str, Any]]:
        """Samples that failed to decode, or were under ``MIN_SIDE`` pixels a side, during collection (skipped)."""
        return self.store.read_json("failures.json", lambda items: [{"sample": int(item["sample"]), "error": str(item["error"])} for item in items])
