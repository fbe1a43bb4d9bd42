"""Probe data: an indexed collection of images, read lazily, with optional class labels.

Sample indices are the identity of a sample everywhere (top-k ids, crops, the Lens), so an adapter
must list its samples in a stable order. Images that fail to decode are skipped and counted, never
fatal: ``load`` raises :class:`~semlens._util.errors.DataError`, and the loader reports the failures.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from .._util.errors import DataError, SemlensError
from .._util.fingerprint import hash_json


HIGH_DEPTH_MODES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": None, "F": None}


def rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB. Pillow's own conversion clips 16-bit and float images to 0..255 (a 16-bit PNG
    turns white, a float TIFF black), so these are scaled instead: 16-bit by its range, 32-bit integers by
    16 bits where they fit (how 16-bit PNGs often open), floats from [0, 1] where they lie in it, otherwise
    (both) by the image's own minimum and maximum."""
    if image.mode not in HIGH_DEPTH_MODES:
        return image.convert("RGB")
    values = np.asarray(image, dtype=np.float64)
    top = HIGH_DEPTH_MODES[image.mode]
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if top is None and image.mode == "I" and low >= 0 and high <= 65535:
        top = 65535
    if top is None and image.mode == "F" and low >= 0 and high <= 1:
        top = 1
    if top is None:
        values, top = values - low, max(high - low, 1e-12)
    grey = np.clip(np.round(values / top * 255), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def spread(length: int, count: int) -> list[int]:
    """Up to ``count`` indices spread evenly over ``range(length)``, the first and the last among them."""
    return sorted({round(i * (length - 1) / max(1, count - 1)) for i in range(count)}) if length else []


def decoded(data: ImageData, indices: Sequence[int], view: Callable[[Image.Image], Image.Image]) -> list[tuple[int, Image.Image]]:
    """``(index, view(sample))`` for each of ``indices`` whose sample decodes; the others are skipped (a few images
    of a folder, where the rest suffice)."""
    found = []
    for index in indices:
        try:
            found.append((index, view(data.load(index))))
        except SemlensError:  # undecodable, or too small for a view
            continue
    return found


class ImageData(ABC):
    """Base of every data adapter.

    Attributes
    ----------
    spec: the spec string it was built from.
    classes: class names, indexed by label, or None for unlabelled data.
    """

    spec: str = ""
    classes: list[str] | None = None

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def load(self, index: int) -> Image.Image:
        """The sample as an RGB image; raises DataError when it cannot be read."""

    def label(self, index: int) -> int | None:
        """The class index of sample ``index`` (into ``classes``), None where the data has no labels."""
        return None

    def describe(self, index: int) -> str:
        """Where a sample comes from, for people (a relative file path, or an index)."""
        return f"sample {index}"

    @abstractmethod
    def fingerprint(self) -> str:
        """Changes whenever the samples (their order, names or content) change."""


class Subset(ImageData):
    """Some of ``data``'s samples, by index, read from it when asked: images chosen among the probe data for a concept
    test, which views them as it views any data (viewing the model's views again would zoom them twice)."""

    def __init__(self, data: ImageData, indices: Sequence[int]) -> None:
        self.data, self.indices = data, list(indices)
        self.spec, self.classes = f"{data.spec} ({len(self.indices)} of its samples)", data.classes

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int) -> Image.Image:
        return self.data.load(self.indices[index])

    def label(self, index: int) -> int | None:
        return self.data.label(self.indices[index])

    def describe(self, index: int) -> str:
        return self.data.describe(self.indices[index])

    def fingerprint(self) -> str:
        return hash_json({"data": self.data.fingerprint(), "indices": self.indices})


#: the smallest side an image may have: below it (a 1x1 pixel, a broken thumbnail) the model sees one
#: colour blown up to its input size, and such an image may top a colour unit's examples; it is skipped
#: and listed with the images that failed to decode
MIN_SIDE = 4


class DecodingDataset(torch.utils.data.Dataset):
    """Wraps :class:`ImageData` for a DataLoader: a failed decode (or an image under MIN_SIDE pixels a side)
    yields ``None`` and why instead of raising."""

    def __init__(self, data: ImageData, transform: Callable[[Image.Image], torch.Tensor], indices: Sequence[int]) -> None:
        self.data, self.transform, self.indices = data, transform, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor | None, str | None]:
        index = self.indices[position]
        try:
            image = self.data.load(index)
        except DataError as error:
            return index, None, str(error)
        small = too_small(image, self.data.describe(index))
        return (index, None, small) if small else (index, self.transform(image), None)


def too_small(image: Image.Image, described: str) -> str | None:
    """Why ``image`` (called ``described``) shows nothing a model can be asked about, or None: under ``MIN_SIDE`` px a side."""
    width, height = image.size
    return f"{described} is {width}x{height} px: too small to show anything (at least {MIN_SIDE} px a side)" if min(width, height) < MIN_SIDE else None


def collate_decoded(items: list[tuple[int, torch.Tensor | None, str | None]]):
    """Stack the decoded samples; return ``(pixels or None, ids, failures)``."""
    good = [(index, pixels) for index, pixels, _ in items if pixels is not None]
    failures = [(index, error) for index, pixels, error in items if pixels is None]
    if not good:
        return None, torch.empty(0, dtype=torch.int64), failures
    ids = torch.tensor([index for index, _ in good], dtype=torch.int64)
    return torch.stack([pixels for _, pixels in good]), ids, failures
