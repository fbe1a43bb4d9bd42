"""Random weights that are the same in every process.

A spec such as ``timm:resnet50:none`` or ``open_clip:ViT-B-32:none`` names random weights. Drawn from the
global generator they differ from one process to the next, so an interrupted build could not resume (the
model's fingerprint changed) and a Lens would never find its model or foundation model again. Models are
therefore built under a fixed seed, on a forked generator, so the caller's random state is left as it was.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

WEIGHTS_SEED = 0


@contextmanager
def seeded_weights() -> Iterator[None]:
    """Build models inside: their random initial weights are ``WEIGHTS_SEED``'s, every time."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(WEIGHTS_SEED)
        yield
