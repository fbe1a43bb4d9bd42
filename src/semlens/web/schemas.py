"""The explorer's JSON shapes: they document the API (OpenAPI) and bound what a client may send.

Units are ``layer/index`` strings everywhere; ``thumbnails`` are URLs of the unit's first concept
examples, served by the app itself. Plotly figures are sent as plotly JSON (``data`` and ``layout``),
drawn by the bundled plotly.js.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_TEXT = 200
MAX_CONCEPTS = 20

Concept = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TEXT)]


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
    labelled: bool
    label_coverage: dict[str, Any] | None = Field(
        None, description="{all, layers: {layer: ...}}, each {valid_units, labelled, coverage, median_confidence}: how many valid units show a concept (null before labelling)"
    )
    class_relevance: bool
    relevance_examples: bool = Field(False, description="Whether its units have concept examples by relevance too (examples=relevance).")
    spaces: list[str] = Field(default_factory=list, description="Its embedding spaces, the default one first.")
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
    thumbnails: list[str]


class Hit(UnitRef):
    score: float = Field(description="Alignment with the probe (search), or cosine similarity (similar units).")
    response: float | None = Field(
        None, description="Search: the correlation of the unit's activation over the Lens's crops with their alignment to the probe (None without crop responses)."
    )


class Example(BaseModel):
    rank: int
    sample: int
    score: float | None
    box: list[int] = Field(description="Crop box x0, y0, x1, y1 in the model's input view (the full image).")
    source: str
    label: int | None
    thumbnail: str
    image: str = Field(description="URL of the full input view, on demand.")
    heatmap: str | None = Field(description="URL of the full view with the heatmap the crop was cut from; null for whole-image crops.")


class Candidate(BaseModel):
    concept: str
    alignment: float
    confidence: float | None = Field(None, description="Robust z against the unit's layer (null for labels stored before confidences).")


class ClassShare(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_name: str = Field(alias="class")
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
    inactive: bool
    tied: bool = Field(description="its examples are the same crops as another unit's")
    examples: list[Example]
    relevance_examples: list[Example] | None = Field(
        None, description="its top-k examples by relevance; null where the Lens or layer has none"
    )
    classes: list[ClassShare]
    similar: list[SimilarUnits]


class MapOut(BaseModel):
    layer: str | None = Field(description="The layer mapped, or null for all layers together.")
    units: list[str]
    x: list[float]
    y: list[float]
    cluster: list[int]
    cluster_names: list[str]
    category: list[str]
    labels: list[str | None]
    figure: dict[str, Any]


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
    valid: list[Concept] = Field(min_length=1, max_length=MAX_CONCEPTS)
    spurious: list[Concept] = Field(min_length=1, max_length=MAX_CONCEPTS)
    cut: float | None = Field(None, ge=0, le=1, description="Relevance share above which a unit is audited.")
    z: float | None = Field(None, ge=0, le=100, description="Robust z against the unit's layer above which it is aligned (default 3).")
    margin: float | None = Field(None, ge=0, le=100, description="z by which one kind must beat the other for a one-sided verdict (default 1).")
    by_label: bool = Field(True, description="Also judge each unit by its best concept by its crop responses (false: the alignment alone).")
    layers: list[Concept] | None = Field(None, max_length=64)


class AuditedUnit(UnitRef):
    relevance: float
    mean_relevance: float
    a_valid: float
    a_spur: float
    z_valid: float = Field(description="a_valid as a robust z among the units of its layer")
    z_spur: float
    tight_shift: float | None = Field(None, description="the spurious alignment's move into the unit's tight boxes, in robust spreads of its layer; below -margin z_spur does not count")
    responses_label: str | None = Field(None, description="the unit's best concept by its crop responses, of the audit's concepts and the vocabulary; an audited concept decides the verdict (None: the Lens kept no crop responses)")
    verdict: str
    copies: list[str] = Field(description="a signed layer's other copy of the same channel, merged into this unit")


class AuditOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_name: str = Field(alias="class")
    cut: float
    valid: list[str]
    spurious: list[str]
    rule: dict[str, Any] = Field(description="{null, z, margin, by_label, by_location, by_rise, locate_share, locate_enough}: when a unit counts as aligned, the verdicts' margin, which evidence beside the alignment judges, and the location bar (a share of the layer's best, capped at an IoU that always suffices)")
    shares: dict[str, float] = Field(description="relevance by verdict, and spurious_or_both")
    left_out: list[str] = Field(description="relevant units without examples of their own (inactive or tied)")
    sae_error: dict[str, float] = Field(
        default_factory=dict, description="per SAE layer, the class's mean share of its relevance carried by the SAE's error term"
    )
    units: list[AuditedUnit]
    figure: dict[str, Any]


class GraphNode(BaseModel):
    id: str
    layer: str
    label: str
    units: list[str]
    relevance: float


class GraphOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_name: str = Field(alias="class")
    nodes: list[GraphNode]
    edges: list[dict[str, Any]] = Field(description="{source, target, weight}: relevance flowing down")
    figure: dict[str, Any]


class Match(BaseModel):
    unit: UnitRef
    match: UnitRef
    similarity: float


class CompareOut(BaseModel):
    a: int
    b: int
    layers_a: list[str]
    layers_b: list[str]
    s_a_to_b: list[list[float | None]] = Field(description="per layer pair; null where a layer has no valid units")
    s_b_to_a: list[list[float | None]]
    matches: list[Match] = Field(description="Units of A with their best match in B, most similar first.")
    shared_concepts: list[str]
    only_a: list[str]
    only_b: list[str]


class SpaceInfo(BaseModel):
    """One embedding space of a Lens: the default one (its build's foundation model) or one added since."""

    name: str
    spec: str
    foundation_id: str
    dim: int
    default: bool
    complete: bool


class SpaceComparisonOut(BaseModel):
    """How far two embedding spaces agree on the same units (1 = fully); labels and search are null when a
    space's foundation model embeds no text."""

    a: str
    b: str
    units: int
    labels: dict[str, Any] | None = Field(description="top1: same best concept; top_overlap: shared best concepts")
    search: dict[str, Any] | None = Field(description="top_overlap and spearman, averaged over the queries, and per query")
    structure: dict[str, Any] = Field(description="cka: linear CKA of theta; similarity_correlation: of unit-unit cosines")
    notes: list[str]
