"""An explained prediction as images: each listed unit's conditional heatmap over the input view, for the
command line's ``--out`` folder and the explorer's explain page."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..analysis.explain import Explanation
from ..store.files import safe_name
from .figures import heat_overlay


def explanation_overlays(explanation: Explanation) -> dict[str, Image.Image]:
    """Per listed unit (``layer/index``), the input view with the class's relevance through that unit over it:
    where it spoke for the class, or for the units listed against it, where it spoke against (the negated map)."""
    overlays = {}
    for layer in explanation.layers:
        for sign, units in ((1.0, layer.units), (-1.0, layer.against)):
            drawn = {unit.unit: heat_overlay(explanation.view, sign * unit.heatmap.numpy()) for unit in units if unit.heatmap is not None}
            overlays.update(drawn)
    return overlays


def write_overlays(explanation: Explanation, folder: Path) -> dict[str, str]:
    """The input view (``view.png``) and each unit's overlay (``LAYER_INDEX.png``) written to ``folder``;
    returns the files by unit (``view`` for the input view)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"view": folder / "view.png"}
    explanation.view.save(files["view"])
    for unit, overlay in explanation_overlays(explanation).items():
        files[unit] = folder / f"{safe_name(unit.replace('/', '_'))}.png"
        overlay.save(files[unit])
    return {unit: str(path) for unit, path in files.items()}
