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
