"""A hand-made classifier with a planted unit, for known-answer tests of explanations.

One 1x1 convolution reads the pixels of ``artefact_world`` images (normalised to about [-2, 2]):
channel 0 fires only on near-white pixels (the watermark), channels 1-3 on strongly red, green and
blue pixels; none fires on the background noise. The head's "red" logit adds the white channel three times over to the red one, so an
image with only a watermark is called "red" because of unit 0, and nothing else; it subtracts the blue channel (unit 3
speaks against "red", on images with a blue blob only)."""

from __future__ import annotations

import numpy as np
import torch
from artefact_world import CLASSES, PREPROCESSING
from PIL import Image
from torch import nn

from semlens import LoadedModel

WHITE = 0  # the planted unit: features.1/0
BLUE = 3  # the unit that speaks against "red": features.1/3


class PlantedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4, 3)
        with torch.no_grad():
            self.features[0].weight.copy_(
                torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]]).view(4, 3, 1, 1)
            )
            self.features[0].bias.copy_(torch.tensor([-4.5, -2.5, -2.5, -2.5]))
            self.head.weight.copy_(torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


def planted_model() -> LoadedModel:
    return LoadedModel(PlantedNet().eval(), "py:planted:planted_model", PREPROCESSING, list(CLASSES))


def probe_images(count: int = 60, seed: int = 4) -> list[tuple[Image.Image, int]]:
    """Noise with one blob of the class's colour; every "red" image also has a watermark, of varying size,
    place and brightness, so that the planted unit's top samples differ in score (a unit whose top scores tie is inactive)."""
    rng = np.random.default_rng(seed)
    items = []
    for index in range(count):
        label = index % 3
        pixels = rng.integers(40, 110, (32, 32, 3)).astype(np.uint8)
        side = int(rng.integers(7, 12))
        top, left = (int(value) for value in rng.integers(12, 32 - side, 2))
        pixels[top : top + side, left : left + side] = 30
        pixels[top : top + side, left : left + side, label] = 170
        if label == 0:
            mark = int(rng.integers(3, 8))
            row, column = (int(value) for value in rng.integers(0, 11 - mark, 2))
            pixels[row : row + mark, column : column + mark] = int(rng.integers(235, 256))
        items.append((Image.fromarray(pixels), label))
    return items


def picture(watermark: bool = True, blob: int = 8, blue: int = 0) -> Image.Image:
    """Noise, a 6x6 white watermark at (1, 1), a ``blob``-sided red square at (16, 16) and a ``blue``-sided
    blue one at (2, 24): an image the planted model calls "red" because of the watermark (and the blue square
    speaks against it)."""
    pixels = np.random.default_rng(0).integers(40, 110, (32, 32, 3)).astype(np.uint8)
    if watermark:
        pixels[1:7, 1:7] = 255
    pixels[16 : 16 + blob, 16 : 16 + blob] = 30
    pixels[16 : 16 + blob, 16 : 16 + blob, 0] = 170
    pixels[2 : 2 + blue, 24 : 24 + blue] = 30
    pixels[2 : 2 + blue, 24 : 24 + blue, 2] = 170
    return Image.fromarray(pixels)
