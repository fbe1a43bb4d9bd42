"""Shared test set-up: offline hub, and torchvision made importable next to the CPU torch."""

import os
import sys
from pathlib import Path

SUPPORT = Path(__file__).parent / "support"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# CLI subprocesses started by the tests need the same torchvision fix: pass it on via PYTHONPATH.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(SUPPORT))
import sitecustomize  # noqa: E402,F401  (the torchvision fix; harmless without torchvision)
