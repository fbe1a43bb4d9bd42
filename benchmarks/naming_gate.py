"""What the confidence gate on naming units by their crop responses (``lens.labels.names_by_responses``) changes,
on a demo world's Lenses: search by name (true units in the top 5 for every concept with true units) and the
audit of the demo's class (spurious share, flagged units that truly detect the artefact), gated and ungated in
one run. Usage: ``python benchmarks/naming_gate.py semlens-demo`` (the folder ``semlens demo`` writes)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

from semlens import Lens
from semlens.lens import labels as labels_module
from semlens.world.demo import true_concepts, unit_truths
from semlens.world.render import WorldConfig


@contextmanager
def ungated():
    """Names by crop responses without the labels' confidence bar (as before the gate); the stored labels are read,
    not made, in ``scores``, so only the naming is made by the ``responses`` method here."""
    original = labels_module.label_layer

    def label_layer(*args, **kwargs):
        return original(*args, **{**kwargs, "min_confidence": float("-inf")}) if args[2] == "responses" else original(*args, **kwargs)

    labels_module.label_layer = label_layer
    try:
        yield
    finally:
        labels_module.label_layer = original


def scores(out: Path, truth: dict[str, str]) -> dict[str, float]:
    lens = Lens.open(out / "world.lens")
    concepts = sorted(set(truth.values()))
    found = possible = 0
    for concept in concepts:
        true = {unit for unit, owner in truth.items() if owner == concept}
        found += sum(hit.unit in true for hit in lens.search(concept, top=5))
        possible += min(5, len(true))
    audit = lens.audit("star", valid=["star"], spurious=["watermark"])
    flagged = [unit.unit for unit in audit.flagged]
    return {
        "search_top5": found / possible, "concepts": len(concepts), "spurious_share": audit.shares["spurious_or_both"],
        "flagged": len(flagged), "flagged_true": sum(truth.get(unit) == "watermark" for unit in flagged),
    }


def main(out: Path) -> None:
    lens = Lens.open(out / "world.lens")
    truth = true_concepts(unit_truths(lens, WorldConfig.load(None), out))
    gated = scores(out, truth)
    with ungated():
        before = scores(out, truth)
    for name, value in gated.items():
        print(f"{name:16s} gated {value:.3f}   ungated {before[name]:.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "semlens-demo"))
