"""Crop views derived from a heatmap: the share rule (smallest square holding a share of the positive
mass) against known answers and a brute-force search."""

from __future__ import annotations

import itertools

import torch

from semlens.build.crops import boxes_by_share, boxes_from_maps


def test_share_box_follows_the_evidence_where_the_peak_rule_takes_everything() -> None:
    maps = torch.zeros(3, 8, 8)
    maps[0, 2:4, 5:7] = 1.0  # a compact blob (cells y 2-3, x 5-6) ...
    maps[0] += 0.02  # ... over a faint spread above 1 % of the peak: the peak rule keeps the whole image
    maps[1] = -1.0  # nothing positive: the whole image
    maps[2, 7, 0] = maps[2, 0, 7] = 5.0  # two far corners: 80 % of the mass needs both
    assert boxes_from_maps(maps, (64, 64))[0].tolist() == [0, 0, 64, 64]
    shares = boxes_by_share(maps, (64, 64), share=0.6)
    assert shares[0].tolist() == [40, 16, 56, 32]  # cells x 5..7, y 2..4 at 8 px a cell
    assert shares[1].tolist() == shares[2].tolist() == [0, 0, 64, 64]
    assert boxes_by_share(maps[:1], (64, 64), share=0.99)[0].tolist() == [0, 0, 64, 64]  # 99 % needs all the spread


def test_share_box_is_the_smallest_square_by_brute_force() -> None:
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(20, 6, 6, generator=generator) ** 6 - 0.1  # peaky, some negative cells
    boxes = boxes_by_share(maps, (6, 6), share=0.7)  # one pixel per cell: boxes are cells
    for heat, box in zip(maps.clamp_min(0), boxes.tolist()):
        total = float(heat.sum())
        smallest = min(
            side
            for side in range(1, 7)
            for y, x in itertools.product(range(7 - side), repeat=2)
            if float(heat[y : y + side, x : x + side].sum()) >= 0.7 * total - 1e-6
        )
        x0, y0, x1, y1 = box
        assert x1 - x0 == y1 - y0 == smallest
        assert float(heat[y0:y1, x0:x1].sum()) >= 0.7 * total - 1e-5


def test_share_box_on_large_maps_and_non_square_images() -> None:
    maps = torch.zeros(1, 224, 224)
    maps[0, 100:120, 30:50] = 1.0  # pooled to a 32 grid (7 px a cell), then scaled back
    x0, y0, x1, y1 = boxes_by_share(maps, (224, 224), share=0.95)[0].tolist()
    assert x0 <= 30 and y0 <= 100 and x1 >= 50 and y1 >= 120 and x1 - x0 <= 35
    whole = boxes_by_share(torch.zeros(1, 4, 6), (40, 60), share=0.8)[0].tolist()
    assert whole == [10, 0, 50, 40]  # no mass: the largest centred square
