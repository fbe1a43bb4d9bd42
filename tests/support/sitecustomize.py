"""Make a CUDA build of torchvision importable next to the CPU build of torch (test machines only).

``import semlens`` applies the same fix, but tests also import torchvision, timm and open_clip before
semlens, and start CLI subprocesses: on ``PYTHONPATH`` as ``sitecustomize`` it runs first everywhere,
also in environments without semlens (the reference library's, for ``benchmarks/reference.py``).
The fix's module is loaded from this checkout by its path, so that starting Python does not import
all of semlens.
"""

import importlib.util
from pathlib import Path

_path = Path(__file__).resolve().parents[2] / "src" / "semlens" / "_util" / "torchvision_compat.py"
_spec = importlib.util.spec_from_file_location("semlens_torchvision_compat", _path)
_compat = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_compat)
_compat.patch_torchvision_ops()
