"""Make a CUDA build of torchvision importable next to the CPU build of torch (test machines only).

The torchvision wheel that matches torch 2.13.0 here is a CUDA build: its compiled ops fail to load,
and its Python side then dies registering meta kernels for ``torchvision::nms``. Defining the two op
schemas first lets torchvision (and timm, open_clip, transformers, which import it) load; compiled
ops stay unavailable. Users with a consistent install never need this. It lives on ``PYTHONPATH`` as
``sitecustomize`` so that CLI subprocesses started by the tests get it too.
"""

import importlib.util
import os

_LIBRARY = None  # kept alive for the whole process: the schemas vanish with it


def _patch_torchvision_ops() -> None:
    global _LIBRARY
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    import torch

    try:
        torch.ops.load_library(os.path.join(os.path.dirname(spec.origin), "_C.so"))
    except (OSError, RuntimeError):
        _LIBRARY = torch.library.Library("torchvision", "DEF")
        _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


_patch_torchvision_ops()
