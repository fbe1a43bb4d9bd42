"""The 1000 ImageNet-1k classes (WordNet ids and synonyms), shipped as data with the package."""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

#: a WordNet noun id, the name of ImageNet's class folders (``n01440764`` holds tench)
WNID = re.compile(r"n\d{8}")


@lru_cache(maxsize=1)
def _table() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Per class index, its WordNet id and its names, as the shipped table lists them."""
    text = resources.files("semlens.assets").joinpath("imagenet_classes.tsv").read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line.strip()]
    return tuple((wnid.strip(), tuple(name.strip() for name in names.split(","))) for wnid, names in rows)


def imagenet_synonyms() -> tuple[tuple[str, ...], ...]:
    """Per class index, its names; the first is the short display name (``tabby`` for class 281)."""
    return tuple(names for _wnid, names in _table())


def imagenet_classes() -> list[str]:
    """Display names of the 1000 classes, in label order."""
    return [names[0] for names in imagenet_synonyms()]


def readable_class(name: str) -> str:
    """A class name as a text probe: an ImageNet WordNet id (a model that took its data's folder names) as its
    class's display name (``n01440764`` -> ``tench``), any other name as it is."""
    index = _wnid_index().get(name.strip().lower()) if WNID.fullmatch(name.strip().lower()) else None
    return name if index is None else imagenet_synonyms()[index][0]


def shown_class(name: str) -> str:
    """A class name as tables and titles show it: a WordNet id with its ImageNet name (``n01440764 (tench)``), so that
    a model that took its data's folder names reads in words; any other name as it is."""
    readable = readable_class(name)
    return name if readable == name else f"{name} ({readable})"


def find_imagenet_class(name: str) -> int:
    """Index of the class one of whose synonyms is ``name`` (case-insensitive; the first where two share it)."""
    index = _synonym_index().get(name.strip().lower())
    if index is None:
        raise KeyError(f"no ImageNet class is called {name!r}")
    return index


@lru_cache(maxsize=1)
def _wnid_index() -> dict[str, int]:
    return {wnid: index for index, (wnid, _names) in enumerate(_table())}


@lru_cache(maxsize=1)
def _synonym_index() -> dict[str, int]:
    """Each ImageNet name (lower case) to its class, the first where two classes share it ("crane")."""
    found: dict[str, int] = {}
    for index, names in enumerate(imagenet_synonyms()):
        for name in names:
            found.setdefault(name.lower(), index)
    return found


def model_class_index(name: str, classes: list[str]) -> int | None:
    """The index among a model's ``classes`` of a class named ``name`` (case-insensitive), or, where ``name``
    is an ImageNet WordNet id (the folder names of ImageNet and its copies) or one of an ImageNet class's names
    (``tabby cat`` for ``tabby``), of the ImageNet class it names: by its position where the model has ImageNet's
    1000 classes in order (ImageNet's display names repeat, e.g. two "crane"s), else by any of its synonyms or its
    WordNet id (a model whose classes are its data's folder names: ``tench`` for ``n01440764``); None where none
    matches."""
    wanted = name.strip().lower()
    lowered = [candidate.lower() for candidate in classes]
    if wanted in lowered:
        return lowered.index(wanted)
    index = _wnid_index().get(wanted) if WNID.fullmatch(wanted) else _synonym_index().get(wanted)
    if index is None:
        return None
    synonyms = [synonym.lower() for synonym in imagenet_synonyms()[index]]
    if len(classes) == len(_table()) and lowered[index] in synonyms:
        return index
    wnid = _table()[index][0].lower()  # a model that took its data's folder names: called by its WordNet id
    return next((lowered.index(synonym) for synonym in [*synonyms, wnid] if synonym in lowered), None)
