"""From a unit's relevance or activation map on a sample to the square crop that shows it.

The paper crops concept examples to the part that matters: drop input regions below 1 % of the
map's maximum and take a square box around the rest. Here the map is up-sampled bilinearly to the
model's input size first, as for ViT token maps in the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: auto = relevance where LRP supports the model, else activation
CROP_MODES = ("auto", "relevance", "activation", "none")
#: how a box is cut from a heatmap: around everything above a share of its peak (the paper's rule), or the
#: smallest square holding a share of its positive mass
CROP_RULES = ("peak", "share")


def crop_boxes(maps: torch.Tensor, size: tuple[int, int], rule: str = "peak", threshold: float = 0.01, share: float = 0.8) -> torch.Tensor:
    """Square crop boxes ``[M, 4]`` for heatmaps ``[M, h, w]`` by ``rule`` (one of ``CROP_RULES``)."""
    if rule == "share":
        return boxes_by_share(maps, size, share)
    return boxes_from_maps(maps, size, threshold)


def boxes_from_maps(
    maps: torch.Tensor, size: tuple[int, int], threshold: float = 0.01, chunk: int = 256
) -> torch.Tensor:
    """Square crop boxes ``[M, 4]`` (x0, y0, x1, y1; pixels, end exclusive) for maps ``[M, h, w]``.

    A map whose maximum is not positive (the unit did not fire on that sample) keeps the whole image
    (on a non-square image: its largest centred square).
    """
    height, width = size
    boxes = torch.empty((maps.shape[0], 4), dtype=torch.int64)
    for start in range(0, maps.shape[0], chunk):
        block = maps[start : start + chunk].float()
        up = F.interpolate(block[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
        peak = up.amax(dim=(1, 2))
        mask = up > (threshold * peak.clamp_min(0))[:, None, None]
        mask |= (peak <= 0)[:, None, None]  # nothing fired: keep everything
        boxes[start : start + chunk] = _square(_bounding_boxes(mask), height, width)
    return boxes


def boxes_by_share(maps: torch.Tensor, size: tuple[int, int], share: float = 0.8, grid: int = 32) -> torch.Tensor:
    """The smallest square boxes ``[M, 4]`` holding ``share`` of each map's positive mass, for maps ``[M, h, w]``.

    Unlike the peak rule, a faint but wide spread of relevance does not stretch the box to the whole
    image: the box follows where most of the evidence is. Maps are pooled to at most ``grid`` cells a
    side (area averages keep the mass), the square is found there, by the largest window sum for each
    side length (ties to the top left), and scaled to the image. A map without positive mass keeps the
    whole image.
    """
    height, width = size
    positive = maps.float().clamp_min(0)
    if max(positive.shape[1:]) > grid:
        positive = F.adaptive_avg_pool2d(positive[:, None], (min(grid, positive.shape[1]), min(grid, positive.shape[2])))[:, 0]
    cells_y, cells_x = positive.shape[1:]
    total = positive.sum(dim=(1, 2))
    found = torch.full((maps.shape[0],), -1, dtype=torch.int64)
    corner = torch.zeros(maps.shape[0], 2, dtype=torch.int64)
    for side in range(1, min(cells_y, cells_x) + 1):
        sums = F.avg_pool2d(positive[:, None], side, stride=1)[:, 0] * side * side
        best, where = sums.flatten(1).max(dim=1)
        newly = (found < 0) & (best >= share * total) & (total > 0)
        found[newly] = side
        corner[newly] = torch.stack([where // sums.shape[2], where % sums.shape[2]], dim=1)[newly]
    side = found.clamp_min(1)
    scale_y, scale_x = height / cells_y, width / cells_x
    y0, x0 = (corner[:, 0] * scale_y).floor(), (corner[:, 1] * scale_x).floor()
    y1, x1 = ((corner[:, 0] + side) * scale_y).ceil(), ((corner[:, 1] + side) * scale_x).ceil()
    boxes = _square(torch.stack([x0, y0, x1, y1], dim=1).long(), height, width)
    boxes[found < 0] = _square(full_boxes(1, size), height, width)[0]  # the whole image (its centred square)
    return boxes


def pool_heatmaps(maps: torch.Tensor, side: int) -> torch.Tensor:
    """Heatmaps ``[M, H, W]`` kept in the Lens at most ``side`` cells a side (area averages, float16): enough
    to show where an example's evidence lies and to derive other crop views, at units x k x side² cost."""
    if max(maps.shape[1:]) > side:
        maps = F.adaptive_avg_pool2d(maps.float()[:, None], (min(side, maps.shape[1]), min(side, maps.shape[2])))[:, 0]
    return maps.half()


def _bounding_boxes(mask: torch.Tensor) -> torch.Tensor:
    """Tight boxes around the True pixels of each mask ``[M, H, W]``."""
    rows, cols = mask.any(dim=2), mask.any(dim=1)
    height, width = mask.shape[1:]
    y0 = rows.float().argmax(dim=1)
    y1 = height - rows.flip(1).float().argmax(dim=1)
    x0 = cols.float().argmax(dim=1)
    x1 = width - cols.flip(1).float().argmax(dim=1)
    return torch.stack([x0, y0, x1, y1], dim=1)


def _square(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Grow each box's short side to its long side around the same centre, shifted inside the image."""
    x0, y0, x1, y1 = boxes.unbind(1)
    side = torch.maximum(x1 - x0, y1 - y0).clamp(max=min(height, width))
    cx2, cy2 = x0 + x1, y0 + y1  # twice the centre, to stay in integers
    new_x0 = ((cx2 - side) // 2).clamp(min=0)
    new_y0 = ((cy2 - side) // 2).clamp(min=0)
    new_x0 = torch.minimum(new_x0, width - side)
    new_y0 = torch.minimum(new_y0, height - side)
    return torch.stack([new_x0, new_y0, new_x0 + side, new_y0 + side], dim=1)


def full_boxes(count: int, size: tuple[int, int]) -> torch.Tensor:
    """The whole image as a box, ``count`` times (crop mode ``none``)."""
    height, width = size
    return torch.tensor([0, 0, width, height], dtype=torch.int64).repeat(count, 1)
