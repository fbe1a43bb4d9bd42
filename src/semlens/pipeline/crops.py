"""From a unit's relevance or activation map on a sample to the square crop that shows it.

The paper crops concept examples to the part that matters: drop input regions below 1 % of the
map's maximum and take a square box around the rest. Here the map is up-sampled bilinearly to the
model's input size first, as for ViT token maps in the paper. Every rule reads the heatmap as the Lens
stores it (pooled to ``max_map_side``), so any view can be derived again from a built Lens's maps.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..model.receptive import shift_boxes, shifted_maps
from ..store.slots import crop_rules

#: auto = relevance where LRP supports the model, else activation
CROP_MODES = ("auto", "relevance", "activation", "none")
#: the default: every example in the paper's box and in the active box; questions read the peak boxes and
#: search the active boxes (``semlens.lens.arrays.SEARCH_RULES``), each the better one for it where measured
DEFAULT_CROP_RULE = "peak+active"
#: what is embedded of the box: its pixels, or its pixels faded to the crop's mean colour where the
#: unit's heatmap is low
CROP_VIEWS = ("box", "masked")
#: the build setting each rule reads besides the map (part of a Lens's identity when the rule is used)
RULE_SETTINGS = {"share": "crop_share", "active": "crop_share", "quantile": "crop_quantile"}
#: quantile rule default: the top 5 % of a unit's map cells over its k maps. NetDissect's threshold is
#: the top 0.5 % over the whole data set; on the concept world's CNN (1200 probe images, k = 20) that
#: threshold keeps a median 2.7 % of the top-k cells of a 16 x 16 layer and 9 % of an 8 x 8 one
CROP_QUANTILE = 0.95
#: boxes snap outward to a grid of this many cells a side of the input (``snap_boxes``), so that the nearly
#: identical boxes different units cut from one image become one crop, embedded once: on the ResNet-18 at
#: 128 px of docs/explanation/performance.md (8 px cells) a fifth fewer distinct crops at 16 cells a side. 0, the
#: default, keeps boxes to the pixel: what the coarser boxes do to labels and search is not measured yet
CROP_GRID = 0


def crop_boxes(
    maps: torch.Tensor,
    size: tuple[int, int],
    rule: str = "peak",
    threshold: float = 0.01,
    share: float = 0.8,
    quantile: float = CROP_QUANTILE,
    activations: torch.Tensor | None = None,
    heat_shift: tuple[float, float] = (0.0, 0.0),
    activation_shift: tuple[float, float] = (0.0, 0.0),
) -> torch.Tensor:
    """Square crop boxes ``[U, V·k, 4]`` for each unit's heatmaps ``[U, k, h, w]`` by ``rule``: the k boxes of
    each of its V rules (``crop_rules``) in turn, so slot ``v·k + s`` is example ``s`` in rule ``v``'s box. The
    active rule reads the units' activation maps ``activations`` ``[U, k, h', w']`` (the heatmaps where None).
    Boxes move with the maps' cells where these are off the even grid (``model.receptive``): ``heat_shift`` for
    the heatmaps (activation maps; relevance heatmaps need none), ``activation_shift`` for ``activations``."""
    return torch.cat(
        [_boxes_by_rule(maps, size, part, threshold, share, quantile, activations, heat_shift, activation_shift) for part in crop_rules(rule)], dim=1
    )


def _boxes_by_rule(
    maps: torch.Tensor, size: tuple[int, int], rule: str, threshold: float, share: float, quantile: float, activations: torch.Tensor | None,
    heat_shift: tuple[float, float], activation_shift: tuple[float, float],
) -> torch.Tensor:  # fmt: skip
    if rule == "quantile":
        return shift_boxes(boxes_by_quantile(maps, size, quantile), heat_shift, size)
    shift = heat_shift
    if rule == "active" and activations is not None:
        maps, shift = activations, activation_shift
    flat = maps.reshape(-1, *maps.shape[2:])
    boxes = boxes_by_share(flat, size, share) if rule in ("share", "active") else boxes_from_maps(flat, size, threshold)
    return shift_boxes(boxes.reshape(*maps.shape[:2], 4), shift, size)


def snap_boxes(boxes: torch.Tensor, size: tuple[int, int], cells: int = CROP_GRID) -> torch.Tensor:
    """Square boxes ``[..., 4]`` grown outward to a grid of ``cells`` cells a side of an image of ``size`` (cells of
    ``side // cells`` pixels; ``cells`` 0 or a cell under 2 pixels: unchanged), still square and still covering each box
    (a box that no square on the grid inside the image covers stays as it was).

    The box's edges move out to the cell lines, its short side grows in whole cells to its long one (``_square``
    on the grid), so the boxes that differ by less than a cell mostly become the same box.
    """
    height, width = size
    step = min(height, width) // cells if cells else 0
    if step < 2:
        return boxes
    flat = boxes.reshape(-1, 4)
    grid = torch.stack([flat[:, 0] // step, flat[:, 1] // step, -(-flat[:, 2] // step), -(-flat[:, 3] // step)], dim=1)
    snapped = _square(grid, -(-height // step), -(-width // step)) * step
    snapped[:, 2] = snapped[:, 2].clamp(max=width)  # a partial last cell where the side is not a multiple of it
    snapped[:, 3] = snapped[:, 3].clamp(max=height)
    snapped = _square(snapped, height, width)
    covers = (snapped[:, :2] <= flat[:, :2]).all(dim=1) & (snapped[:, 2:] >= flat[:, 2:]).all(dim=1)
    return torch.where(covers[:, None], snapped, flat).reshape(boxes.shape)  # not covered: a box as long as a non-square image's short side


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
    cells = torch.stack([corner[:, 1], corner[:, 0], corner[:, 1] + side, corner[:, 0] + side], dim=1)
    return _cells_to_pixels(cells, (cells_y, cells_x), size, found >= 0)


def boxes_by_quantile(maps: torch.Tensor, size: tuple[int, int], quantile: float = CROP_QUANTILE, chunk: int = 64) -> torch.Tensor:
    """Square boxes ``[U, k, 4]`` around the cells of each map ``[U, k, h, w]`` above its unit's threshold.

    NetDissect-style: a unit's threshold is the ``quantile`` of its map values over all of its k maps (not
    of one map), so an example where the unit responds weakly gets a small box or none, and one where it
    responds over a wide area a wide box. Cells count when above the threshold and above zero (positive
    evidence only); their extent, in map cells, is scaled to the image. A map with no such cell keeps the
    whole image. Cells, not up-sampled pixels, are thresholded: bilinear up-sampling lowers an isolated
    cell's peak, which would lose exactly the sharpest responses.
    """
    units, k, cells_y, cells_x = maps.shape
    boxes = torch.empty((units, k, 4), dtype=torch.int64)
    for start in range(0, units, chunk):  # torch.quantile refuses inputs above 2**24 values
        block = maps[start : start + chunk].float()
        cut = torch.quantile(block.flatten(1), quantile, dim=1).clamp_min(0)
        above = (block > cut[:, None, None, None]).flatten(0, 1)
        cells = _bounding_boxes(above)
        found = above.flatten(1).any(dim=1)
        boxes[start : start + chunk] = _cells_to_pixels(cells, (cells_y, cells_x), size, found).reshape(-1, k, 4)
    return boxes


def pool_heatmaps(maps: torch.Tensor, side: int) -> torch.Tensor:
    """Heatmaps ``[M, H, W]`` kept in the Lens at most ``side`` cells a side (area averages, float16): enough
    to show where an example's evidence lies and to derive other crop views, at units x k x side² cost."""
    if max(maps.shape[1:]) > side:
        maps = F.adaptive_avg_pool2d(maps.float()[:, None], (min(side, maps.shape[1]), min(side, maps.shape[2])))[:, 0]
    return maps.half()


