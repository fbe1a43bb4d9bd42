"""CRP crop boxes batched (many unit-sample pairs per backward pass) against one pair per pass.

A small random CNN (four convolutions, the last one with ``--units`` channels) on random images.
Each unit's ``--samples`` examples are the images where it fires most (mean activation), as the
collection pass would pick them. The batched side does what ``CropStage._relevance_boxes`` does: order
the pairs by sample, take ``--batch`` of them per ``crp_heatmaps`` call and cut boxes with
``boxes_from_maps``. The one-at-a-time side makes one call per pair; it runs on the first
``--subset`` pairs of the same order and its time is scaled linearly to all pairs for the ratio
(``--subset 0``: all pairs). Both sides run in this process, inside one ``attributing()`` context,
after a warm-up call each. On the pairs both sides computed, boxes and heatmaps are compared: with
random weights and the build's 1 % threshold most boxes are the whole image, so the heatmaps are
the stronger check that batching changes nothing.

    python benchmarks/crops.py [--units 512] [--samples 30] [--batch 16] [--size 64] [--subset 1024]
"""

from __future__ import annotations

import argparse
import time
from collections import OrderedDict

import torch
from torch import nn

from semlens.build.crops import boxes_from_maps
from semlens.build.embed import chunks
from semlens.relevance.lrp import RelevanceModel, crp_heatmaps

LAYER = "relu4"


def small_cnn(units: int) -> nn.Sequential:
    """Four convolutions down to an 8x8 map (at 64x64 input) with ``units`` channels, then a linear head."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 32, 3, stride=2, padding=1), relu1=nn.ReLU(),
            conv2=nn.Conv2d(32, 64, 3, padding=1), relu2=nn.ReLU(), pool2=nn.MaxPool2d(2),
            conv3=nn.Conv2d(64, 128, 3, padding=1), relu3=nn.ReLU(), pool3=nn.MaxPool2d(2),
            conv4=nn.Conv2d(128, units, 3, padding=1), relu4=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(units, 10),
        )  # fmt: skip
    ).eval()


def top_samples(model: nn.Sequential, images: torch.Tensor, samples: int) -> torch.Tensor:
    """``[U, samples]`` ids: per unit of the CRP layer, the images with the highest mean activation."""
    with torch.no_grad():
        names = [name for name, _ in model.named_children()]
        activation = model[: names.index(LAYER) + 1](images)
    return activation.mean(dim=(2, 3)).T.topk(samples, dim=1).indices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--samples", type=int, default=30, help="examples per unit")
    parser.add_argument("--images", type=int, default=256, help="random images the examples are picked from")
    parser.add_argument("--batch", type=int, default=16, help="pairs per backward pass (the build's default)")
    parser.add_argument("--size", type=int, default=64, help="input side in pixels")
    parser.add_argument("--subset", type=int, default=1024, help="pairs run one at a time (0: all)")
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = small_cnn(args.units)
    images = torch.rand(args.images, 3, args.size, args.size, generator=generator)
    ids = top_samples(model, images, args.samples)
    unit_of = torch.arange(args.units).repeat_interleave(args.samples)
    flat_ids = ids.reshape(-1)
    order = torch.argsort(flat_ids, stable=True)  # by sample, as the build orders them
    pairs = len(order)
    subset = pairs if args.subset <= 0 else min(args.subset, pairs)
    size = (args.size, args.size)

    def heat_and_boxes(modified: nn.Module, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmaps and boxes of the pairs at ``positions``, all in one backward pass."""
        inputs = images[flat_ids[positions]]
        heat = crp_heatmaps(modified, inputs, LAYER, unit_of[positions], torch.ones(len(positions))).detach()
        return heat, boxes_from_maps(heat, size)

    relevance = RelevanceModel(model, images[:2])
    report = relevance.check()
    assert report.supported, report.reason
    batched = torch.empty(pairs, 4, dtype=torch.int64)
    single = torch.empty(subset, 4, dtype=torch.int64)
    batched_heat = torch.empty(subset, *size)  # the maps of the pairs both sides compute, to compare
    single_heat = torch.empty(subset, *size)
    with relevance.attributing() as modified:
        heat_and_boxes(modified, order[: args.batch]), heat_and_boxes(modified, order[:1])  # warm-up
        start = time.perf_counter()
        for begin, end in chunks(pairs, args.batch):
            heat, batched[order[begin:end]] = heat_and_boxes(modified, order[begin:end])
            if begin < subset:
                batched_heat[begin : min(end, subset)] = heat[: subset - begin]
        batched_s = time.perf_counter() - start
        start = time.perf_counter()
        for index in range(subset):
            heat, boxes = heat_and_boxes(modified, order[index : index + 1])
            single_heat[index], single[index] = heat[0], boxes[0]
        single_s = time.perf_counter() - start

    scaled_s = single_s * pairs / subset
    same = (batched[order[:subset]] == single).all(dim=1)
    print(
        f"{args.units} units x {args.samples} samples = {pairs} pairs, {args.size}x{args.size} inputs, layer {LAYER}, "
        f"{torch.get_num_threads()} torch threads; LRP support: {report.reason}"
    )
    print(f"batched ({args.batch} pairs per backward pass): {batched_s:.1f} s for all {pairs} pairs")
    scaling = "" if subset == pairs else f", scaled x{pairs / subset:g} to all {pairs} pairs: {scaled_s:.1f} s"
    print(f"one pair per backward pass: {single_s:.1f} s for {subset} pairs{scaling}")
    print(f"ratio one-at-a-time{' (scaled)' if subset < pairs else ''} / batched = {scaled_s / batched_s:.1f}")
    peak = single_heat.abs().flatten(1).amax(1).clamp_min(1e-30)  # a unit that never fired has an all-zero map
    gap = ((batched_heat - single_heat).abs().flatten(1).amax(1) / peak).max()
    sides = (batched[:, 2] - batched[:, 0]).float()
    print(
        f"on the {subset} pairs both sides computed: boxes identical for {int(same.sum())}, "
        f"heatmaps max |difference| / max |map| = {gap:.1e}"
    )
    print(f"boxes: mean side {sides.mean():.1f} px, {int((sides == args.size).sum())} of {pairs} the whole image")


if __name__ == "__main__":
    main()
