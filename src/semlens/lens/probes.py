"""Embedding probes for a Lens: texts through templates, images, the null prompt; cached on disk.

The cache is one file per foundation model in the user cache (``SEMLENS_CACHE/probes``), not in the
Lens: asking a question never writes into the Lens (it may be read-only or received from someone
else), Lenses embedded by the same model share their prompts, and every distinct prompt string is
embedded once per foundation model. The file is bounded to ``MAX_CACHED_PROMPTS`` (oldest dropped).
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .._util.cache import cache_dir
from .._util.errors import SemlensError
from .._util.fingerprint import hash_json
from ..analysis.alignment import fill, null_prompts, resolve_templates
from ..data.sequence import image_object
from ..foundation import FoundationModel
from ..store.files import atomic_write

MAX_CACHED_PROMPTS = 20_000  # about 60 MB of 768-d float32 embeddings per foundation model
NEUTRAL_GRAY = (128, 128, 128)  # what a transparent image probe is seen over where a Lens has no probe data to show


def probe_cache_path(foundation_id: str) -> Path:
    """The user-cache file of one foundation model's prompt embeddings."""
    return cache_dir("probes") / f"{hash_json(foundation_id)}.safetensors"


class ProbeEncoder:
    """Embeds probes with a foundation model and remembers every prompt it has embedded."""

    def __init__(self, foundation: FoundationModel, cache: Path | None = None) -> None:
        self.foundation, self.cache = foundation, cache
        self._cache: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()  # the explorer embeds probes from several request threads at once
        if cache is not None and cache.is_file():
            self._cache = read_probe_cache(cache, foundation.id)

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha1(text.encode()).hexdigest()

    def texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised embeddings ``[n, d]`` of raw strings, from the cache where possible."""
        with self._lock:
            missing = list(dict.fromkeys(text for text in texts if self._key(text) not in self._cache))
            if missing:
                for text, embedding in zip(missing, self.foundation.encode_texts(missing)):
                    self._cache[self._key(text)] = embedding
            embedded = torch.stack([self._cache[self._key(text)] for text in texts])
            if missing and self.cache is not None:
                self._save()
            return embedded

    def _save(self) -> None:
        """Write the cache atomically, keeping the newest ``MAX_CACHED_PROMPTS`` prompts."""
        for key in list(self._cache)[: max(0, len(self._cache) - MAX_CACHED_PROMPTS)]:
            del self._cache[key]
        atomic_write(self.cache, lambda temporary: save_file(self._cache, str(temporary), {"foundation": self.foundation.id}))

    def concepts(self, concepts: Sequence[str], templates: str | Sequence[str]) -> torch.Tensor:
        """One embedding per concept ``[C, d]``: the mean over its templated prompts."""
        filled = resolve_templates(templates)
        embedded = self.texts([prompt for concept in concepts for prompt in fill(concept, filled)])
        return embedded.reshape(len(concepts), len(filled), -1).mean(dim=1)

    def query(self, prompts: Sequence[str], templates: str | Sequence[str]) -> torch.Tensor:
        """One probe ``[d]`` from several prompts: the mean over prompts and templates."""
        return self.concepts(prompts, templates).mean(dim=0)

    def null(self, templates: str | Sequence[str]) -> torch.Tensor:
        """The null embedding ``[d]``: the mean of the empty templates."""
        return self.texts(null_prompts(resolve_templates(templates))).mean(dim=0)

    def images(self, paths: Sequence[str | Path | Image.Image], backgrounds: Callable[[], Sequence[Image.Image]] = lambda: ()) -> torch.Tensor:
        """One probe ``[d]`` from image files (or images already decoded): the mean of their embeddings. An image
        with transparent parts (an artefact on a transparent canvas, e.g. a watermark) is seen over each of
        ``backgrounds()`` (neutral gray where there are none) and counts as the mean of those: dropping its alpha
        would show whatever colour its transparent pixels hold, mostly black (``composited``)."""
        embeddings = []
        for image in map(image_probe, paths):
            views = composited(image, backgrounds) if transparent(image) else [image.convert("RGB")]
            embeddings.append(F.normalize(self.foundation.encode_images(views), dim=-1).mean(dim=0))
        return torch.stack(embeddings).mean(dim=0)


def image_probe(probe: str | Path | Image.Image | np.ndarray | torch.Tensor) -> Image.Image:
    """An image probe as an image: decoded from its file (``read_image_probe``), from an array or tensor, or as given;
    one wholly transparent is refused (pasted, it changes nothing: every unit would score chance)."""
    if isinstance(probe, (np.ndarray, torch.Tensor)):
        return image_object(probe, "an image probe")
    image = probe if isinstance(probe, Image.Image) else read_image_probe(probe)
    if transparent(image) and image.convert("RGBA").getchannel("A").getextrema()[1] == 0:
        named = "" if isinstance(probe, Image.Image) else f" {probe}"
        raise SemlensError(f"the image probe{named} is transparent all over: it shows nothing to search by; give an image with visible pixels")
    return image


def read_image_probe(path: str | Path) -> Image.Image:
    """An image probe file, decoded with its transparency (if any) kept."""
    try:
        with Image.open(path) as image:
            return image.convert("RGBA") if transparent(image) else image.convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise SemlensError(f"cannot read image probe {path}: {error}") from error


def transparent(image: Image.Image) -> bool:
    """Whether some pixel of ``image`` is not fully opaque."""
    if image.mode not in ("RGBA", "LA", "PA", "RGBa", "La") and "transparency" not in image.info:
        return False
    return image.convert("RGBA").getchannel("A").getextrema()[0] < 255


def composited(image: Image.Image, backgrounds: Callable[[], Sequence[Image.Image]]) -> list[Image.Image]:
    """``image`` over each of ``backgrounds()`` (resized to it), or over neutral gray where there are none."""
    overlay = image.convert("RGBA")
    found = list(backgrounds()) or [Image.new("RGB", overlay.size, NEUTRAL_GRAY)]
    return [Image.alpha_composite(background.convert("RGBA").resize(overlay.size), overlay).convert("RGB") for background in found]


def read_probe_cache(path: Path, foundation_id: str) -> dict[str, torch.Tensor]:
    """The cached prompt embeddings of ``foundation_id``; empty when the file belongs to another model or
    cannot be read (a cache is never worth an error: its prompts are embedded again)."""
    try:
        with safe_open(str(path), "pt") as handle:
            if (handle.metadata() or {}).get("foundation") != foundation_id:
                return {}
            return {key: handle.get_tensor(key) for key in handle.keys()}
    except (OSError, SafetensorError):
        return {}
