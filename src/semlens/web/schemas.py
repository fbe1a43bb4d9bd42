"""The explorer's JSON shapes: they document the API (OpenAPI) and bound what a client may send.

Units are ``layer/index`` strings everywhere; ``thumbnails`` are URLs of the unit's first concept
examples, served by the app itself. Plotly figures are sent as plotly JSON (``data`` and ``layout``),
drawn by the bundled plotly.js.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

from ..analysis.audit import Audit, AuditedUnit as AuditedResult
from ..analysis.compare import Comparison
from ..analysis.overview import OverviewMap
from ..analysis.spaces import SpaceComparison
from ..lens.examples import ConceptExample
from ..lens.search import SearchHit
from ..relevance.graph import AttributionGraph, Node
from ..store.spaces import EmbeddingSpace

MAX_TEXT = 200
MAX_CONCEPTS = 20

Concept = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TEXT)]

DERIVED: dict[type, type[BaseModel]] = {}  # result dataclass -> the model of its JSON shape


def derived(
    result: type,
    name: str,
    /,
    *,
    base: type[BaseModel] = BaseModel,
    doc: str | None = None,
    keys: dict[str, str] | None = None,
    types: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    **added: tuple[Any, Any],
) -> type[BaseModel]:
    """The JSON shape of the result dataclass ``result`` (what its ``to_dict`` gives) as a pydantic model, so each
    field is written once, in the result: its type, default and description (field metadata "description");
    result types inside it become their derived models. Where ``to_dict`` differs: ``keys`` renames fields
    (class_name -> class), ``types`` retypes them (NaN -> null, nested parts as plain dicts), ``drop`` leaves them
    out; ``added`` adds the explorer's own fields (URLs, figures) as ``(type, Field(...))``."""
    hints, keys, types = get_type_hints(result), keys or {}, types or {}
    shape: dict[str, Any] = {}
    for item in dataclasses.fields(result):
        if item.name in drop:
            continue
        if item.name in added:
            shape[item.name] = added.pop(item.name)  # replaced in place: the JSON keeps the result's order
            continue
        default: dict[str, Any] = {"default": item.default} if item.default is not dataclasses.MISSING else {}
        if item.default_factory is not dataclasses.MISSING:
            default = {"default_factory": item.default_factory}
        info = Field(**default, alias=keys.get(item.name), description=item.metadata.get("description"))
        shape[item.name] = (types.get(item.name, _json_type(hints[item.name])), info)
    config = {"__config__": ConfigDict(populate_by_name=True)} if base is BaseModel else {"__base__": base}
    model = create_model(name, __doc__=doc, **config, **shape, **added)
    DERIVED[result] = model
    return model


def _json_type(hint: Any) -> Any:
    """``hint`` with the result types in it replaced by their derived models."""
    if hint in DERIVED:
        return DERIVED[hint]
    arguments = get_args(hint)
    if isinstance(hint, UnionType) or get_origin(hint) is Union:
        return functools.reduce(operator.or_, (_json_type(argument) for argument in arguments))
    if get_origin(hint) in (list, dict):
        return get_origin(hint)[tuple(_json_type(argument) for argument in arguments)]
    return hint


class Problem(BaseModel):
    """Why a request was refused (4xx), with the valid choices where there is a list of them."""

    detail: str


class SaeInfo(BaseModel):
    """The sparse autoencoder a layer is read through: its features are the layer's units."""

    architecture: str = Field(description="standard (ReLU), jumprelu or topk")
    d_in: int
    d_sae: int
    k: int | None = Field(None, description="features kept per position (topk only)")
    format: str = Field(description="saelens (cfg.json + sae_weights.safetensors) or semlens (one safetensors file)")
    hook_name: str | None = None
    decoder: bool = Field(description="it has W_dec (needed for class relevance and pruning)")


class LayerInfo(BaseModel):
    name: str
    units: int
    signed: bool
    sae: SaeInfo | None = None


