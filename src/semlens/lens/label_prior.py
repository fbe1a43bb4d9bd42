"""Clip-dissect's prior for a Lens: sets of random probe images embedded whole, or (where the Lens cannot read
its probe data) every valid unit's stored example set.

The probe images are embedded once per (foundation model, probe data) and cached in the user cache
(``SEMLENS_CACHE/label-priors``), never in the Lens, as probe prompts are. Measured with
benchmarks/ground_truth.py --label-methods (docs/record.md, "Labelling methods"): the probe images' prior labels
better than the example sets', which punish a concept for being shown by many units.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .._util.cache import cache_dir
from .._util.errors import SemlensError, quoted, warn_caller
from .._util.fingerprint import hash_json
from .._util.progress import progress_bar
from ..analysis.labelling_methods import random_sets
from ..store.files import atomic_write

if TYPE_CHECKING:
    from .lens import Lens

PRIOR_IMAGES = 512  # probe images embedded for the prior
BATCH = 64


def prior_cache_path(foundation_id: str, data_fingerprint: str, count: int, seed: int) -> Path:
    return cache_dir("label-priors") / f"{hash_json([foundation_id, data_fingerprint, count, seed])}.safetensors"


def probe_prior_images(lens: Lens, count: int = PRIOR_IMAGES, seed: int = 0, progress: bool = False) -> torch.Tensor:
    """``count`` random probe images (drawn with ``seed``) embedded whole ``[n, d]``, from the cache when
    there; needs the probe data and the foundation model (the Lens's trusted accessors)."""
    path = prior_cache_path(lens.embedding.foundation_id, lens.manifest["identity"]["data"]["fingerprint"], count, seed)
    try:
        return load_file(str(path))["images"]
    except (OSError, SafetensorError, KeyError):
        pass  # not cached yet, or unreadable: embed again
    data, foundation = lens.sources.probe_data, lens.embedding.foundation
    chosen = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    parts = []
    with progress_bar("embedding probe images for the prior", len(chosen), progress) as advance:
        for start in range(0, len(chosen), BATCH):
            batch = chosen[start : start + BATCH]
            parts.append(foundation.encode_images([data.load(index) for index in batch]))
            advance(len(batch))
    images = torch.cat(parts)
    atomic_write(path, lambda temporary: save_file({"images": images.contiguous()}, str(temporary)))
    return images


def example_prior_sets(lens: Lens) -> torch.Tensor:
    """Every valid unit's example set ``[S, k, d]``, over all layers (the reference implementation's prior,
    there over a layer's neurons)."""
    return torch.cat([lens.arrays.example_embeddings(layer)[lens.arrays.valid(layer)] for layer in lens.layers])


def prior_sets(lens: Lens, progress: bool = False) -> torch.Tensor:
    """Clip-dissect's prior sets ``[S, k, d]``: random sets of k probe images, else (probe data or foundation
    model out of reach: an untrusted Lens without ``data=``) the example sets, with a warning."""
    try:
        return random_sets(probe_prior_images(lens, progress=progress), lens.examples.k)
    except SemlensError as error:
        warn_caller(f"clip-dissect's prior from the Lens's example sets, as the probe images are out of reach: {quoted(error)}")
        return example_prior_sets(lens)
