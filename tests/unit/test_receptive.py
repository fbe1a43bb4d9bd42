"""Where map cells sit in the input (``model.receptive``): known shifts of known architectures, and the maps,
boxes and IoUs that follow them."""

import pytest
import torch
from torch import nn

from semlens.analysis.interventions import located_ious
from semlens.build.crops import crop_boxes
from semlens.model.receptive import map_shift, measured_shift, shift_boxes, shifted_maps
from semlens.model.units import LayerSpec


def strided(stages: int) -> nn.Module:
    """3x3 convolutions of stride 2 and padding 1 (ResNet's downsampling): each centres output i on input 2i."""
    layers, channels = [], 3
    for _ in range(stages):
        layers += [nn.Conv2d(channels, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU()]
        channels = 8
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)).eval()


@pytest.mark.parametrize("stages, shift", [(1, -0.5), (2, -1.5), (3, -3.5)])
def test_strided_convolutions_move_the_cells_half_a_pixel_per_halving(stages, shift):
    layer = str(3 * stages - 1)  # the last ReLU
    assert map_shift(strided(stages), LayerSpec(layer), 64) == pytest.approx((shift, shift), abs=0.05)


def test_max_pools_patch_embeddings_and_tokens_keep_the_even_grid():
    pooled = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)).eval()
    assert map_shift(pooled, LayerSpec("5"), 64) == (0.0, 0.0)
    patches = nn.Sequential(nn.Conv2d(3, 8, 8, stride=8), nn.ReLU()).eval()  # a ViT's patch embedding
    assert map_shift(patches, LayerSpec("1"), 64) == (0.0, 0.0)

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 8, stride=8)
            self.block = nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.block(self.embed(x).flatten(2).transpose(1, 2))

    assert map_shift(Tokens().eval(), LayerSpec("block"), 64) == (0.0, 0.0)
    assert map_shift(strided(2), LayerSpec("8"), 64) == (0.0, 0.0)  # a vector output


def test_a_model_fixed_to_its_input_size_is_measured_at_that_size():
    class Fixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = strided(2)[:6]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[-1] != 64:
                raise ValueError("64 px only")
            return self.body(x)

    assert map_shift(Fixed().eval(), LayerSpec("body.5"), 64) == pytest.approx((-1.5, -1.5), abs=0.1)


def test_shifted_maps_place_a_cell_where_it_sits():
    cell = torch.zeros(1, 1, 8, 8)
    cell[0, 0, 4, 2] = 1.0
    even = shifted_maps(cell, (64, 64))
    assert torch.equal(even, torch.nn.functional.interpolate(cell, size=(64, 64), mode="bilinear", align_corners=False))
    moved = shifted_maps(cell, (64, 64), (-3.5, -3.5))
    peak = lambda up: divmod(int(up.flatten().argmax()), 64)  # noqa: E731
    assert peak(even) == (35, 19)  # cell (4, 2) centres at (36, 20), between pixels 35 and 36: the first
    assert peak(moved) == (32, 16)  # 3.5 pixels up and left: where a strided net's cell (4, 2) centres
    assert shifted_maps(cell, (32, 32), (-3.5, -3.5), scale=0.5).flatten().argmax() == 16 * 32 + 8


def test_boxes_move_with_the_shift_and_stay_inside():
    boxes = torch.tensor([[10, 10, 30, 30], [0, 0, 16, 16], [50, 40, 64, 54]])
    assert shift_boxes(boxes, (-3.5, 2.2), (64, 64)).tolist() == [[12, 6, 32, 26], [2, 0, 18, 16], [50, 36, 64, 50]]
    assert torch.equal(shift_boxes(boxes, (0.0, 0.0), (64, 64)), boxes)
    maps = torch.zeros(1, 1, 8, 8)
    maps[0, 0, 4, 4] = 1.0  # an activation map firing at one cell
    plain = crop_boxes(maps, (64, 64), "active", activations=maps)
    moved = crop_boxes(maps, (64, 64), "active", activations=maps, activation_shift=(-3.5, -3.5))
    assert (moved - plain).tolist() == [[[-4, -4, -4, -4]]]
    assert torch.equal(crop_boxes(maps, (64, 64), "peak", activations=maps, activation_shift=(-3.5, -3.5)), crop_boxes(maps, (64, 64), "peak"))


def test_the_location_iou_reads_maps_where_their_cells_sit():
    """A unit of a strided net firing at cell (2, 2) of an 8 x 8 map sees input pixels around (16, 16), not
    (20, 20): the pasted region there is found only with the shift."""
    maps_with = torch.zeros(4, 1, 8, 8)
    maps_with[:, 0, 2, 2] = 1.0
    region = torch.zeros(64, 64, dtype=torch.bool)
    region[12:20, 12:20] = True
    plain = located_ious(maps_with, torch.zeros_like(maps_with), region)
    placed = located_ious(maps_with, torch.zeros_like(maps_with), region, shift=(-3.5, -3.5))
    assert placed.item() > plain.item() + 0.2


def test_overlays_draw_a_shifted_map_where_its_cells_sit():
    import numpy as np
    from PIL import Image

    from semlens.report.figures import heat_overlay

    heat = np.zeros((8, 8), dtype=np.float32)
    heat[4, 2] = 1.0
    view = Image.new("RGB", (64, 64), (0, 0, 0))
    reddest = lambda image: divmod(int(np.asarray(image)[..., 0].argmax()), 64)  # noqa: E731
    assert reddest(heat_overlay(view, heat)) == (35, 19)
    assert reddest(heat_overlay(view, heat, shift=(-3.5, -3.5))) == (32, 16)


def test_a_model_the_probe_cannot_run_keeps_the_even_grid_and_says_why():
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("this model runs only on its own hardware")

    assert measured_shift(Broken(), LayerSpec("conv"), 32) == ((0.0, 0.0), "RuntimeError: this model runs only on its own hardware")
    assert measured_shift(strided(2), LayerSpec("5"), 64)[1] is None
