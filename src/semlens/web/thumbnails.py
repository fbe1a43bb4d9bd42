"""Concept-example images for the explorer, made once and kept in the Lens's user-cache folder.

Decoding a sample and cropping it costs far more than sending a small JPEG, and the same examples
show up on every page (map, unit, search, audit), so each one is written once under
``<cache>/thumbnails/<layer>/`` (atomically) and read from there afterwards: at most three images per
concept example (crop, full view, heatmap overlay), and never inside the Lens, so that serving a Lens
changes nothing in it. Where the cache cannot be written, the images are made on every request.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

from ..lens.examples import ConceptExample
from ..lens.lens import Lens
from ..report.figures import firing_picture, heat_overlay
from ..store.files import atomic_write, safe_name

SIZE = 128
QUALITY = 85


KINDS = ("thumbnail", "image", "heatmap")  # where it fires (``firing_picture``), the full input view, the view with the heatmap


class ThumbnailCache:
    """JPEG crops (``SIZE`` px square), full input views and heatmap overlays of a Lens's concept examples."""

    def __init__(self, lens: Lens) -> None:
        self.lens = lens
        self.root = lens.in_space(None).embedding.cache.root / "thumbnails"
        self._guard = threading.Lock()
        self._making: dict[Path, threading.Lock] = {}

    def path(self, layer: str, row: int, rank: int, kind: str, examples: str = "activation") -> Path:
        """Where an image is kept: keyed by the example set too, so that the same rank of two sets never mixes."""
        prefix = "" if examples == "activation" else f"{examples}_"
        return self.root / safe_name(layer) / f"{prefix}{row}_{rank}_{'fires' if kind == 'thumbnail' else kind}.jpg"  # not the crops cached before

    def jpeg(
        self, layer: str, row: int, example: ConceptExample, kind: str = "thumbnail", examples: str = "activation"
    ) -> bytes:
        """The image of ``kind`` (one of ``KINDS``) of an example of a set, from the cache or made and cached now."""
        target = self.path(layer, row, example.rank, kind, examples)
        if target.is_file():
            return target.read_bytes()
        with self._guard:
            lock = self._making.setdefault(target, threading.Lock())
        with lock:  # two pages asking for the same new image make it once
            if target.is_file():
                return target.read_bytes()
            data = self._encode(layer, row, example, kind, examples)
            try:
                atomic_write(target, lambda temporary: temporary.write_bytes(data))
            except OSError:
                pass  # no writable cache: serve without caching
            with self._guard:
                self._making.pop(target, None)
            return data

    def _encode(self, layer: str, row: int, example: ConceptExample, kind: str, examples: str) -> bytes:
        image = self.lens.examples.image(example, crop=False).convert("RGB")
        if kind == "thumbnail":
            image = firing_picture(self.lens, f"{layer}/{self.lens.units(layer)[row]}", example, examples).convert("RGB").resize((SIZE, SIZE))
        elif kind == "heatmap":
            heat = self.lens.examples.heatmaps(layer, examples)[row, example.rank].float().numpy()
            image = heat_overlay(image, heat, example.box, self.lens.arrays.heatmap_shift(layer, examples))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=QUALITY)
        return buffer.getvalue()
