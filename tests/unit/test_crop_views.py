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


def test_heat_overlay_reddens_where_the_heat_is_and_outlines_the_box() -> None:
    import numpy as np
    from PIL import Image

    from semlens.report.figures import BOX_COLOUR, HEAT_COLOUR, HEAT_OPACITY, heat_overlay

    view = Image.new("RGB", (64, 64), (0, 0, 255))
    heat = np.zeros((8, 8), dtype=np.float32)
    heat[0:2, 0:2] = 2.0  # top-left 16 px: the peak
    heat[6:8, 6:8] = -5.0  # negative evidence is not drawn
    pixels = np.asarray(heat_overlay(view, heat, (32, 32, 64, 64)), dtype=np.float32)
    expected = np.array((0, 0, 255)) * (1 - HEAT_OPACITY) + np.array(HEAT_COLOUR) * HEAT_OPACITY
    assert np.abs(pixels[4, 4] - expected).max() <= 1  # at the peak: the heat colour at full opacity
    assert pixels[52, 52].tolist() == [0, 0, 255]  # negative heat and no heat leave the view as it was
    assert pixels[32, 40].tolist() == list(BOX_COLOUR) and pixels[63, 40].tolist() == list(BOX_COLOUR)  # box edges
    flat = np.asarray(heat_overlay(view, np.zeros((8, 8)), (0, 0, 64, 64)), dtype=np.float32)
    assert flat[20, 20].tolist() == [0, 0, 255]  # no positive heat: nothing drawn
