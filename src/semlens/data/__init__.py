"""Probe data selected by spec strings: ``folder:PATH`` or ``py:package.module:factory``."""

from __future__ import annotations

from .._util.errors import SpecError
from .._util.imports import call_factory, import_object
from .._util.specs import SpecForm, SpecRegistry
from .base import ImageData
from .folder import FolderData
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


def load_data(spec: str) -> ImageData:
    """Open the probe data a spec names."""
    return DATASETS.resolve(spec)


def list_datasets() -> list[SpecForm[ImageData]]:
    """The data spec forms ``load_data`` takes (``folder:``, ``py:``, ``world:``, ...), with their help texts."""
    return DATASETS.forms()


__all__ = ["ImageData", "FolderData", "SequenceData", "load_data", "list_datasets", "DATASETS"]
