"""A hand-made classifier with a planted unit, for known-answer tests of explanations.

One 1x1 convolution reads the pixels of ``artefact_world`` images (normalised to about [-2, 2]):
channel 0 fires only on near-white pixels (the watermark), channels 1-3 on strongly red, green and
blue pixels; none fires on the background noise. The head's "red" logit adds the white channel three times over to the red one, so an
image with only a watermark is called "red" because of unit 0, and nothing else.
"""

from __future__ import annotations

import torch
from artefact_world import CLASSES, PREPROCESSING
from torch import nn

from semlens import LoadedModel

WHITE = 0  # the planted unit: features.1/0


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
            self.head.weight.copy_(torch.tensor([[3.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


def planted_model() -> LoadedModel:
    return LoadedModel(PlantedNet().eval(), "py:planted:planted_model", PREPROCESSING, list(CLASSES))
