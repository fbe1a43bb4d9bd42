"""Concept-example images for the explorer, made once and kept in the Lens's user-cache folder.

Decoding a sample and cropping it costs far more than sending a small JPEG, and the same examples
show up on every page (map, unit, search, audit), so each one is written once under
``<cache>/thumbnails/<layer>/`` (atomically) and read from there afterwards: at most two images per
concept example, and never inside the Lens, so that serving a Lens changes nothing in it. Where the
cache cannot be written, the images are made on every request.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

from ..lens.lens import ConceptExample, Lens
from ..lens.store import atomic_write, safe_name

SIZE = 128
QUALITY = 85


class ThumbnailCache:
    """JPEG crops (``SIZE`` px square) and full input views of a Lens's concept examples."""

    def __init__(self, lens: Lens) -> None:
        self.lens = lens
        self.root = lens.cache.root / "thumbnails"
        self._guard = threading.Lock()
        self._making: dict[Path, threading.Lock] = {}

    def path(self, layer: str, row: int, rank: int, full: bool) -> Path:
        return self.root / safe_name(layer) / f"{row}_{rank}{'_full' if full else ''}.jpg"

    def jpeg(self, layer: str, row: int, example: ConceptExample, full: bool = False) -> bytes:
        """The example's crop (or its full input view), from the cache or made and cached now."""
        target = self.path(layer, row, example.rank, full)
        if target.is_file():
            return target.read_bytes()
        with self._guard:
            lock = self._making.setdefault(target, threading.Lock())
        with lock:  # two pages asking for the same new image make it once
            if target.is_file():
                return target.read_bytes()
            data = self._encode(example, full)
            try:
                atomic_write(target, lambda temporary: temporary.write_bytes(data))
            except OSError:
                pass  # no writable cache: serve without caching
            with self._guard:
                self._making.pop(target, None)
            return data

    def _encode(self, example: ConceptExample, full: bool) -> bytes:
        image = self.lens.example_image(example, crop=not full).convert("RGB")
        if not full:
            image = image.resize((SIZE, SIZE))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=QUALITY)
        return buffer.getvalue()