def fade_mask(heat: torch.Tensor, size: tuple[int, int], shift: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """How much of each pixel the masked view keeps, ``[H, W]`` in [0, 1], for one heatmap ``[h, w]``.

    The map is up-sampled bilinearly to the view, divided by its peak and clipped to [0, 1]; the square
    root keeps faint evidence visible (a quarter of the peak keeps half the contrast, the paper's 1 %
    edge a tenth) while regions without positive evidence fade fully. A map without a positive value
    masks nothing. ``shift``: where the map's cells sit off the even grid (activation maps: ``model.receptive``).
    """
    up = shifted_maps(heat.float()[None, None], size, shift)[0, 0]
    peak = up.max()
    if peak <= 0:
        return torch.ones(size)
    return (up / peak).clamp(0, 1).sqrt()


def masked_crop(view: Image.Image, box: tuple[int, int, int, int], heat: torch.Tensor, shift: tuple[float, float] = (0.0, 0.0)) -> Image.Image:
    """The crop ``box`` of ``view`` faded toward the crop's mean colour where the example's heatmap ``heat``
    is low: ``mean + (pixel - mean) * fade_mask``, so the foundation model sees what the unit responds
    to, not the rest of the box. The mean, not a fixed grey: on the concept world a grey fade made most
    units' crops look like its gray background (labels "gray"; benchmarks/ground_truth.py --views)."""
    x0, y0, x1, y1 = box
    keep = fade_mask(heat, (view.height, view.width), shift)[y0:y1, x0:x1, None]
    pixels = torch.from_numpy(np.asarray(view.convert("RGB").crop(box), dtype=np.float32))
    mean = pixels.mean(dim=(0, 1))
    faded = mean + (pixels - mean) * keep
    return Image.fromarray(faded.round().clamp(0, 255).to(torch.uint8).numpy())


def _cells_to_pixels(cells: torch.Tensor, grid: tuple[int, int], size: tuple[int, int], found: torch.Tensor) -> torch.Tensor:
    """Square pixel boxes ``[M, 4]`` for boxes in map cells ``[M, 4]`` (x0, y0, x1, y1) on a ``grid`` of
    (rows, columns), grown outward to whole pixels; where ``found`` is False, the whole image."""
    height, width = size
    scale_y, scale_x = height / grid[0], width / grid[1]
    x0, y0 = (cells[:, 0] * scale_x).floor(), (cells[:, 1] * scale_y).floor()
    x1, y1 = (cells[:, 2] * scale_x).ceil(), (cells[:, 3] * scale_y).ceil()
    boxes = _square(torch.stack([x0, y0, x1, y1], dim=1).long(), height, width)
    boxes[~found] = _square(full_boxes(1, size), height, width)[0]  # the whole image (its centred square)
    return boxes


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


def whole_views(boxes: torch.Tensor, side: int) -> torch.Tensor:
    """Which boxes ``[..., 4]`` are the whole ``side`` x ``side`` view (``full_boxes``'s): a crop that is the model's input itself."""
    return (boxes == torch.tensor([0, 0, side, side])).all(dim=-1)
