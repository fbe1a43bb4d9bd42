"""A Lens's embedding spaces and how far two of them agree."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from ...store.trust import display_spec
from ..common import MAX_TEXT, ExplorerDep, LensKey
from ..schemas import MAX_CONCEPTS, Concept, SpaceComparisonOut, SpaceInfo

router = APIRouter()


@router.get("/api/lenses/{lens}/spaces", response_model=list[SpaceInfo], summary="A Lens's embedding spaces")
def spaces(explorer: ExplorerDep, lens: LensKey) -> list[dict[str, Any]]:
    """The default space (the build's foundation model) first, then those added with `semlens embed`."""
    return [{**space.to_dict(), "spec": display_spec(space.spec)} for space in explorer.get(lens).lens.embedding.spaces]


@router.get("/api/lenses/{lens}/spaces/compare", response_model=SpaceComparisonOut, summary="Compare two embedding spaces")
def compare_spaces(
    explorer: ExplorerDep,
    lens: LensKey,
    a: Annotated[str, Query(max_length=MAX_TEXT, description="First space (a name, or default).")],
    b: Annotated[str, Query(max_length=MAX_TEXT, description="Second space.")],
    q: Annotated[
        list[Concept] | None, Query(max_length=MAX_CONCEPTS, description="Text queries (repeat; default: the vocabulary's concepts).")
    ] = None,
    top: Annotated[int, Query(ge=1, le=100, description="Units per query whose overlap is measured.")] = 10,
) -> dict[str, Any]:
    """Agreement of labels (same best concept, top-3 overlap), of search rankings (top-N overlap, Spearman) and of
    the layout (linear CKA, correlation of unit-unit similarities); computed once per question, then remembered."""
    served = explorer.get(lens)
    queries = list(q) if q else None
    key = ("spaces", a, b, tuple(q or ()), top)
    return served.remember(key, lambda: served.ready().compare_spaces(a, b, queries=queries, top=top).to_dict())
