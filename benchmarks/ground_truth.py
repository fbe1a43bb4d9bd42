"""How right are semlens's answers in the concept world? Labels, faithfulness, artefact search and audit,
pruning, for several seeds and world configs, against the ground truth from the exact concept masks.

Each (config, seed) trains its own classifiers (cached), builds the Lenses and runs the demo's checks.
All share one foundation model, the default world's (``--foundation``), as one domain CLIP serves many
data sets: the seed changes the rendered images and the classifiers, not the concepts. The first run
of a new (config, seed) takes several minutes on 2 cores.

    python benchmarks/ground_truth.py [--seeds 0 1] [--worlds default benchmarks/worlds/patch-on-cross.toml]
"""

from __future__ import annotations

import argparse
import re
import tempfile
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.table import Table

from semlens.world.demo import run_demo


def seeded_world(world: str, seed: int, folder: Path) -> str:
    """A copy of a world config with ``seed = SEED`` (as a TOML file the demo and the zoo can read)."""
    if world == "default":
        text = resources.files("semlens.assets").joinpath("world.toml").read_text(encoding="utf-8")
    else:
        text = Path(world).read_text(encoding="utf-8")
    body = re.sub(r"(?m)^seed\s*=.*$\n?", "", text)
    path = folder / f"{Path(world).stem}-seed{seed}.toml"
    path.write_text(f"seed = {seed}\n{body}", encoding="utf-8")
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--worlds", nargs="+", default=["default", "benchmarks/worlds/patch-on-cross.toml"])
    parser.add_argument("--out", type=Path, default=Path("ground-truth-runs"))
    parser.add_argument("--foundation", default="world", help="foundation model spec of every run (default: the default world's)")
    args = parser.parse_args()
    console = Console(width=220)  # the table is wide; do not cut it to the terminal
    table = Table(title="semlens against the concept world's ground truth")
    for column in ("world", "seed", "units w/ truth", "top-1", "random", "top-3", "random", "phi", "artefact by search",
                   "flagged spurious (true)", "spurious share", "artefact: class prob.", "after pruning"):  # fmt: skip
        table.add_column(column)
    with tempfile.TemporaryDirectory() as folder:
        for world in args.worlds:
            for seed in args.seeds:
                config = seeded_world(world, seed, Path(folder))
                summary = run_demo(args.out / f"{Path(world).stem}-seed{seed}", config, progress=False, console=Console(quiet=True), foundation=args.foundation)
                labels, found, test = summary["labels"], summary["artifact_units"], summary["test"]
                pruning = test.get("pruning", {}).get("artifact", {})
                table.add_row(
                    Path(world).stem, str(seed), str(labels["units_with_true_concept"]),
                    f"{labels['top1']:.2f}", f"{labels['random_top1']:.2f}", f"{labels['top3']:.2f}", f"{labels['random_top3']:.2f}",
                    f"{labels['faithfulness_phi']:.2f}",
                    f"{len(found['search_found'])}/5 (of {len(found['true'])} true)",
                    f"{len(summary['audit']['spurious_units'])} ({len(found['audit_flagged'])})",
                    f"{summary['audit']['shares']['spurious']:.2f}",
                    f"{test['insertion']['clean']['class_probability']:.2f} -> {test['insertion']['artifact']['class_probability']:.2f}",
                    f"{pruning['before']['class_probability']:.2f} -> {pruning['after']['class_probability']:.2f}" if pruning else "-",
                )  # fmt: skip
    console.print(table)


if __name__ == "__main__":
    main()
