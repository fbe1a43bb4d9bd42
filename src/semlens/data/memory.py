"""Probe data handed over as an object (a notebook's list of PIL images or image paths, a torch Dataset):
recorded as ``memory:CLASS``, so a Lens built from it cannot load it again, and identified by its content."""

from __future__ import annotations

import hashlib
import os
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from .._util.errors import DataError
from .._util.fingerprint import DIGEST_CHARS
from .._util.specs import in_memory_spec
from .folder import read_image
from .sequence import SequenceData


#: images read twice to tell data that changes at every read (random augmentation) from data that does not: a random
#: flip of one in two is missed 1 time in 2 ** REREAD
REREAD = 4


class MemoryData(SequenceData):
    """A sequence whose items are an image (PIL, array, tensor, or a file path) or ``(image, label)``.

    Nothing records where the objects came from, so the fingerprint reads them all once: each file's path and
    size (as ``folder:`` data), each other image's pixels, and each label. A resumed build or a reopened Lens
    thus notices changed samples; a dataset with its own ``fingerprint()`` is trusted with it instead."""

    def __init__(self, items: Sequence[Any], classes: list[str] | None = None) -> None:
        super().__init__(items, in_memory_spec(items), classes)

    def load(self, index: int) -> Image.Image:
        image, _ = self._item(index)
        if isinstance(image, (str, Path)):
            return read_image(Path(image).expanduser(), str(image))
        return super().load(index)

    def describe(self, index: int) -> str:
        """A path item by its path below the folder all the path items share (``cat/img000.jpg`` where every class
        folder holds an ``img000.jpg``); other items as ``SequenceData`` names them."""
        image, _ = self._item(index)
        if not isinstance(image, (str, Path)):
            return super().describe(index)
        path = Path(image).expanduser()
        return path.name if self._path_root is None else path.relative_to(self._path_root).as_posix()

    @cached_property
    def _path_root(self) -> Path | None:
        """The deepest folder above every path item (None where there are none, or they share no folder)."""
        paths = [str(Path(image).expanduser().parent) for image, _ in map(self._item, range(len(self))) if isinstance(image, (str, Path))]
        try:
            return Path(os.path.commonpath(paths)) if paths else None
        except ValueError:  # relative and absolute paths mixed
            return None

    def fingerprint(self) -> str:
        return self._fingerprint

    @cached_property
    def _fingerprint(self) -> str:
        if getattr(self.items, "fingerprint", None) is not None:
            return super().fingerprint()
        digest = hashlib.sha256(f"{len(self)}\n".encode())
        first: list[tuple[int, bytes]] = []  # the first images read, read again at the end
        for index in range(len(self)):
            image, label = self._item(index)
            digest.update(f"{label}|".encode())
            if isinstance(image, (str, Path)):
                path = Path(image).expanduser()
                digest.update(f"{path}|{path.stat().st_size if path.is_file() else 'missing'}\n".encode("utf-8", "surrogateescape"))
                continue
            try:
                loaded = self.load(index)
                pixels = _pixel_bytes(loaded)
                digest.update(pixels)
                if len(first) < REREAD:
                    first.append((index, pixels))
            except DataError as error:  # skipped by the build too; what it was still counts
                digest.update(str(error).encode())
        for index, pixels in first:
            if _pixel_bytes(self.load(index)) != pixels:
                raise DataError(
                    f"sample {index} of {self.spec} is another image each time it is read (a random transform, such as a random "
                    "crop or flip?): its concept examples would show other views than the model scored; give the data without "
                    "random augmentation (semlens resizes and crops as the model's preprocessing says)"
                )
        return digest.hexdigest()[:DIGEST_CHARS]


def _pixel_bytes(image: Image.Image) -> bytes:
    """An image's size and pixels, as the fingerprint reads them."""
    return f"{image.size}|".encode() + image.tobytes()
