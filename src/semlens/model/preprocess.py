"""Image geometry and normalisation for the model under study.

The model sees a *view* of each image: shorter side resized to ``resize``, centre crop of
``input_size`` (the paper's ImageNet default: 256 then 224). Crop boxes live in the view's pixel
coordinates, and the foundation model later embeds crops of the same view with its own
preprocessing, so the two models always look at the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .._util.errors import SpecError, warn_caller

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: above this many pixels in the resized image (a strip or a panorama: 64 times a 256 x 256 resize), only the
#: view's own box of the source is resampled, not the whole image resized and then cut: a 20 000 x 4 image would
#: otherwise be resized to 1 280 000 x 256 (983 MB) to keep 224 x 224 of it
WHOLE_RESIZE_PIXELS = 64 * 256 * 256


@dataclass(frozen=True)
class Preprocessing:
    """Resize, centre-crop and normalise; ``mean``/``std`` apply to pixels scaled to [0, 1]."""

    input_size: int = 224
    resize: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def described(self) -> str:
        """In words, for messages (three decimals: a difference below them changes no pixel of a view)."""
        numbers = lambda values: ", ".join(f"{value:.3f}" for value in values)  # noqa: E731
        return f"resize {self.resize}, centre crop {self.input_size}, mean {numbers(self.mean)}, std {numbers(self.std)}"

    def view(self, image: Image.Image) -> Image.Image:
        """The square image the model sees, before normalisation: torchvision's ``Resize(resize)`` then
        ``CenterCrop(input_size)``, pixel for pixel. Where the resized image would pass ``WHOLE_RESIZE_PIXELS``,
        Pillow resamples only the view's box of the source, with the same sample points and filter, so memory
        stays bounded; pixels may then differ by rounding (on skimage's photos and strips cut from them: at
        most 6 of 255 levels, 0.27 on average)."""
        image = image.convert("RGB")
        width, height = image.size
        scale = self.resize / min(width, height)
        resized = (max(1, round(width * scale)), max(1, round(height * scale)))
        left = (resized[0] - self.input_size) // 2
        top = (resized[1] - self.input_size) // 2
        if resized[0] * resized[1] > WHOLE_RESIZE_PIXELS:
            x_step, y_step = width / resized[0], height / resized[1]  # source pixels per resized pixel, as the whole resize has them
            box = (left * x_step, top * y_step, (left + self.input_size) * x_step, (top + self.input_size) * y_step)
            return image.resize((self.input_size, self.input_size), Image.BICUBIC, box=box)
        whole = image.resize(resized, Image.BICUBIC)
        return whole.crop((left, top, left + self.input_size, top + self.input_size))

    def normalise(self, view: Image.Image) -> torch.Tensor:
        """An input view (``view``'s output) as the model's float32 input ``[3, H, W]``."""
        return self.normalise_pixels(_channels_first(view))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.normalise(self.view(image))

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """The view as uint8 ``[3, H, W]``: what data-loader workers hand over, a quarter of float32's
        bytes and no arithmetic; :meth:`normalise_pixels` finishes it batched, on the model's device."""
        return _channels_first(self.view(image))

    def resized_pixels(self, crop: Image.Image) -> torch.Tensor:
        """A crop of a view resized (bilinear) to the model's input side, as uint8 ``[3, H, W]``: how the
        model sees a concept example on its own (``normalise_pixels`` finishes it)."""
        return _channels_first(crop.resize((self.input_size, self.input_size), Image.BILINEAR))

    def normalise_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 ``[..., 3, H, W]`` on any device -> the model's float32 input (the same numbers on every device)."""
        mean = torch.tensor(self.mean, device=pixels.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=pixels.device).view(3, 1, 1)
        return (pixels.float() / 255.0 - mean) / std


def _channels_first(view: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(view, dtype=np.uint8)).permute(2, 0, 1)


#: the steps of a torchvision-style transform that only change the tensor type, not the geometry or the numbers
TYPE_STEPS = {"ToTensor", "PILToTensor", "ToImage", "ToImageTensor", "ConvertImageDtype", "ToDtype", "ToPureTensor"}


def preprocessing_of(transform: Any) -> Preprocessing:
    """A torchvision-style transform as semlens's preprocessing: a ``Compose`` of ``Resize``, ``CenterCrop``,
    ``Normalize`` and type conversions, or a weights enum's ``transforms()`` preset. semlens applies it itself
    (the same view for the model, the crops and the explorer), so other steps (random ones, a ``Lambda``) are
    refused rather than dropped. A ``Preprocessing`` is returned as it is."""
    if isinstance(transform, Preprocessing):
        return transform
    if hasattr(transform, "crop_size") and hasattr(transform, "resize_size"):  # torchvision's ImageClassification preset
        return Preprocessing(int(transform.crop_size[0]), int(transform.resize_size[0]), _floats(transform.mean), _floats(transform.std))
    steps = {type(step).__name__: step for step in getattr(transform, "transforms", [transform])}
    unknown = [name for name in steps if name not in {"Resize", "CenterCrop", "Normalize", *TYPE_STEPS}]
    resize, crop = (_side(steps[name].size) if name in steps else None for name in ("Resize", "CenterCrop"))
    if unknown or not (resize or crop):
        why = f"it has steps semlens does not apply ({', '.join(unknown)})" if unknown else "it names no image size"
        raise SpecError(
            f"cannot read the preprocessing from {type(transform).__name__}: {why}; give a Compose of Resize, CenterCrop "
            "and Normalize, or semlens.Preprocessing(input_size=..., resize=..., mean=..., std=...)"
        )
    if "Resize" in steps and isinstance(steps["Resize"].size, (list, tuple)) and len(steps["Resize"].size) == 2:
        warn_caller(
            f"Resize({tuple(steps['Resize'].size)}) squashes an image to that shape; semlens resizes its shorter side and crops "
            "the centre square, the same pixels only for square images: for others give Resize(side) and CenterCrop(side) if "
            "the model was trained so, or make the images square first",
        )
    normalise = steps.get("Normalize")
    mean, std = (_floats(normalise.mean), _floats(normalise.std)) if normalise else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return Preprocessing(int(crop or resize), int(max(resize or 0, crop or 0)), mean, std)


def _side(size: Any) -> int:
    """A Resize's or CenterCrop's size as one side: an int, ``[side]`` or a square ``(side, side)``."""
    sides = [size] if isinstance(size, int) else list(size)
    if len(set(sides)) != 1:
        raise SpecError(
            f"the transform's size {tuple(sides)} is not square: semlens views images as squares (the shorter side resized, "
            f"the centre cropped); give one side (Resize({max(sides)}), CenterCrop({max(sides)})) or "
            f"semlens.Preprocessing(input_size={max(sides)}, resize={max(sides)}, mean=..., std=...)"
        )
    return int(sides[0])


def _floats(values: Any) -> tuple[float, float, float]:
    """A transform's per-channel mean or std (a list, a tuple, a tensor) as three floats, as a Lens records them."""
    channels = [float(value) for value in values]
    return (channels * 3)[:3] if len(channels) == 1 else (channels[0], channels[1], channels[2])
