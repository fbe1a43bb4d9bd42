"""Figures: a unit's concept-example grid (PIL), the dissection chart and overview map (matplotlib PNG,
plotly HTML), the attribution graph and the knowledge-overlap heatmaps (plotly)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..analysis.label import LEFT_OUT
from ..model.imagenet import shown_class

TILE = 128
HEAT_COLOUR = (255, 32, 0)
HEAT_OPACITY = 0.7
BOX_COLOUR = (255, 221, 0)
CAPTION = 16
WHOLE_VIEW = 0.9  # a crop box over this share of the view shows nothing of where a unit fires


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


def heat_overlay(view: Image.Image, heat, box: Sequence[int] | None = None, shift: tuple[float, float] = (0.0, 0.0)) -> Image.Image:
    """The input view with a heatmap ``[h, w]`` over it (red, opaque in proportion to the positive part's
    share of its peak) and the crop box outlined, if any: where the example's evidence lies, and what was cut.
    ``shift``: where the map's cells sit off the even grid (``Lens.arrays.heatmap_shift``), in pixels of the view."""
    import torch

    from ..model.receptive import shifted_maps

    values = np.nan_to_num(np.asarray(heat, dtype=np.float32)).clip(min=0)
    peak = float(values.max()) if values.size else 0.0
    scaled = shifted_maps(torch.from_numpy(values / peak if peak > 0 else values)[None, None], (view.height, view.width), shift)[0, 0]
    alpha = scaled.numpy().clip(0, 1)[..., None] * HEAT_OPACITY
    pixels = np.asarray(view.convert("RGB"), dtype=np.float32)
    blended = pixels * (1 - alpha) + np.array(HEAT_COLOUR, dtype=np.float32) * alpha
    image = Image.fromarray(blended.round().astype(np.uint8))
    if box is not None:
        ImageDraw.Draw(image).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=BOX_COLOUR, width=max(1, view.size[0] // 64))
    return image


def firing_picture(lens, unit: str, example, examples: str = "activation") -> Image.Image:
    """A picture of where ``unit`` fires on a concept example: the view cropped to the example's box by the Lens's
    search rule (``Lens.arrays.search_rule``: the ``active`` box by default, around the unit's own activation; the first
    rule's box, from which theta is embedded, is the whole view for most examples at small inputs: 82 % of the
    demo world's peak boxes), and where that box is still (nearly) the whole view, the view with the heatmap the
    crop was cut from drawn over it (``heat_overlay``)."""
    layer, row = lens.units.index(unit)
    view = lens.examples.image(example, crop=False)
    x0, y0, x1, y1 = lens.examples.boxes(layer, examples, lens.arrays.search_rule)[row, example.rank].tolist()
    if x0 < 0:  # a slot cut without heatmaps (whole images): the example's own box
        x0, y0, x1, y1 = example.box
    heat = lens.examples.heatmaps(layer, examples)
    if (x1 - x0) * (y1 - y0) < WHOLE_VIEW * view.width * view.height or heat is None:
        return view.crop((x0, y0, x1, y1))
    return heat_overlay(view, heat[row, example.rank].float().numpy(), example.box, lens.arrays.heatmap_shift(layer, examples))


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
        color = {"unlabelled": UNLABELLED_COLOUR, LEFT_OUT: "whitesmoke"}.get(category)
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


# Qualitative colours by category index, the same in the HTML and the PNG map; the white box keeps cluster
# names legible on top of dense points.
CATEGORY_COLOURS = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#393b79", "#e7969c", "#637939", "#ad494a", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363",
]  # fmt: skip
LABEL_BOX = "rgba(255,255,255,0.8)"


UNLABELLED_COLOUR = "lightgray"  # units that show no concept, as in the dissection's bars


def category_colour(index: int, category: str) -> str:
    return UNLABELLED_COLOUR if category == "unlabelled" else CATEGORY_COLOURS[index % len(CATEGORY_COLOURS)]


def _lines(*lines: str) -> str:
    """Plotly reads text as HTML: escape each line, then join with line breaks."""
    return "<br>".join(html.escape(line) for line in lines)


def _cluster_centres(overview) -> list[np.ndarray]:
    return [overview.xy[overview.cluster == c].mean(axis=0) for c in range(len(overview.cluster_names))]


