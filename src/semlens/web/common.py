"""What the explorer's routes share: path and query parameters, the served Lenses as a dependency, and
the shapes of units, hits and concept examples in responses."""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import asdict
from typing import Annotated, Any, Literal, Optional

from fastapi import Depends, Query, Request
from fastapi import Path as PathParam
from PIL import Image

from .._util.errors import SemlensError, one_line
from ..lens.example_sets import EXAMPLE_SETS
from ..lens.examples import ConceptExample
from ..lens.search import RANKINGS
from ..store.trust import display_source
from .schemas import MAX_TEXT
from .state import Explorer, Served

MAX_PIXELS = 40_000_000
IMAGE = {200: {"content": {"image/jpeg": {}}, "description": "A JPEG image."}}


def served_lenses(request: Request) -> Explorer:
    return request.app.state.explorer


ExplorerDep = Annotated[Explorer, Depends(served_lenses)]
LensKey = Annotated[str, PathParam(max_length=MAX_TEXT, description="Lens index or directory name.")]
LayerName = Annotated[str, PathParam(max_length=MAX_TEXT, description="Layer (module path), e.g. features.3.")]
UnitName = Annotated[
    str,
    PathParam(max_length=32, description="Unit index in its layer, e.g. 7 (7- for a signed layer's negative half)."),
]
Rank = Annotated[int, PathParam(ge=0, le=100_000, description="Rank of the concept example (0 = best).")]
Layers = Annotated[
    list[str] | None, Query(max_length=64, description="Only these layers (repeat the parameter); default all.")
]
Top = Annotated[int, Query(ge=1, le=100, description="How many units.")]
ExampleSet = Annotated[
    Literal[EXAMPLE_SETS],
    Query(description="Which concept examples: top-k by activation, or by relevance (Lenses built with them)."),
]
Ranking = Annotated[
    Optional[Literal[RANKINGS]],
    Query(description="How units are ranked: 'named' (the default for a text or an opaque image: as 'both', with the units whose best concept by their crop responses is the query first, as the audit names units), 'both' (alignment and response to the probe, each standardised) or 'alignment' alone; for an image, 'model' (the default for an image with transparent parts where the model loads): how much pasting it into the Lens's probe images raises each unit in the model itself."),
]
SpaceName = Annotated[
    str | None, Query(max_length=MAX_TEXT, description="Embedding space (see /api/lenses/{lens}/spaces); default the Lens's own.")
]


def plotly_json(figure: Any) -> dict[str, Any]:
    """A plotly figure as plain JSON (``data``, ``layout``) for plotly.js."""
    return json.loads(figure.to_json())


def finite(value: float) -> float | None:
    """A float for JSON: NaN and infinities (empty slots, inactive units) become null."""
    value = float(value)
    return value if math.isfinite(value) else None


def decode_image(data: bytes, mode: str = "RGB") -> Image.Image:
    """An uploaded image probe (or artefact: ``mode`` RGBA keeps its alpha), decoded (its size bounded by
    ``Guard``, its pixels here); bytes that are not an image are the client's error (400)."""
    try:
        picture = Image.open(io.BytesIO(data))
        pixels = picture.width * picture.height
        decoded = picture.convert(mode) if pixels <= MAX_PIXELS else None
    except Exception as error:  # every decoder failure on untrusted bytes means "not a readable image"
        reason = re.sub(r" ?<[^<>]* at 0x[0-9a-f]+>", "", one_line(error))  # PIL names the buffer object by its address
        raise SemlensError(f"the upload is not an image this server can read ({reason})") from None
    if decoded is None:
        raise SemlensError(f"the image has {pixels} pixels; at most {MAX_PIXELS} are accepted")
    return decoded


def example_out(served: Served, unit: str, example: ConceptExample, examples: str = "activation") -> dict[str, Any]:
    """An example of a set with its image URLs (a heatmap's where the set's crops were cut from heatmaps; none where
    the probe data is out of reach: ``Served.images_missing``)."""
    shown = not served.images_missing
    heat = shown and served.has_heatmaps(unit, examples)
    return {
        **asdict(example), "source": display_source(example.source), "score": finite(example.score), "box": list(example.box),
        "thumbnail": served.example_url(unit, example.rank, examples=examples) if shown else None,
        "image": served.example_url(unit, example.rank, "image", examples) if shown else None,
        "heatmap": served.example_url(unit, example.rank, "heatmap", examples) if heat else None,
    }  # fmt: skip


def layers_of(served: Served, requested: list[str] | None) -> list[str] | None:
    """Requested layers checked, without repeats, in the Lens's order (lowest first); None for all."""
    chosen = {served.layer(layer) for layer in requested or []}
    return [layer for layer in served.lens.layers if layer in chosen] or None


def hits_out(served: Served, hits: list, examples: str = "activation") -> list[dict[str, Any]]:
    """Hits as ``Hit`` rows, their thumbnails from the set of examples they were found by."""
    return [{**served.ref(hit.unit, examples), "label": hit.label, "score": hit.score, "response": hit.response} for hit in hits]
