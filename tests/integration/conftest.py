"""Fixtures for end-to-end builds: a folder of small images and a tiny random CLIP on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_foundation import SAVERS
from tiny_models import colour_images


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
