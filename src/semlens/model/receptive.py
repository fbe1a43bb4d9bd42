"""Where a layer's map cells sit in the input: the shift of each cell's receptive-field centre from the even grid.

Up-sampling a map bilinearly (``align_corners=False``) puts cell i's centre at pixel (i + 1/2) x stride, which is
where it lies behind max pools and unpadded patch embeddings. Strided convolutions with padding move it: a 3x3
convolution of stride 2 and padding 1 centres output i on input 2i, half a pixel before the even grid, and the
shifts add up through the layers (ResNet-50's layer4: 15.5 pixels at 224, half a cell); TensorFlow's "same"
padding pads one side only and moves it the other way. What training made of a layer can differ from its
arithmetic (see Alsallakh et al. 2021, "Mind the pad", on what one-sided padding does to trained CNNs): on the
ImageNet EfficientNet-Lite0 the evidence of a unit's peak cell sits 0.3 to 4.7 pixels off the even grid where
the arithmetic says 1.5 to 15.5, while on the world ResNet it sits where the arithmetic says
(``benchmarks/receptive.py``). The shift is therefore measured on the model as trained and on images it is run
on: each image's input gradient of one cell near the map's centre (its total response), the gradient's centroid
less the cell's even-grid centre, averaged over the images. Boxes, masks and IoUs cut from activation maps
follow the shift (``shifted_maps``, ``shift_boxes``); relevance heatmaps are computed at the input and need none.
"""

from __future__ import annotations

from statistics import mean, stdev

import torch
import torch.nn.functional as F
from torch import nn

from .units import LayerSpec, resolve_module, select_output

#: below this many pixels, or this many standard errors of the mean over the images, the even grid is kept (the
#: world CNN's max pools measure up to 0.46 px by chance, 1.8 standard errors; strided convolutions 0.5 px and
#: more: benchmarks/receptive.py)
MIN_SHIFT = 0.25
SIGNIFICANT = 2.0
#: the measurement's input, in multiples of the model's input side (each image mirrored at its edges): the centre
#: cells' receptive fields stay inside it, where at the model's size a deep layer's would be cut by the border
#: and pulled inward. Three times gave the same shifts on the world models' five layers and EfficientNet-Lite0's
#: stride-16 layer, at three times the cost
ENLARGE = 2
#: gradient below this share of its peak is left out of the centroid (a gate's or pooling's path to every pixel)
FLOOR = 0.05
#: how many images the shift is measured on (each with one of the four cells around the map's centre, in turn)
SHIFT_IMAGES = 32
#: images per forward and backward pass (at ``ENLARGE`` times the side)
CHUNK = 4


class _Reached(Exception):
    """Raised by the hook once the layer's output is in hand: nothing after the layer needs to run."""


def _mirrored(images: torch.Tensor) -> torch.Tensor:
    """``images`` ``[N, C, H, W]`` at ``ENLARGE`` times their side, the added border mirrored from the image."""
    height, width = images.shape[-2:]
    rows, columns = (ENLARGE - 1) * height // 2, (ENLARGE - 1) * width // 2
    while rows or columns:  # a mirror adds at most the side less one at a time
        step_rows, step_columns = min(rows, images.shape[-2] - 1), min(columns, images.shape[-1] - 1)
        images = F.pad(images, (step_columns, step_columns, step_rows, step_rows), mode="reflect")
        rows, columns = rows - step_rows, columns - step_columns
    return images


def _layer_maps(module: nn.Module, target: nn.Module, spec: LayerSpec, pixels: torch.Tensor) -> torch.Tensor | None:
    """The layer's output on ``pixels`` as maps ``[N, C, h, w]``, run no further than the layer; None for a layer
    without a map of at least 3 x 3 cells (tokens, vectors)."""
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
    maps = maps.permute(0, 3, 1, 2) if spec.channels_last else maps
    return maps if min(maps.shape[-2:]) >= 3 else None


