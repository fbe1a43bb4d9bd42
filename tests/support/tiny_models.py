"""Tiny models and data sets that tests reach through ``py:`` specs (this folder is on PYTHONPATH)."""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from PIL import Image
from torch import nn

from semlens import LoadedModel, Preprocessing


class TinyCNN(nn.Module):
    """Two conv stages and a linear head over 32 px inputs; weights fixed by the seed."""

    def __init__(self, seed: int = 0, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 6, 3, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


TINY_PREPROCESSING = Preprocessing(input_size=32, resize=36)


def tiny_cnn() -> LoadedModel:
    return LoadedModel(TinyCNN().eval(), "py:tiny_models:tiny_cnn", TINY_PREPROCESSING, ["red", "green", "blue"])


#: three ImageNet classes by WordNet id (ImageNet's folder names) and by the names a model gives them
IMAGENET_FOLDERS = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}


def imagenet_named_cnn() -> LoadedModel:
    """The tiny CNN with three of ImageNet's class names, the classes of a folder named by WordNet id."""
    return LoadedModel(TinyCNN().eval(), "py:tiny_models:imagenet_named_cnn", TINY_PREPROCESSING, list(IMAGENET_FOLDERS.values()))


def wordnet_named_cnn() -> LoadedModel:
    """The tiny CNN whose classes are WordNet ids: a model that took its data's ImageNet-style folder names."""
    return LoadedModel(TinyCNN().eval(), "py:tiny_models:wordnet_named_cnn", TINY_PREPROCESSING, list(IMAGENET_FOLDERS))


