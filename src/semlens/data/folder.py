"""``folder:PATH``: images in a folder tree; the first-level subfolder names are the class labels."""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .._util.errors import DataError
from .base import ImageData, rgb

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
#: folders that archivers and operating systems add beside the data; never images or classes
SYSTEM_FOLDERS = {"__MACOSX"}


def is_data_file(relative: Path) -> bool:
    """An image file that is not hidden and not inside a hidden or system folder (``.git``, ``__MACOSX``,
    macOS's ``._name`` resource forks): those would become classes or undecodable samples."""
    hidden = any(part.startswith(".") or part in SYSTEM_FOLDERS for part in relative.parts)
    return not hidden and relative.suffix.lower() in IMAGE_SUFFIXES


class FolderData(ImageData):
    """Every image file under ``root`` (recursively, hidden files and folders left out), sorted by relative path.

    When images sit in subfolders, the first path component is the class name (ImageNet-style
    ``root/class/xxx.jpg``); images directly in ``root`` then have no label.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.spec = f"folder:{self.root}"
        if not self.root.is_dir():
            raise DataError(f"data folder {self.root} does not exist or is not a directory")
        self.files = sorted(
            path.relative_to(self.root).as_posix()
            for path in self.root.rglob("*")
            if is_data_file(path.relative_to(self.root)) and path.is_file()
        )
        if not self.files:
            raise DataError(
                f"data folder {self.root} holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, recursively)"
            )
        class_names = sorted({name.split("/")[0] for name in self.files if "/" in name})
        self.classes = class_names or None
        self._labels = {name: position for position, name in enumerate(class_names)}

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> Image.Image:
        path = self.root / self.files[index]
        try:
            with Image.open(path) as image:
                return rgb(image)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise DataError(f"cannot decode {self.files[index]}: {error}") from error

    def label(self, index: int) -> int | None:
        name = self.files[index]
        return self._labels[name.split("/")[0]] if "/" in name else None

    def describe(self, index: int) -> str:
        return self.files[index]

    def fingerprint(self) -> str:
        """Relative paths and sizes: cheap on millions of files, and survives copying the folder."""
        digest = hashlib.sha256()
        for name in self.files:
            digest.update(f"{name}|{(self.root / name).stat().st_size}\n".encode())
        return digest.hexdigest()[:16]
