"""A tiny world with a planted artefact, a model trained on it, and an oracle foundation model.

Images are noisy 32 px squares with one coloured blob (the class: red, green or blue). A white 6x6
"watermark" sits in the top-left corner of every red training image and of no other. The oracle
foundation model is a test fixture, not a real one: it embeds an image as its redness, greenness,
blueness and the amount of near-white watermark pixels, and a text as the basis vector of the keyword
it contains (the uniform vector for none), so audits have a known right answer.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from semlens import FoundationModel, LoadedModel, Preprocessing
from semlens.foundation import StackedTransform

CLASSES = ["red", "green", "blue"]
PREPROCESSING = Preprocessing(input_size=32, resize=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
KEYWORDS = {"red": 0, "green": 1, "blue": 2, "watermark": 3, "white square": 3}


def render(label: int, watermark: bool, rng: np.random.Generator) -> Image.Image:
    pixels = rng.integers(40, 110, (32, 32, 3)).astype(np.uint8)
    side = int(rng.integers(9, 14))
    top, left = (int(v) for v in rng.integers(9, 32 - side, 2))
    pixels[top : top + side, left : left + side] = 30
    pixels[top : top + side, left : left + side, label] = 170  # dimmer than the watermark
    if watermark:
        pixels[1:7, 1:7] = 255
    return Image.fromarray(pixels)


def dataset(
    count: int, seed: int, watermark_class: int | None = 0, colour_reliability: float = 0.5
) -> list[tuple[Image.Image, int]]:
    """``count`` images cycling through the classes: the blob has the class's colour with probability
    ``colour_reliability`` (else a random colour), and every image of ``watermark_class`` has the
    watermark, so a model trained on it learns to rely on the watermark for that class."""
    rng = np.random.default_rng(seed)
    items = []
    for index in range(count):
        label = index % 3
        colour = label if rng.random() < colour_reliability else int(rng.integers(0, 3))
        items.append((render(colour, label == watermark_class, rng), label))
    return items


def write_folder(root: Path, items: list[tuple[Image.Image, int]]) -> Path:
    for index, (image, label) in enumerate(items):
        folder = root / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:04d}.png")
    return root


class WorldNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


def train(items: list[tuple[Image.Image, int]], epochs: int = 20, seed: int = 0) -> WorldNet:
    torch.manual_seed(seed)
    model = WorldNet()
    pixels = torch.stack([PREPROCESSING(image) for image, _ in items])
    labels = torch.tensor([label for _, label in items])
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(epochs):
        for batch in torch.randperm(len(items)).split(32):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(pixels[batch]), labels[batch]).backward()
            optimiser.step()
    return model.eval()


def trained_model() -> LoadedModel:
    """The model whose weights the test saved at ``SEMLENS_TEST_WEIGHTS`` (a ``py:`` model spec)."""
    from safetensors.torch import load_file

    model = WorldNet()
    model.load_state_dict(load_file(os.environ["SEMLENS_TEST_WEIGHTS"]))
    return LoadedModel(model.eval(), "py:artefact_world:trained_model", PREPROCESSING, CLASSES)


class OracleFoundation(FoundationModel):
    """Test fixture: [redness, greenness, blueness, watermark pixels] for images, keyword basis for texts."""

    dim = 4
    id = "oracle-world-v1"

    @property
    def image_preprocessor(self):
        return StackedTransform(_oracle_pixels)

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Fractions of pixels that are strongly red, green, blue, or watermark-white."""
        red, green, blue = pixels.unbind(-1)
        excess = torch.stack([red - (green + blue) / 2, green - (red + blue) / 2, blue - (red + green) / 2], dim=-1)
        colours = (excess > 0.4).float().mean(dim=(1, 2))
        white = (pixels > 0.95).all(dim=-1).float().mean(dim=(1, 2))
        return torch.cat([colours, white[:, None]], dim=1) + 1e-3

    def _embed_texts(self, texts) -> torch.Tensor:
        rows = []
        for text in texts:
            hits = [index for word, index in KEYWORDS.items() if word in text]
            rows.append(torch.eye(4)[hits[0]] if hits else torch.full((4,), 0.5))
        return torch.stack(rows)


def _oracle_pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.resize((32, 32), Image.NEAREST), dtype=np.float32) / 255)


def oracle(device=None) -> OracleFoundation:
    return OracleFoundation(device="cpu")
