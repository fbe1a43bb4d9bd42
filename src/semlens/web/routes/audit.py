"""Class audits and attribution graphs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from ...report.figures import graph_figure
from ...report.html import audit_figure
from ..common import MAX_TEXT, ExplorerDep, Layers, LensKey, layers_of, plotly_json
from ..schemas import AuditedUnit, AuditOut, AuditRequest, GraphOut, UnitRef

router = APIRouter()


@router.post(
    "/api/lenses/{lens}/audit", response_model=AuditOut, summary="Audit a class against valid and spurious concepts"
)
def audit(explorer: ExplorerDep, lens: LensKey, request: AuditRequest) -> dict[str, Any]:
    """Verdicts of the class's relevant units (each alignment judged against its layer's null: aligned when
    its robust z exceeds ``z``, one-sided beyond ``margin``), its relevance by verdict ("both" also counted in
    spurious_or_both), and the scatter (x valid, y spurious z, size relevance). With ``draw``, one spurious concept
    semlens draws is tested on its drawings where the model loads (``reliance``, its ``drawn`` says what was drawn);
    a test of your own images: ``semlens audit --test-data``. Export: the response itself."""
    from ...analysis.audit import MARGIN, Z_CUT, AlignmentRule

    served = explorer.get(lens)
    opened = served.ready()
    rule = AlignmentRule(Z_CUT if request.z is None else request.z, MARGIN if request.margin is None else request.margin, request.by_label)
    result = opened.audit(
        request.class_name,
        request.valid,
        request.spurious,
        cut=request.cut,
        layers=layers_of(served, request.layers),
        rule=rule,
        draw=request.draw,
    )
    fields = [name for name in AuditedUnit.model_fields if name not in UnitRef.model_fields]  # the audit's own
    units = [{**served.ref(unit.unit), **{key: getattr(unit, key) for key in fields}} for unit in result.units]
    return {
        **result.to_dict(),
        "units": units,
        "figure": plotly_json(audit_figure(opened, result, thumbnails=False)),
    }


@router.get("/api/lenses/{lens}/graph", response_model=GraphOut, summary="Attribution graph of a class")
def attribution_graph(
    explorer: ExplorerDep,
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
    index, layers = opened.units.class_index(class_name), layers_of(served, layer)

    def compute() -> dict[str, Any]:
        result = opened.attribution_graph(index, layers, cut)
        return {**result.to_dict(), "figure": plotly_json(graph_figure(result))}

    return served.remember(("graph", index, tuple(layers or ()), cut), compute)
