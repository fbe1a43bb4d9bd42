"""Crop views derived from a heatmap: the share rule (smallest square holding a share of the positive
mass) and the quantile rule (cells above a unit's quantile over its k maps) against known answers and
brute-force searches; the masked view (the crop faded where the heatmap is low), its rows in the crop
table and its cutting in the loader workers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from semlens.pipeline.crops import boxes_by_quantile, boxes_by_share, boxes_from_maps, crop_boxes, masked_crop
from semlens.pipeline.embed import CropChunks, HeatSource, cut_crops, plan_crops


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


def test_quantile_boxes_keep_the_cells_above_the_units_quantile_over_all_its_maps() -> None:
    maps = torch.zeros(2, 2, 4, 4)
    maps[0, 0, 1:3, 1:3] = 4.0  # unit 0, example 0: a strong 2 x 2 blob (cells x, y 1..2) ...
    maps[0, 0, 3, 3] = 1.0  # ... and a weak cell
    maps[0, 1, 0, 0] = 2.0  # unit 0, example 1: one middling cell
    maps[1] = -1.0  # unit 1 never fires: whole images
    # unit 0's 32 values: 26 zeros, 1, 2, 4 x 4; the 0.85 quantile lies between 1 and 2 (1.35)
    boxes = boxes_by_quantile(maps, (32, 32), quantile=0.85)  # 8 px a cell
    assert boxes[0].tolist() == [[8, 8, 24, 24], [0, 0, 8, 8]]
    assert boxes[1].tolist() == [[0, 0, 32, 32]] * 2
    assert boxes_by_quantile(maps, (32, 32), quantile=0.5)[0, 0].tolist() == [8, 8, 32, 32]  # cut 0: every positive cell
    assert boxes_by_quantile(maps, (32, 32), quantile=0.95)[0].tolist() == [[0, 0, 32, 32]] * 2  # cut 4: no cell above it
    assert torch.equal(crop_boxes(maps, (32, 32), "quantile", quantile=0.85), boxes)


def _reference_square(x0: int, y0: int, x1: int, y1: int, size: int) -> list[int]:
    side = min(max(x1 - x0, y1 - y0), size)
    left = min(max((x0 + x1 - side) // 2, 0), size - side)
    top = min(max((y0 + y1 - side) // 2, 0), size - side)
    return [left, top, left + side, top + side]


def test_quantile_boxes_equal_a_cell_by_cell_search_per_unit() -> None:
    generator = torch.Generator().manual_seed(1)
    maps = torch.randn(9, 5, 6, 6, generator=generator) * (torch.rand(9, 5, 6, 6, generator=generator) < 0.3)
    maps[4] = 0.0  # a unit that never fired
    boxes = boxes_by_quantile(maps, (24, 24), quantile=0.9, chunk=2)  # 4 px a cell; units in chunks of 2
    assert torch.equal(boxes, boxes_by_quantile(maps, (24, 24), quantile=0.9))
    for unit in range(9):
        cut = max(float(np.quantile(maps[unit].numpy(), 0.9)), 0.0)
        for example in range(5):
            cells = [(y, x) for y in range(6) for x in range(6) if float(maps[unit, example, y, x]) > cut]
            if not cells:
                expected = [0, 0, 24, 24]
            else:
                ys, xs = [y for y, _ in cells], [x for _, x in cells]
                expected = _reference_square(4 * min(xs), 4 * min(ys), 4 * max(xs) + 4, 4 * max(ys) + 4, 24)
            assert boxes[unit, example].tolist() == expected, (unit, example)


def test_masked_crop_fades_to_the_crops_mean_colour_by_the_square_root_of_the_heat_over_its_peak() -> None:
    view = Image.new("RGB", (8, 8), (200, 100, 0))
    view.paste((0, 100, 200), (4, 0, 8, 8))  # right half: the crops below are half and half, mean (100, 100, 100)
    heat = torch.zeros(8, 8)  # the view's own size: the bilinear up-sampling changes nothing
    heat[1, 1] = 4.0  # the peak: kept as it is
    heat[5, 5] = 1.0  # a quarter of the peak: half the contrast to the mean
    heat[6, 6] = -2.0  # negative evidence: the mean, as no evidence
    whole = np.asarray(masked_crop(view, (0, 0, 8, 8), heat), dtype=np.int64)
    assert whole[1, 1].tolist() == [200, 100, 0]
    assert whole[5, 5].tolist() == [50, 100, 150]  # 100 + (0 - 100) / 2, 100, 100 + (200 - 100) / 2
    assert whole[0, 0].tolist() == whole[6, 6].tolist() == [100, 100, 100]
    middle = np.asarray(masked_crop(view, (2, 2, 6, 6), heat), dtype=np.int64)
    assert middle.shape == (4, 4, 3) and middle[3, 3].tolist() == [50, 100, 150]  # the crop keeps the view's mask
    unfired = masked_crop(view, (2, 2, 6, 6), torch.full((8, 8), -1.0))
    assert unfired.tobytes() == view.crop((2, 2, 6, 6)).tobytes()  # no positive evidence: nothing faded


def test_masked_slots_are_rows_of_their_own_and_box_slots_still_share() -> None:
    whole = [0, 0, 8, 8]
    samples = {"a": torch.tensor([[3, 3]]), "b": torch.tensor([[3, 5]])}
    boxes = {name: torch.tensor([[whole, whole]]) for name in samples}
    sources = {"a": HeatSource("a.crops", "heat"), "b": HeatSource("b.topk", "maps")}
    plain = plan_crops(samples, boxes)
    assert plain.rows.shape[0] == 2 and plain.masks is None  # (3, whole) shared by three slots
    masked = plan_crops(samples, boxes, {"a": (sources["a"], torch.tensor([[True, False]])), "b": (sources["b"], torch.tensor([[True, True]]))})
    assert masked.sources == (sources["a"], sources["b"])
    keys = {(name, slot): masked.masks[masked.index[name][0, slot]].tolist() for name in samples for slot in range(2)}
    assert keys == {("a", 0): [0, 0, 0], ("a", 1): [-1, -1, -1], ("b", 0): [1, 0, 0], ("b", 1): [1, 0, 1]}
    assert masked.rows.shape[0] == 4 and masked.samples.tolist() == [3, 3, 3, 5]  # sorted by sample still
    assert masked.rows[:, 1:].tolist() == [whole] * 4


def test_crop_chunks_fade_masked_rows_by_their_stored_heatmaps(tmp_path) -> None:
    views = {sample: Image.new("RGB", (8, 8), (40 * sample, 250 - 40 * sample, 90)) for sample in (1, 2)}

    class Views:
        def load(self, sample):
            return views[sample]

    heat = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)).half()  # [U, k, h, w], up-sampled to 8 px
    save_file({"heat": heat}, str(tmp_path / "layer.crops.safetensors"))
    source = HeatSource("layer.crops.safetensors", "heat")
    samples = torch.tensor([[1, 2, 2], [2, 1, 1]])
    boxes = torch.tensor([[[0, 0, 8, 8], [2, 2, 6, 6], [0, 0, 4, 4]], [[0, 0, 8, 8], [0, 0, 8, 8], [4, 4, 8, 8]]])
    faded = torch.tensor([[True, True, False], [True, False, True]])
    table = plan_crops({"layer": samples}, {"layer": boxes}, {"layer": (source, faded)})
    chunks = CropChunks(table, [(0, table.rows.shape[0])], Views(), lambda image: image, list, 64, str(tmp_path))
    crops = chunks[0][0]
    for unit, slot in itertools.product(range(2), range(3)):
        crop = crops[int(table.index["layer"][unit, slot])]
        view, box = views[int(samples[unit, slot])], tuple(boxes[unit, slot].tolist())
        expected = masked_crop(view, box, heat[unit, slot]) if faded[unit, slot] else view.crop(box)
        assert crop.tobytes() == expected.tobytes(), (unit, slot)
    assert list(cut_crops(table.rows, lambda sample: views[sample]))[0].tobytes() == views[1].tobytes()  # no heat: box views


def test_joined_rules_give_each_rules_boxes_in_turn() -> None:
    maps = torch.zeros(2, 3, 8, 8)
    maps[:, :, 1, 1], maps[:, :, 6, 6] = 1.0, 0.05  # a strong and a faint spot: the peak box spans both
    joined = crop_boxes(maps, (32, 32), "peak+share", share=0.8)
    assert joined.shape == (2, 6, 4)
    assert torch.equal(joined[:, :3], crop_boxes(maps, (32, 32), "peak"))
    assert torch.equal(joined[:, 3:], crop_boxes(maps, (32, 32), "share", share=0.8))
    assert not torch.equal(joined[:, :3], joined[:, 3:])


def test_the_active_rule_cuts_the_share_box_of_the_activation_map() -> None:
    """A relevance heatmap spread over two spots, the unit's own activation on one: the active box is the share
    box of the activation map, wherever the heatmap lies; without activation maps it is the heatmap's share box."""
    heat, fired = torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 4, 4)
    heat[:, :, 1, 1], heat[:, :, 6, 6] = 1.0, 1.0
    fired[:, :, 3, 3] = 2.0  # the bottom-right quarter of the image
    active = crop_boxes(heat, (32, 32), "active", share=0.8, activations=fired)
    assert torch.equal(active, crop_boxes(fired, (32, 32), "share", share=0.8))
    assert active[0, 0].tolist() == [24, 24, 32, 32]
    assert torch.equal(crop_boxes(heat, (32, 32), "active", share=0.8), crop_boxes(heat, (32, 32), "share", share=0.8))
    joined = crop_boxes(heat, (32, 32), "peak+active", share=0.8, activations=fired)
    assert torch.equal(joined[:, :3], crop_boxes(heat, (32, 32), "peak")) and torch.equal(joined[:, 3:], active)