def _cell_gradients(module: nn.Module, target: nn.Module, spec: LayerSpec, pixels: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, int]], tuple[int, int]]:
    """Per image of ``pixels``, the input gradient's magnitude ``[N, H, W]`` of one of the four cells around the
    layer's map centre (image j: cell j mod 4), those cells, and the map's size."""
    pixels = pixels.detach().requires_grad_(True)
    with torch.enable_grad():
        maps = _layer_maps(module, target, spec, pixels)
    if maps is None:
        raise ValueError(f"layer {spec.name!r} has a map at the model's input size but none at {tuple(pixels.shape[-2:])}")
    height, width = maps.shape[-2:]
    around = [(height // 2 - 1, width // 2 - 1), (height // 2 - 1, width // 2 + 1), (height // 2 + 1, width // 2 - 1), (height // 2 + 1, width // 2 + 1)]
    cells = [around[image % len(around)] for image in range(len(maps))]
    response = sum(maps[image, :, row, column].abs().sum() for image, (row, column) in enumerate(cells))
    (gradient,) = torch.autograd.grad(response, pixels)
    return gradient.float().abs().sum(dim=1), cells, (height, width)


def map_shift(module: nn.Module, spec: LayerSpec, images: torch.Tensor) -> tuple[float, float]:
    """The (row, column) shift in input pixels of the centres of layer ``spec``'s map cells from the even grid,
    measured on ``images`` (model inputs ``[N, 3, H, W]``, the first ``SHIFT_IMAGES`` used; module docstring):
    (0, 0) for token and vector outputs (patches tile the input evenly) and where it is under ``MIN_SHIFT`` or under
    ``SIGNIFICANT`` standard errors of the mean over the images. Raises
    ValueError where the cells have no gradient or their receptive fields do not move with them (the centres of
    cells two apart are not two strides apart, within a quarter)."""
    target = resolve_module(module, spec.name)
    parameter = next(module.parameters(), None)
    images = images[:SHIFT_IMAGES]
    if not len(images):
        raise ValueError("no images to measure the map shift on")
    images = images.repeat(-(-4 // len(images)), 1, 1, 1) if len(images) < 4 else images  # every cell at least once
    if parameter is not None:
        images = images.to(parameter.device, parameter.dtype)
    with torch.no_grad():
        if _layer_maps(module, target, spec, images[:1]) is None:  # tokens or vectors: known without the larger inputs
            return (0.0, 0.0)
    enlarge = True
    offsets: list[tuple[tuple[int, int], list[float], tuple[float, float]]] = []  # per image moving its cell: cell, offset, strides
    for chunk in images.split(CHUNK):
        try:
            measured = _cell_gradients(module, target, spec, _mirrored(chunk) if enlarge else chunk)
        except Exception:  # noqa: BLE001 - a model fixed to its input size: measure at that size
            if not enlarge:
                raise
            enlarge = False
            measured = _cell_gradients(module, target, spec, chunk)
        weights, cells, grid = measured
        side = weights.shape[-2:]
        strides = (side[0] / grid[0], side[1] / grid[1])
        weights = (weights - FLOOR * weights.flatten(1).amax(dim=1).view(-1, 1, 1)).clamp_min(0)
        mass = weights.sum(dim=(1, 2))
        pixel_centres = [torch.arange(length, dtype=torch.float32, device=weights.device) + 0.5 for length in side]
        rows = ((weights.sum(2) * pixel_centres[0]).sum(1) / mass.clamp_min(1e-30)).tolist()
        columns = ((weights.sum(1) * pixel_centres[1]).sum(1) / mass.clamp_min(1e-30)).tolist()
        for cell, centre, responds in zip(cells, zip(rows, columns), (mass > 0).tolist()):
            if responds:  # else the cell is silent on this image
                offsets.append((cell, [centre[axis] - (cell[axis] + 0.5) * strides[axis] for axis in range(2)], strides))
    if not offsets:
        raise ValueError(f"layer {spec.name!r}: its centre cells have no input gradient on these images")
    shift = []
    for axis in range(2):
        first = min(cell[axis] for cell, _, _ in offsets)
        before = [offset[axis] for cell, offset, _ in offsets if cell[axis] == first]
        after = [offset[axis] for cell, offset, _ in offsets if cell[axis] != first]
        # cells two apart have centres two strides apart, within a quarter of that, or the field does not follow them
        if not before or not after or abs(mean(after) - mean(before)) > 0.5 * offsets[0][2][axis]:
            raise ValueError(f"layer {spec.name!r}: its cells' receptive fields do not move with the cells")
        along = [offset[axis] for _, offset, _ in offsets]
        error = stdev(along) / len(along) ** 0.5 if len(along) > 1 else 0.0
        shift.append(round(mean(along), 2) if abs(mean(along)) >= max(MIN_SHIFT, SIGNIFICANT * error) else 0.0)
    return (shift[0], shift[1])


def measured_shift(module: nn.Module, spec: LayerSpec, images: torch.Tensor) -> tuple[tuple[float, float], str | None]:
    """``map_shift``, or the even grid and why where it cannot be measured (a model this probe cannot run, cells
    without gradient): a placement never stops a build or an audit."""
    try:
        return map_shift(module, spec, images), None
    except Exception as error:  # noqa: BLE001 - any model's failure, reported by the caller
        return (0.0, 0.0), f"{type(error).__name__}: {error}"


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
