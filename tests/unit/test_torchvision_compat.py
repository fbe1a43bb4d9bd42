"""`import semlens` survives a torchvision whose compiled ops do not load (zennit installs torchvision;
here it is a CUDA build next to the CPU torch): transformers, which imports it, must still work."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="torchvision is not installed")
def test_semlens_then_transformers_import_without_the_test_support_fix() -> None:
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}  # no tests/support sitecustomize
    code = "import semlens; from transformers import PreTrainedModel; import torchvision; print('imported')"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "imported" in result.stdout, result.stderr[-2000:]