@pytest.mark.parametrize("rule", ["peak+peak", "peak+dissect", "peak+"])
def test_bad_joined_rules_are_refused_with_the_valid_ones(rule) -> None:
    from semlens import BuildConfig
    from semlens._util.errors import SemlensError

    with pytest.raises(SemlensError, match="not one of peak, share, quantile, active, nor distinct ones joined by '\\+'"):
        BuildConfig(model="m", layers=["l"], data="d", crop_rule=rule)


def test_masked_view_takes_one_rule() -> None:
    from semlens import BuildConfig
    from semlens._util.errors import SemlensError

    with pytest.raises(SemlensError, match="crop_view=masked fades one box per example; give one crop rule"):
        BuildConfig(model="m", layers=["l"], data="d", crop_rule="peak+share", crop_view="masked")


@pytest.mark.parametrize("field,value", [("crop_view", "blurred"), ("crop_rule", "netdissect"), ("crop_quantile", 1.0)])
def test_bad_crop_settings_are_refused_with_the_valid_ones(field, value) -> None:
    from semlens import BuildConfig
    from semlens._util.errors import SemlensError

    with pytest.raises(SemlensError, match=f"{field}=.*(box, masked|peak, share, quantile|between 0 and 1)"):
        BuildConfig(model="m", layers=["l"], data="d", **{field: value})
