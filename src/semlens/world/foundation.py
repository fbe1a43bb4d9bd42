"""``world[:CONFIG]``: an image-text model of the concept world, trained once on the CPU and cached.

No CLIP-like model ships offline, and a generic one would not know this world's concepts anyway. As
domain CLIPs are made (LiT: the text tower locked), a small CNN learns, with the symmetric InfoNCE
(CLIP) loss over image-caption pairs and nothing else, to embed rendered images (the config's
concepts, without its planted correlations) next to the frozen MiniLM sentence embeddings of captions
built from the concepts each image shows. The training knows nothing of semlens: not its prompt
templates, not its null prompt, not how it thresholds alignments, so the benchmarks that score
semlens with this model do not score a model fitted to semlens's own probes. Images are rendered
views, and semlens embeds *crops* of images, so half of the training views are random square crops,
captioned only with the concepts their masks show well in the crop. The captions (``captions``) vary
phrasing, synonyms, order and subsets on their own; the phrases in ``HELD_OUT`` never occur in
training, to test free text.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .._util.cache import trained_path
from .._util.devices import inference_dtype, pick_device
from .._util.errors import SemlensError
from .._util.fingerprint import hash_json, hash_module_weights
from .._util.progress import progress_bar
from ..foundation.base import FoundationModel, StackedTransform
from ..foundation.conse import load_sentence_encoder
from ..store.files import atomic_write
from .captions import VIEW_RULES, caption, random_box, visible_concepts
from .render import WORLD_MEAN, WORLD_STD, WorldConfig, render, world_preprocessing

CODE_VERSION = 6  # bump when captions, views or the tower change: cached weights then retrain
DEFAULT_STEPS = 1600  # zero-shot shape accuracy 0.42 at 400 steps, 0.70 at 800, 0.99 at 1600 (docs/record.md)
BATCH_SIZE = 256
STEPS_VARIABLE = "SEMLENS_WORLD_STEPS"
TRAINING: dict[str, Any] = {
    "learning_rate": 2e-3,
    "weight_decay": 0.05,
    "temperature": 0.07,
    "max_images": 15_000,  # rendered train images; each gives a full view and a crop view
    **VIEW_RULES,  # which concepts a crop view shows (see captions)
    "artifact_rate": 0.25,  # of each artefact, in the training world (no planted correlations there)
    "version": CODE_VERSION,
}
EMBEDDING_DIM = 384  # all-MiniLM-L6-v2

# ------------------------------------------------------------------------------------------------
# model and training


def _stage(inputs: int, outputs: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU(inplace=True)]


class ImageTower(nn.Module):
    """Stride-2 stem (32), three stride-2 stages of conv-BN-ReLU (64, 64 / 128, 128 / 256), global
    average pool, linear to the sentence encoder's 384 dimensions: about 0.67 M parameters."""

    def __init__(self, dim: int = EMBEDDING_DIM) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_stage(3, 32, 2),
            *_stage(32, 64, 2), *_stage(64, 64, 1),
            *_stage(64, 128, 2), *_stage(128, 128, 1),
            *_stage(128, 256, 2),
        )  # fmt: skip
        self.head = nn.Linear(256, dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixels).mean(dim=(2, 3)))


def training_world(config: WorldConfig) -> WorldConfig:
    """The world the model learns from: the config's concepts, size and seed, every concept of the class
    family as a class, each artefact at a fixed rate and no planted correlation. A domain CLIP is not
    trained on the audited data set: it must know every concept apart from the shortcuts to be found."""
    classes = config.concepts[config.class_family]
    return replace(config, classes=classes, artifact_rate=TRAINING["artifact_rate"], correlations=())


@lru_cache(maxsize=2)
def _sentence_encoder(device: str) -> Any:
    """MiniLM loaded once per process and device: training and the model that follows both need it."""
    return load_sentence_encoder(torch.device(device))


