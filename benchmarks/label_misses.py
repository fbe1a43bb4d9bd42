"""Why labels miss in the concept world: for stored judge runs (``ground_truth.py --out RUNS``), where a unit's two
truths agree or part, and each top-1 miss by kind.

A unit's truth (``demo.true_concepts``) is what dissection names, ranked by the concept's scenes; its second reading
is the concept whose scenes raise it most among all the world's. Per run: top-1 over the units where the two agree,
and where they part, whether the label names the scenes' concept, the truth or another. Then every miss as
"truth family -> label family" (e.g. ``artifact->shape``): how many, per layer, whether the label's scenes raise the
unit more than the truth's (and the median ratio), whether the truth is among the top 3 candidates, and whether the
label's concept stays under its own chance IoU in that layer (dissection could not have named it).

    PYTHONPATH=src:tests/support python benchmarks/label_misses.py RUNS/r0.2-...-seed0-world-resnet RUNS/...
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path
from statistics import median

import torch

from semlens import Lens
from semlens.world.demo import area_concepts, iou_thresholds, true_concepts
from semlens.world.render import WorldConfig, concept_family
from semlens.world.truth import where_truths_part


def run_misses(run: Path, kinds: Counter, ratios: dict[str, list[float]]) -> Counter:
    """One run's counts (and its misses added to ``kinds`` and ``ratios``), by the judge's own truth."""
    truths = json.loads((run / "truth.json").read_text(encoding="utf-8"))["value"]
    lens = Lens.open(run / "world.lens")
    truth = true_concepts(truths, area=area_concepts(WorldConfig.load(run / "world.toml")))
    thresholds = iou_thresholds(truths)
    names = list(lens.labels.vocabulary.concepts)
    counts: Counter = Counter()
    for layer in truths:
        top = [[names[int(index)] for index in row] for row in lens.labels.of(layer).concepts.tolist()]
        concepts = truths[layer]["concepts"]
        scenes = torch.tensor(truths[layer]["scene_responses"]).mean(dim=2)  # [U, C]
        iou = torch.tensor(truths[layer]["iou"])
        layer_truth = [truth.get(f"{layer}/{unit}") for unit in range(len(top))]
        counts.update(where_truths_part(scenes, [candidates[0] for candidates in top], layer_truth, concepts))
        for unit, candidates in enumerate(top):
            true, label = layer_truth[unit], candidates[0]
            if true is None:
                continue
            counts["units"] += 1
            counts["hits"] += label == true
            counts["part_truth"] += label == true and concepts[int(scenes[unit].argmax())] != true
            if label == true:
                continue
            if label not in concepts:
                kinds["label outside the world"] += 1
                continue
            kind = f"{concept_family(true)}->{concept_family(label)}"
            kinds[kind] += 1
            kinds[f"{kind}, {layer}"] += 1
            kinds[f"{kind}, label's scenes raise it more"] += bool(scenes[unit, concepts.index(label)] > scenes[unit, concepts.index(true)])
            kinds[f"{kind}, truth in the top 3"] += true in candidates
            kinds[f"{kind}, label under its chance IoU"] += bool(iou[unit, concepts.index(label)] < thresholds[layer][label])
            ratios[kind].append(float(scenes[unit, concepts.index(label)] / scenes[unit, concepts.index(true)]))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of ground_truth.py (each with truth.json and world.lens)")
    args = parser.parse_args()
    kinds: Counter = Counter()
    ratios: dict[str, list[float]] = defaultdict(list)
    for run in args.runs:
        c = run_misses(run, kinds, ratios)
        parted = c["units"] - c["agree"]
        print(
            f"{run.name}: {c['units']} units with a true concept, top-1 {c['hits'] / max(c['units'], 1):.2f}; truths agree on "
            f"{c['agree']}, top-1 {c['agree_hits'] / max(c['agree'], 1):.2f}; part on {parted}: the label names the scenes' "
            f"concept {c['part_scene_hits']}, the truth {c['part_truth']}, another {parted - c['part_scene_hits'] - c['part_truth']}"
        )
    print("misses by kind (truth family -> label family):")
    for key in sorted(kinds):
        print(f"  {key}: {kinds[key]}")
    for kind, values in sorted(ratios.items()):
        print(f"  {kind}: label's scenes / truth's, median {median(values):.2f} ({min(values):.2f} to {max(values):.2f})")


if __name__ == "__main__":
    main()
