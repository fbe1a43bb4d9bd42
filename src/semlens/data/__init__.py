"""Probe data selected by spec strings (``folder:PATH``, ``py:package.module:factory``), or handed over as an object."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .._util.errors import SpecError, warn_caller
from .._util.imports import call_factory, import_object
from .._util.specs import SpecForm, SpecRegistry, described, folder_or_spec, in_memory_spec, register_in_memory
from .base import ImageData
from .folder import FolderData
from .memory import MemoryData
from .sequence import SequenceData

DATASETS: SpecRegistry[ImageData] = SpecRegistry("data")


@DATASETS.register("folder", "folder:PATH", "images in a folder tree; subfolder names are labels")
def _folder(rest: str) -> ImageData:
    if not rest:
        raise SpecError("folder: needs a path, e.g. folder:./images")
    return FolderData(rest)


@DATASETS.register("py", "py:package.module:factory", "a callable returning a dataset of images or (image, label)")
def _python(rest: str) -> ImageData:
    made = call_factory(import_object(rest, "dataset"), rest, "dataset")
    return made if isinstance(made, ImageData) else SequenceData(made, spec=f"py:{rest}")


register_in_memory(
    DATASETS,
    "Lens.open(LENS, data=DATA), or the same build_lens call, which reuses the Lens; the explorer from Python: "
    "semlens.web.serve([Lens.open(LENS, data=DATA)]). A folder of the same files is other data to a Lens (--probe-data)",
)


def load_data(data: str | Path | ImageData | Sequence[Any], classes: list[str] | None = None) -> ImageData:
    """The probe data a spec or a folder names, or data as an object: an ImageData as it is, or a sequence (a list, a torch
    Dataset) of images, image paths or ``(image, label)`` pairs, with ``classes`` naming the labels
    (``MemoryData``), or one array or tensor of a batch of images. An object whose spec semlens cannot load again
    is recorded as ``memory:CLASS``."""
    if classes is not None and isinstance(data, (str, Path, ImageData)):
        raise SpecError(f"classes= goes with data passed as a list or dataset; {described(data)} names its own classes")
    if isinstance(data, (str, Path)):
        return DATASETS.resolve(folder_or_spec(str(data)))  # a folder as typed is read as folder:PATH, as build_lens reads it
    if isinstance(data, (np.ndarray, torch.Tensor)):
        if data.ndim != 4:
            raise SpecError(f"data= as one array should be a batch of images (N x H x W x 3 or N x 3 x H x W), got shape {tuple(data.shape)}")
        data = list(data)  # one image per row
    if isinstance(data, ImageData):
        if DATASETS.knows(data.spec):
            return data
        renamed = copy.copy(data)  # the caller's object keeps its own spec
        renamed.spec = in_memory_spec(data)
        return renamed
    files = image_files_of(data)
    if files is not None:
        read = MemoryData(files, classes or list(data.classes))
        read.spec = in_memory_spec(data)
        return read
    return MemoryData(data, classes)


def image_files_of(data: Any) -> list[tuple[str, int]] | None:
    """The ``(path, label)`` files of a torchvision ``ImageFolder``-like dataset (its ``samples`` and ``classes``), read
    by semlens itself: its ``transform=`` (a model's normalisation, which semlens applies on its own, or random
    augmentation) is left out, said in a warning. None for any other data."""
    samples, names = getattr(data, "samples", None), getattr(data, "classes", None)
    if not (isinstance(samples, list) and isinstance(names, (list, tuple)) and samples):
        return None
    if not all(isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], (str, Path)) and isinstance(item[1], int) for item in samples):
        return None
    if getattr(data, "transform", None) is not None:
        warn_caller(
            f"data {type(data).__name__}: semlens reads its {len(samples)} image files itself and leaves out its transform= "
            "(it applies the model's preprocessing to every view itself: the model's, the crops' and the explorer's)"
        )
    return [(str(path), label) for path, label in samples]


def list_datasets() -> list[SpecForm[ImageData]]:
    """The data spec forms ``load_data`` takes (``folder:``, ``py:``, ``world:``, ...), with their help texts."""
    return DATASETS.forms()


__all__ = ["ImageData", "FolderData", "MemoryData", "SequenceData", "load_data", "list_datasets", "DATASETS"]
