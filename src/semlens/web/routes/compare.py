"""Comparing two served Lenses."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from ..common import MAX_TEXT, ExplorerDep
from ..schemas import CompareOut

MATCHES = 50  # best matches listed

router = APIRouter()


@router.get("/api/compare", response_model=CompareOut, summary="Compare two Lenses")
def compare(
    explorer: ExplorerDep,
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
