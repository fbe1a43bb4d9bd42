"""Where the map cells of common architectures sit: ``model.receptive.map_shift`` on torchvision and timm models
with random weights (the shift depends on the layers' arithmetic, not on training), and what measuring costs.

Layer arithmetic predicts each value: a strided convolution with padding centres output i on input 2i, half
a pixel before the even grid, and the offsets add up through the halvings; max pools, average pools and
patch embeddings keep the grid.

    PYTHONPATH=src:tests/support python benchmarks/receptive.py     # needs the dev extra (torchvision, timm)
"""

from __future__ import annotations

import time

import timm
import torch
import torchvision

from semlens.model.receptive import map_shift
from semlens.model.units import LayerSpec

CASES = [
    ("resnet50", lambda: torchvision.models.resnet50(), ["layer1", "layer2", "layer3", "layer4"]),
    ("mobilenet_v3_small", lambda: torchvision.models.mobilenet_v3_small(), ["features.3", "features.8", "features.12"]),
    ("efficientnet_b0", lambda: torchvision.models.efficientnet_b0(), ["features.3", "features.5", "features.8"]),
    ("convnext_tiny", lambda: torchvision.models.convnext_tiny(), ["features.1", "features.3", "features.7"]),
    ("vgg11", lambda: torchvision.models.vgg11(), ["features.10", "features.20"]),
    ("densenet121", lambda: torchvision.models.densenet121(), ["features.denseblock2", "features.denseblock4"]),
    ("vit_tiny_patch16_224 (timm)", lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False), ["blocks.5"]),
]


def main() -> None:
    print(f"torch threads: {torch.get_num_threads()}; input 224 px")
    for name, make, layers in CASES:
        model = make().eval()
        for layer in layers:
            started = time.perf_counter()
            shift = map_shift(model, LayerSpec(layer), 224)
            print(f"{name:28s} {layer:22s} shift (rows, columns) {shift}  {time.perf_counter() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
