"""Where a layer's map cells sit in the input: the shift of each cell's receptive-field centre from the even grid.

Up-sampling a map bilinearly (``align_corners=False``) puts cell i's centre at pixel (i + 1/2) x stride, which is
where it lies behind max pools and unpadded patch embeddings. Strided convolutions with padding put it earlier:
a 3x3 convolution of stride 2 and padding 1 centres output i on input 2i, half a pixel before the even grid, and
the shifts add up through the layers (ResNet-50's layer4: 15.5 pixels at 224, half a cell). NetDissect corrects
for this from the layers' arithmetic; here it is measured, for any architecture: the input gradient of one cell
of the model with every weight positive and equal and its max pools averaging (its geometric receptive field,
not what training made of it) on random positive inputs, whose centroid is the cell's centre. Boxes, masks and
IoUs cut from activation maps follow the shift (``shifted_maps``, ``shift_boxes``); relevance heatmaps are
computed at the input and need none.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .units import LayerSpec, resolve_module, select_output

#: below this many pixels the even grid is kept (max pools and patch embeddings measure 0.00; strided
#: convolutions 0.5 and more, within 0.05: benchmarks/receptive.py)
MIN_SHIFT = 0.25
#: the measurement's input, in multiples of the model's input side: its centre cells' receptive fields stay
#: inside it, where at the model's size a deep layer's would be cut by the border and pulled inward
ENLARGE = 3
#: gradient below this share of its peak is left out of the centroid (a gate's or pooling's path to every pixel)
FLOOR = 0.05
#: each max pool and the average pool over the same windows that stands in for it while measuring
AVERAGE_FOR_MAX = ((nn.MaxPool1d, F.avg_pool1d), (nn.MaxPool2d, F.avg_pool2d), (nn.MaxPool3d, F.avg_pool3d))


def _averaged(module: nn.Module, inputs: tuple[torch.Tensor, ...], _: Any) -> torch.Tensor:
    """A max pool's output replaced by the average over the same windows: the window's centre, where a max
    pool's gradient would pick one random corner of it."""
    pool = next(average for kind, average in AVERAGE_FOR_MAX if isinstance(module, kind))
    return pool(inputs[0], module.kernel_size, module.stride, module.padding, module.ceil_mode, count_include_pad=False)


class _Reached(Exception):
    """Raised by the hook once the layer's output is in hand: nothing after the layer needs to run."""


def _geometric(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """The parameter or buffer of the model whose every path counts alike: weights positive and equal over each
    output's inputs, norms the identity, no biases."""
    if not tensor.is_floating_point():
        return tensor
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("bias", "running_mean"):
        return torch.zeros_like(tensor)
    if leaf == "running_var" or (leaf == "weight" and tensor.dim() < 2):
        return torch.ones_like(tensor)
    if leaf == "weight":
        return torch.full_like(tensor, 1.0 / math.prod(tensor.shape[1:]))
    return tensor


def map_shift(module: nn.Module, spec: LayerSpec, size: int, device: torch.device | str = "cpu", images: int = 2) -> tuple[float, float]:
    """The (row, column) shift in input pixels of the centres of layer ``spec``'s map cells from the even grid, for
    inputs of side ``size``: (0, 0) for token and vector outputs (patches tile the input evenly), where it is under
    ``MIN_SHIFT``, and where the receptive field does not move with the cell (its centre moves by other than the
    stride between two cells)."""
    target = resolve_module(module, spec.name)
    kept: dict[str, Any] = {}

    def catch(_: nn.Module, __: Any, output: Any) -> None:
        kept["output"] = output
        raise _Reached

    weights = {name: _geometric(name, tensor) for name, tensor in [*module.named_parameters(), *module.named_buffers()]}
    dtype = next((tensor.dtype for tensor in weights.values() if tensor.is_floating_point()), torch.float32)
    max_pools = tuple(kind for kind, _ in AVERAGE_FOR_MAX)
    handles = [pool.register_forward_hook(_averaged) for pool in module.modules() if isinstance(pool, max_pools)]
    handles.append(target.register_forward_hook(catch))  # after them: a max pool studied is read averaged too
    try:
        for side in (size * ENLARGE, size):  # the model's own size where it refuses a larger input
            pixels = torch.rand(images, 3, side, side, device=device, dtype=dtype, requires_grad=True)
            try:
                with torch.enable_grad():
                    functional_call(module, weights, (pixels,))
            except _Reached:
                break
            except Exception:  # noqa: BLE001 - a model fixed to its input size: measure at that size
                if side == size:
                    raise
    finally:
        for handle in handles:
            handle.remove()
    output = select_output(kept["output"], spec.pick, spec.name)
    if output.dim() != 4:
        return (0.0, 0.0)
    maps = output.permute(0, 3, 1, 2) if spec.channels_last else output
    height, width = maps.shape[-2:]
    if min(height, width) < 3:
        return (0.0, 0.0)
    cells = [(height // 2 - 1, width // 2 - 1), (height // 2 + 1, width // 2 + 1)]
    centres = []
    for row, column in cells:
        (gradient,) = torch.autograd.grad(maps[:, :, row, column].sum(), pixels, retain_graph=True)
        weight = gradient.float().abs().sum(dim=(0, 1))
        weight = (weight - FLOOR * weight.max()).clamp_min(0)
        ys = torch.arange(side, dtype=torch.float32, device=weight.device) + 0.5  # pixel centres
        centres.append((float((weight.sum(1) * ys).sum() / weight.sum()), float((weight.sum(0) * ys).sum() / weight.sum())))
    strides = (side / height, side / width)
    shift = []
    for axis in range(2):
        moved = (centres[1][axis] - centres[0][axis]) / 2
        if abs(moved / strides[axis] - 1) > 0.25:
            return (0.0, 0.0)
        offset = sum(centre[axis] - (cell[axis] + 0.5) * strides[axis] for centre, cell in zip(centres, cells)) / 2
        shift.append(round(offset, 2) if abs(offset) >= MIN_SHIFT else 0.0)
    return (shift[0], shift[1])


def measured_shift(module: nn.Module, spec: LayerSpec, size: int, device: torch.device | str = "cpu") -> tuple[tuple[float, float], str | None]:
    """``map_shift``, or the even grid and why where it cannot be measured (a model this probe cannot run): a
    placement never stops a build or an audit."""
    try:
        return map_shift(module, spec, size, device), None
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
