"""The Lenses, their units and concept-example images."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import Response

from ..._util.errors import SemlensError
from ...lens.audits import relevant_classes, sae_error_shares
from ...model.imagenet import shown_class
from ...store.files import LensFileError
from ..common import IMAGE, ExampleSet, ExplorerDep, LayerName, LensKey, Rank, UnitName, example_out, finite, hits_out
from ..schemas import Example, LensInfo, UnitPage
from ..state import Explorer, NotFound, Served, said
from ..thumbnails import KINDS

SIMILAR = 8  # similar units shown per served Lens

router = APIRouter()


@router.get("/api/lenses", response_model=list[LensInfo], summary="The served Lenses")
def list_lenses(explorer: ExplorerDep) -> list[dict[str, Any]]:
    return [served.info() for served in explorer.served]


@router.get("/api/lenses/{lens}", response_model=LensInfo, summary="One Lens: model, data, layers, classes")
def lens_info(explorer: ExplorerDep, lens: LensKey) -> dict[str, Any]:
    return explorer.get(lens).info()


@router.get(
    "/api/lenses/{lens}/layers/{layer}/units/{unit}", response_model=UnitPage, summary="Everything about one unit"
)
def unit_page(explorer: ExplorerDep, lens: LensKey, layer: LayerName, unit: UnitName) -> dict[str, Any]:
    """Concept examples (by activation, and by relevance where the Lens has them), label with runner-ups,
    clarity, polysemanticity, redundancy, the classes the unit is most relevant for, and its most similar units
    in every served Lens."""
    served = explorer.get(lens)
    name, row = served.unit(layer, unit)
    opened = served.labelled()
    measures = served.remember(("measures", layer), lambda: opened.measures(layer).of(layer))
    by_relevance = served.relevance_examples(name)
    return {
        **served.ref(name),
        "lens_name": served.name,
        "sae": opened.units.sae(layer),
        "candidates": [
            {"concept": concept, "alignment": score, "confidence": confidence} for concept, score, confidence in opened.labels.candidates(name)
        ],
        **{measure: finite(values[row]) for measure, values in measures.items()},
        "inactive": bool(opened.arrays.inactive(layer)[row]),
        "tied": bool(opened.arrays.tied(layer)[row]),
        "examples": [example_out(served, name, example) for example in opened.examples.concept_examples(name)],
        "relevance_examples": None
        if by_relevance is None
        else [example_out(served, name, example, "relevance") for example in by_relevance],
        "classes": [
            {
                "class": title, "title": shown_class(title), "index": index, "max_share": finite(top), "mean_share": finite(mean),
                "sae_error": sae_error_shares(opened, index, [layer]).get(layer),
            }  # fmt: skip
            for title, index, top, mean in relevant_classes(opened, name)
        ],
        "similar": [similar_in(explorer, other, served, name) for other in explorer.served],
    }


def similar_in(explorer: Explorer, other: Served, source: Served, unit: str) -> dict[str, Any]:
    """The units of Lens ``other`` most similar to ``unit``; each other Lens fails alone: what keeps it from answering
    (damage, a foundation model it may not load) is its entry's note, and a damaged one is marked so."""
    entry = {"lens": other.id, "lens_name": other.name, "hits": [], "note": None}
    if other is not source and (other.lens is None or other.damaged):
        return {**entry, "note": f"this Lens is damaged: {other.damaged}"}
    if other.lens.embedding.foundation_id != source.lens.embedding.foundation_id:
        return {**entry, "note": f"embedded by another foundation model ({other.lens.embedding.foundation_id})"}
    try:
        return {**entry, "hits": hits_out(other, other.labelled().search_similar(source.lens, unit, SIMILAR))}
    except SemlensError as error:
        if other is source:
            raise
        if isinstance(error, LensFileError):
            explorer.found_damaged(error)
        return {**entry, "note": f"this Lens cannot answer: {explorer.public(said(error))}"}


@router.get(
    "/api/lenses/{lens}/layers/{layer}/units/{unit}/examples",
    response_model=list[Example],
    summary="A unit's concept examples",
)
def unit_examples(
    explorer: ExplorerDep, lens: LensKey, layer: LayerName, unit: UnitName, examples: ExampleSet = "activation"
) -> list[dict[str, Any]]:
    served = explorer.get(lens)
    name, _ = served.unit(layer, unit)
    return [example_out(served, name, example, examples) for example in served.lens.examples.concept_examples(name, by=examples)]


ImageKind = Annotated[
    Literal[KINDS],
    PathParam(description="thumbnail: the crop (where the unit fires); image: the full input view (the example's box is in the "
              "example); heatmap: the full view with the heatmap the crop was cut from (relevance or activation)"),
]  # fmt: skip


@router.get(
    "/api/lenses/{lens}/layers/{layer}/units/{unit}/examples/{rank}/{kind}",
    response_class=Response, responses=IMAGE, summary="A concept example's crop, full input view or heatmap (JPEG, made once, cached)",
)  # fmt: skip
def example_image(
    explorer: ExplorerDep, lens: LensKey, layer: LayerName, unit: UnitName, rank: Rank, kind: ImageKind,
    examples: ExampleSet = "activation",
) -> Response:  # fmt: skip
    served = explorer.get(lens)
    name, row = served.unit(layer, unit)
    if kind == "heatmap" and not served.has_heatmaps(name, examples):
        raise NotFound(f"layer {layer}'s {examples} examples are whole images (crop mode none): they have no heatmap")
    data = served.thumbnails.jpeg(layer, row, served.example(name, rank, examples), kind, examples)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})
