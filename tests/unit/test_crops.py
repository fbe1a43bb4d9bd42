"""Crop boxes from activation maps: up-sample, keep what is above 1 % of the peak, square box around it."""

import pytest
import torch
import torch.nn.functional as F

from semlens.build.crops import boxes_from_maps, full_boxes


def reference_box(grid: torch.Tensor, height: int, width: int, threshold: float = 0.01) -> list[int]:
    """One map's box, pixel by pixel: bilinear up-sampling, threshold, tight box, grown to a square."""
    up = F.interpolate(grid[None, None].float(), size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    peak = up.max().item()
    if peak <= 0:
        x0, y0, x1, y1 = 0, 0, width, height
    else:
        ys, xs = torch.nonzero(up > threshold * peak, as_tuple=True)
        x0, y0, x1, y1 = xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1
    side = min(max(x1 - x0, y1 - y0), height, width)

    def place(low: int, high: int, limit: int) -> int:
        start = (low + high - side) // 2  # same centre, rounded down
        return min(max(start, 0), limit - side)  # shifted inside the image

    left, top = place(x0, x1, width), place(y0, y1, height)
    return [left, top, left + side, top + side]


def above_threshold(maps: torch.Tensor, height: int, width: int, threshold: float = 0.01) -> torch.Tensor:
    up = F.interpolate(maps[:, None].float(), size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    return up > threshold * up.amax(dim=(1, 2), keepdim=True)


def hot_cell(row: int, col: int, shape: tuple[int, int] = (4, 4)) -> torch.Tensor:
    grid = torch.zeros(shape)
    grid[row, col] = 1.0
    return grid


def test_hot_cell_known_answers():
    # a 4x4 map on 32x32 pixels: cell (r, c) is centred between pixels 8c + 3 and 8c + 4, and its bilinear weight
    # stays above 1 % of the peak for 8 pixels either side: pixels 8c - 4 .. 8c + 11. At the image border the
    # up-sampling clamps, so a border cell reaches only 12 pixels in: cell (0, 2) gives a 16 x 12 box, grown to a
    # square from the top edge; corner cell (3, 3) gives a 12 x 12 box that is square already.
    maps = torch.stack([hot_cell(1, 2), hot_cell(0, 2), hot_cell(3, 3)])
    assert boxes_from_maps(maps, (32, 32)).tolist() == [[12, 4, 28, 20], [12, 0, 28, 16], [20, 20, 32, 32]]


@pytest.mark.parametrize("row,col", [(r, c) for r in range(4) for c in range(4)])
def test_hot_cell_box_matches_reference_and_covers_the_cell(row, col):
    grid = hot_cell(row, col)
    (box,) = boxes_from_maps(grid[None], (32, 32)).tolist()
    assert box == reference_box(grid, 32, 32)
    x0, y0, x1, y1 = box
    assert x1 - x0 == y1 - y0
    assert x0 <= 8 * col and 8 * col + 8 <= x1 and y0 <= 8 * row and 8 * row + 8 <= y1


def test_higher_threshold_gives_a_tighter_box():
    grid = hot_cell(1, 1)
    loose, tight = boxes_from_maps(grid[None], (32, 32)).tolist()[0], boxes_from_maps(grid[None], (32, 32), 0.5)[0]
    assert tight.tolist() == reference_box(grid, 32, 32, 0.5)
    assert tight[2] - tight[0] < loose[2] - loose[0]


@pytest.mark.parametrize("fill", [0.0, -1.0])
def test_map_without_positive_value_keeps_the_whole_image(fill):
    maps = torch.full((2, 4, 4), fill)
    maps[1, 2, 2] = -0.5
    assert boxes_from_maps(maps, (32, 32)).tolist() == [[0, 0, 32, 32]] * 2


@pytest.mark.parametrize(
    "map_shape,size", [((4, 4), (32, 32)), ((7, 7), (28, 28)), ((3, 5), (24, 40)), ((6, 4), (48, 20))]
)
def test_random_maps_give_square_boxes_inside_the_image_around_every_kept_pixel(map_shape, size):
    torch.manual_seed(sum(map_shape) + sum(size))
    height, width = size
    dense = torch.randn(60, *map_shape)
    sparse = dense * (torch.rand(60, *map_shape) < 0.2)  # mostly small blobs, some maps with nothing positive
    maps = torch.cat([dense, sparse])
    boxes = boxes_from_maps(maps, size, chunk=7)
    assert boxes.dtype == torch.int64 and boxes.shape == (120, 4)
    assert torch.equal(boxes, boxes_from_maps(maps, size))  # chunking changes nothing
    kept = above_threshold(maps, height, width)
    for grid, box, mask in zip(maps, boxes.tolist(), kept):
        assert box == reference_box(grid, height, width)
        x0, y0, x1, y1 = box
        side = x1 - x0
        assert side == y1 - y0 and 0 < side <= min(height, width)
        assert 0 <= x0 and x1 <= width and 0 <= y0 and y1 <= height
        if grid.max() <= 0:
            continue
        ys, xs = torch.nonzero(mask, as_tuple=True)
        tight = xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1
        if max(tight[2] - tight[0], tight[3] - tight[1]) <= min(height, width):
            assert x0 <= tight[0] and y0 <= tight[1] and tight[2] <= x1 and tight[3] <= y1
        else:  # too long for a square inside the image: the largest square, centred on the tight box
            assert side == min(height, width)
            long_axis = 0 if tight[2] - tight[0] > min(height, width) else 1
            low, high = box[long_axis], box[long_axis + 2]
            assert tight[long_axis] <= low and high <= tight[long_axis + 2]
            assert abs((low + high) - (tight[long_axis] + tight[long_axis + 2])) <= 1


def test_square_images_always_contain_every_kept_pixel():
    torch.manual_seed(7)
    maps = torch.randn(200, 5, 5) * (torch.rand(200, 5, 5) < 0.3)
    boxes = boxes_from_maps(maps, (40, 40))
    kept = above_threshold(maps, 40, 40)
    for box, mask in zip(boxes.tolist(), kept):
        x0, y0, x1, y1 = box
        inside = torch.zeros_like(mask)
        inside[y0:y1, x0:x1] = True
        assert not (mask & ~inside).any()


def test_full_boxes_cover_the_image_width_then_height():
    boxes = full_boxes(3, (24, 40))
    assert boxes.dtype == torch.int64
    assert boxes.tolist() == [[0, 0, 40, 24]] * 3
    assert full_boxes(0, (8, 8)).shape == (0, 4)


def test_relevance_crops_of_a_build_equal_one_pair_per_call(tmp_path, colour_folder, tiny_clip_dir) -> None:
    """The crop stage batches pairs (ordered by sample, each sample decoded once per batch, 7 pairs a
    pass so batches cut through a sample's pairs); each heatmap and box must be what one pair per call gives,
    for plain units and for the negative copies of signed ones."""
    from tiny_models import tiny_cnn

    from semlens import BuildConfig, build_lens, load_data
    from semlens.build.crops import pool_heatmaps
    from semlens.relevance.lrp import RelevanceModel, crp_heatmaps

    layers = {"features.3": None, "head": "head:signed=true"}
    config = BuildConfig(
        model="py:tiny_models:tiny_cnn", layers=[spec or name for name, spec in layers.items()], data=f"folder:{colour_folder}",
        foundation=f"hf:{tiny_clip_dir}", k=4, crop="relevance", relevance_batch_size=7, workers=0,
        class_relevance=False,
    )  # fmt: skip
    lens = build_lens(config, tmp_path / "l", progress=False)
    model, data = tiny_cnn(), load_data(f"folder:{colour_folder}")
    relevance = RelevanceModel(model.module, torch.rand(2, 3, 32, 32))
    with relevance.attributing() as modified:
        for layer in layers:
            assert lens.manifest["layers"][layer]["crop"]["mode"] == "relevance"
            ids, heat = lens.samples(layer), lens.heatmaps(layer)
            boxes = lens.boxes(layer)
            base = lens.manifest["layers"][layer]["base_units"]
            checked = 0
            for unit, slot in torch.nonzero((ids >= 0) & ~lens.inactive(layer)[:, None]).tolist():
                image = model.preprocessing(data.load(int(ids[unit, slot])))[None]
                sign = torch.tensor([-1.0 if unit >= base else 1.0])
                single = crp_heatmaps(modified, image, layer, torch.tensor([unit % base]), sign)
                assert torch.allclose(heat[unit, slot].float(), pool_heatmaps(single, 32)[0].float(), rtol=1e-3, atol=1e-6)
                assert boxes[unit, slot].tolist() == boxes_from_maps(heat[unit, slot][None].float(), (32, 32))[0].tolist()  # cut from the stored map
                checked += 1
            assert checked >= 12 and (heat.float().abs().amax(dim=(2, 3)) > 0).any()


def test_relevance_batch_is_sized_by_input_pixels_unless_given() -> None:
    from semlens import BuildConfig
    from semlens._util.errors import SemlensError

    auto = BuildConfig(model="m", layers=["l"], data="d")
    # 16 * 224**2 pixels a pass: 16 pairs at 224 px, 49 at 128, 196 at 64, capped at 256, at least 1
    assert [auto.relevance_batch(side) for side in (224, 128, 64, 32, 1000)] == [16, 49, 196, 256, 1]
    assert BuildConfig(model="m", layers=["l"], data="d", relevance_batch_size=5).relevance_batch(64) == 5
    with pytest.raises(SemlensError, match="relevance_batch_size=0 must be a positive integer"):
        BuildConfig(model="m", layers=["l"], data="d", relevance_batch_size=0)
