"""Search units by a text or an uploaded image."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from urllib.parse import quote

from fastapi import APIRouter, File, Query, Response, UploadFile

from ..common import MAX_TEXT, ExampleSet, ExplorerDep, Layers, LensKey, Ranking, SpaceName, Top, decode_image, hits_out, layers_of
from ..schemas import Hit

if TYPE_CHECKING:
    from ...lens.search import SearchResults

router = APIRouter()


@router.get("/api/lenses/{lens}/search", response_model=list[Hit], summary="Units ranked by a text")
def search(
    explorer: ExplorerDep,
    lens: LensKey,
    response: Response,
    q: Annotated[str, Query(min_length=1, max_length=MAX_TEXT, description="What to look for.")],
    layer: Layers = None,
    top: Top = 10,
    space: SpaceName = None,
    examples: ExampleSet = "activation",
    rank: Ranking = None,
) -> list[dict[str, Any]]:
    """Units ranked by ``q``: the alignment of their theta (from their activation or relevance examples) and,
    by default, their response to it (``Lens.search``); a name of a concept the Lens was shown (an audit's pasted
    artefact) or of one semlens draws (a watermark, a frame, a logo, a ruler, a colour cast), by the model's response
    to its images. Headers ``X-Semlens-Rank`` and ``X-Semlens-Concept`` say which ranking ordered the hits
    (``RANKINGS``) and the shown or drawn concept's name (URL-quoted), where one did, ``X-Semlens-Ranking`` the ranking
    in words (``SearchResults.ranking``, URL-quoted); ``X-Semlens-Note``
    what a reader should know of the hits as a whole (``SearchResults.note``, URL-quoted), where there is something."""
    served = explorer.get(lens)
    found = served.ready(space).search(q, layers=layers_of(served, layer), top=top, examples=examples, rank=rank)
    return ranked_by(response, found, hits_out(served, found, examples))


def ranked_by(response: Response, found: SearchResults, hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``hits``, with the headers that say what ordered them (the hits themselves are the documented list)."""
    response.headers["X-Semlens-Rank"] = found.rank or ""
    response.headers["X-Semlens-Ranking"] = quote(found.ranking())
    if found.concept:
        response.headers["X-Semlens-Concept"] = quote(found.concept)
    if found.note:  # e.g. no unit aligns with the text more than with an empty prompt
        response.headers["X-Semlens-Note"] = quote(found.note)
    return hits


@router.post(
    "/api/lenses/{lens}/search/image", response_model=list[Hit], summary="Units ranked by similarity to an image"
)
def search_image(
    explorer: ExplorerDep,
    lens: LensKey,
    response: Response,
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
    return ranked_by(response, found, hits_out(served, found, examples))
