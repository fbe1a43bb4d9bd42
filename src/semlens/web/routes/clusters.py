"""A unit's concept clusters: the groups of its concept examples that are distinct concepts, each with its
examples (thumbnails) and the concept that sets its mean embedding apart from the layer's units."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter

from ...lens.clusters import ConceptCluster, UnitClusters
from ..common import ExplorerDep, LayerName, LensKey, UnitName, example_out
from ..schemas import Example, derived

router = APIRouter()

ClusterOut = derived(ConceptCluster, "ClusterOut", examples=(list[Example], ...))  # with the examples' thumbnails
ClustersOut = derived(UnitClusters, "ClustersOut")


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
