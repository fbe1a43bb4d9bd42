"""Figures: a unit's concept-example grid (PIL) and the dissection bar chart (matplotlib PNG, plotly HTML)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
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


def overview_figure(overview, labels: dict[str, str | None] | None = None, webgl: bool = True):
    """Interactive scatter of the overview map: colour = category, hover = unit, label, cluster.
    ``webgl=False`` draws SVG points instead: slower for many units, but clickable element by element."""
    import plotly.graph_objects as go

    labels = labels or {}
    scatter = go.Scattergl if webgl else go.Scatter
    figure = go.Figure()
    for index, category in enumerate(overview.category_names):
        members = np.flatnonzero(overview.category == index)
        if not len(members):
            continue
        hover = [
            f"{overview.units[i]}<br>label: {labels.get(overview.units[i]) or '-'}<br>cluster: {overview.cluster_names[overview.cluster[i]]}"
            for i in members
        ]
        figure.add_trace(
            scatter(
                x=overview.xy[members, 0], y=overview.xy[members, 1], mode="markers", name=category,
                text=hover, hoverinfo="text", customdata=[overview.units[i] for i in members], marker={"size": 6},
            )
        )  # fmt: skip
    centres = [overview.xy[overview.cluster == c].mean(axis=0) for c in range(len(overview.cluster_names))]
    for centre, name in zip(centres, overview.cluster_names):
        figure.add_annotation(x=centre[0], y=centre[1], text=name, showarrow=False, font={"size": 9}, opacity=0.8)
    figure.update_layout(title="overview map (UMAP of unit embeddings)", xaxis={"visible": False}, yaxis={"visible": False})
    return figure


def overview_png(overview, path: str | Path) -> Path:
    """The overview map as a static picture, cluster names at the cluster centres."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 7))
    for index, category in enumerate(overview.category_names):
        members = overview.category == index
        if members.any():
            axes.scatter(overview.xy[members, 0], overview.xy[members, 1], s=8, label=category)
    for cluster, name in enumerate(overview.cluster_names):
        centre = overview.xy[overview.cluster == cluster].mean(axis=0)
        axes.annotate(name, centre, fontsize=7, ha="center", alpha=0.8)
    axes.set_axis_off()
    axes.legend(fontsize=8, markerscale=2, loc="best")
    axes.set_title("overview map (UMAP of unit embeddings)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def graph_figure(graph):
    """The attribution graph as a Sankey diagram: upper layers on the left, flows to the concepts below."""
    import plotly.graph_objects as go

    ids = [node.id for node in graph.nodes]
    hover = [f"{node.layer}: {node.label}<br>relevance {node.relevance:.3f}<br>{', '.join(node.units[:8])}" for node in graph.nodes]
    figure = go.Figure(
        go.Sankey(
            node={"label": [f"{node.label} ({node.layer})" for node in graph.nodes], "customdata": hover, "hovertemplate": "%{customdata}<extra></extra>"},
            link={
                "source": [ids.index(edge["source"]) for edge in graph.edges],
                "target": [ids.index(edge["target"]) for edge in graph.edges],
                "value": [edge["weight"] for edge in graph.edges],
            },
        )
    )
    figure.update_layout(title=f"attribution graph of class {graph.class_name}")
    return figure