class LensInfo(BaseModel):
    id: int = Field(
        description="Index of the Lens in the order given to `semlens serve`; usable in URLs, as its name is."
    )
    name: str
    model: str
    data: str
    samples: int
    foundation: str
    k: int
    layers: list[LayerInfo]
    classes: list[str]
    class_titles: list[str] = Field(default_factory=list, description="The classes as pages show them: an ImageNet WordNet id with its name (`n01440764 (tench)`), any other name as it is.")
    seen_classes: list[int] = Field(default_factory=list, description="The classes (indices) the class-relevance data holds images of: those an audit can read.")
    labelled: bool
    label_coverage: dict[str, Any] | None = Field(
        None, description="{all, layers: {layer: ...}}, each {valid_units, labelled, coverage, median_confidence}: how many valid units show a concept (null before labelling)"
    )
    class_relevance: bool
    relevance_examples: bool = Field(False, description="Whether its units have concept examples by relevance too (examples=relevance).")
    spaces: list[str] = Field(default_factory=list, description="Its embedding spaces, the default one first.")
    images: str | None = Field(
        None, description="Why its concept examples' images cannot be shown (its probe data out of reach: serve it with --probe-data, or trust it); null when they can. The pages show the examples' sources instead."
    )
    damaged: str | None = Field(
        None, description="Why the Lens cannot answer (it could not be opened: its other fields are empty) or what was found damaged in it; null when healthy."
    )


class UnitRef(BaseModel):
    """A unit with what it takes to show it: its label and a few thumbnails."""

    lens: int
    unit: str
    layer: str
    index: int = Field(description="Row of the unit in its layer.")
    label: str | None = Field(description="The concept the unit shows; null where none sets it apart from its layer (or before labelling).")
    label_confidence: float | None = Field(
        None, description="Robust z of the best concept's alignment against the unit's layer: how far it sets the unit apart (labels shown from 1)."
    )
    thumbnails: list[str] = Field(description="URLs of its first concept examples' crops; empty where the probe data is out of reach (LensInfo.images).")


Hit = derived(SearchHit, "Hit", base=UnitRef, drop=("unit", "layer", "index", "label", "examples"))  # UnitRef has them, thumbnails for examples


Example = derived(
    ConceptExample,
    "Example",
    types={"score": float | None},  # NaN: null
    box=(list[int], Field(description="Crop box x0, y0, x1, y1 in the model's input view (the full image).")),
    thumbnail=(str | None, Field(description="URL of the crop; null where the probe data is out of reach (LensInfo.images says why).")),
    image=(str | None, Field(description="URL of the full input view, on demand; null where the probe data is out of reach.")),
    heatmap=(str | None, Field(description="URL of the full view with the heatmap the crop was cut from; null for whole-image crops and where the probe data is out of reach.")),
)


class Candidate(BaseModel):
    concept: str
    alignment: float
    confidence: float | None = Field(None, description="Robust z against the unit's layer (null for labels stored before confidences).")