def overview_figure(overview, labels: dict[str, str | None] | None = None, webgl: bool = True):
    """Interactive scatter of the overview map: one trace (and legend entry) per concept category, hover =
    unit, label, cluster; cluster names boxed at the cluster centres. Names are escaped: they come from
    vocabularies and models someone else may have written. ``webgl=False`` draws SVG points instead:
    slower for many units, but clickable element by element."""
    import plotly.graph_objects as go

    labels = labels or {}
    scatter = go.Scattergl if webgl else go.Scatter
    figure = go.Figure()
    for index, category in enumerate(overview.category_names):
        members = np.flatnonzero(overview.category == index)
        if not len(members):
            continue
        hover = [
            _lines(
                overview.units[i],
                f"label: {labels.get(overview.units[i]) or '-'}",
                f"cluster: {overview.cluster_names[overview.cluster[i]]}",
            )
            for i in members
        ]
        figure.add_trace(
            scatter(
                x=overview.xy[members, 0], y=overview.xy[members, 1], mode="markers", name=html.escape(category), legendgroup=category,
                text=hover, hoverinfo="text", customdata=[overview.units[i] for i in members],
                marker={"size": 6, "color": category_colour(index, category)},
            )
        )  # fmt: skip
    for centre, name in zip(_cluster_centres(overview), overview.cluster_names):
        figure.add_annotation(
            x=centre[0], y=centre[1], text=html.escape(name), showarrow=False, font={"size": 12, "color": "#222"},
            bgcolor=LABEL_BOX, bordercolor="#888", borderwidth=1, borderpad=2,
        )  # fmt: skip
    figure.update_layout(
        title="overview map (UMAP of unit embeddings)", legend={"title": {"text": "concept category"}},
        xaxis={"visible": False}, yaxis={"visible": False},
    )  # fmt: skip
    return figure


def _literal(text: str) -> str:
    """Matplotlib reads ``$...$`` as mathtext (and fails on bad TeX): show dollar signs as they are."""
    return text.replace("$", r"\$")


def overview_png(overview, path: str | Path | BinaryIO) -> str | Path | BinaryIO:
    """The overview map as a static picture (to a file, or a notebook's buffer): a legend by category, cluster names
    boxed at the cluster centres."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(11, 7))
    for index, category in enumerate(overview.category_names):
        members = overview.category == index
        if members.any():
            colour = category_colour(index, category)
            axes.scatter(overview.xy[members, 0], overview.xy[members, 1], s=14, color=colour, label=_literal(category))
    for centre, name in zip(_cluster_centres(overview), overview.cluster_names):
        axes.annotate(
            _literal(name), centre, fontsize=10, color="#222", ha="center", va="center",
            bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "#888", "alpha": 0.8},
        )  # fmt: skip
    axes.set_axis_off()
    axes.legend(title="concept category", fontsize=8, markerscale=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    axes.set_title("overview map (UMAP of unit embeddings)")
    figure.tight_layout()
    figure.savefig(path, dpi=110, format="png")
    plt.close(figure)
    return path


def overlap_figure(comparison, name_a: str, name_b: str):
    """S_{A->B} and S_{B->A} side by side as heatmaps (layers of A down, layers of B across), values written in."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    a, b = html.escape(name_a), html.escape(name_b)
    rows = [html.escape(layer) for layer in comparison.layers_a]
    columns = [html.escape(layer) for layer in comparison.layers_b]
    titles = (f"S(A→B): how much of what {a} encodes {b} encodes", f"S(B→A): how much of what {b} encodes {a} encodes")
    figure = make_subplots(rows=1, cols=2, subplot_titles=titles)
    for column, matrix in enumerate((comparison.a_to_b, comparison.b_to_a), start=1):
        figure.add_trace(
            go.Heatmap(
                z=matrix, x=columns, y=rows, coloraxis="coloraxis", texttemplate="%{z:.3f}",
                hovertemplate="A %{y} / B %{x}: %{z:.3f}<extra></extra>",
            ), 1, column,
        )  # fmt: skip
        figure.update_xaxes(title_text=f"layer of B ({b})", type="category", row=1, col=column)
        figure.update_yaxes(title_text=f"layer of A ({a})", type="category", autorange="reversed", row=1, col=column)
    colours = {"colorscale": "Viridis", "colorbar": {"title": {"text": "S"}}}
    figure.update_layout(title="knowledge overlap per layer pair", coloraxis=colours)
    return figure


def graph_figure(graph):
    """The attribution graph as a Sankey diagram: upper layers on the left, flows to the concepts below."""
    import plotly.graph_objects as go

    ids = [node.id for node in graph.nodes]
    hover = [
        _lines(f"{node.layer}: {node.label}", f"relevance {node.relevance:.3f}", ", ".join(node.units[:8]))
        for node in graph.nodes
    ]
    figure = go.Figure(
        go.Sankey(
            node={
                "label": [html.escape(f"{node.label} ({node.layer})") for node in graph.nodes],
                "customdata": hover,
                "hovertemplate": "%{customdata}<extra></extra>",
            },
            link={
                "source": [ids.index(edge["source"]) for edge in graph.edges],
                "target": [ids.index(edge["target"]) for edge in graph.edges],
                "value": [edge["weight"] for edge in graph.edges],
            },
        )
    )
    figure.update_layout(title=f"attribution graph of class {html.escape(shown_class(graph.class_name))}")
    return figure
