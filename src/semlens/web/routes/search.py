"""Search units by a text or an uploaded image."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Query, UploadFile

from ..common import MAX_TEXT, ExampleSet, ExplorerDep, Layers, LensKey, Ranking, SpaceName, Top, decode_image, hits_out, layers_of
from ..schemas import Hit

router = APIRouter()


@router.get("/api/lenses/{lens}/search", response_model=list[Hit], summary="Units ranked by a text")
def search(
    explorer: ExplorerDep,
    lens: LensKey,
    q: Annotated[str, Query(min_length=1, max_length=MAX_TEXT, description="What to look for.")],
    layer: Layers = None,
    top: Top = 10,
    space: SpaceName = None,
    examples: ExampleSet = "activation",
    rank: Ranking = None,
) -> list[dict[str, Any]]:
    """Units ranked by ``q``: the alignment of their theta (from their activation or relevance examples) and,
    by default, their response to it (``Lens.search``)."""
    served = explorer.get(lens)
    found = served.ready(space).search(q, layers=layers_of(served, layer), top=top, examples=examples, rank=rank)
    return hits_out(served, found, examples)


@router.post(
    "/api/lenses/{lens}/search/image", response_model=list[Hit], summary="Units ranked by similarity to an image"
)
def search_image(
    explorer: ExplorerDep,
    lens: LensKey,
    image: Annotated[UploadFile, File(description="The image probe (PNG, JPEG, ...).")],
    layer: Layers = None,
    top: Top = 10,
    space: SpaceName = None,
    examples: ExampleSet = "activation",
    rank: Ranking = None,
) -> list[dict[str, Any]]:
    served = explorer.get(lens)
    picture = decode_image(image.file.read(), "RGBA")  # its transparency kept: see ProbeEncoder.images
    found = served.ready(space).search(images=[picture], layers=layers_of(served, layer), top=top, examples=examples, rank=rank)
    return hits_out(served, found, examples)
