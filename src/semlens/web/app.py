"""The explorer's FastAPI app: a JSON API over the Lens API (documented at ``/api/openapi.json``) and
the static front end in ``static/``, plotly.js served from the installed plotly package.

Safe by default: the only files it serves are its own static files, plotly.js and concept-example
images that it makes from the Lenses it was given (a client names Lenses, layers and units, never a
path); every parameter is bounded and checked, and a bad one is a 4xx whose message lists the valid
choices. Endpoints are plain ``def`` functions, so FastAPI runs them in its thread pool and a slow
map or graph never stops the server from answering other requests.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import plotly
from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.middleware.trustedhost import TrustedHostMiddleware

from .. import __version__
from .._util.errors import SemlensError, one_line
from ..lens.lens import ConceptExample, Lens
from ..report.figures import dissection_figure, graph_figure, overview_figure
from ..report.html import audit_figure
from .schemas import (
    MAX_TEXT,
    AuditOut,
    AuditRequest,
    CategoryOut,
    CompareOut,
    DissectOut,
    Example,
    GraphOut,
    Hit,
    LensInfo,
    MapOut,
    Problem,
    UnitPage,
)  # fmt: skip
from .state import Explorer, NotFound, Served

STATIC = Path(__file__).parent / "static"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
MAX_BODY = 8 * 2**20  # bytes: an image probe, or an audit's concept lists
MAX_PIXELS = 40_000_000
WEBGL_FROM = 3000  # units on a map before points are drawn with WebGL instead of SVG
SIMILAR = 8
MATCHES = 50
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self' 'unsafe-eval'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),  # plotly styles its plots inline; its WebGL traces compile shaders through Function()
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
IMAGE = {200: {"content": {"image/jpeg": {}}, "description": "A JPEG image."}}

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


class Guard:
    """ASGI middleware: refuses request bodies above ``MAX_BODY`` before anything reads them (a body
    of unknown length too), and adds security headers to every response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"0")
        refusal = None
        if b"transfer-encoding" in headers or not length.isdigit():
            refusal = (411, "send the request body with a valid Content-Length")
        elif int(length) > MAX_BODY:
            refusal = (413, f"the request body is larger than {MAX_BODY // 2**20} MiB")
        if refusal:
            return await JSONResponse({"detail": refusal[1]}, status_code=refusal[0], headers=HEADERS)(
                scope, receive, send
            )

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + [
                    (k.lower().encode(), v.encode()) for k, v in HEADERS.items()
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def plotly_json(figure: Any) -> dict[str, Any]:
    """A plotly figure as plain JSON (``data``, ``layout``) for plotly.js."""
    return json.loads(figure.to_json())


def finite(value: float) -> float | None:
    """A float for JSON: NaN and infinities (empty slots, inactive units) become null."""
    value = float(value)
    return value if math.isfinite(value) else None


def decode_image(data: bytes) -> Image.Image:
    """An uploaded image probe, decoded (its size bounded by ``Guard``, its pixels here); bytes that are not an
    image are the client's error (400)."""
    try:
        picture = Image.open(io.BytesIO(data))
        pixels = picture.width * picture.height
        decoded = picture.convert("RGB") if pixels <= MAX_PIXELS else None
    except Exception as error:  # every decoder failure on untrusted bytes means "not a readable image"
        raise SemlensError(f"the upload is not an image this server can read ({one_line(error)})") from None
    if decoded is None:
        raise SemlensError(f"the image has {pixels} pixels; at most {MAX_PIXELS} are accepted")
    return decoded


def example_out(served: Served, unit: str, example: ConceptExample) -> dict[str, Any]:
    return {
        "rank": example.rank, "sample": example.sample, "score": finite(example.score), "box": list(example.box),
        "source": example.source, "label": example.label,
        "thumbnail": served.example_url(unit, example.rank), "image": served.example_url(unit, example.rank, "image"),
    }  # fmt: skip


def create_app(lenses: Sequence[Lens | str | Path], allowed_hosts: Sequence[str] | None = None) -> FastAPI:
    """The explorer app over ``lenses`` (opened Lenses or their directories).

    ``allowed_hosts`` limits the Host header a request may carry (``semlens serve`` passes the loopback
    names when it binds 127.0.0.1, so that other web sites cannot reach the API through DNS rebinding).
    """
    explorer = Explorer([lens if isinstance(lens, Lens) else Lens.open(lens) for lens in lenses])
    app = FastAPI(
        title="semlens explorer",
        version=__version__,
        description="Search, browse, audit and compare the units of the served Lenses. Units are `layer/index`; "
        "Lenses are addressed by index or directory name.",
        openapi_url="/api/openapi.json",
        docs_url=None,  # the interactive docs load their scripts from a CDN; the explorer has an offline API page
        redoc_url=None,
        responses={
            400: {"model": Problem},
            404: {"model": Problem},
            422: {"description": "A parameter fails validation."},
        },
    )
    app.add_middleware(Guard)
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.state.explorer = explorer

    @app.exception_handler(SemlensError)
    async def refused(_request: Request, error: SemlensError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=404 if isinstance(error, NotFound) else 400)

    def layers_of(served: Served, requested: list[str] | None) -> list[str] | None:
        """Requested layers checked, without repeats, in the Lens's order (lowest first); None for all."""
        chosen = {served.layer(layer) for layer in requested or []}
        return [layer for layer in served.lens.layers if layer in chosen] or None

    def hits_out(served: Served, hits: list) -> list[dict[str, Any]]:
        return [{**served.ref(hit.unit), "score": hit.score} for hit in hits]

    # -- Lenses and units -------------------------------------------------------------------------

    @app.get("/api/lenses", response_model=list[LensInfo], summary="The served Lenses")
    def list_lenses() -> list[dict[str, Any]]:
        return [served.info() for served in explorer.served]

    @app.get("/api/lenses/{lens}", response_model=LensInfo, summary="One Lens: model, data, layers, classes")
    def lens_info(lens: LensKey) -> dict[str, Any]:
        return explorer.get(lens).info()

    @app.get(
        "/api/lenses/{lens}/layers/{layer}/units/{unit}", response_model=UnitPage, summary="Everything about one unit"
    )
    def unit_page(lens: LensKey, layer: LayerName, unit: UnitName) -> dict[str, Any]:
        """Concept examples, label with runner-ups, clarity, polysemanticity, redundancy, the classes the unit is
        most relevant for, and its most similar units in every served Lens."""
        served = explorer.get(lens)
        name, row = served.unit(layer, unit)
        opened = served.labelled()
        measures = served.remember(("measures", layer), lambda: opened.measures(layer))
        return {
            **served.ref(name),
            "lens_name": served.name,
            "candidates": [
                {"concept": concept, "alignment": score} for concept, score in opened.label_candidates(name)
            ],
            **{measure: finite(values[row]) for measure, values in measures.items()},
            "inactive": bool(opened.inactive(layer)[row]),
            "examples": [example_out(served, name, example) for example in opened.concept_examples(name)],
            "classes": [
                {"class": title, "index": index, "max_share": finite(top), "mean_share": finite(mean)}
                for title, index, top, mean in opened.relevant_classes(name)
            ],
            "similar": [similar_in(other, served, name) for other in explorer.served],
        }

    def similar_in(other: Served, source: Served, unit: str) -> dict[str, Any]:
        entry = {"lens": other.id, "lens_name": other.name, "hits": [], "note": None}
        if other.lens.foundation_id != source.lens.foundation_id:
            return {**entry, "note": f"embedded by another foundation model ({other.lens.foundation_id})"}
        return {**entry, "hits": hits_out(other, other.labelled().search_similar(source.lens, unit, SIMILAR))}

    @app.get(
        "/api/lenses/{lens}/layers/{layer}/units/{unit}/examples",
        response_model=list[Example],
        summary="A unit's concept examples",
    )
    def unit_examples(lens: LensKey, layer: LayerName, unit: UnitName) -> list[dict[str, Any]]:
        served = explorer.get(lens)
        name, _ = served.unit(layer, unit)
        return [example_out(served, name, example) for example in served.lens.concept_examples(name)]

    def example_jpeg(lens: str, layer: str, unit: str, rank: int, full: bool) -> Response:
        served = explorer.get(lens)
        name, row = served.unit(layer, unit)
        data = served.thumbnails.jpeg(layer, row, served.example(name, rank), full)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get(
        "/api/lenses/{lens}/layers/{layer}/units/{unit}/examples/{rank}/thumbnail",
        response_class=Response, responses=IMAGE, summary="A concept example's crop (JPEG, made once, cached)",
    )  # fmt: skip
    def thumbnail(lens: LensKey, layer: LayerName, unit: UnitName, rank: Rank) -> Response:
        return example_jpeg(lens, layer, unit, rank, full=False)

    @app.get(
        "/api/lenses/{lens}/layers/{layer}/units/{unit}/examples/{rank}/image",
        response_class=Response, responses=IMAGE, summary="A concept example's full input view (JPEG); its box is in the example",
    )  # fmt: skip
    def full_image(lens: LensKey, layer: LayerName, unit: UnitName, rank: Rank) -> Response:
        return example_jpeg(lens, layer, unit, rank, full=True)

    # -- search -----------------------------------------------------------------------------------

    @app.get("/api/lenses/{lens}/search", response_model=list[Hit], summary="Units ranked by alignment with a text")
    def search(
        lens: LensKey,
        q: Annotated[str, Query(min_length=1, max_length=MAX_TEXT, description="What to look for.")],
        layer: Layers = None,
        top: Top = 10,
    ) -> list[dict[str, Any]]:
        served = explorer.get(lens)
        return hits_out(served, served.ready().search(q, layers=layers_of(served, layer), top=top))

    @app.post(
        "/api/lenses/{lens}/search/image", response_model=list[Hit], summary="Units ranked by similarity to an image"
    )
    def search_image(
        lens: LensKey,
        image: Annotated[UploadFile, File(description="The image probe (PNG, JPEG, ...).")],
        layer: Layers = None,
        top: Top = 10,
    ) -> list[dict[str, Any]]:
        served = explorer.get(lens)
        picture = decode_image(image.file.read())
        return hits_out(served, served.ready().search(images=[picture], layers=layers_of(served, layer), top=top))

    # -- map and dissection -----------------------------------------------------------------------

    @app.get(
        "/api/lenses/{lens}/map", response_model=MapOut, summary="UMAP overview of a layer's units (or of all layers)"
    )
    def overview_map(
        lens: LensKey,
        layer: Annotated[str | None, Query(max_length=MAX_TEXT, description="Default: all layers.")] = None,
    ) -> dict[str, Any]:
        """Positions, k-means clusters named by their two best labels, the category each unit aligns with best,
        and the plotly figure; computed once per layer (UMAP is slow), then remembered."""
        served = explorer.get(lens)
        layers = [served.layer(layer)] if layer else None

        def compute() -> dict[str, Any]:
            opened = served.ready()
            overview = opened.overview(layers)
            labels = {unit: opened.label_of(unit) for unit in overview.units}
            figure = overview_figure(overview, labels, webgl=len(overview.units) >= WEBGL_FROM)
            return {
                **overview.to_dict(),
                "layer": layer,
                "labels": list(labels.values()),
                "figure": plotly_json(figure),
            }

        return served.remember(("map", layer), compute)

    @app.get("/api/lenses/{lens}/dissect", response_model=DissectOut, summary="Units per label category per layer")
    def dissect(lens: LensKey) -> dict[str, Any]:
        counts = explorer.get(lens).labelled().dissect()
        return {"counts": counts, "figure": plotly_json(dissection_figure(counts))}

    @app.get("/api/lenses/{lens}/dissect/units", response_model=CategoryOut, summary="The units of one dissection bar")
    def category_units(
        lens: LensKey,
        layer: Annotated[str, Query(max_length=MAX_TEXT)],
        category: Annotated[str, Query(max_length=MAX_TEXT, description="A label category, or unlabelled.")],
        top: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> dict[str, Any]:
        served = explorer.get(lens)
        units = served.labelled().category_units(served.layer(layer), category)
        return {"layer": layer, "category": category, "units": [served.ref(unit) for unit in units[:top]]}

    # -- audit and attribution graph ----------------------------------------------------------------

    @app.post(
        "/api/lenses/{lens}/audit", response_model=AuditOut, summary="Audit a class against valid and spurious concepts"
    )
    def audit(lens: LensKey, request: AuditRequest) -> dict[str, Any]:
        """Verdicts of the class's relevant units, its relevance by verdict, and the scatter (x valid, y spurious
        alignment, size relevance). Export: the response itself."""
        served = explorer.get(lens)
        opened = served.ready()
        result = opened.audit(
            request.class_name,
            request.valid,
            request.spurious,
            cut=request.cut,
            layers=layers_of(served, request.layers),
        )
        units = [
            {
                **served.ref(unit.unit),
                **{key: getattr(unit, key) for key in ("relevance", "mean_relevance", "a_valid", "a_spur", "verdict")},
            }
            for unit in result.units
        ]
        return {
            **result.to_dict(),
            "units": units,
            "figure": plotly_json(audit_figure(opened, result, thumbnails=False)),
        }

    @app.get("/api/lenses/{lens}/graph", response_model=GraphOut, summary="Attribution graph of a class")
    def attribution_graph(
        lens: LensKey,
        class_name: Annotated[
            str, Query(alias="class", min_length=1, max_length=MAX_TEXT, description="Class name or index.")
        ],
        layer: Layers = None,
        cut: Annotated[
            float | None, Query(ge=0, le=1, description="Relevance share to enter the graph (default 0.01).")
        ] = None,
    ) -> dict[str, Any]:
        """Concept groups per layer and the CRP relevance flowing between them (needs the model and the probe
        data on this machine); computed once per class, layers and cut."""
        served = explorer.get(lens)
        opened = served.labelled()
        index, layers = opened.class_index(class_name), layers_of(served, layer)

        def compute() -> dict[str, Any]:
            result = opened.attribution_graph(index, layers, cut)
            return {**result.to_dict(), "figure": plotly_json(graph_figure(result))}

        return served.remember(("graph", index, tuple(layers or ()), cut), compute)

    # -- comparing two Lenses ------------------------------------------------------------------------

    @app.get("/api/compare", response_model=CompareOut, summary="Compare two Lenses")
    def compare(
        a: Annotated[str, Query(max_length=MAX_TEXT, description="First Lens (index or name).")],
        b: Annotated[str, Query(max_length=MAX_TEXT, description="Second Lens (index or name).")],
    ) -> dict[str, Any]:
        """S_{A->B} and S_{B->A} per layer pair, A's units with their best match in B, shared and unique concepts."""
        first, second = explorer.get(a), explorer.get(b)

        def compute() -> dict[str, Any]:
            result = first.ready().compare(second.ready()).to_dict()
            matches = sorted(result.pop("best_match").items(), key=lambda item: -item[1]["similarity"])[:MATCHES]
            result["matches"] = [
                {"unit": first.ref(unit), "match": second.ref(match["unit"]), "similarity": match["similarity"]}
                for unit, match in matches
            ]
            return {**result, "a": first.id, "b": second.id}

        return first.remember(("compare", second.id), compute)

    # -- the front end -------------------------------------------------------------------------------

    @app.get("/vendor/plotly.min.js", include_in_schema=False)
    def plotly_script() -> FileResponse:
        return FileResponse(PLOTLY_JS, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})

    app.mount("/", StaticFiles(directory=STATIC, html=True), name="static")
    return app
