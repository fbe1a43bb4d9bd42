"""One prediction explained: an uploaded image or a probe sample (by index; never a path), its top classes
and the concepts behind the explained class, with each unit's heatmap over the image (PNG data URLs)."""

from __future__ import annotations

import base64
import io
from typing import Annotated, Any

from fastapi import APIRouter, File, Query, UploadFile
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from ...analysis.explain import ConceptGroup, ExplainedUnit, Explanation, LayerExplanation
from ...report.explain import explanation_overlays
from ..common import MAX_TEXT, ExplorerDep, Layers, LensKey, decode_image, example_out, layers_of
from ..schemas import Example, derived
from ..state import Served

router = APIRouter()

ClassName = Annotated[
    str | None, Query(alias="class", min_length=1, max_length=MAX_TEXT, description="Class name or index; default: the predicted one.")
]
UnitsPerLayer = Annotated[int, Query(ge=1, le=32, description="Units listed per layer.")]


class ClassProbability(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_name: str = Field(alias="class")
    index: int
    probability: float


ExplainedUnitOut = derived(
    ExplainedUnit,
    "ExplainedUnitOut",
    drop=("heatmap",),
    examples=(list[Example], ...),
    overlay=(str, Field(description="PNG data URL: the image with the class's relevance through this unit (CRP)")),
)
ConceptGroupOut = derived(ConceptGroup, "ConceptGroupOut")
LayerOut = derived(LayerExplanation, "LayerOut")
ExplainOut = derived(
    Explanation,
    "ExplainOut",
    keys={"class_name": "class"},
    prediction=(list[ClassProbability], ...),
    view=(str, Field(description="PNG data URL: the image as the model saw it")),
)


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def explanation_out(served: Served, result: Explanation) -> dict[str, Any]:
    """The explanation with example URLs and the overlays as data URLs."""
    overlays = {unit: data_url(image) for unit, image in explanation_overlays(result).items()}
    payload = result.to_dict()

    def served_units(units: list[dict[str, Any]], entries: list) -> None:
        for unit, entry in zip(units, entries):
            unit["examples"] = [example_out(served, entry.unit, example) for example in entry.examples]
            unit["overlay"] = overlays[entry.unit]

    for layer, explained in zip(payload["layers"], result.layers):
        for group, grouped in zip(layer["groups"], explained.groups):
            served_units(group["units"], grouped.units)
        served_units(layer["against"], explained.against)
    return {**payload, "view": data_url(result.view)}


@router.get("/api/lenses/{lens}/explain", response_model=ExplainOut, summary="Explain the prediction on a probe sample")
def explain_sample(
    explorer: ExplorerDep,
    lens: LensKey,
    sample: Annotated[int, Query(ge=0, le=2**40, description="Index of the probe sample.")],
    class_name: ClassName = None,
    layer: Layers = None,
    top: UnitsPerLayer = 6,
) -> dict[str, Any]:
    """The model's top classes on the sample and, for the predicted (or given) class, the units with the highest
    share of each layer's relevance, grouped by label, and apart those with the most negative share (against it),
    with heatmaps and concept examples; for SAE layers the SAE error term's share (needs the model and the probe
    data on this machine); computed once per sample, class, layers and top."""
    served = explorer.get(lens)
    opened, layers = served.labelled(), layers_of(served, layer)
    index = None if class_name is None else opened.units.class_index(class_name)

    def compute() -> dict[str, Any]:
        return explanation_out(served, opened.explain(sample, index, layers, top))

    return served.remember(("explain", sample, index, tuple(layers or ()), top), compute)


@router.post("/api/lenses/{lens}/explain", response_model=ExplainOut, summary="Explain the prediction on an uploaded image")
def explain_upload(
    explorer: ExplorerDep,
    lens: LensKey,
    image: Annotated[UploadFile, File(description="The image (PNG, JPEG, ...).")],
    class_name: ClassName = None,
    layer: Layers = None,
    top: UnitsPerLayer = 6,
) -> dict[str, Any]:
    """As for a probe sample, on an uploaded image (needs the model on this machine)."""
    served = explorer.get(lens)
    picture = decode_image(image.file.read())
    return explanation_out(served, served.labelled().explain(picture, class_name, layers_of(served, layer), top))
