"""The concept world's words as a labelling vocabulary: its concepts by family, plus distractors that never appear
in it. Kept apart from the foundation model's training (``foundation``, ``captions``), which knows nothing of
semlens's analysis; the ``world`` foundation spec hands it over as the model's own vocabulary."""

from __future__ import annotations

from ..analysis.vocabulary import Vocabulary
from .render import WorldConfig, concept_family

DISTRACTORS = ["dog", "car", "tree", "house", "person", "cloud", "fire", "wood", "metal", "flower"]


def world_vocabulary(config: WorldConfig) -> Vocabulary:
    """The world's concepts by family, plus distractors that never appear in it: what the world's foundation model
    labels with unless told (``FoundationModel.vocabulary``) and the demo's vocabulary."""
    concepts = config.concept_names()
    return Vocabulary("world", tuple(concepts + DISTRACTORS), tuple(concept_family(c) + "s" for c in concepts) + ("distractors",) * len(DISTRACTORS))
