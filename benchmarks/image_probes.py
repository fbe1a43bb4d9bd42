"""How an image probe with transparent parts (an artefact overlay: the demo world's watermark on a transparent
canvas) is best embedded: which handling ranks the world's true watermark units highest in ``Lens.search``.

Handlings: its alpha dropped (the transparent pixels' own colour, black), composited onto neutral gray, white,
the probe images' mean colour, cropped to its opaque part on gray, and pasted into N probe images spread evenly
over the probe data (``semlens.lens.search.probe_backgrounds``, the mean of their embeddings). Measured over 6 placements of
the watermark (``world.render.artifact_overlay``): mean average precision of the 9 true watermark units (the
demo's ground truth) among the units of the spatial layers, and the mean rank of the first one.

Then the rankings of ``Lens.search`` for the watermark overlay as the user gives it (``search.RANKINGS``: the
foundation-space ones and ``model``, the model's own response to the overlay pasted into the probe images): mean
average precision, the true units in the top 5 and the seconds a search takes (the first one loads the model).

    semlens demo --out /tmp/demo
    python benchmarks/image_probes.py /tmp/demo/world.lens
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image

from semlens import Lens
from semlens.lens.probes import NEUTRAL_GRAY
from semlens.lens.search import RANKINGS
from semlens.world.render import WorldConfig, artifact_overlay

TRUE = {"features.10/47", "features.10/49", "features.10/60", "features.14/35", "features.14/40", "features.14/47", "features.14/53", "features.14/56", "features.14/62"}
LAYERS = ["features.10", "features.14"]
PLACEMENTS = 6


def average_precision(ranked: list[str]) -> float:
    hits, total = 0, 0.0
    for position, unit in enumerate(ranked, 1):
        if unit in TRUE:
            hits += 1
            total += hits / position
    return total / len(TRUE)


def over(colour: tuple[int, int, int]):
    return lambda artefact: [Image.alpha_composite(Image.new("RGBA", artefact.size, colour + (255,)), artefact).convert("RGB")]


def pasted(backgrounds: list[Image.Image]):
    return lambda artefact: [Image.alpha_composite(b.convert("RGBA").resize(artefact.size), artefact).convert("RGB") for b in backgrounds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lens", help="the demo's world.lens")
    args = parser.parse_args()
    lens = Lens.open(args.lens)
    config = WorldConfig.load(None)
    data = lens.sources.probe_data
    spread = lambda count: [lens.sources.probe_data.load(int(i)) for i in np.linspace(0, len(data) - 1, count).round()]  # noqa: E731
    mean = tuple(int(v) for v in np.mean([np.asarray(image, dtype=np.float64).mean(axis=(0, 1)) for image in spread(16)], axis=0).round())
    handlings = {
        "alpha dropped": lambda artefact: [artefact.convert("RGB")],
        "neutral gray": over(NEUTRAL_GRAY),
        "white": over((255, 255, 255)),
        f"mean probe colour {mean}": over(mean),
        "cropped to its opaque part, gray": lambda artefact: over(NEUTRAL_GRAY)(artefact.crop(artefact.getchannel("A").getbbox())),
        **{f"pasted into {count} probe images": pasted(spread(count)) for count in (4, 8, 16, 32)},
        "Lens.search (the RGBA image itself)": lambda artefact: [artefact],
    }
    for name, handle in handlings.items():
        precisions, firsts = [], []
        for index in range(PLACEMENTS):
            artefact = artifact_overlay(config, "watermark", index)
            ranked = [hit.unit for hit in lens.search(images=handle(artefact), layers=LAYERS, top=10_000)]
            precisions.append(average_precision(ranked))
            firsts.append(next(position for position, unit in enumerate(ranked, 1) if unit in TRUE))
        print(f"{name:40s} mean AP {np.mean(precisions):.3f}   first true unit at rank {np.mean(firsts):5.1f}")
    for rank in RANKINGS:
        precisions, top5, seconds = [], [], []
        for index in range(PLACEMENTS):
            start = time.perf_counter()
            hits = lens.search(images=[artifact_overlay(config, "watermark", index)], layers=LAYERS, top=10_000, rank=rank)
            seconds.append(time.perf_counter() - start)
            ranked = [hit.unit for hit in hits]
            precisions.append(average_precision(ranked))
            top5.append(sum(unit in TRUE for unit in ranked[:5]))
        print(f"rank={rank:35s} mean AP {np.mean(precisions):.3f}   true units in top 5 {np.mean(top5):.1f}   seconds {np.median(seconds):.2f} (first {seconds[0]:.2f})")


if __name__ == "__main__":
    main()
