"""Where a layer's map cells sit in the input: the shift of each cell's receptive-field centre from the even grid.

Up-sampling a map bilinearly (``align_corners=False``) puts cell i's centre at pixel (i + 1/2) x stride, which is
where it lies behind max pools and unpadded patch embeddings. Strided convolutions with padding move it: a 3x3
convolution of stride 2 and padding 1 centres output i on input 2i, half a pixel before the even grid, and the
shifts add up through the layers (ResNet-50's layer4: 15.5 pixels at 224, half a cell); TensorFlow's "same"
padding pads one side only and moves it the other way. What training made of a layer can differ from its
arithmetic (see Alsallakh et al. 2021, "Mind the pad", on what one-sided padding does to trained CNNs): on the
ImageNet EfficientNet-Lite0 the evidence of a unit's peak cell sits 0.1 to 2.4 pixels off the even grid where
the arithmetic says 1.5 to 15.5, while on the world ResNet it sits where the arithmetic says
(``benchmarks/receptive.py``). The shift is therefore measured where it matters, on the model as trained and on
images it is run on: for evenly spaced units, the input gradient of the unit's peak cell on the image where it
peaks highest, the gradient's centroid less the cell's centre on the even grid, averaged over the units (cells
on the map's edge left out: the image border pulls their gradient inward). A measure of the centre cells'
response on every image instead, tried first, was pulled 1 to 2 pixels toward the objects at the image centre
in the world CNN. Boxes, masks and IoUs cut from activation maps follow the shift (``shifted_maps``,
``shift_boxes``); relevance heatmaps are computed at the input and need none.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import mean, median, stdev

import torch
import torch.nn.functional as F
from torch import nn

from .units import LayerSpec, resolve_module, select_output

#: below this many pixels, or this many standard errors of the mean over the examples, the even grid is kept
#: (max pools and patch embeddings measure 0.00; strided convolutions 0.5 px and more: benchmarks/receptive.py)
MIN_SHIFT = 0.25
SIGNIFICANT = 2.0
#: gradient below this share of its peak is left out of the centroid (a gate's or pooling's path to every pixel)
FLOOR = 0.05
#: images the shift is measured on, and how many examples it reads there: up to this many evenly spaced units,
#: each with its top image (layers with fewer units give each its next images in turn until there are this many)
SHIFT_IMAGES = 64
SHIFT_EXAMPLES = 64
#: images per forward or backward pass
CHUNK = 16
#: fewer examples than this off the map's edge leave the shift unmeasured
MIN_EXAMPLES = 8
#: a layer's cells say where in the image a unit fires when the input gradient of a unit's peak cell is
#: concentrated on the cell itself: the share of its magnitude inside the cell's footprint, over the footprint's
#: share of the image (1: spread evenly over the image), at least this (the median over the examples). Chosen in the
#: gap measured on the judges' models (docs/quality.md, "Maps that cannot say where"): 5.2 to 44.9 in the 8 x 8 and
#: 16 x 16 maps of the concept world's models at 64 px, 6.2 to 8.6 in the 6 x 6 map of the photos' ResNet-18 at
#: 96 px; 0.76 to 2.17 in the 3 x 3 maps at 96 px (EfficientNet-Lite0's last block, the ResNet-18's last stage),
#: whose cells each draw on the whole image. The ImageNet EfficientNet-Lite0 at 224 px: 18.7 at its 14 x 14
#: ``_blocks.10``, 2.38 at its 7 x 7 ``_blocks.15``
LOCAL_CONCENTRATION = 3.0


class _Reached(Exception):
    """Raised by the hook once the layer's output is in hand: nothing after the layer needs to run."""


def layer_maps(module: nn.Module, spec: LayerSpec, pixels: torch.Tensor, target: nn.Module | None = None) -> torch.Tensor | None:
    """Layer ``spec``'s output on ``pixels`` as maps ``[N, C, h, w]``, the model run no further than the layer
    (``target``: the layer's module, where the caller resolved it); None for a layer without a map (tokens,
    vectors)."""
    target = resolve_module(module, spec.name) if target is None else target
    kept: dict[str, torch.Tensor] = {}

    def catch(_: nn.Module, __: object, output: object) -> None:
        kept["output"] = select_output(output, spec.pick, spec.name)
        raise _Reached

    handle = target.register_forward_hook(catch)
    try:
        module(pixels)
    except _Reached:
        pass
    finally:
        handle.remove()
    if "output" not in kept:
        raise ValueError(f"layer {spec.name!r} did not run")
    maps = kept["output"]
    if maps.dim() != 4:
        return None
    return maps.permute(0, 3, 1, 2) if spec.channels_last else maps


