"""Where map cells sit in the input (``model.receptive``): known shifts of known architectures, and the maps,
boxes and IoUs that follow them."""

import pytest
import torch
from torch import nn

from semlens.interventions.effects import located
from semlens.model.receptive import map_shift, measured_shift, shift_boxes, shifted_maps
from semlens.model.units import LayerSpec
from semlens.pipeline.crops import crop_boxes


def images(count: int = 16, side: int | tuple[int, int] = 64) -> torch.Tensor:
    height, width = (side, side) if isinstance(side, int) else side
    return torch.rand(count, 3, height, width, generator=torch.Generator().manual_seed(0))


def evenly_weighted(model: nn.Module) -> nn.Module:
    """Every convolution's weights positive and equal, no biases, norms the identity: on positive inputs every
    path counts alike, so the cells' input gradients do not depend on the image and their centres are exact."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.fill_(1.0 / module.weight[0].numel())
                if module.bias is not None:
                    module.bias.zero_()
    return model.eval()


def strided(stages: int) -> nn.Module:
    """3x3 convolutions of stride 2 and padding 1 (ResNet's downsampling): each centres output i on input 2i."""
    layers, channels = [], 3
    for _ in range(stages):
        layers += [nn.Conv2d(channels, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU()]
        channels = 8
    return evenly_weighted(nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)))


@pytest.mark.parametrize("stages, shift", [(1, -0.5), (2, -1.5), (3, -3.5)])
def test_strided_convolutions_move_the_cells_half_a_pixel_per_halving(stages, shift):
    layer = str(3 * stages - 1)  # the last ReLU
    assert map_shift(strided(stages), LayerSpec(layer), images()) == pytest.approx((shift, shift), abs=0.05)


class OneSided(nn.Module):
    """TensorFlow's "same" padding at stride 2: one row and column of zeros after the image, none before, so a 3x3
    kernel centres output i on input 2i + 1, half a pixel after the even grid. ``leaning``: the kernel's weight
    only in its first two rows and columns, as training makes of such padding (Alsallakh et al. 2021), which
    centres it on the even grid again."""

    def __init__(self, leaning: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, bias=False)
        self.act = nn.ReLU()
        with torch.no_grad():
            self.conv.weight.zero_()
            kept = (slice(None), slice(None), slice(0, 2), slice(0, 2)) if leaning else (slice(None),) * 4
            self.conv.weight[kept] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(nn.functional.pad(x, (0, 1, 0, 1))))


def test_rows_and_columns_are_placed_apart_also_in_channels_last_maps():
    """A kernel 3 rows high with padding 1 and 2 columns wide without: half a pixel up, no move across."""
    rows_only = evenly_weighted(nn.Sequential(nn.Conv2d(3, 4, (3, 2), stride=2, padding=(1, 0)), nn.ReLU()))
    assert map_shift(rows_only, LayerSpec("1"), images(side=(48, 80))) == pytest.approx((-0.5, 0.0), abs=0.05)

    class ChannelsLast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = rows_only
            self.out = nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.body(x).permute(0, 2, 3, 1))

    spec = LayerSpec("out", channels_last=True)
    assert map_shift(ChannelsLast().eval(), spec, images(side=(48, 80))) == pytest.approx((-0.5, 0.0), abs=0.05)


def test_the_shift_is_that_of_the_trained_kernels_not_of_the_layer_arithmetic():
    assert map_shift(OneSided(leaning=False).eval(), LayerSpec("act"), images()) == pytest.approx((0.5, 0.5), abs=0.05)
    assert map_shift(OneSided(leaning=True).eval(), LayerSpec("act"), images()) == (0.0, 0.0)


def test_max_pools_patch_embeddings_and_tokens_keep_the_even_grid():
    pooled = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    assert map_shift(evenly_weighted(pooled), LayerSpec("5"), images(32)) == (0.0, 0.0)
    patches = evenly_weighted(nn.Sequential(nn.Conv2d(3, 8, 8, stride=8), nn.ReLU()))  # a ViT's patch embedding
    assert map_shift(patches, LayerSpec("1"), images()) == (0.0, 0.0)

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 8, stride=8)
            self.block = nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.block(self.embed(x).flatten(2).transpose(1, 2))

    assert map_shift(Tokens().eval(), LayerSpec("block"), images()) == (0.0, 0.0)
    assert map_shift(strided(2), LayerSpec("8"), images()) == (0.0, 0.0)  # a vector output


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
    plain = located(maps_with, torch.zeros_like(maps_with), region).iou
    placed = located(maps_with, torch.zeros_like(maps_with), region, shift=(-3.5, -3.5)).iou
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

    assert measured_shift(Broken(), LayerSpec("conv"), images(side=32)) == ((0.0, 0.0), "RuntimeError: this model runs only on its own hardware")
    assert measured_shift(strided(2), LayerSpec("5"), images())[1] is None
    dead = strided(2)
    with torch.no_grad():
        dead[3].bias.fill_(-1e6)  # the second stage never fires: no gradient to place its cells by
    assert measured_shift(dead, LayerSpec("5"), images()) == (
        (0.0, 0.0), "ValueError: layer '5': 0 units peak off the map's edge with an input gradient on these images, fewer than 8"
    )
    assert measured_shift(strided(3), LayerSpec("8"), images(side=16)) == ((0.0, 0.0), "ValueError: layer '8': its 2x2 map has no cell off its edge to place")


class PooledCells(nn.Module):
    """8 units on a 3 x 3 map of 8 x 8 px cells: each cell's mean of the image there (``local``) plus, with weight
    ``mixed``, the mean of the whole image (what a deep cell whose receptive field covers the image draws on)."""

    def __init__(self, mixed: float) -> None:
        super().__init__()
        self.cells = nn.AvgPool2d(8)
        self.units = nn.Conv2d(3, 8, 1, bias=False)
        self.mixed = mixed
        with torch.no_grad():
            self.units.weight.copy_(torch.rand(8, 3, 1, 1, generator=torch.Generator().manual_seed(1)) + 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.units(0.05 * self.cells(x) + self.mixed * x.mean(dim=(2, 3), keepdim=True))


def test_a_maps_locality_is_how_much_a_peak_cells_gradient_keeps_to_the_cell() -> None:
    from semlens.model.receptive import LOCAL_CONCENTRATION, map_placement

    pictures = images(64, 24)
    local = map_placement(PooledCells(0.0), LayerSpec("units"), pictures)
    assert local.locality == pytest.approx(9.0) and local.locates  # all of it in the cell: 9 times its ninth of the image
    # the image's mean on top: the centre cell's gradient is 0.05/64 + 1/576 a pixel inside it, 1/576 outside
    inside, outside = 64 * (0.05 / 64 + 1 / 576), 512 / 576
    mixed = map_placement(PooledCells(1.0), LayerSpec("units"), pictures)
    assert mixed.locality == pytest.approx(9 * inside / (inside + outside), abs=0.01) and mixed.locality < LOCAL_CONCENTRATION
    assert not mixed.locates