class StridedCNN(nn.Module):
    """Two 3x3 convolutions of stride 2 and padding 1 (ResNet's downsampling) over 32 px inputs: the 8 x 8 map of
    ``features.3`` has its cells 1.5 pixels up and left of the even grid (``model.receptive``)."""

    def __init__(self, seed: int = 0, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 6, 3, 2, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


def strided_cnn() -> LoadedModel:
    return LoadedModel(StridedCNN().eval(), "py:tiny_models:strided_cnn", TINY_PREPROCESSING, ["red", "green", "blue"])


def patch_cnn() -> LoadedModel:
    """The tiny CNN whose first conv's unit 5 detects white: the sum of a 3 x 3 patch's normalised pixels, so that
    it fires strongly on a pasted white square, weakly on the colour images' squares of one full channel and
    never on their dark noise (a detector of a concept the model sees and a foundation model need not)."""
    model = TinyCNN().eval()
    with torch.no_grad():
        model.features[0].weight[5] = 1.0
        model.features[0].bias[5] = 6.0
    return LoadedModel(model, "py:tiny_models:patch_cnn", TINY_PREPROCESSING, ["red", "green", "blue"])


class AwayCNN(nn.Module):
    """Two units over 32 px inputs (layer ``features``): unit 1 detects white where it is (``patch_cnn``'s unit 5),
    unit 0 fires in the top-left corner by how much white there is anywhere (a unit downstream of the detector,
    raised by a pasted white square as much, but firing away from it); the head reads both."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.detect = nn.Conv2d(3, 1, 3, padding=1)
        with torch.no_grad():
            self.detect.weight.fill_(1.0)
            self.detect.bias.fill_(6.0)
        self.features = nn.Identity()
        self.head = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        white = torch.relu(self.detect(x))
        away = torch.zeros_like(white)
        away[..., :4, :4] = white.amax(dim=(2, 3), keepdim=True)
        return self.head(self.features(torch.cat([away, white], dim=1)).amax(dim=(2, 3)))


def away_cnn() -> LoadedModel:
    return LoadedModel(AwayCNN().eval(), "py:tiny_models:away_cnn", TINY_PREPROCESSING, ["red", "green", "blue"])


def tiny_cnn_module() -> nn.Module:
    """The same network as a bare module: semlens gives it ImageNet preprocessing."""
    return TinyCNN()


def dead_cnn() -> LoadedModel:
    """A TinyCNN whose first conv never fires (ReLU of a large negative bias)."""
    model = TinyCNN().eval()
    with torch.no_grad():
        model.features[0].bias.fill_(-1e6)
    return LoadedModel(model, "py:tiny_models:dead_cnn", TINY_PREPROCESSING)


def twin_cnn() -> LoadedModel:
    """A TinyCNN whose second conv has two identical channels (2 and 3): the same examples, so unit 3 is tied to 2."""
    model = TinyCNN().eval()
    with torch.no_grad():
        conv = model.features[3]
        conv.weight[3] = conv.weight[2]
        conv.bias[3] = conv.bias[2]
    return LoadedModel(model, "py:tiny_models:twin_cnn", TINY_PREPROCESSING, ["red", "green", "blue"])


class ChannelsLastCNN(nn.Module):
    """A conv stage, then an MLP over each position channels last (N,H,W,C, as in a ConvNeXt or Swin block):
    ``mlp.1`` (its ReLU) outputs N,16,16,6, whose 6 hidden channels are read with ``channels_last=true``."""

    def __init__(self, seed: int = 0, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.mlp = nn.Sequential(nn.Linear(8, 6), nn.ReLU())
        self.head = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.mlp(self.conv(x).permute(0, 2, 3, 1))  # N,H,W,C
        return self.head(hidden.mean(dim=(1, 2)))


def channels_last_cnn() -> LoadedModel:
    return LoadedModel(ChannelsLastCNN().eval(), "py:tiny_models:channels_last_cnn", TINY_PREPROCESSING, ["red", "green", "blue"])


class Normalising(nn.Module):
    """An input normalisation written as a module, as notebooks wrap a network: ``(x - mean) / std``."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], written: str = "operators") -> None:
        super().__init__()
        self.written = written
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.written == "methods":
            return x.sub(self.mean).div(self.std)
        if self.written == "inverted":  # dividing by the signal: not an affine map of it
            return self.std / (x - self.mean)
        return (x - self.mean) / self.std


def colour_images(count: int, size: int = 40, seed: int = 0) -> list[tuple[Image.Image, int]]:
    """Noisy images, each dominated by one of three colours in a random square: (image, colour label)."""
    rng = np.random.default_rng(seed)
    items = []
    for index in range(count):
        label = index % 3
        pixels = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
        side = int(rng.integers(8, size // 2))
        top, left = rng.integers(0, size - side, 2)
        pixels[top : top + side, left : left + side, label] = 255
        items.append((Image.fromarray(pixels), label))
    return items


class SlowColours:
    """``colour_images`` that take ``SEMLENS_TEST_DELAY`` seconds each to load, so a test can kill a run midway."""

    classes = ["red", "green", "blue"]

    def __init__(self, count: int = 48) -> None:
        self.items = colour_images(count)
        self.delay = float(os.environ.get("SEMLENS_TEST_DELAY", "0"))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        time.sleep(self.delay)
        return self.items[index]

    def fingerprint(self) -> str:
        return f"slow-colours-{len(self.items)}"


def slow_colours() -> SlowColours:
    return SlowColours()


def tiny_clip(device: str | None = None):
    """The tiny random CLIP saved at ``SEMLENS_TEST_CLIP``; sleeps ``SEMLENS_TEST_DELAY`` s per batch
    and counts the images it embeds in ``EMBEDDED`` (to check that each distinct crop is embedded once)."""
    from semlens.foundation.hf import HFFoundationModel, load_hf, model_label

    class CountingCLIP(HFFoundationModel):
        def _embed_pixels(self, pixels):
            time.sleep(float(os.environ.get("SEMLENS_TEST_DELAY", "0")))
            EMBEDDED.append(pixels["pixel_values"].shape[0])
            return super()._embed_pixels(pixels)

    path = os.environ["SEMLENS_TEST_CLIP"]
    loaded = load_hf(path, device=device)
    return CountingCLIP(loaded.model, loaded.image_processor, loaded.tokenizer, model_label(path), device)


EMBEDDED: list[int] = []


def conv_foundation(device: str | None = None, dtype: torch.dtype | None = None):
    """The concept world's small CNN image tower with seeded random weights (no training) and MiniLM for
    texts: a convolutional foundation model for the tests of channels-last, compiling and precision. Its
    head's bias centres its outputs over the colour images: a random ReLU tower alone maps every image
    to nearly one direction, and units' thetas would then agree to a cosine of 0.9996."""
    from semlens.world.foundation import ImageTower, WorldFoundation
    from semlens.world.render import WorldConfig, world_preprocessing

    torch.manual_seed(0)
    config, tower = WorldConfig.load(), ImageTower().eval()
    pixels = torch.stack([world_preprocessing(config)(image) for image, _ in colour_images(30)])
    with torch.no_grad():
        tower.head.bias -= tower(pixels).mean(dim=0)
    return WorldFoundation(config, tower.state_dict(), device, dtype)
