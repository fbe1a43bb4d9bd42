"""What k suits a small probe set? With k = 30 (the paper's) on a folder of 90 images, each unit's examples are a third
of the data, so units share most of them and their vectors draw together. Builds the world CNN's Lens on the first
N probe images of the default concept world for each k, labels it with the world's vocabulary and scores the labels
against the world's truth (``world.demo.ground_truth_labels``; the truth is the model's, from all 1200 probe images,
whatever N). Prints per (N, k): the units with tied examples, the labels shown and their top-1, phi.

Usage: ``python benchmarks/small_data_k.py OUT --sizes 60 150 400 --ks 30 20 10 5 [--foundation conse]`` (a minute or
two per build on 2 CPU cores; OUT/truth.json from the demo's folder spares the truth's pass)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console

from semlens.world.demo import build_world_lens, ground_truth_labels
from semlens.world.render import WorldConfig


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--sizes", type=int, nargs="+", default=[60, 150, 400])
    parser.add_argument("--ks", type=int, nargs="+", default=[30, 20, 10, 5])
    parser.add_argument("--foundation", default=None, help="foundation model spec (default: the world's own)")
    args = parser.parse_args()
    config, quiet, records = WorldConfig.load(None), Console(quiet=True), []
    for size in args.sizes:
        for k in args.ks:
            start = time.perf_counter()
            path = args.out / f"n{size}-k{k}{'' if args.foundation is None else '-' + args.foundation}.lens"
            lens = build_world_lens(path, "zoo:world-cnn", None, args.foundation, False, quiet, {"data": f"world::{size}:probe", "k": k})
            scores, _ = ground_truth_labels(lens, config, args.out)
            tied = sum(int(lens.arrays.tied(layer).sum()) for layer in lens.layers)
            records.append({"samples": size, "k": k, "tied": tied, **{key: scores[key] for key in ("coverage", "top1_shown", "top1", "faithfulness_phi", "units_with_true_concept")}})
            print(f"N {size:4d} k {k:2d}: tied {tied:3d}, shown {scores['coverage']:.2f}, top-1 shown {scores['top1_shown']:.3f}, "
                  f"top-1 {scores['top1']:.3f}, phi {scores['faithfulness_phi']:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
            (args.out / "records.json").write_text(json.dumps(records, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
