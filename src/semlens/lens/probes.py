"""Embedding probes for a Lens: texts through templates, images, the null prompt; cached on disk.

The cache lives in the Lens directory (``probes.safetensors``), so it belongs to the Lens's foundation
model by construction; every distinct prompt string is embedded once, ever.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..analysis.alignment import fill, null_prompts, resolve_templates
from .._util.errors import SemlensError
from ..foundation import FoundationModel
from .store import LensStore

CACHE = "probes.safetensors"


class ProbeEncoder:
    """Embeds probes with a foundation model and remembers every prompt it has embedded."""

    def __init__(self, foundation: FoundationModel, store: LensStore | None = None) -> None:
        self.foundation, self.store = foundation, store
        self._cache: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()  # the explorer embeds probes from several request threads at once
        if store is not None and store.path(CACHE).is_file():
            if store.read_metadata(CACHE).get("foundation") == foundation.id:
                self._cache = store.read_tensors(CACHE)

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
                if self.store is not None:
                    self.store.write_tensors(CACHE, self._cache, {"foundation": self.foundation.id})
            return torch.stack([self._cache[self._key(text)] for text in texts])

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

    def images(self, paths: Sequence[str | Path | Image.Image]) -> torch.Tensor:
        """One probe ``[d]`` from image files (or images already decoded): the mean of their embeddings."""
        images = []
        for path in paths:
            if isinstance(path, Image.Image):
                images.append(path.convert("RGB"))
                continue
            try:
                with Image.open(path) as image:
                    images.append(image.convert("RGB"))
            except (OSError, UnidentifiedImageError) as error:
                raise SemlensError(f"cannot read image probe {path}: {error}") from error
        return F.normalize(self.foundation.encode_images(images), dim=-1).mean(dim=0)
