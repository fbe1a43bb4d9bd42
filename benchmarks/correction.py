"""Correcting the artefact class of concept worlds: pruning the audit's flagged units against projection
(P-ClArC) and fine-tuning the last modules (``Lens.correct``), with the same artefact test before and after.

Per world (the default one, files given with ``--worlds``, and ``--random N`` drawn worlds), the world's
classifier is trained (cached) and its Lens built as ``ground_truth.py`` builds it (shared with it through
``--out``); the artefact class is audited (valid: its name, spurious: the artefact) and then:

- prune: the units flagged spurious switched off (``pruning_effect``);
- project: ``Lens.correct(method="project")`` (layer chosen among the Lens layers on the probe images);
- finetune: ``Lens.correct(method="finetune")`` with the head only and with the last three modules.

Each is learnt on the world's probe images (1200) and tested on its test images (300, every class): the
class probability with the artefact minus without (``effect``), the share of artefact images predicted
as the class, clean accuracy, before and after, and the seconds it took to learn (CPU).

    python benchmarks/correction.py [--worlds default] [--json correction.json]
    python benchmarks/correction.py --worlds --random 2 --seed 0   # two drawn planted worlds only
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ground_truth import lens_path, seeded_world, world_texts
from rich.console import Console
from rich.table import Table

from semlens.interventions.correction import Tuning
from semlens.interventions.effects import Artifact, pruning_effect
from semlens.world.demo import TEST_IMAGES, build_world_lens, spatial_layers
from semlens.world.random_world import planted_artifact, random_worlds
from semlens.world.render import WorldConfig, WorldData, artifact_overlay

METHODS = {  # name: Lens.correct settings
    "project": {"method": "project"},
    "finetune head": {"method": "finetune", "tuning": Tuning(last=1)},
    "finetune last 3": {"method": "finetune", "tuning": Tuning(last=3, learning_rate=1e-3)},
}


def row(name: str, before: dict, after: dict, seconds: float, extra: dict) -> dict:
    """One method's record: effect, predicted-as-class on artefact images and clean accuracy, before and after."""
    def pick(result: dict) -> dict:
        return {
            "effect": result["artifact"]["class_probability"] - result["clean"]["class_probability"],
            "predicted_as_class": result["artifact"]["predicted_as_class"],
            "clean_accuracy": result["clean"]["accuracy"],
        }

    return {"method": name, "before": pick(before), "after": pick(after), "seconds": round(seconds, 1), **extra}


def evaluate(name: str, config_path: str, folder: Path, foundation: str) -> list[dict]:
    config = WorldConfig.load(config_path)
    artifact, target, control = planted_artifact(config)
    lens = build_world_lens(lens_path(folder, {}), f"zoo:world-cnn:{config_path}", config_path, foundation, False, Console(quiet=True))
    overlay = Artifact(image=artifact_overlay(config, artifact))
    test = WorldData(config, TEST_IMAGES, "test")
    flagged = [unit.unit for unit in lens.audit(target, [target], [artifact], layers=spatial_layers(lens)).units if unit.verdict == "spurious"]
    records = []
    if flagged:
        start = time.perf_counter()
        pruned = pruning_effect(lens.sources.model(), test, lens.units.channels(flagged), lens.units.class_index(target), overlay)
        halves = {part: {"clean": pruned["clean"][part], "artifact": pruned["artifact"][part]} for part in ("before", "after")}
        records.append(row("prune", halves["before"], halves["after"], time.perf_counter() - start, {"units": flagged}))
    for method, settings in METHODS.items():
        correction = lens.correct(target, overlay, data=test, progress=False, **settings)
        records.append(row(method, correction.before, correction.after, correction.seconds, {"settings": correction.to_dict()["settings"]}))
    world = {"world": name, "artifact": artifact, "class": target, "control": control}
    return [{**world, **record} for record in records]


def print_table(records: list[dict], console: Console) -> None:
    table = Table(title="correcting the artefact class (test images; before -> after)")
    for column in ("world", "artefact on class", "method", "effect", "predicted as class", "clean accuracy", "seconds"):
        table.add_column(column)
    for record in records:
        before, after = record["before"], record["after"]
        cells = [f"{before[key]:.3f} -> {after[key]:.3f}" for key in ("effect", "predicted_as_class", "clean_accuracy")]
        table.add_row(record["world"], f"{record['artifact']} on {record['class']}", record["method"], *cells, f"{record['seconds']:.0f}")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", nargs="*", default=["default"], help="world configs, or none (default: the default world)")
    parser.add_argument("--random", type=int, default=0, metavar="N", help="also draw N planted random worlds")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random worlds drawn")
    parser.add_argument("--out", type=Path, default=Path("ground-truth-runs"), help="where the worlds' Lenses are (shared with ground_truth.py)")
    parser.add_argument("--foundation", default="world", help="foundation model spec of every Lens")
    parser.add_argument("--json", type=Path, default=None, help="write the records to this file")
    args = parser.parse_args()
    worlds = world_texts(args.worlds) + [(world.name, world.toml) for world in (random_worlds(args.random, 0, args.seed) if args.random else [])]
    console, records = Console(width=200), []
    for name, text in worlds:
        folder = args.out / f"{name}-seed0"
        records += evaluate(name, seeded_world(text, 0, folder / "world.toml"), folder, args.foundation)
        console.print(f"{name}: done")
        if args.json:
            args.json.write_text(json.dumps(records, indent=1), encoding="utf-8")
    print_table(records, console)


if __name__ == "__main__":
    main()
