"""A concept example: one of a unit's top samples read back as a record (score, crop box, source); read by
``Lens.examples`` (``semlens.lens.example_sets``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConceptExample:
    """One of a unit's top samples: its score, its crop box in the model's input view, its source."""

    rank: int
    sample: int
    score: float
    box: tuple[int, int, int, int]
    source: str
    label: int | None
