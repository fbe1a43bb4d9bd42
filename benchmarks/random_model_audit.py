"""An audit of a model that learnt nothing (random weights) must flag nothing, whatever the Lens was labelled with
last: a new-user trial saw spurious shares 0.00, 0.61 and 0.55 for one such audit after labelling with the default
vocabulary, nine words and two words. Builds a random CNN's Lens on the concept world's probe images (a model object,
as from a notebook) with each offline foundation model, labels it with each vocabulary in turn and audits "star" for
the watermark after each; also how many units show a label (a model that learnt nothing has no concepts to name).
Usage: ``python benchmarks/random_model_audit.py [OUT]`` (about a minute per foundation
model on 2 CPU cores)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from semlens import build_lens

VOCABULARIES = [None, "builtin", ["star", "ring", "square", "text", "watermark", "grass", "red", "blue", "frame"], ["fish", "dog"]]


def random_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 6),
    ).eval()  # fmt: skip


def main(out: Path) -> None:
    for foundation in ("world", "conse"):
        lens = build_lens(model=random_cnn(), layers=["3", "7"], data="world::300:probe", foundation=foundation, k=10,
                          out=out / f"random-{foundation}.lens", progress=False)  # fmt: skip
        for vocabulary in VOCABULARIES:
            if vocabulary is not None:
                lens.label(vocabulary)
            audit = lens.audit("star", spurious=["watermark"])
            shown = "as built" if vocabulary is None else vocabulary if isinstance(vocabulary, str) else f"{len(vocabulary)} words"
            lens.labels.ensure(save=False)  # as built: the default vocabulary's labels, as every face shows them
            coverage = lens.labels.coverage()["all"]
            print(f"{foundation}, labelled with {shown}: spurious share {audit.spurious_share:.2f}, {len(audit.flagged)} flagged; "
                  f"labels shown on {coverage['labelled']} of {coverage['valid_units']} valid units (median confidence "
                  f"{coverage['median_confidence'] or float('nan'):.2f})")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "random-model-audit"))
