"""Adapters for user-provided datasets (the ``py:`` data spec)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from .._util.errors import DataError
from .._util.fingerprint import hash_json
from .base import ImageData, rgb


IMAGE_KEYS = ("image", "img")  # a dataset row's image, as Hugging Face datasets name it
LABEL_KEYS = ("label", "labels")


def feature_names(items: Any) -> list[str] | None:
    """The class names of a Hugging Face dataset's label column (``features["label"].names``), if it has them."""
    features = getattr(items, "features", None)
    for key in LABEL_KEYS:
        names = getattr(features.get(key), "names", None) if isinstance(features, dict) else None
        if names:
            return [str(name) for name in names]
    return None


class SequenceData(ImageData):
    """Any indexable dataset whose items are an image, ``(image, label)``, or a row as a Hugging Face dataset
    gives it (a dict with ``image`` or ``img`` and ``label`` or ``labels``; the class names from its
    ``features``).

    Images may be PIL images, ``HxWx3`` uint8 arrays or ``3xHxW`` float tensors in [0, 1]. Give the
    dataset a ``fingerprint()`` method (or attribute) that changes with its content: without one,
    only its spec and length identify it, and a changed dataset of the same length goes unnoticed.
    """

    def __init__(self, items: Sequence[Any], spec: str, classes: list[str] | None = None) -> None:
        if not (hasattr(items, "__len__") and hasattr(items, "__getitem__")):
            raise DataError(
                f"{spec} gave a {type(items).__name__}, not a sequence: samples are read by index, in a stable order; "
                "return a list or a dataset with __len__ and __getitem__"
            )
        self.items, self.spec = items, spec
        self.classes = classes if classes is not None else getattr(items, "classes", None) or feature_names(items)

    def __len__(self) -> int:
        return len(self.items)

    def _item(self, index: int) -> tuple[Any, Any]:
        item = self.items[index]
        if isinstance(item, (tuple, list)):
            return item[0], item[1] if len(item) > 1 else None
        if isinstance(item, dict):
            image = next((item[key] for key in IMAGE_KEYS if key in item), None)
            if image is None:
                raise DataError(f"sample {index} of {self.spec} is a dict with keys {', '.join(map(str, item))}: give its image as 'image' or 'img'")
            return image, next((item[key] for key in LABEL_KEYS if key in item), None)
        return item, None

    def load(self, index: int) -> Image.Image:
        image, _ = self._item(index)
        try:
            return to_pil(image)
        except (TypeError, ValueError, OSError) as error:
            raise DataError(f"sample {index} of {self.spec}: {error}") from error

    def label(self, index: int) -> int | None:
        label = self._item(index)[1]
        if label is None:
            return None
        if isinstance(label, (int, np.integer)) or (isinstance(label, torch.Tensor) and label.numel() == 1 and not label.is_floating_point()):
            return int(label)
        raise DataError(
            f"sample {index} of {self.spec} has the label {label!r}: labels are class indices (integers); "
            "name the classes in the dataset's `classes` list"
        )

    def fingerprint(self) -> str:
        own = getattr(self.items, "fingerprint", None)
        if own is not None:
            return str(own() if callable(own) else own)
        return hash_json({"spec": self.spec, "length": len(self.items)})


def image_object(image: Any, what: str) -> Image.Image:
    """An image given as an array or tensor (``to_pil``'s forms), or a clear error naming ``what`` it was for."""
    try:
        return to_pil(image)
    except (TypeError, ValueError) as error:
        raise DataError(f"{what}: {error}") from error


def to_pil(image: Any) -> Image.Image:
    """PIL image from a PIL image (16-bit and float ones scaled: ``base.rgb``), an ``HxWx3`` (or ``HxW``) array,
    or a ``3xHxW`` (or ``1xHxW``) tensor: uint8 as it is (``torchvision.io.read_image``, ``PILToTensor``), uint16 by
    its range (as a 16-bit PNG), other integers where they hold 0 to 255, float in [0, 1] (``ToTensor``). A float
    image outside [0, 1] is refused: normalised images would be shown and embedded clipped, and the model's own
    normalisation is applied again by semlens."""
    if isinstance(image, Image.Image):
        return rgb(image)
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"expected a 3xHxW (or 1xHxW) image tensor, got shape {tuple(image.shape)}")
        image = image.detach().cpu().expand(3, -1, -1).permute(1, 2, 0)
        return to_pil(image.float().numpy() if image.is_floating_point() else image.numpy())
    if isinstance(image, np.ndarray):
        return rgb(Image.fromarray(eight_bit(image)))
    raise TypeError(f"cannot turn {type(image).__name__} into an image; give PIL images, arrays or tensors")


def eight_bit(image: np.ndarray) -> np.ndarray:
    """An image array's values as uint8: floats from [0, 1], uint16 from its full range, other integers as they are
    where they hold 0 to 255; anything else refused, saying which forms are read."""
    if image.dtype == np.uint8:
        return image
    low, high = (float(image.min()), float(image.max())) if image.size else (0.0, 0.0)
    if np.issubdtype(image.dtype, np.floating):
        if low < -FLOAT_SLACK or high > 1 + FLOAT_SLACK:
            raise ValueError(
                f"a float image should hold values in [0, 1], this one spans {low:.3g} to {high:.3g}: give images "
                "before normalisation (semlens applies the model's own)"
            )
        return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    if image.dtype == np.uint16:
        return np.round(image.astype(np.float64) / 65535 * 255).astype(np.uint8)
    if np.issubdtype(image.dtype, np.integer) and low >= 0 and high <= 255:
        return image.astype(np.uint8)
    raise ValueError(
        f"an image of {image.dtype} values spanning {low:.6g} to {high:.6g}: give uint8 (0 to 255), uint16 (0 to 65535), "
        "other integers from 0 to 255, or floats in [0, 1]"
    )


FLOAT_SLACK = 1e-3  # float rounding around [0, 1] that is still an image in [0, 1]
