"""Figures: a unit's concept-example grid (PIL) and the dissection bar chart (matplotlib PNG, plotly HTML)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

TILE = 128
CAPTION = 16


def concept_grid(images: Sequence[Image.Image], captions: Sequence[str], title: str, columns: int = 6) -> Image.Image:
    """Tiles of ``images`` (resized to TILE px) with a caption under each and a title on top."""
    rows = max(1, -(-len(images) // columns))
    width = columns * TILE
    grid = Image.new("RGB", (width, CAPTION * 2 + rows * (TILE + CAPTION)), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((4, 4), title, fill="black")
    for position, (image, caption) in enumerate(zip(images, captions)):
        x = (position % columns) * TILE
        y = CAPTION * 2 + (position // columns) * (TILE + CAPTION)
        grid.paste(image.convert("RGB").resize((TILE, TILE), Image.BICUBIC), (x, y))
        draw.text((x + 3, y + TILE + 2), caption, fill="black")
    return grid


def dissection_png(counts: dict[str, dict[str, int]], path: str | Path) -> Path:
    """Stacked bars: units per label category (and unlabelled) for each layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(counts)
    categories = list(next(iter(counts.values())))
    figure, axes = plt.subplots(figsize=(max(6, 1.2 * len(layers) + 3), 4.5))
    bottoms = [0] * len(layers)
    for category in categories:
        values = [counts[layer][category] for layer in layers]
        color = "lightgray" if category == "unlabelled" else None
        axes.bar(layers, values, bottom=bottoms, label=category, color=color)
        bottoms = [bottom + value for bottom, value in zip(bottoms, values)]
    axes.set_ylabel("units")
    axes.set_title("units per concept category")
    axes.legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def dissection_figure(counts: dict[str, dict[str, int]]):
    """The same chart as an interactive plotly figure (for HTML pages)."""
    import plotly.graph_objects as go

    layers = list(counts)
    categories = list(next(iter(counts.values())))
    figure = go.Figure([go.Bar(name=category, x=layers, y=[counts[layer][category] for layer in layers]) for category in categories])
    figure.update_layout(barmode="stack", title="units per concept category", yaxis_title="units")
    return figure
