"""The protocol every foundation model backend implements.

A foundation model maps images and (usually) texts into one embedding space. Backends implement
three small methods; batching, ``no_grad``, device placement, L2 normalisation and the speed-ups of
:meth:`FoundationModel.speed_up` live here once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Callable, Dict, Iterator, Sequence, TypeVar, Union

import torch
from PIL import Image

from .._util.devices import convolutional, inference_dtype, one_thread, pick_device
from .._util.errors import SemlensError, TextNotSupportedError, asked, one_line

if TYPE_CHECKING:
    from ..analysis.vocabulary import Vocabulary

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
    vocabulary:
        The concepts the model was trained to tell apart, where it names them (a model of one domain, e.g. the
        concept world's): what labels are made of unless told; None: the built-in vocabulary.
    dtype:
        What the weights and floating inputs are cast to: ``dtype`` if given, else
        :func:`~semlens._util.devices.inference_dtype` of the device (and, for backends that know it
        before casting, of their image tower). Backends cast from the float32 weights they load, after
        fingerprinting them, so that ``id`` does not depend on it.
    """

    id: str
    dim: int
    supports_text: bool = True
    vocabulary: Vocabulary | None = None
    batch_size: int = 64
    #: whether 4-d pixel batches are handed over channels-last (see :meth:`speed_up`)
    channels_last: bool = False
    #: why :meth:`speed_up`'s compiled forward was given up, if it was
    compile_fallback: str | None = None
    _compiled: Callable[[Pixels], torch.Tensor] | None = None

    def __init__(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        self.device = pick_device(device)
        self.dtype = dtype or inference_dtype(self.device)

    @property
    def image_tower(self) -> torch.nn.Module | None:
        """The module that turns pixels into embeddings (channels-last converts its weights); None
        for a backend that names none: it is embedded as it is."""
        return None

    def speed_up(self, channels_last: bool = True, compile: bool = False) -> None:
        """Embed faster, computing the same function (the numbers differ by float rounding only).

        ``channels_last`` stores a convolutional tower's weights and inputs channels-last, the layout
        cuDNN's and oneDNN's fast convolutions work in; towers with at most one convolution (a ViT's
        patch embedding) are left as they are. ``compile`` runs the forward through
        ``torch.compile``, compiled on the first batch (and once more for a batch of another size);
        if compiling fails, embedding goes on without it and :attr:`compile_fallback` says why.
        """
        tower = self.image_tower
        if channels_last and tower is not None and convolutional(tower):
            tower.to(memory_format=torch.channels_last)
            self.channels_last = True
        if compile:
            self._compiled = torch.compile(self._embed_pixels)

    @property
    @abstractmethod
    def image_preprocessor(self) -> Callable[[Sequence[Image.Image]], Pixels]:
        """Turns RGB images into the input batch of the image tower (on the CPU): a tensor, or a dict of
        tensors for towers with several inputs (e.g. SigLIP 2's patches, patch mask and grid).

        A small picklable object without the tower's weights, so that data-loader workers can run it
        while the tower embeds the previous batch."""

    def preprocess(self, images: Sequence[Image.Image]) -> Pixels:
        """Images as the image tower's input, by the model's own preprocessing."""
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
        return self._normalised(self._tower_output(self._to_device(pixels)), "images")

    def _tower_output(self, pixels: Pixels) -> torch.Tensor:
        """The image tower's raw output for a batch on the device: compiled where :meth:`speed_up` asked for it
        and it compiles."""
        if self._compiled is not None:
            try:
                return self._compiled(pixels)
            except Exception as error:  # any failure to compile; a fault of the model itself fails again below
                self._compiled = None
                reason = f"{type(error).__name__}: {one_line(error)[:300]}"
                self.compile_fallback = f"torch.compile failed, embedded without it ({reason})"
        return self._embed_pixels(pixels)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed texts in batches; returns L2-normalised float32 rows on the CPU."""
        if not self.supports_text:
            return self._embed_texts(texts)  # raises the backend's clear error
        chunks = [torch.empty(0, self.dim)]
        for chunk in batched(list(texts), self.batch_size):
            chunks.append(self._normalised(self._embed_texts(chunk), "texts"))
        return torch.cat(chunks)

    def _normalised(self, embeddings: torch.Tensor, what: str) -> torch.Tensor:
        """``embeddings`` as L2-normalised float32 rows on the CPU. A row with inf or NaN stops the run: averaged
        into a unit's theta it would turn every answer about that unit into NaN, silently."""
        embeddings = embeddings.float().cpu()
        broken = int((~torch.isfinite(embeddings)).any(dim=-1).sum())
        if broken:
            dtype = str(self.dtype).removeprefix("torch.")
            remedy = (
                "the model itself gives them in float32 (weights or inputs with inf or NaN?)"
                if self.dtype == torch.float32
                else f"its activations passed {dtype}'s range; embed in float32{' or bfloat16' if self.dtype == torch.float16 else ''} "
                f"({asked('BuildConfig(embed_precision=...)', '--embed-precision, or embed_precision in a config file')}; a build resumes from its heatmaps)"
            )
            raise SemlensError(f"foundation model {self.id} gave inf or NaN embeddings for {broken} of {len(embeddings)} {what} in {dtype}: {remedy}")
        return embeddings / embeddings.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def _to_device(self, pixels: Pixels) -> Pixels:
        if isinstance(pixels, dict):
            return {name: self._to_device(tensor) for name, tensor in pixels.items()}
        dtype = self.dtype if pixels.is_floating_point() else pixels.dtype
        pixels = pixels.to(self.device, dtype, non_blocking=True)
        return pixels.contiguous(memory_format=torch.channels_last) if self.channels_last and pixels.ndim == 4 else pixels

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, dim={self.dim}, device={self.device})"


class StackedTransform:
    """An image preprocessor from a per-image transform to a tensor: applied to each image, stacked."""

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.transform = transform

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.transform(image) for image in images]).float()


def cast_floating(pixels: Pixels, dtype: torch.dtype) -> Pixels:
    """A batch's floating tensors in ``dtype`` (each entry of a dict batch); integer ones (masks, grids) as they are.
    Rounding to a half type is the same on the CPU as on a GPU (to nearest even), so where it happens does
    not change the embedding."""
    if isinstance(pixels, dict):
        return {name: cast_floating(tensor, dtype) for name, tensor in pixels.items()}
    return pixels.to(dtype) if pixels.is_floating_point() else pixels


