"""A unit's concept clusters: the groups of its concept examples that are distinct concepts, each with its
examples (thumbnails) and the concept its mean embedding aligns with best."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from ..common import ExplorerDep, LayerName, LensKey, UnitName, example_out
from ..schemas import Example

router = APIRouter()


class ClusterOut(BaseModel):
    ranks: list[int] = Field(description="Ranks of the cluster's concept examples (as in the unit's examples).")
    size: int
    concept: str | None = Field(description="The vocabulary concept the cluster's mean embedding aligns with best.")
    alignment: float | None
    label: str | None = Field(description="The concept where its alignment reaches the labelling threshold, else null.")
    examples: list[Example]


class ClustersOut(BaseModel):
    unit: str
    examples: str = Field(description="Which concept examples: by activation.")
    polysemanticity: float | None
    split_p: float | None = Field(description="Chance that one concept's spread splits as cleanly; two clusters only below 0.01.")
    valid: bool = Field(description="False for inactive or tied units: their examples are arbitrary or another unit's.")
    vocabulary: str | None
    clusters: list[ClusterOut] = Field(description="One for a monosemantic unit, two for a polysemantic one; largest first.")


@router.get(
    "/api/lenses/{lens}/layers/{layer}/units/{unit}/clusters", response_model=ClustersOut, summary="A unit's concept clusters"
)
def unit_clusters(explorer: ExplorerDep, lens: LensKey, layer: LayerName, unit: UnitName) -> dict[str, Any]:
    """The unit's concept examples grouped by the concept they show (the polysemanticity measure's clusters),
    each named with the served labels' vocabulary."""
    served = explorer.get(lens)
    name, _ = served.unit(layer, unit)
    opened = served.labelled()
    result = served.remember(("clusters", name), lambda: opened.concept_clusters(name))
    shown = {example.rank: example_out(served, name, example) for example in opened.examples.concept_examples(name)}
    clusters = [{**asdict(cluster), "examples": [shown[rank] for rank in cluster.ranks if rank in shown]} for cluster in result.clusters]
    return {**result.to_dict(), "clusters": clusters}
