"""Keep a torchvision whose compiled ops cannot load from breaking everything that imports it.

zennit declares torchvision as a dependency, and transformers imports torchvision whenever it is
installed. A torchvision built for another torch (a CUDA wheel next to a CPU torch, or a version
mismatch) fails to load its compiled ops and then dies registering meta kernels for
``torchvision::nms``, taking transformers, sentence-transformers, timm and open_clip down with it.
Defining the two op schemas first lets its Python side load; its compiled ops (nms, roi_align) stay
unavailable, and semlens does not use them. With a consistent install this does nothing.
"""

from __future__ import annotations

import importlib.util
import os
import sys

_LIBRARY = None  # kept alive for the whole process: the schemas vanish with it


def patch_torchvision_ops() -> None:
    global _LIBRARY
    if _LIBRARY is not None or "torchvision" in sys.modules:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    import torch

    try:
        torch.ops.torchvision.nms  # defined already: by torchvision's ops, or by this fix in another copy
        return
    except (AttributeError, RuntimeError):
        pass
    try:
        torch.ops.load_library(os.path.join(os.path.dirname(spec.origin), "_C.so"))
    except (OSError, RuntimeError):
        _LIBRARY = torch.library.Library("torchvision", "DEF")
        _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
