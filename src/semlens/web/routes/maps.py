"""The overview map and the dissection."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from ...analysis.labelling_methods import METHODS
from ...report.figures import dissection_figure, overview_figure
from ..common import MAX_TEXT, ExplorerDep, LensKey, SpaceName, plotly_json
from ..schemas import CategoryOut, DissectOut, MapOut

WEBGL_FROM = 3000  # units on a map before points are drawn with WebGL instead of SVG

router = APIRouter()


@router.get(
    "/api/lenses/{lens}/map", response_model=MapOut, summary="UMAP overview of a layer's units (or of all layers)"
)
def overview_map(
    explorer: ExplorerDep,
    lens: LensKey,
    layer: Annotated[str | None, Query(max_length=MAX_TEXT, description="Default: all layers.")] = None,
) -> dict[str, Any]:
    """Positions, k-means clusters named by their units' most common labels, each unit's label category,
    and the plotly figure; computed once per layer and labelling method (UMAP is slow), then remembered."""
    served = explorer.get(lens)
    layers = [served.layer(layer)] if layer else None
    opened = served.ready()

    def compute() -> dict[str, Any]:
        overview = opened.overview(layers)
        labels = {unit: opened.labels.label_of(unit) for unit in overview.units}
        figure = overview_figure(overview, labels, webgl=len(overview.units) >= WEBGL_FROM)
        return {
            **overview.to_dict(),
            "layer": layer,
            "labels": list(labels.values()),
            "figure": plotly_json(figure),
        }

    return served.remember(("map", layer, opened.labels.method), compute)  # names and colours follow the labels shown


LabelMethod = Annotated[
    Literal[METHODS] | None, Query(description="Labelling method (default: the labels' own, else the Lens's default).")
]


@router.get("/api/lenses/{lens}/dissect", response_model=DissectOut, summary="Units per label category per layer")
def dissect(explorer: ExplorerDep, lens: LensKey, space: SpaceName = None, method: LabelMethod = None) -> dict[str, Any]:
    opened = explorer.get(lens).labelled(space, method)
    counts = opened.labels.dissect(method)
    return {"method": opened.labels.method, "methods": [name for name in METHODS if name != "responses" or opened.arrays.has_responses], "counts": counts, "figure": plotly_json(dissection_figure(counts))}


@router.get("/api/lenses/{lens}/dissect/units", response_model=CategoryOut, summary="The units of one dissection bar")
def category_units(
    explorer: ExplorerDep,
    lens: LensKey,
    layer: Annotated[str, Query(max_length=MAX_TEXT)],
    category: Annotated[str, Query(max_length=MAX_TEXT, description="A label category, or unlabelled.")],
    top: Annotated[int, Query(ge=1, le=1000)] = 200,
    space: SpaceName = None,
    method: LabelMethod = None,
) -> dict[str, Any]:
    served = explorer.get(lens)
    opened = served.labelled(space, method)
    units = opened.labels.category_units(served.layer(layer), category)
    refs = [{**served.ref(unit), "label": opened.labels.label_of(unit)} for unit in units[:top]]  # the space's and method's own labels
    return {"layer": layer, "category": category, "units": refs}