def _embed_captions(texts: Sequence[str], device: torch.device, progress: bool) -> torch.Tensor:
    encoder, chunk = _sentence_encoder(str(device)), 512
    parts = []
    with progress_bar("world foundation: embed captions", len(texts), progress) as advance:
        for start in range(0, len(texts), chunk):
            part = list(texts[start : start + chunk])
            parts.append(encoder.encode(part, batch_size=256, convert_to_tensor=True, normalize_embeddings=True).float())
            advance(len(part))
    return torch.cat(parts).to(device)


def _training_views(config: WorldConfig, images: int, progress: bool) -> tuple[torch.Tensor, list[str], torch.Tensor, torch.Tensor]:
    """uint8 views ``[V, 3, S, S]`` (each train image whole, then a random crop of it), one caption per
    view, and as bit sets over the world's concepts what each view shows and what its caption names;
    all drawn from the config's seed."""
    rng = np.random.default_rng([config.seed, CODE_VERSION])
    preprocessing = world_preprocessing(config)
    bit = {concept: 1 << index for index, concept in enumerate(config.concept_names())}
    views, captions, shown, named = [], [], [], []
    with progress_bar("world foundation: render views", images, progress) as advance:
        for index in range(images):
            sample = render(config, index, "train")
            for box in (None, random_box(sample, rng)):
                concepts = visible_concepts(sample, box)
                if not concepts:
                    continue
                image = sample.image if box is None else preprocessing.view(sample.image.crop(box))
                views.append(torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1))
                text, names = caption(concepts, rng)
                captions.append(text)
                shown.append(sum(bit[concept] for concept in concepts))
                named.append(sum(bit[concept] for concept in names))
            advance(1)
    return torch.stack(views), captions, torch.tensor(shown), torch.tensor(named)


