"""``folder:PATH``: images in a folder tree; the first-level subfolder names are the class labels."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .._util.errors import DataError
from .base import ImageData, rgb

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".tga"}
#: folders that archivers, operating systems and NAS indexers add beside the data; never images or classes
SYSTEM_FOLDERS = {"__MACOSX", "@eaDir", "$RECYCLE.BIN", "System Volume Information"}


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
        self.files = sorted(_image_files(self.root))
        if not self.files:
            raise DataError(
                f"data folder {self.root} holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, recursively)"
            )
        class_folders = sorted({name.split("/")[0] for name in self.files if "/" in name})
        self.classes = [shown(name) for name in class_folders] or None
        self._labels = {name: position for position, name in enumerate(class_folders)}

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> Image.Image:
        """Sample ``index`` as RGB. An image above Pillow's pixel limit but under twice it is the user's own large
        image, read without Pillow's warning (which every stage's loader workers would print again); above twice
        the limit Pillow refuses it, and the sample is skipped with that reason."""
        return read_image(self.root / self.files[index], self.files[index])

    def label(self, index: int) -> int | None:
        name = self.files[index]
        return self._labels[name.split("/")[0]] if "/" in name else None

    def describe(self, index: int) -> str:
        return shown(self.files[index])

    def fingerprint(self) -> str:
        """Relative paths and sizes: cheap on millions of files, and survives copying the folder."""
        digest = hashlib.sha256()
        for name in self.files:
            digest.update(f"{name}|{(self.root / name).stat().st_size}\n".encode("utf-8", "surrogateescape"))
        return digest.hexdigest()[:16]


def read_image(path: Path, name: str) -> Image.Image:
    """The image file at ``path`` as RGB, or a DataError naming it as ``name`` (see ``FolderData.load``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # before open: Pillow warns there
            with Image.open(path) as image:
                return rgb(image)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise DataError(f"cannot decode {name}: {error}") from error


def _image_files(root: Path) -> list[str]:
    """The relative paths of the data files under ``root``, folder links followed (a data set assembled from
    links to class folders), each real folder once (a link back up is no loop)."""
    found, seen = [], set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        subfolders[:] = [name for name in subfolders if not name.startswith(".") and name not in SYSTEM_FOLDERS]
        relative = Path(folder).relative_to(root)
        for name in files:
            path = relative / name
            if is_data_file(path) and (Path(folder) / name).is_file():
                found.append(path.as_posix())
    return found


def shown(name: str) -> str:
    """A file or folder name as text to show and store: bytes that are not UTF-8 (names from other systems,
    which Python keeps as surrogates) become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
