"""Shared test set-up: offline hub, torchvision made importable next to the CPU torch, and fixtures
for end-to-end builds (a folder of small images, a tiny random CLIP on disk)."""

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

import pytest  # noqa: E402
from tiny_foundation import SAVERS  # noqa: E402
from tiny_models import colour_images  # noqa: E402


def write_colour_folder(root: Path, count: int = 30) -> Path:
    """``count`` colour images as PNGs in one subfolder per colour (labels from folder names)."""
    names = ["red", "green", "blue"]
    for index, (image, label) in enumerate(colour_images(count)):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:03d}.png")
    return root


@pytest.fixture(scope="session")
def colour_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_colour_folder(tmp_path_factory.mktemp("colours"))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-clip")
    SAVERS["clip"](directory)
    return directory