def _normalise_batch(views: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(WORLD_MEAN).view(1, 3, 1, 1), torch.tensor(WORLD_STD).view(1, 3, 1, 1)
    return ((views.float() / 255.0 - mean.to(views.device)) / std.to(views.device)).contiguous(memory_format=torch.channels_last)


def _contrastive_loss(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over ``logits [view, caption]`` with several positives per row and column."""
    to_captions = F.cross_entropy(logits, positives / positives.sum(dim=1, keepdim=True))
    to_views = F.cross_entropy(logits.T, (positives / positives.sum(dim=0, keepdim=True)).T)
    return (to_captions + to_views) / 2


def train_world_foundation(
    config: WorldConfig, steps: int = DEFAULT_STEPS, batch_size: int = BATCH_SIZE, progress: bool = True, device: str | torch.device | None = None
) -> dict[str, torch.Tensor]:
    """Train the image tower against the locked MiniLM caption embeddings with the symmetric InfoNCE
    loss and a learnt temperature (CLIP, LiT); returns its state dict. A caption is a positive of every
    view in the batch that shows all the concepts it names, not only of its own view: "a red star" of
    one view is true of another red star too, and a false negative would teach the tower to tell
    apart what the caption does not. Seeded by the config: one machine, same weights."""
    if steps < 1 or batch_size < 2:
        raise SemlensError(f"world foundation training needs steps >= 1 and batch_size >= 2; got {steps}, {batch_size}")
    device = pick_device(device)
    torch.manual_seed(config.seed)  # the tower's initial weights; views and captions use their own seeded generator
    world = training_world(config)
    images = min(TRAINING["max_images"], math.ceil(steps * batch_size / 2))
    views, captions, shown, named = _training_views(world, images, progress)
    unique = list(dict.fromkeys(captions))
    position = {text: index for index, text in enumerate(unique)}
    targets = torch.tensor([position[text] for text in captions])
    texts = _embed_captions(unique, device, progress)
    tower = ImageTower().to(device, memory_format=torch.channels_last).train()
    log_scale = nn.Parameter(torch.tensor(math.log(1 / TRAINING["temperature"]), device=device))
    decay = [p for p in tower.parameters() if p.ndim > 1]
    rest = [p for p in tower.parameters() if p.ndim <= 1] + [log_scale]
    optimiser = torch.optim.AdamW(
        [{"params": decay, "weight_decay": TRAINING["weight_decay"]}, {"params": rest, "weight_decay": 0.0}], lr=TRAINING["learning_rate"]
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.empty(0, dtype=torch.long)
    with progress_bar("world foundation: train", steps, progress) as advance:
        for _ in range(steps):
            if len(order) < batch_size:  # epochs of a fresh permutation, no view twice in a batch
                order = torch.cat([order, torch.randperm(len(views), generator=generator)])
            batch, order = order[:batch_size], order[batch_size:]
            embedded = F.normalize(tower(_normalise_batch(views[batch].to(device))), dim=-1)
            scale = log_scale.exp()
            positives = ((named[batch][None, :] & ~shown[batch][:, None]) == 0).float().to(device)  # [view, caption]
            loss = _contrastive_loss(scale * embedded @ texts[targets[batch].to(device)].T, positives)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            with torch.no_grad():
                log_scale.clamp_(max=math.log(100))
            advance(1)
    return {name: tensor.detach().cpu().contiguous() for name, tensor in tower.state_dict().items()}


# ------------------------------------------------------------------------------------------------
# the foundation model and its cache


def resolve_steps(steps: int | None = None) -> int:
    """An explicit step count, else ``SEMLENS_WORLD_STEPS`` (tests train for a few steps), else the default."""
    if steps is not None:
        return int(steps)
    value = os.environ.get(STEPS_VARIABLE)
    if not value:
        return DEFAULT_STEPS
    try:
        return int(value)
    except ValueError:
        raise SemlensError(f"{STEPS_VARIABLE} must be an integer step count; got {value!r}") from None


def weights_path(config: WorldConfig, steps: int, batch_size: int = BATCH_SIZE) -> Path:
    """The cache file of the weights that this config and these settings train (configs that differ
    only in their planted correlations or class subset share one model: see ``training_world``)."""
    settings = {"world": training_world(config).fingerprint(), "steps": steps, "batch_size": batch_size, "training": TRAINING}
    return trained_path("world-foundation", hash_json(settings))


class WorldFoundation(FoundationModel):
    """The world's image tower with the locked MiniLM as text tower, in one 384-d space."""

    batch_size = 256

    def __init__(
        self,
        config: WorldConfig,
        state: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(device, dtype)
        self.config = config
        self.preprocessing = world_preprocessing(config)
        tower = ImageTower()
        tower.load_state_dict(state)
        self.id = f"world:{config.source}@{hash_module_weights(tower)}"  # float32: one id on every device, in any dtype
        self.dtype = dtype or inference_dtype(self.device, tower)
        self.tower = tower.to(self.device, self.dtype).eval()
        self.text_encoder = _sentence_encoder(str(self.device))
        self.dim = EMBEDDING_DIM

    @property
    def image_tower(self) -> torch.nn.Module:
        return self.tower

    @property
    def image_preprocessor(self) -> StackedTransform:
        return StackedTransform(self.preprocessing)

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.tower(pixels)

    def _embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.text_encoder.encode(list(texts), batch_size=128, convert_to_tensor=True, normalize_embeddings=True)


def load_world_foundation(
    config_source: str | Path | None = None,
    device: str | torch.device | None = None,
    steps: int | None = None,
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
    dtype: torch.dtype | None = None,
) -> WorldFoundation:
    """The world's image-text model: trained on first use (about 14 min on 2 cores at the default 1600
    steps), then cached."""
    config = WorldConfig.load(config_source)
    steps = resolve_steps(steps)
    path = weights_path(config, steps, batch_size)
    if not path.is_file():
        state = train_world_foundation(config, steps, batch_size, progress, device)
        metadata = {"world": training_world(config).fingerprint(), "steps": str(steps), "batch_size": str(batch_size)}
        atomic_write(path, lambda temporary: save_file(state, str(temporary), metadata))
    return WorldFoundation(config, load_file(str(path)), device, dtype)
