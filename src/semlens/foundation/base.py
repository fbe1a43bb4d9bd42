"""The protocol every foundation model backend implements.

A foundation model maps images and (usually) texts into one embedding space. Backends implement
three small methods; batching, ``no_grad``, device placement and L2 normalisation live here once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Dict, Iterator, Sequence, TypeVar, Union

import torch
from PIL import Image

from .._util.devices import inference_dtype, one_thread, pick_device
from .._util.errors import TextNotSupportedError

T = TypeVar("T")
Pixels = Union[torch.Tensor, Dict[str, torch.Tensor]]


def batched(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class FoundationModel(ABC):
    """An image(-text) embedding model.

    Attributes
    ----------
    id:
        Names the backend, the model and a fingerprint of its weights: two Lenses can be compared
        only when their foundation model ids are equal.
    dim:
        Embedding size.
    supports_text:
        False for image-only models such as DINOv2; ``encode_texts`` then raises.
    """

    id: str
    dim: int
    supports_text: bool = True
    batch_size: int = 64

    def __init__(self, device: str | torch.device | None = None) -> None:
        self.device = pick_device(device)
        self.dtype = inference_dtype(self.device)

    @property
    @abstractmethod
    def image_preprocessor(self) -> Callable[[Sequence[Image.Image]], Pixels]:
        """Turns RGB images into the input batch of the image tower (on the CPU): a tensor, or a dict of
        tensors for towers with several inputs (e.g. SigLIP 2's patches, patch mask and grid).

        A small picklable object without the tower's weights, so that data-loader workers can run it
        while the tower embeds the previous batch."""

    def preprocess(self, images: Sequence[Image.Image]) -> Pixels:
        with one_thread():
            return self.image_preprocessor([image.convert("RGB") for image in images])

    @abstractmethod
    def _embed_pixels(self, pixels: Pixels) -> torch.Tensor:
        """Embed a preprocessed batch already on ``self.device`` (floating tensors in ``self.dtype``)."""

    def _embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        raise TextNotSupportedError(
            f"foundation model {self.id} embeds images only; use an image probe, or a text-image "
            "model such as hf:openai/clip-vit-base-patch32, open_clip:ViT-B-32:... or conse"
        )

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Embed images in batches; returns L2-normalised float32 rows on the CPU."""
        chunks = [torch.empty(0, self.dim)]
        for chunk in batched(list(images), self.batch_size):
            chunks.append(self.embed_pixels(self.preprocess(chunk)))
        return torch.cat(chunks)

    @torch.no_grad()
    def embed_pixels(self, pixels: Pixels) -> torch.Tensor:
        """Embed a batch made by :attr:`image_preprocessor`; L2-normalised float32 rows on the CPU."""
        return _normalise(self._embed_pixels(self._to_device(pixels)))

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed texts in batches; returns L2-normalised float32 rows on the CPU."""
        if not self.supports_text:
            return self._embed_texts(texts)  # raises the backend's clear error
        chunks = [torch.empty(0, self.dim)]
        for chunk in batched(list(texts), self.batch_size):
            chunks.append(_normalise(self._embed_texts(chunk)))
        return torch.cat(chunks)

    def _to_device(self, pixels: Pixels) -> Pixels:
        if isinstance(pixels, dict):
            return {name: self._to_device(tensor) for name, tensor in pixels.items()}
        dtype = self.dtype if pixels.is_floating_point() else pixels.dtype
        return pixels.to(self.device, dtype, non_blocking=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, dim={self.dim}, device={self.device})"


class StackedTransform:
    """An image preprocessor from a per-image transform to a tensor: applied to each image, stacked."""

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.transform = transform

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.transform(image) for image in images]).float()


def silence_transformers_progress() -> None:
    """transformers draws a bar per weight file loaded; semlens draws its own bars for long work."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def _normalise(embeddings: torch.Tensor) -> torch.Tensor:
    embeddings = embeddings.float().cpu()
    return embeddings / embeddings.norm(dim=-1, keepdim=True).clamp_min(1e-12)
