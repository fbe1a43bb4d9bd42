"""The 1000 ImageNet-1k classes (WordNet ids and synonyms), shipped as data with the package."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def imagenet_synonyms() -> tuple[tuple[str, ...], ...]:
    """Per class index, its names; the first is the short display name (``tabby`` for class 281)."""
    text = resources.files("semlens.assets").joinpath("imagenet_classes.tsv").read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line.strip()]
    return tuple(tuple(name.strip() for name in names.split(",")) for _wnid, names in rows)


def imagenet_classes() -> list[str]:
    """Display names of the 1000 classes, in label order."""
    return [names[0] for names in imagenet_synonyms()]


def find_imagenet_class(name: str) -> int:
    """Index of the class one of whose synonyms is ``name`` (case-insensitive)."""
    wanted = name.strip().lower()
    for index, names in enumerate(imagenet_synonyms()):
        if wanted in (synonym.lower() for synonym in names):
            return index
    raise KeyError(f"no ImageNet class is called {name!r}")
