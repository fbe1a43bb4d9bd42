"""Why search by an artefact's pasted images misses true units on the natural-photo judge: for stored runs of
``planted_judge.py --out RUNS``, the truth's insertion AUC of every unit (the artefact pasted at the truth's
placements over the probe images) against the AUC the search ranks by (its overlays at the audit's placements over
the Lens's ``PROBE_BACKGROUNDS`` probe images), the rank that AUC gives each true unit among the active ones (before
the audit's detectors are put first), and the two AUCs' rank correlation. A true unit ranked far down is raised by the artefact where the truth pastes it, not where the search
does: a unit selective for where the artefact sits.

    PYTHONPATH=src:tests/support:benchmarks python benchmarks/search_misses.py planted-runs
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from planted_judge import OVERLAYS, PLACEMENTS, TEST_SEED, TRUTH_SEED, folder_items, placements
from planted_photos import WEIGHTS_ENV

from semlens import Lens
from semlens.interventions.effects import ConceptImages, activation_aucs
from semlens.lens.search import _concept_views
from semlens.model.units import LayerSpec
from semlens.world.truth import INSERTION_AUC


def ranks(values: torch.Tensor) -> torch.Tensor:
    return values.argsort().argsort().float()


def run_misses(lens_dir: Path, weights: Path, artefacts: list[str], size: int, scale: float) -> None:
    os.environ[WEIGHTS_ENV] = str(weights)
    lens = Lens.open(lens_dir)
    data = Path(lens.manifest["identity"]["data"]["spec"].removeprefix("folder:")).parent
    model, layers = lens.sources.model(), lens.layers
    specs = [LayerSpec(**lens.manifest["layers"][layer]["spec"]) for layer in layers]
    valid = torch.cat([~lens.arrays.inactive(layer) for layer in layers])  # the units search ranks by the model
    for artefact in artefacts:
        truth_images = ConceptImages(folder_items(data / "probe", artefact), artifact=placements(artefact, size, PLACEMENTS, TRUTH_SEED, scale))
        truth = torch.cat(list(activation_aucs(model, *truth_images.views(model), specs).values()))
        true = (truth >= INSERTION_AUC) & valid
        if not true.any():
            continue
        overlays = [placement.overlay(size, size) for placement in placements(artefact, size, OVERLAYS, TEST_SEED, scale)]
        views = _concept_views(lens, overlays, model.preprocessing)
        searched = torch.cat(list(activation_aucs(model, views.backgrounds, views.shown, specs).values())).masked_fill(~valid, -1.0)
        order = torch.argsort(searched, descending=True, stable=True)
        position = torch.empty_like(order)
        position[order] = torch.arange(len(order))
        true_ranks = sorted(position[true].tolist())
        correlation = torch.corrcoef(torch.stack([ranks(searched[valid]), ranks(truth[valid])]))[0, 1]
        print(f"{lens_dir.name} {artefact}: {int(true.sum())} true units, {int(true[order[:5]].sum())} in the top 5; "
              f"their ranks {true_ranks[:10]}; rank correlation of the two AUCs {float(correlation):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="planted_judge.py's --out folder (lenses/, weights/)")
    parser.add_argument("--artefacts", nargs="+", default=["watermark", "logo", "frame"])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--scale", type=float, default=2.0)
    args = parser.parse_args()
    for lens_dir in sorted((args.runs / "lenses").glob("*.lens")):
        run_misses(lens_dir, args.runs / "weights" / f"{lens_dir.name.rsplit('-', 1)[0]}.safetensors", args.artefacts, args.size, args.scale)


if __name__ == "__main__":
    main()
