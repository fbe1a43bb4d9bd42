"""Label vocabularies: concepts grouped under parent categories (for dissection counts)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .._util.errors import SemlensError
from .._util.tomlfiles import parse_toml

CUSTOM = "custom"


@dataclass(frozen=True)
class Vocabulary:
    """Concepts and, for each, its parent category; ``name`` identifies it in stored labels."""

    name: str
    concepts: tuple[str, ...]
    categories: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.concepts:
            raise SemlensError(f"vocabulary {self.name!r} has no concepts")
        if len(set(self.concepts)) != len(self.concepts):
            duplicates = sorted({c for c in self.concepts if self.concepts.count(c) > 1})
            raise SemlensError(f"vocabulary {self.name!r} lists concepts twice: {', '.join(duplicates)}")

    @classmethod
    def from_mapping(cls, name: str, mapping: dict[str, list[str]]) -> Vocabulary:
        concepts, categories = [], []
        for category, members in mapping.items():
            if not isinstance(members, list) or not all(isinstance(member, str) for member in members):
                raise SemlensError(f"vocabulary {name!r}: category {category!r} must map to a list of concept strings")
            concepts += [member.strip() for member in members if member.strip()]
            categories += [category] * len([member for member in members if member.strip()])
        return cls(name, tuple(concepts), tuple(categories))

    def category_names(self) -> list[str]:
        return list(dict.fromkeys(self.categories))

    def to_dict(self) -> dict:
        return {"name": self.name, "concepts": list(self.concepts), "categories": list(self.categories)}


@lru_cache(maxsize=1)
def builtin_vocabulary() -> Vocabulary:
    """The paper-style concept set shipped with semlens (colours, textures, objects, animals, ...); read once (it is
    frozen): every search by name and audit ranks among it."""
    text = resources.files("semlens.assets").joinpath("vocabulary.toml").read_text(encoding="utf-8")
    return Vocabulary.from_mapping("builtin", parse_toml(text, "the built-in vocabulary"))


def load_vocabulary(source: str | Path | Sequence[str] | None = None) -> Vocabulary:
    """The built-in vocabulary (``None`` or ``"builtin"``), concepts given as a list of names (category ``custom``),
    or a file: ``.txt`` with one concept per line (category ``custom``), or ``.toml`` / ``.json`` mapping category ->
    list of concepts."""
    if source is None or str(source) == "builtin":
        return builtin_vocabulary()
    if isinstance(source, (list, tuple)):
        if not all(isinstance(concept, str) for concept in source):
            raise SemlensError(f"a vocabulary given as a list holds concept names (strings), got {source!r}")
        concepts = tuple(dict.fromkeys(concept.strip() for concept in source if concept.strip()))
        return Vocabulary(CUSTOM, concepts, (CUSTOM,) * len(concepts))
    path = Path(source)
    if not path.is_file():
        raise SemlensError(f"vocabulary file {path} not found; give a .txt (one concept per line), .toml or .json file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        return Vocabulary.from_mapping(path.stem, parse_toml(text, f"vocabulary {path}"))
    if path.suffix == ".json":
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as error:
            raise SemlensError(f"cannot parse vocabulary {path}: {error}") from error
        if not isinstance(mapping, dict):
            raise SemlensError(f"vocabulary {path} must be a JSON object of category -> list of concepts")
        return Vocabulary.from_mapping(path.stem, mapping)
    concepts = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return Vocabulary(path.stem, tuple(concepts), (CUSTOM,) * len(concepts))
