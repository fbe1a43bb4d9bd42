"""The explorer's response schemas are derived from the result dataclasses: a field is written once, in the result."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import pytest

pytest.importorskip("fastapi")
from semlens.analysis.audit import AuditedUnit as AuditedResult  # noqa: E402
from semlens.store.spaces import EmbeddingSpace  # noqa: E402
from semlens.web.schemas import AuditedUnit, SpaceInfo, UnitRef, derived  # noqa: E402


@dataclass
class Part:
    weight: float = field(metadata={"description": "how much it weighs"})


@dataclass
class Whole:
    class_name: str
    parts: list[Part]
    best: Part | None = None
    hidden: bytes = b""


def test_a_result_type_becomes_the_model_of_its_json_shape() -> None:
    derived(Part, "PartOut")
    model = derived(Whole, "WholeOut", keys={"class_name": "class"}, drop=("hidden",), figure=(dict, ...))
    assert list(model.model_fields) == ["class_name", "parts", "best", "figure"]
    schema = model.model_json_schema(mode="serialization")
    assert set(schema["required"]) == {"class", "parts", "figure"}  # fields with defaults may be left out
    assert schema["$defs"]["PartOut"]["properties"]["weight"]["description"] == "how much it weighs"
    answer = model.model_validate({"class": "cat", "parts": [{"weight": 1.5}], "best": None, "figure": {}})
    assert answer.model_dump(by_alias=True) == {"class": "cat", "parts": [{"weight": 1.5}], "best": None, "figure": {}}


def test_the_explorer_schemas_have_the_results_fields() -> None:
    assert list(SpaceInfo.model_fields) == [item.name for item in fields(EmbeddingSpace)]
    audited = {item.name for item in fields(AuditedResult)} - {"unit", "examples", "test", "verdict_before_test", "contested"}
    assert set(AuditedUnit.model_fields) == set(UnitRef.model_fields) | audited
    assert AuditedUnit.model_fields["z_valid"].description == "a_valid as a robust z among the units of its layer"


def test_hits_clusters_and_corrections_are_derived_from_their_results() -> None:
    """The last shapes written by hand: each now the model of its result type, its descriptions the result's."""
    from semlens.lens.clusters import ConceptCluster, UnitClusters
    from semlens.lens.correction import Correction
    from semlens.lens.search import SearchHit
    from semlens.web.routes.clusters import ClusterOut, ClustersOut
    from semlens.web.routes.correct import CorrectionOut
    from semlens.web.schemas import DERIVED, Hit

    assert DERIVED[SearchHit] is Hit and DERIVED[ConceptCluster] is ClusterOut and DERIVED[UnitClusters] is ClustersOut
    assert DERIVED[Correction] is CorrectionOut
    assert list(Hit.model_fields) == [*UnitRef.model_fields, "score", "response"]
    assert Hit.model_fields["score"].description == fields(SearchHit)[3].metadata["description"]
    assert list(ClusterOut.model_fields) == [*(item.name for item in fields(ConceptCluster)), "examples"]
    assert ClustersOut.model_fields["clusters"].annotation == list[ClusterOut]
    assert set(CorrectionOut.model_fields) == {"class_name", "method", "settings", "samples", "before", "after", "artifact_effect",
                                               "clean_accuracy", "seconds", "ok", "failed", "tolerance"}  # fmt: skip
    assert CorrectionOut.model_fields["class_name"].alias == "class"
