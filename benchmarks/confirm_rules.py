"""Which rule should confirm an audit finding? Scores confirmation rules on the concept tests that
``ground_truth.py`` records (``unit_tests``: of every unit the audit examined; records made before it
tested every unit hold the flagged units' only), against the true artefact
units: per rule, confirmed units, precision and recall (over the true artefact units examined), on the
planted worlds and the control worlds (there, fewer confirmed is better).

    python benchmarks/confirm_rules.py records.json [more.json ...]

Rules (each also needs the class to rely on the concept and the unit's activation AUC >= CONFIRM_AUC):
- ``share``: zeroing the unit removes at least CONFIRM_SHARE of the class's reliance (the audit's rule
  before the class rise was measured);
- ``share+class``: ``share``, and the concept raises the unit at least CONCEPT_OVER_CLASS times as much
  as the class's own images do, where that was measured (the audit's rule; records made before it hold
  no ``class_rise``: there it is ``share``);
- ``null-z``: the reliance it removes, as a robust z among the class's relevant units that were NOT
  flagged (their removal is what an unrelated relevant unit does), is above Z_CUT;
- ``null-z-layer``: the same, against the non-flagged relevant units of its own layer;
- ``group``: it removes at least CONFIRM_SHARE of what the flagged units remove one by one, together;
- ``group+class``: ``group``, and the concept over class part of ``share+class``.
"""

from __future__ import annotations

import json
import sys
from statistics import mean, median
from typing import Any, Callable

from semlens.analysis.audit import FLAGGED, Z_CUT
from semlens.interventions.effects import CONCEPT_OVER_CLASS, CONFIRM_AUC, CONFIRM_SHARE

Rule = Callable[[dict[str, Any], list[dict[str, Any]], dict[str, Any]], bool]


def robust_z(value: float, null: list[float]) -> float:
    if len(null) < 3:
        return float("nan")
    centre = median(null)
    scale = max(1.4826 * median(abs(v - centre) for v in null), 1e-3)
    return (value - centre) / scale


def share(test: dict, tests: list[dict], reliance: dict) -> bool:
    return test["reliance_removed"] >= CONFIRM_SHARE * reliance["log_odds"]


def over_class(test: dict) -> bool:
    rise = test.get("class_rise")
    return rise is None or test["concept_rise"] >= CONCEPT_OVER_CLASS * rise


def share_and_class(test: dict, tests: list[dict], reliance: dict) -> bool:
    return share(test, tests, reliance) and over_class(test)


def null_z(test: dict, tests: list[dict], reliance: dict) -> bool:
    null = [other["reliance_removed"] for other in tests if other["verdict"] not in FLAGGED]
    return robust_z(test["reliance_removed"], null) > Z_CUT


def null_z_layer(test: dict, tests: list[dict], reliance: dict) -> bool:
    layer = test["unit"].rpartition("/")[0]
    null = [other["reliance_removed"] for other in tests if other["verdict"] not in FLAGGED and other["unit"].rpartition("/")[0] == layer]
    return robust_z(test["reliance_removed"], null) > Z_CUT


def group(test: dict, tests: list[dict], reliance: dict) -> bool:
    total = sum(max(other["reliance_removed"], 0.0) for other in tests if other["verdict"] in FLAGGED)
    return total > 0 and test["reliance_removed"] >= CONFIRM_SHARE * total


def group_and_class(test: dict, tests: list[dict], reliance: dict) -> bool:
    return group(test, tests, reliance) and over_class(test)


RULES: dict[str, Rule] = {
    "share": share, "share+class": share_and_class, "null-z": null_z, "null-z-layer": null_z_layer, "group": group, "group+class": group_and_class,
}  # fmt: skip


def score(record: dict, rule: Rule) -> dict[str, Any]:
    tests, reliance = record["unit_tests"], record["audit_reliance"]
    confirmed = [
        test["unit"] for test in tests
        if test["verdict"] in FLAGGED and reliance["relies"] and test["activation_auc"] >= CONFIRM_AUC and rule(test, tests, reliance)
    ]  # fmt: skip
    right = len(set(record["artefact_unit_names"]) & set(confirmed))
    examined = record["artefact_units_examined"]
    return {"confirmed": len(confirmed), "precision": right / len(confirmed) if confirmed else None, "recall": right / examined if examined else None}


def measurable(record: dict, rule: str) -> bool:
    """The null-z rule needs the tests of units that were not flagged (records made before ``ground_truth.py``
    tested every unit have none)."""
    return not rule.startswith("null-z") or any(test["verdict"] not in FLAGGED for test in record["unit_tests"])


def main() -> None:
    records = [record for path in sys.argv[1:] for record in json.loads(open(path, encoding="utf-8").read())]
    for name, rule in RULES.items():
        print(f"rule {name}")
        for control in (False, True):
            chosen = [(record, score(record, rule)) for record in records if record["control"] == control and measurable(record, name)]
            for record, scores in chosen:
                print(f"  {record['world']} seed {record['seed']}: relies {record['audit_relies']} (log odds {record['audit_log_odds']:.2f}), "
                      f"{scores['confirmed']} confirmed, precision {scores['precision']}, recall {scores['recall']}")  # fmt: skip
            for key in ("confirmed", "precision", "recall"):
                values = [scores[key] for _, scores in chosen if scores[key] is not None]
                if values:
                    print(f"  {'control' if control else 'planted'} {key}: mean {mean(values):.2f}, min {min(values):.2f}, max {max(values):.2f} ({len(values)} runs)")


if __name__ == "__main__":
    main()
