"""A small folder of natural photos made from images that ship inside scikit-image and scikit-learn.

No labelled natural-image data set can be installed offline; these photos (a cat, a rocket, coffee,
an astronaut, a motorcycle, ...) with seeded random crops and flips give a few hundred real images,
enough for the default demo and for tests that need a pretrained ImageNet model to recognise things.
The subfolder of each image names its source photo, so the folder is also a labelled data set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# scikit-image loader name -> folder name
SKIMAGE_PHOTOS = {
    "chelsea": "cat",
    "astronaut": "astronaut",
    "coffee": "coffee",
    "rocket": "rocket",
    "stereo_motorcycle": "motorcycle",
    "hubble_deep_field": "galaxies",
    "camera": "cameraman",
    "coins": "coins",
    "brick": "brick",
    "grass": "grass",
    "gravel": "gravel",
    "clock": "clock",
    "immunohistochemistry": "tissue",
    "colorwheel": "colorwheel",
}
SKLEARN_PHOTOS = {"china.jpg": "temple", "flower.jpg": "flower"}


def source_photos() -> dict[str, Image.Image]:
    """The bundled photos by folder name, as RGB images."""
    import skimage.data

    photos = {}
    for loader, name in SKIMAGE_PHOTOS.items():
        array = getattr(skimage.data, loader)()
        photos[name] = Image.fromarray(array[0] if isinstance(array, tuple) else array).convert("RGB")
    try:
        from sklearn.datasets import load_sample_image
    except ImportError:
        return photos
    for filename, name in SKLEARN_PHOTOS.items():
        photos[name] = Image.fromarray(load_sample_image(filename)).convert("RGB")
    return photos


def write_photo_folder(root: str | Path, per_photo: int = 15, seed: int = 0) -> Path:
    """Write ``per_photo`` seeded random crops (60-100 % of the side) and flips of each photo as JPEGs."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for name, photo in sorted(source_photos().items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        width, height = photo.size
        for number in range(per_photo):
            scale = rng.uniform(0.6, 1.0) if number else 1.0  # the first one is the whole photo
            crop_w, crop_h = int(width * scale), int(height * scale)
            left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
            view = photo.crop((left, top, left + crop_w, top + crop_h))
            if rng.random() < 0.5:
                view = ImageOps.mirror(view)
            view.save(folder / f"{name}-{number:03d}.jpg", quality=90)
    return root