def gradient_centroids(gradient: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image of an input gradient ``[N, C, H, W]``, the (row, column) centroid in pixels ``[N, 2]`` of its
    magnitude above ``FLOOR`` of its peak, and whether there was any ``[N]`` (no gradient: no centroid)."""
    weights = gradient.float().abs().sum(dim=1)
    weights = (weights - FLOOR * weights.flatten(1).amax(dim=1).view(-1, 1, 1)).clamp_min(0)
    mass = weights.sum(dim=(1, 2))
    pixel_centres = [torch.arange(length, dtype=torch.float32, device=weights.device) + 0.5 for length in weights.shape[1:]]
    rows = (weights.sum(2) * pixel_centres[0]).sum(1) / mass.clamp_min(1e-30)
    columns = (weights.sum(1) * pixel_centres[1]).sum(1) / mass.clamp_min(1e-30)
    return torch.stack([rows, columns], dim=1), mass > 0


def _peak_examples(module: nn.Module, target: nn.Module, spec: LayerSpec, images: torch.Tensor) -> list[tuple[int, int, int, int]] | None:
    """Up to ``SHIFT_EXAMPLES`` (image, unit, row, column): evenly spaced units, each with the image among ``images``
    where it peaks highest and its peak cell there (then the next images, where there are fewer units), kept where
    the unit fires and the cell is off the map's edge (the border would pull its gradient inward); None for a layer
    without a map."""
    peaks, cells = [], []
    with torch.no_grad():
        for chunk in images.split(CHUNK):
            maps = layer_maps(module, spec, chunk, target)
            if maps is None:
                return None
            height, width = maps.shape[-2:]
            if min(height, width) < 3:
                raise ValueError(f"layer {spec.name!r}: its {height}x{width} map has no cell off its edge to place")
            flat = maps.flatten(2).float()
            values, positions = flat.max(dim=2)  # [n, C]
            peaks.append(values)
            cells.append(positions)
    units = torch.linspace(0, peaks[0].shape[1] - 1, min(SHIFT_EXAMPLES, peaks[0].shape[1])).round().long().unique()
    peaks, cells = torch.cat(peaks)[:, units], torch.cat(cells)[:, units]  # [N, units]
    ranked = peaks.argsort(dim=0, descending=True).tolist()  # each unit's images, highest peak first
    peaks, cells = peaks.tolist(), cells.tolist()
    examples, seen = [], set()
    for by_rank in ranked:  # every unit's top image, then every unit's second, ... until there are enough
        for position, (unit, image) in enumerate(zip(units.tolist(), by_rank)):
            row, column = divmod(cells[image][position], width)
            if peaks[image][position] > 0 and 0 < row < height - 1 and 0 < column < width - 1 and (image, row, column) not in seen:
                seen.add((image, row, column))  # units peaking at one cell of one image count once: not independent
                examples.append((image, unit, row, column))
            if len(examples) == SHIFT_EXAMPLES:
                return examples
    return examples


@dataclass(frozen=True)
class MapPlacement:
    """Where a layer's map cells sit in the input (``shift``: ``map_shift``) and how much each draws on its own
    place (``locality``: the median concentration of a peak cell's input gradient on its footprint,
    ``LOCAL_CONCENTRATION``; None for token and vector outputs)."""

    shift: tuple[float, float]
    locality: float | None

    @property
    def locates(self) -> bool:
        """Whether where a unit fires on the map says where in the image its evidence is."""
        return self.locality is None or self.locality >= LOCAL_CONCENTRATION


def map_shift(module: nn.Module, spec: LayerSpec, images: torch.Tensor) -> tuple[float, float]:
    """The (row, column) shift in input pixels of the centres of layer ``spec``'s map cells from the even grid,
    measured on ``images`` (model inputs ``[N, 3, H, W]``, the first ``SHIFT_IMAGES``; module docstring): (0, 0)
    for token and vector outputs (patches tile the input evenly) and where it is under ``MIN_SHIFT`` or under
    ``SIGNIFICANT`` standard errors of the mean over the examples. Raises ValueError where fewer than
    ``MIN_EXAMPLES`` units peak off the map's edge or their peak cells have no input gradient."""
    return map_placement(module, spec, images).shift


def map_placement(module: nn.Module, spec: LayerSpec, images: torch.Tensor) -> MapPlacement:
    """``map_shift`` and, from the same input gradients, the layer's ``locality`` (``MapPlacement``); raises as
    ``map_shift`` does."""
    target = resolve_module(module, spec.name)
    parameter = next(module.parameters(), None)
    images = images[:SHIFT_IMAGES]
    if not len(images):
        raise ValueError("no images to measure the map shift on")
    if parameter is not None:
        images = images.to(parameter.device, parameter.dtype)
    examples = _peak_examples(module, target, spec, images)
    if examples is None:
        return MapPlacement((0.0, 0.0), None)
    offsets, concentrations = [], []
    side = images.shape[-2:]
    for start in range(0, len(examples), CHUNK):
        chosen = examples[start : start + CHUNK]
        pixels = images[[image for image, _, _, _ in chosen]].detach().requires_grad_(True)
        with torch.enable_grad():
            maps = layer_maps(module, spec, pixels, target)
            response = sum(maps[row_in_batch, unit, row, column] for row_in_batch, (_, unit, row, column) in enumerate(chosen))
            (gradient,) = torch.autograd.grad(response, pixels)
        strides = (side[0] / maps.shape[-2], side[1] / maps.shape[-1])
        centres, responds = gradient_centroids(gradient)
        magnitude = gradient.float().abs().sum(dim=1)  # [n, H, W]
        for index, ((_, _, row, column), centre, moved) in enumerate(zip(chosen, centres.tolist(), responds.tolist())):
            if moved:
                offsets.append((centre[0] - (row + 0.5) * strides[0], centre[1] - (column + 0.5) * strides[1]))
                concentrations.append(_concentration(magnitude[index], row, column, strides))
    if len(offsets) < MIN_EXAMPLES:
        raise ValueError(f"layer {spec.name!r}: {len(offsets)} units peak off the map's edge with an input gradient on these images, fewer than {MIN_EXAMPLES}")
    shift = []
    for axis in range(2):
        along = [offset[axis] for offset in offsets]
        error = stdev(along) / len(along) ** 0.5
        shift.append(round(mean(along), 2) if abs(mean(along)) >= max(MIN_SHIFT, SIGNIFICANT * error) else 0.0)
    return MapPlacement((shift[0], shift[1]), round(median(concentrations), 2))


def _concentration(magnitude: torch.Tensor, row: int, column: int, strides: tuple[float, float]) -> float:
    """The share of an input gradient's magnitude ``[H, W]`` inside cell (``row``, ``column``)'s footprint on the
    even grid, over the footprint's share of the image."""
    top, bottom = round(row * strides[0]), round((row + 1) * strides[0])
    left, right = round(column * strides[1]), round((column + 1) * strides[1])
    inside = float(magnitude[top:bottom, left:right].sum()) / float(magnitude.sum())
    return inside / ((bottom - top) * (right - left) / magnitude.numel())


def measured_shift(module: nn.Module, spec: LayerSpec, images: torch.Tensor) -> tuple[tuple[float, float], str | None]:
    """``map_shift``, or the even grid and why where it cannot be measured (``measured_placement``)."""
    placement, failed = measured_placement(module, spec, images)
    return placement.shift, failed


def measured_placement(module: nn.Module, spec: LayerSpec, images: torch.Tensor) -> tuple[MapPlacement, str | None]:
    """``map_placement``, or the even grid, locality unknown, and why where it cannot be measured (a model this
    probe cannot run, cells without gradient): a placement never stops a build or an audit."""
    try:
        return map_placement(module, spec, images), None
    except Exception as error:  # noqa: BLE001 - any model's failure, reported by the caller
        return MapPlacement((0.0, 0.0), None), f"{type(error).__name__}: {error}"


def shifted_maps(maps: torch.Tensor, size: tuple[int, int], shift: tuple[float, float] = (0.0, 0.0), scale: float = 1.0) -> torch.Tensor:
    """Maps ``[N, C, h, w]`` up-sampled bilinearly to ``size`` with each cell's centre moved by ``shift`` pixels of the
    model's input (times ``scale`` where ``size`` is not the input's: a region resized with the maps); edges repeat."""
    if not any(shift):
        return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    height, width = size
    ys = (torch.arange(height, dtype=torch.float32) + 0.5 - shift[0] * scale) / height * 2 - 1
    xs = (torch.arange(width, dtype=torch.float32) + 0.5 - shift[1] * scale) / width * 2 - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).to(maps.device)
    return F.grid_sample(maps, grid.expand(len(maps), height, width, 2).to(maps.dtype), mode="bilinear", padding_mode="border", align_corners=False)


def shift_boxes(boxes: torch.Tensor, shift: tuple[float, float], size: tuple[int, int]) -> torch.Tensor:
    """Square boxes ``[..., 4]`` (x0, y0, x1, y1) moved by ``shift`` (rows, columns; rounded to whole pixels) and
    kept inside the image (``size``: height, width) at their side."""
    if not any(shift):
        return boxes
    dy, dx = round(shift[0]), round(shift[1])
    sides = boxes[..., 2:] - boxes[..., :2]
    corner = boxes[..., :2] + torch.tensor([dx, dy])
    corner = torch.minimum(corner.clamp_min(0), torch.tensor([size[1], size[0]]) - sides)
    return torch.cat([corner, corner + sides], dim=-1)