class ClassShare(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_name: str = Field(alias="class")
    title: str = Field(description="The class as pages show it: an ImageNet WordNet id with its name (`n01440764 (tench)`).")
    index: int
    max_share: float
    mean_share: float
    sae_error: float | None = Field(
        None, description="SAE layers: the class's mean share of the layer's relevance carried by the SAE error term"
    )


class SimilarUnits(BaseModel):
    lens: int
    lens_name: str
    hits: list[Hit]
    note: str | None = Field(None, description="Why there are no hits (e.g. another foundation model).")


class UnitPage(UnitRef):
    lens_name: str
    sae: SaeInfo | None = Field(None, description="the SAE whose feature this unit is, for SAE layers")
    candidates: list[Candidate]
    clarity: float | None
    polysemanticity: float | None
    redundancy: float | None
    typical: float | None = Field(description="mean cosine with the layer's other units: the scale redundancy is read against")
    inactive: bool
    tied: bool = Field(description="its examples are the same crops as another unit's")
    examples: list[Example]
    relevance_examples: list[Example] | None = Field(
        None, description="its top-k examples by relevance; null where the Lens or layer has none"
    )
    classes: list[ClassShare]
    similar: list[SimilarUnits]


MapOut = derived(
    OverviewMap,
    "MapOut",
    types={"cluster": list[int], "category": list[str]},  # arrays; categories by name
    drop=("xy", "category_names"),
    layer=(str | None, Field(description="The layer mapped, or null for all layers together.")),
    x=(list[float], ...),
    y=(list[float], ...),
    labels=(list[str | None], ...),
    figure=(dict[str, Any], ...),
)


class DissectOut(BaseModel):
    method: str = Field(description="the labelling method of the counts")
    methods: list[str] = Field(description="the labelling methods one can ask for")
    counts: dict[str, dict[str, int]] = Field(description="layer -> category -> units (unlabelled included)")
    figure: dict[str, Any]


class CategoryOut(BaseModel):
    layer: str
    category: str
    units: list[UnitRef]


class AuditRequest(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_name: Concept = Field(alias="class", description="Class name or index.")
    valid: list[Concept] = Field(default_factory=list, max_length=MAX_CONCEPTS, description="Valid concepts (default: the class's own name).")
    spurious: list[Concept] = Field(min_length=1, max_length=MAX_CONCEPTS)
    cut: float | None = Field(None, ge=0, le=1, description="Relevance share above which a unit is audited.")
    z: float | None = Field(None, ge=0, le=100, description="Robust z against the unit's layer above which it is aligned (default 3).")
    margin: float | None = Field(None, ge=0, le=100, description="z by which one kind must beat the other for a one-sided verdict (default 1).")
    by_label: bool = Field(True, description="Also judge each unit by its best concept by its crop responses (false: the alignment alone).")
    layers: list[Concept] | None = Field(None, max_length=64)
    draw: bool = Field(True, description="Test one spurious concept semlens draws (watermark, frame, logo, ruler, colour cast) on its drawings pasted into probe images of other classes, where the model loads (false: the alignment alone).")


AuditedUnit = derived(AuditedResult, "AuditedUnit", base=UnitRef, drop=("unit", "examples", "test", "verdict_before_test", "contested"))


AuditOut = derived(
    Audit,
    "AuditOut",
    keys={"class_name": "class"},
    drop=("null_units",),  # rule: its to_dict adds the null's name
    rule=(dict[str, Any], Field(description="{null, z, margin, by_label, by_location, by_rise, locate_share, locate_enough}: when a unit counts as aligned, the verdicts' margin, which evidence beside the alignment judges, and the location bar (a share of the layer's best, capped at an IoU that always suffices)")),
    detectors=(list[str], Field(default_factory=list, description="units the concept test found detect the spurious concept (every examined unit measured; none without a test)")),
    few_class_images=(str | None, Field(None, description="that the shares rest on few probe images of the class, in words (None: enough)")),
    figure=(dict[str, Any], ...),
)


GraphNode = derived(Node, "GraphNode")


GraphOut = derived(AttributionGraph, "GraphOut", keys={"class_name": "class"}, drop=("left_out",), figure=(dict[str, Any], ...))


class Match(BaseModel):
    unit: UnitRef
    match: UnitRef
    similarity: float


CompareOut = derived(
    Comparison,
    "CompareOut",
    keys={"a_to_b": "s_a_to_b", "b_to_a": "s_b_to_a"},
    types={"a_to_b": list[list[float | None]], "b_to_a": list[list[float | None]], "typical": list[list[float | None]]},  # NaN: null
    drop=("best_match",),
    matches=(list[Match], Field(description="Units of A with their best match in B, most similar first.")),
    a=(int, ...),
    b=(int, ...),
)


SpaceInfo = derived(
    EmbeddingSpace, "SpaceInfo", doc="One embedding space of a Lens: the default one (its build's foundation model) or one added since."
)


SpaceComparisonOut = derived(
    SpaceComparison,
    "SpaceComparisonOut",
    doc="How far two embedding spaces agree on the same units (1 = fully); labels and search are null when a\n"
    "space's foundation model embeds no text.",
    types={"labels": dict[str, Any] | None, "search": dict[str, Any] | None, "structure": dict[str, Any]},  # rounded, NaN: null
)