"""Concepts shown to a Lens: images of a concept with transparent parts (an artefact to paste: a watermark, a
frame, a logo) kept under the concept's name, so that a text search for that name ranks the units as the audit's
concept test does, by how much pasting the images raises each unit in the model itself (``search.search``: the
default ranking where such images are kept and the model loads). The foundation model may not see such a concept
in a unit's examples at all (an offline ImageNet space has no concept of a border), the model's units do.

An audit that pastes an artefact (``Lens.audit(..., concept=ConceptImages(..., artifact=...))``) keeps its
placements under its spurious text (where it names one concept), with the units its concept test found detect it
(``Audit.detectors``), which the search then names first: search finds what the audit found. ``remember`` keeps
images by hand, ``forget`` drops them. They are stored as the labels are
(``SpaceView.derived`` of the default space: the Lens when it is writable, else its folder in the user cache), one
safetensors file of RGBA pixels per concept; a rebuilt Lens starts without them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

from .._util.errors import SemlensError
from ..interventions.drawn import COLOURS, named_concept
from ..store.files import CONCEPTS
from .probes import image_probe, transparent

if TYPE_CHECKING:
    from ..interventions.effects import Artifact
    from ..store.files import LensStore
    from .lens import Lens

#: images kept per concept (an audit's placements: ``world.demo.PLACEMENTS`` of them); more are left out
MAX_IMAGES = 16
#: the largest side of a kept image (a concept's overlay is the size of the model's input view): a received Lens's
#: concept is read only where it fits
MAX_SIDE = 2048


@dataclass(frozen=True)
class ShownConcept:
    """A concept's name, the images with transparent parts it was shown to the Lens by and the units an audit's
    concept test found detect it (``Audit.detectors``; none where it was shown by hand); ``drawn``: where the images
    are semlens's drawings of the concept (an audit without images of it), not the user's, the colour they are in
    (``interventions.drawn.COLOURS``), which a search draws again."""

    name: str
    images: list[Image.Image]
    detectors: list[str] = field(default_factory=list)
    drawn: str | None = None


def concept_name(text: str) -> str:
    """The name a concept is kept under: lower case, single spaces (``"Water  Mark "`` is ``"water mark"``)."""
    return " ".join(text.lower().split())


def remember(lens: Lens, name: str, images: Sequence[str | Path | Image.Image], detectors: Sequence[str] = (), drawn: str | None = None) -> None:
    """Keep ``images`` (files or images; each with transparent parts: the concept on a transparent canvas the size
    of the model's view, e.g. ``Artifact.overlay``) as what ``name`` looks like, replacing what was kept before, and
    ``detectors``: units found to detect it (an audit's), which a search for it puts first; ``drawn``: the colour of
    semlens's drawings where these are its own (a drawn audit's), which a search draws again instead."""
    key = concept_name(name)
    if not key:
        raise SemlensError("a concept to remember needs a name (the text a search will ask for)")
    decoded = [image_probe(image) for image in list(images)[:MAX_IMAGES]]
    opaque = [index for index, image in enumerate(decoded) if not transparent(image)]
    large = [index for index, image in enumerate(decoded) if max(image.size) > MAX_SIDE]
    if large:
        raise SemlensError(f"image {large[0]} of concept {key!r} is {decoded[large[0]].width}x{decoded[large[0]].height}; give images of at most {MAX_SIDE} px a side (the model's input view)")
    if not decoded or opaque:
        raise SemlensError(
            f"the images of concept {key!r} must each have transparent parts (the concept on a transparent canvas, as "
            f"Artifact.overlay draws it){f'; image {opaque[0]} is opaque' if opaque else '; none was given'}"
        )
    pixels = {f"image{index:02d}": torch.from_numpy(np.asarray(image.convert("RGBA")).copy()) for index, image in enumerate(decoded)}
    known = [unit for unit in detectors if _is_unit(lens, unit)]
    _store(lens).write_tensors(_file(key), pixels, {"name": key, "detectors": json.dumps(known), "drawn": drawn or ""})


def forget(lens: Lens, name: str) -> bool:
    """Drop what the Lens was shown of concept ``name`` (a search for it goes back to the foundation model's view);
    whether there was anything to drop."""
    store, file = _store(lens), _file(concept_name(name))
    if not store.path(file).is_file():
        return False
    store.remove(file)
    return True


def remember_pasted(lens: Lens, name: str, placements: Sequence[Artifact], size: tuple[int, int], detectors: Sequence[str] = (), drawn: str | None = None) -> None:
    """Keep an audit's pasted artefact (its ``placements`` in views of ``size``) and the units its concept test
    found detect it under ``name``, where it leaves part of the view as it is (a whole-view image does not: a search
    has nothing to paste); a folder that cannot be written keeps nothing, as a cache would (the audit's answers do
    not depend on it). semlens's drawings (``drawn``: their colour) never replace images the user's own audit pasted."""
    overlays = [placement.overlay(*size) for placement in placements]
    if drawn and (kept := recall(lens, [name])) is not None and not kept.drawn:
        return
    if overlays and all(map(transparent, overlays)):
        try:
            remember(lens, name, overlays, detectors, drawn)
        except OSError:
            pass


def recall(lens: Lens, texts: Sequence[str]) -> ShownConcept | None:
    """The concept a search's texts name, where the Lens was shown it (``remember``): one text, its name; else None."""
    if len(texts) != 1:
        return None
    key = concept_name(texts[0])
    store = _store(lens)
    name = _file(key)
    if not key or not store.path(name).is_file():
        return None
    metadata = store.read_metadata(name)
    if metadata.get("name") != key:
        raise store.damaged(name, f"it does not hold concept {key!r}")
    detectors = _detectors(lens, metadata.get("detectors", "[]"))
    if detectors is None:
        raise store.damaged(name, "its detectors are not a list of the Lens's unit names")
    colour = metadata.get("drawn", "")
    if colour and (not isinstance(colour, str) or colour not in COLOURS or named_concept(key) is None):
        raise store.damaged(name, f"its drawings' colour {str(colour)[:40]!r} is none semlens draws of concept {key!r}")
    with store.reading(name), safe_open(str(store.path(name)), framework="pt") as handle:
        keys = sorted(handle.keys())[:MAX_IMAGES]
        for array in keys:  # checked before anything is read: a Lens may come from anyone
            shape, dtype = handle.get_slice(array).get_shape(), handle.get_slice(array).get_dtype()
            if dtype != "U8" or len(shape) != 3 or shape[2] != 4 or not 0 < min(shape[:2]) <= max(shape[:2]) <= MAX_SIDE:
                raise store.damaged(name, f"its images are not the RGBA pixels semlens writes (found {dtype} {list(shape)})")
        arrays = [handle.get_tensor(array) for array in keys]
    return ShownConcept(key, [Image.fromarray(array.numpy(), "RGBA") for array in arrays], detectors, colour or None)


def _detectors(lens: Lens, text: str) -> list[str] | None:
    """The unit names a concept file keeps (a JSON list of strings, each a unit of this Lens); None where it is not."""
    try:
        names = json.loads(text)
    except ValueError:
        return None
    if not isinstance(names, list) or len(names) > sum(len(lens.units(layer)) for layer in lens.layers):
        return None
    if not all(isinstance(unit, str) and _is_unit(lens, unit) for unit in names):
        return None
    return names


def _is_unit(lens: Lens, unit: str) -> bool:
    """Whether ``unit`` names a unit of this Lens (``LensUnits.index`` without its error)."""
    try:
        lens.units.index(unit)
    except SemlensError:
        return False
    return True


def _store(lens: Lens) -> LensStore:
    """Where a Lens's concepts are kept: with the labels of its default space (the Lens, else its user cache)."""
    return lens.in_space(None).embedding.derived


def _file(key: str) -> str:
    return f"{CONCEPTS}/{hashlib.sha1(key.encode()).hexdigest()[:16]}.safetensors"
