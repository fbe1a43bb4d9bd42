"""Where the map cells of models sit, and which place puts them where their evidence is.

Part 1, the layers' arithmetic: torchvision and timm architectures with every weight positive and equal, norms the
identity and max pools averaging (``arithmetic_copy``), on small positive inputs (no activation saturates), read
by ``arithmetic_shift``: each value is what the layers' strides and paddings alone give.

Part 2, trained models (``--trained``): the bundled ImageNet EfficientNet-Lite0 (TensorFlow "same" padding, on
crops of the bundled photos) and the world ResNet (PyTorch padding, on the default world's probe images). Per
layer: the shift by the arithmetic, the shift semlens measures (on the model as trained, its first 64 images:
``model.receptive.map_shift``), and where each unit's evidence is on the other images, which the measurement
never saw: for 48 evenly spaced units, each unit's top-5 images, the input gradient of the unit's peak cell,
whose centroid less the cell's centre on the even grid is that example's offset. The printed distances say how
far each place is from that centroid (median over the examples whose peak cell is not on the map's edge, where
the image border pulls the centroid inward).

    PYTHONPATH=src:tests/support python benchmarks/receptive.py [--trained [--images 192] [--device cuda]]   # dev extra: torchvision, timm
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from importlib import resources
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from semlens.model.receptive import SHIFT_IMAGES, gradient_centroids, layer_maps, map_shift
from semlens.model.units import LayerSpec


def arithmetic_copy(model: nn.Module) -> nn.Module:
    """A copy whose every path counts alike: weights positive and equal over each output's inputs, no biases,
    norms the identity, max pools averaging (a max pool's gradient would pick one corner of its window)."""
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if not tensor.is_floating_point():
                continue
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("bias", "running_mean"):
                tensor.zero_()
            elif leaf == "running_var" or (leaf == "weight" and tensor.dim() < 2):
                tensor.fill_(1.0)
            elif leaf == "weight":
                tensor.fill_(1.0 / tensor[0].numel())
    for parent in list(model.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(parent, child_name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode, count_include_pad=False))
    return model


def arithmetic_shift(model: nn.Module, layer: str, side: int) -> tuple[float, float]:
    """The shift the layers' arithmetic gives (module docstring): on ``arithmetic_copy`` and a small positive input
    of three times the side (a receptive field of equal weights reaches far), the input-gradient centroid of the
    two cells beside the map's centre, less their centres on the even grid; a model fixed to its input size is
    read at that size."""
    copied = arithmetic_copy(model)
    for size in (3 * side, side):
        pixels = (torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 1e-4).requires_grad_(True)
        try:
            maps = layer_maps(copied, LayerSpec(layer), pixels)
            break
        except Exception:  # noqa: BLE001 - refused at the larger size
            if size == side:
                raise
    if maps is None:
        return (0.0, 0.0)
    height, width = maps.shape[-2:]
    strides = (size / height, size / width)
    offsets = []
    for row, column in ((height // 2 - 1, width // 2 - 1), (height // 2, width // 2)):  # alike about the centre
        (gradient,) = torch.autograd.grad(maps[0, :, row, column].sum(), pixels, retain_graph=True)
        centres, responds = gradient_centroids(gradient)
        if not responds[0]:
            raise ValueError(f"{layer}: no gradient (layer norms over channels made equal output 0)")
        offsets.append([float(centres[0, axis]) - (cell + 0.5) * strides[axis] for axis, cell in enumerate((row, column))])
    return tuple(round((first + second) / 2, 2) + 0.0 for first, second in zip(*offsets))  # + 0.0: no "-0.0"


ARCHITECTURES = [
    ("resnet50", "torchvision", ["layer1", "layer2", "layer3", "layer4"]),
    ("mobilenet_v3_small", "torchvision", ["features.3", "features.8", "features.12"]),
    ("efficientnet_b0", "torchvision", ["features.3", "features.5", "features.8"]),
    ("convnext_tiny", "torchvision", ["features.1", "features.3", "features.7"]),  # layer norms: see architectures()
    ("vgg11", "torchvision", ["features.10", "features.20"]),
    ("densenet121", "torchvision", ["features.denseblock2", "features.denseblock4"]),
    ("tf_efficientnet_b0", "timm", ["blocks.2", "blocks.4", "blocks.6"]),
    ("vit_tiny_patch16_224", "timm", ["blocks.5"]),
]


def architectures() -> None:
    import timm
    import torchvision

    print("Part 1: the layers' arithmetic at 224 px (rows, columns)")
    for name, library, layers in ARCHITECTURES:
        model = getattr(torchvision.models, name)() if library == "torchvision" else timm.create_model(name, pretrained=False)
        for layer in layers:
            try:
                shift = arithmetic_shift(model.eval(), layer, 224)
            except ValueError as error:
                shift = f"not measurable with equal weights ({error})"
            print(f"  {library:11s} {name:22s} {layer:22s} {shift}", flush=True)


def evidence_offsets(model: nn.Module, images: torch.Tensor, layer: str, units: int = 48, k: int = 5) -> tuple[torch.Tensor, tuple[int, int]]:
    """Per example (``units`` evenly spaced units, each its top ``k`` images by peak activation) whose peak cell is
    not on the map's edge: the input-gradient centroid of that cell less the cell's even-grid centre ``[E, 2]``."""
    with torch.no_grad():
        maps = torch.cat([layer_maps(model, LayerSpec(layer), chunk) for chunk in images.split(32)])
    count, channels, height, width = maps.shape
    side = images.shape[-2:]
    strides = (side[0] / height, side[1] / width)
    chosen = torch.linspace(0, channels - 1, min(units, channels)).round().long()
    offsets = []
    for unit in chosen.tolist():
        top = maps[:, unit].amax(dim=(1, 2)).topk(k).indices
        peaks = maps[top, unit].flatten(1).argmax(dim=1)
        rows, columns = peaks // width, peaks % width
        pixels = images[top].clone().requires_grad_(True)
        response = layer_maps(model, LayerSpec(layer), pixels)[torch.arange(k, device=images.device), unit, rows, columns].sum()
        (gradient,) = torch.autograd.grad(response, pixels)
        centres, _ = gradient_centroids(gradient)
        inside = (rows > 0) & (rows < height - 1) & (columns > 0) & (columns < width - 1)
        offset = centres - torch.stack([(rows + 0.5) * strides[0], (columns + 0.5) * strides[1]], dim=1)
        offsets.append(offset[inside])
    return torch.cat(offsets), (height, width)


def trained_models(count: int) -> list[tuple[str, nn.Module, torch.Tensor, list[str]]]:
    from semlens.data.photos import write_photo_folder
    from semlens.model.zoo import efficientnet_lite
    from semlens.world.classifier import world_model
    from semlens.world.render import WorldConfig, render

    lite, preprocessing = efficientnet_lite("efficientnet-lite0")
    with tempfile.TemporaryDirectory() as folder:
        write_photo_folder(folder, per_photo=-(-count // 16))
        photos = torch.stack([preprocessing(Image.open(path)) for path in sorted(Path(folder).rglob("*.jpg"))[:count]])
    config = WorldConfig.load(str(resources.files("semlens.assets") / "world.toml"))
    resnet, world_preprocessing = world_model(config, "resnet")
    scenes = torch.stack([world_preprocessing(render(config, index).image) for index in range(count)])
    return [
        ("EfficientNet-Lite0 (ImageNet)", lite, photos, ["_blocks.2", "_blocks.4", "_blocks.10", "_blocks.15"]),
        ("world ResNet", resnet.eval(), scenes, ["stages.0", "stages.1", "stages.2"]),
    ]


def trained(count: int, device: torch.device) -> None:
    print(
        f"Part 2: trained models on {device}, {count} images each ({SHIFT_IMAGES} to measure, the rest to judge); "
        "distances in pixels from each example's evidence centroid"
    )
    for name, model, images, layers in trained_models(count):
        arithmetics = {layer: arithmetic_shift(model, layer, images.shape[-1]) for layer in layers}  # on the CPU: a copy
        model, images = model.to(device), images.to(device)
        for layer, arithmetic in arithmetics.items():
            started = time.perf_counter()
            measured = map_shift(model, LayerSpec(layer), images[:SHIFT_IMAGES])
            seconds = time.perf_counter() - started
            offsets, grid = evidence_offsets(model, images[SHIFT_IMAGES:], layer)
            places = {"even grid": (0.0, 0.0), "arithmetic": arithmetic, "measured": measured}
            offsets = offsets.cpu()
            distances = {place: statistics.median(torch.linalg.vector_norm(offsets - torch.tensor(shift), dim=1).tolist()) for place, shift in places.items()}
            mean = [round(value, 2) for value in offsets.mean(dim=0).tolist()]
            print(
                f"  {name:30s} {layer:11s} {grid[0]:2d}x{grid[1]:<2d} arithmetic {arithmetic}  measured {measured} ({seconds:.1f} s)  "
                f"evidence offset mean {tuple(mean)} over {len(offsets)} examples  median distance: "
                + ", ".join(f"{place} {value:.2f}" for place, value in distances.items()),
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trained", action="store_true", help="part 2 instead of part 1: trained models")
    parser.add_argument("--images", type=int, default=192, help="images per trained model (part 2)")
    parser.add_argument("--device", default="cpu", help="where part 2 runs the trained models (cpu, cuda)")
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    if args.trained:
        trained(args.images, torch.device(args.device))
    else:
        architectures()


if __name__ == "__main__":
    main()
