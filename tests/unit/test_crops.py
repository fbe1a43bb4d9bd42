"""Crop boxes from activation maps: up-sample, keep what is above 1 % of the peak, square box around it."""

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semlens._util.errors import SemlensError
from semlens.pipeline.crops import boxes_from_maps, full_boxes, snap_boxes


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


@pytest.mark.parametrize("size", [(128, 128), (100, 100), (64, 64), (48, 80)])
def test_snapped_boxes_are_squares_on_the_grid_inside_the_image_that_cover_each_box(size):
    height, width = size
    torch.manual_seed(height + width)
    maps = torch.randn(300, 6, 6) * (torch.rand(300, 6, 6) < 0.3)
    boxes = boxes_from_maps(maps, size)
    snapped = snap_boxes(boxes, size, 16)
    step = min(size) // 16
    x0, y0, x1, y1 = snapped.unbind(1)
    assert torch.equal(x1 - x0, y1 - y0) and (x1 - x0 > 0).all()
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= width).all() and (y1 <= height).all()
    assert (x0 <= boxes[:, 0]).all() and (y0 <= boxes[:, 1]).all() and (x1 >= boxes[:, 2]).all() and (y1 >= boxes[:, 3]).all()
    inner = (x1 < width - step) & (y1 < height - step)  # away from a partial last cell, every edge on a cell line
    assert (snapped[inner] % step == 0).all()
    assert len(torch.unique(snapped, dim=0)) < len(torch.unique(boxes, dim=0))


def test_boxes_within_a_cell_of_each_other_become_one_and_no_grid_keeps_them():
    boxes = torch.tensor([[3, 5, 60, 62], [1, 2, 61, 63], [0, 4, 58, 62], [64, 64, 128, 128]])
    snapped = snap_boxes(boxes.reshape(2, 2, 4), (128, 128), 16)  # any leading shape
    assert snapped.shape == (2, 2, 4)
    assert snapped.reshape(-1, 4).tolist() == [[0, 0, 64, 64]] * 3 + [[64, 64, 128, 128]]
    assert torch.equal(snap_boxes(boxes, (128, 128), 0), boxes)
    assert torch.equal(snap_boxes(boxes, (20, 20), 16), boxes)  # cells under 2 pixels: to the pixel


def test_a_negative_crop_grid_is_refused_with_what_is_valid():
    from semlens import BuildConfig

    with pytest.raises(SemlensError, match=re.escape("crop_grid=-1 must be 0 (boxes to the pixel) or a number of cells a side")):
        BuildConfig(model="m", layers=["a"], data="d", crop_grid=-1)


def test_relevance_crops_of_a_build_equal_one_pair_per_call(tmp_path, colour_folder, tiny_clip_dir) -> None:
    """The crop stage batches pairs (ordered by sample, each sample decoded once per batch, 7 pairs a
    pass so batches cut through a sample's pairs); each heatmap and box must be what one pair per call gives,
    for plain units and for the negative copies of signed ones."""
    from tiny_models import tiny_cnn

    from semlens import BuildConfig, build_lens, load_data
    from semlens.pipeline.crops import pool_heatmaps
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
            ids, heat = lens.arrays.samples(layer), lens.arrays.heatmaps(layer)
            boxes = lens.arrays.boxes(layer)
            base = lens.manifest["layers"][layer]["base_units"]
            checked = 0
            for unit, slot in torch.nonzero((ids >= 0) & ~lens.arrays.inactive(layer)[:, None]).tolist():
                image = model.preprocessing(data.load(int(ids[unit, slot])))[None]
                sign = torch.tensor([-1.0 if unit >= base else 1.0])
                single = crp_heatmaps(modified, image, layer, torch.tensor([unit % base]), sign)
                assert torch.allclose(heat[unit, slot].float(), pool_heatmaps(single, 32)[0].float(), rtol=1e-3, atol=1e-6)
                assert boxes[unit, slot].tolist() == snap_boxes(boxes_from_maps(heat[unit, slot][None].float(), (32, 32)), (32, 32))[0].tolist()  # cut from the stored map
                checked += 1
            assert checked >= 12 and (heat.float().abs().amax(dim=(2, 3)) > 0).any()


def gpu_pixels(gib: float, monkeypatch) -> int:
    """``relevance_pixels`` of a CUDA device with ``gib`` GiB of memory (none need be present)."""
    from types import SimpleNamespace

    from semlens._util.devices import relevance_pixels

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=int(gib * 2**30)))
    return relevance_pixels(torch.device("cuda"))


def test_relevance_batch_is_sized_by_input_pixels_unless_given(monkeypatch) -> None:
    from semlens import BuildConfig
    from semlens._util.devices import relevance_pixels
    from semlens._util.errors import SemlensError

    auto = BuildConfig(model="m", layers=["l"], data="d")
    cpu = relevance_pixels(torch.device("cpu"))
    # on a CPU 16 * 224**2 pixels a pass: 16 pairs at 224 px, 49 at 128, 196 at 64, capped at 256, at least 1
    assert [auto.relevance_batch(side, cpu) for side in (224, 128, 64, 32, 1000)] == [16, 49, 196, 256, 1]
    # on a GPU 2 inputs of 224 px per GiB, from 16 to 128 (at 224 px; 6 at 1000 px with 128)
    gpus = {gib: gpu_pixels(gib, monkeypatch) for gib in (4, 16, 24, 80, 141)}
    assert {gib: auto.relevance_batch(224, pixels) for gib, pixels in gpus.items()} == {4: 16, 16: 32, 24: 48, 80: 128, 141: 128}
    assert [auto.relevance_batch(side, gpus[80]) for side in (128, 64, 1000)] == [256, 256, 6]
    assert BuildConfig(model="m", layers=["l"], data="d", relevance_batch_size=5).relevance_batch(64, gpus[80]) == 5
    with pytest.raises(SemlensError, match="relevance_batch_size=0 must be a positive integer"):
        BuildConfig(model="m", layers=["l"], data="d", relevance_batch_size=0)
    with pytest.raises(SemlensError, match="relevance_memory_gib=0 must be a positive number of GiB"):
        BuildConfig(model="m", layers=["l"], data="d", relevance_memory_gib=0)


def test_shrinking_batch_halves_on_out_of_memory_and_covers_every_row_once() -> None:
    from semlens._util.devices import ShrinkingBatch
    from semlens._util.errors import SemlensError

    calls = []

    def step(begin: int, end: int) -> list[int]:
        calls.append((begin, end))
        if end - begin > 3:  # a "GPU" that holds 3 rows
            raise torch.OutOfMemoryError("CUDA out of memory")
        return list(range(begin, end))

    passes = ShrinkingBatch(8)
    parts = list(passes.parts(11, step))
    assert [row for _, _, rows in parts for row in rows] == list(range(11))  # every row once, in order
    assert [(b, e) for b, e, _ in parts] == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10), (10, 11)]
    assert calls[:3] == [(0, 8), (0, 4), (0, 2)] and (passes.asked, passes.rows) == (8, 2)  # it stays halved

    def never_fits(begin: int, end: int) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(SemlensError, match="out of memory on a relevance pass of one input.*--device cpu"):
        list(ShrinkingBatch(4).parts(2, never_fits))


class FakeGpu:
    """A "GPU" whose relevance pass of n rows holds ``base + fixed + n * per_row`` bytes at its peak."""

    def __init__(self, base: int = 1000, fixed: int = 50, per_row: int = 100) -> None:
        self.base, self.fixed, self.per_row, self.peaks, self.rows = base, fixed, per_row, [], 0

    def budget(self, budget: int, why: str | None = None):
        from semlens._util.devices import PassMemory

        return PassMemory(budget, lambda: self.base, lambda: self.peaks[-1], why)

    def step(self, begin: int, end: int) -> list[int]:
        self.peaks.append(self.base + self.fixed + (end - begin) * self.per_row)
        return list(range(begin, end))


def test_passes_on_a_gpu_are_sized_by_the_memory_a_row_takes_not_by_the_card() -> None:
    """The first pass measures (2 rows: 1250 bytes over a base of 1000, 125 a row), the next hold what fits in
    the budget of 1000 + 650: 5 rows (peak 1550), and stay there; every pass within the budget, every row once.
    A budget the default gives is the design, not a fallback: only ``memory_used`` records it."""
    from semlens._util.devices import ShrinkingBatch

    gpu = FakeGpu()
    passes = ShrinkingBatch(16, memory=gpu.budget(1650))
    parts = list(passes.parts(23, gpu.step))
    assert [row for _, _, rows in parts for row in rows] == list(range(23))
    assert [e - b for b, e, _ in parts] == [2, 5, 5, 5, 5, 1]
    assert max(gpu.peaks) <= 1650 and passes.shrunk is None
    assert passes.memory_used == {"budget_gib": round(1650 / 2**30, 2), "peak_gib": round(1550 / 2**30, 2), "rows": 5}
    # a card with less free memory than asked: the passes shrink and say why
    gpu = FakeGpu()
    small = ShrinkingBatch(16, memory=gpu.budget(1650, "the GPU had 1.6 GiB for them, under the 8 GiB asked"))
    list(small.parts(23, gpu.step))
    assert small.shrunk == {"asked": 16, "used": 5, "why": "the GPU had 1.6 GiB for them, under the 8 GiB asked"}
    # a budget that holds more than asked: the passes stay as asked
    gpu = FakeGpu()
    roomy = ShrinkingBatch(4, memory=gpu.budget(10**6))
    assert [e - b for b, e, _ in roomy.parts(10, gpu.step)] == [2, 4, 4] and roomy.shrunk is None


def test_passes_grow_at_most_fourfold_so_that_a_row_costing_more_in_larger_passes_stays_within_the_budget() -> None:
    """On an H200 a ResNet-50's peak per row measured at 2 rows, extrapolated to 55 rows, put that pass at 13.3 GiB
    of an 8 GiB budget: rows cost more in larger passes. Passes grow at most fourfold, each sized by the last."""
    from semlens._util.devices import ShrinkingBatch

    class CostlierInLargePasses(FakeGpu):
        def step(self, begin: int, end: int) -> list[int]:
            rows = end - begin
            self.peaks.append(self.base + rows * (100 if rows <= 2 else 160))
            return list(range(begin, end))

    gpu = CostlierInLargePasses(fixed=0)
    passes = ShrinkingBatch(128, memory=gpu.budget(9000))  # 2 rows: 100 a row, so 80 would seem to fit in 8000
    sizes = [e - b for b, e, _ in passes.parts(200, gpu.step)]
    assert sizes[:4] == [2, 8, 32, 50] and max(gpu.peaks) <= 9000  # 80 rows at 160 a row: 13 800


def test_a_budgeted_pass_releases_what_the_last_one_left_before_its_meter_reads() -> None:
    """The rules keep the last pass's layer inputs: a budgeted pass releases them before its meter reads what the
    model holds, or the meter would count them as the model's (the class relevance stage's passes get no other
    release)."""
    from semlens._util.devices import PassMemory, ShrinkingBatch

    events: list[str] = []
    memory = PassMemory(10**6, lambda: events.append("meter") or 0, lambda: 100)
    list(ShrinkingBatch(4, lambda: events.append("release"), memory).parts(10, lambda b, e: events.append("pass")))
    assert events == ["release", "meter", "pass"] * 3


def test_a_pass_cut_short_by_its_span_does_not_grow_the_passes_and_out_of_memory_caps_them() -> None:
    """A short last pass (its fixed cost over few rows) would size the passes too small: it only shrinks them when
    it goes over the budget. Out of memory halves the passes, and the budget never grows them past that."""
    from semlens._util.devices import ShrinkingBatch

    gpu = FakeGpu(fixed=400)  # the measuring pass: 600 over 2 rows, 300 a row: 2 fit in 1000 + 650
    passes = ShrinkingBatch(16, memory=gpu.budget(1650))
    sizes = [e - b for span in (3, 3) for b, e, _ in passes.parts(span, gpu.step)]
    assert sizes == [2, 1, 2, 1]  # the pass of 1 (peak 1500, within the budget) left the 2 as they were
    fussy = FakeGpu(per_row=10)

    def step(begin: int, end: int) -> list[int]:
        if end - begin > 3:  # runs out of memory above 3 rows though the budget would allow 65
            raise torch.OutOfMemoryError("CUDA out of memory")
        return fussy.step(begin, end)

    crowded = FakeGpu(base=1600, fixed=0, per_row=10)  # the model alone nearly fills the budget: passes may grow by a quarter
    assert [e - b for b, e, _ in ShrinkingBatch(64, memory=crowded.budget(1650)).parts(100, crowded.step)][:4] == [2, 8, 32, 41]
    capped = ShrinkingBatch(8, memory=fussy.budget(1650))  # measured: 8 fit; 8 and 4 run out of memory; 2 stay
    assert [e - b for b, e, _ in capped.parts(11, step)] == [2, 2, 2, 2, 2, 1]
    assert capped.shrunk == {"asked": 8, "used": 2, "why": "the GPU ran out of memory"}


def test_pass_memory_budgets_gpus_only_and_a_small_card_says_so(monkeypatch) -> None:
    from semlens._util.devices import pass_memory
    from semlens.pipeline.builder import smaller_passes

    assert pass_memory(torch.device("cpu")) is None
    gib = 2**30  # a "GPU" with 2 GiB free, 1 GiB allocated and 0.5 GiB more cached by torch's allocator
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2 * gib, 16 * gib))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: gib)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: gib + gib // 2)
    small = pass_memory(torch.device("cuda"))
    assert small.budget == gib + int(0.9 * 2.5 * gib) and small.why == "the GPU had 3.2 GiB for them, under the 8 GiB asked"
    roomy = pass_memory(torch.device("cuda"), gib=2.0)
    assert roomy.budget == 2 * gib and roomy.why is None
    why = "the GPU had 5.2 GiB for them, under the 8 GiB asked"
    assert smaller_passes("layer l: relevance crops in", "pairs", {"asked": 128, "used": 40, "why": why}) == [
        f"layer l: relevance crops in passes of 40 pairs instead of 128: {why} (slower, same heatmaps)"
    ]


def test_a_pass_that_runs_out_of_memory_half_way_leaves_nothing_behind() -> None:
    """The rules' hooks keep a layer's input from its pre-forward until its forward ends: a pass that runs
    out of memory inside a layer would leave that input, and through it the pass's whole graph, held,
    and the halved pass would run out of memory too. ``RelevanceModel.release`` drops it."""
    import weakref

    from tiny_models import tiny_cnn

    from semlens._util.devices import ShrinkingBatch
    from semlens.relevance.lrp import RelevanceModel, crp_heatmaps

    module = tiny_cnn().module
    conv, failed, held = module.features[3], [], []
    original = conv.forward

    def fussy(x: torch.Tensor) -> torch.Tensor:  # a layer on a "GPU" that holds 2 inputs
        if len(x) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return original(x)

    def watch(_module: nn.Module, args: tuple[torch.Tensor]) -> None:  # the input as the rules' hook gets it
        held.append(sum(ref() is not None for ref in failed))  # inputs of failed passes still alive as this pass starts
        if len(args[0]) > 2:
            failed.append(weakref.ref(args[0]))

    conv.forward = fussy
    relevance = RelevanceModel(module, torch.rand(2, 3, 32, 32))
    inputs, channels = torch.rand(8, 3, 32, 32), torch.arange(8) % 6
    with relevance.attributing() as modified:
        modified.features[3].register_forward_pre_hook(watch, prepend=True)
        explain = lambda b, e: crp_heatmaps(modified, inputs[b:e], "features.3", channels[b:e], torch.ones(e - b))  # noqa: E731
        heat = torch.cat([part for _, _, part in ShrinkingBatch(8, relevance.release).parts(8, explain)])
        expected = torch.cat([crp_heatmaps(modified, inputs[i : i + 1], "features.3", channels[i : i + 1], torch.ones(1)) for i in range(8)])
    # the passes of 8 and 4 failed; their inputs (and graphs) were freed before the next pass began
    assert len(failed) == 2 and len(held) == 14 and not any(held) and all(ref() is None for ref in failed)
    torch.testing.assert_close(heat, expected, rtol=1e-4, atol=1e-6)


def test_a_build_whose_relevance_passes_run_out_of_memory_gives_the_same_lens(tmp_path, colour_folder, tiny_clip_dir, monkeypatch) -> None:
    """Heatmap and class-relevance passes that do not fit are split (ShrinkingBatch): the Lens is what the
    passes that fit give, and the manifest and summary say the passes were smaller than asked."""
    import semlens.relevance.lrp as lrp
    from semlens import BuildConfig, build_lens
    from semlens.pipeline.builder import fallbacks

    config = BuildConfig(
        model="py:tiny_models:tiny_cnn", layers=["features.3"], data=f"folder:{colour_folder}", foundation=f"hf:{tiny_clip_dir}",
        k=4, crop="relevance", relevance_batch_size=7, workers=0,
    )  # fmt: skip
    fitting = build_lens(config, tmp_path / "fits", progress=False)

    def holding(function, rows):  # the function on a "GPU" that holds ``rows`` inputs
        def run(modified, inputs, *args, **kwargs):
            if len(inputs) > rows:
                raise torch.OutOfMemoryError("CUDA out of memory")
            return function(modified, inputs, *args, **kwargs)

        return run

    monkeypatch.setattr(lrp, "crp_heatmaps", holding(lrp.crp_heatmaps, 3))
    monkeypatch.setattr(lrp, "unit_and_error_relevance", holding(lrp.unit_and_error_relevance, 2))
    split = build_lens(config, tmp_path / "split", progress=False)
    assert torch.allclose(split.arrays.heatmaps("features.3").float(), fitting.arrays.heatmaps("features.3").float(), atol=1e-6)
    assert torch.equal(split.arrays.boxes("features.3"), fitting.arrays.boxes("features.3"))
    relevance, expected = split.arrays.class_relevance("features.3"), fitting.arrays.class_relevance("features.3")
    assert all(torch.allclose(relevance[name].float(), expected[name].float(), atol=1e-6) for name in ("max_share", "mean_share", "top_shares"))
    assert split.manifest["layers"]["features.3"]["crop"]["pairs_per_pass"] == {"asked": 7, "used": 3, "why": "the GPU ran out of memory"}
    assert split.manifest["stages"]["relevance"]["images_per_pass"] == {"asked": 7, "used": 1, "why": "the GPU ran out of memory"}
    assert "pairs_per_pass" not in fitting.manifest["layers"]["features.3"]["crop"]
    assert not [line for line in fallbacks(fitting.manifest) if "passes of" in line]
    lines = fallbacks(split.manifest)
    assert any("relevance crops in passes of 3 pairs instead of 7: the GPU ran out of memory" in line for line in lines)
    assert any("class relevance in passes of 1 images instead of 7" in line for line in lines)


@pytest.mark.parametrize(("stage", "flag"), [("collect", "--batch-size (now 32)"), ("embed", "--embed-batch-size (now 64")])
def test_running_out_of_gpu_memory_in_a_stage_says_what_to_lower(tmp_path, colour_folder, tiny_clip_dir, monkeypatch, stage, flag) -> None:
    from semlens import BuildConfig, build_lens
    from semlens._util.errors import SemlensError
    from semlens.pipeline.collect import Collector
    from semlens.pipeline.embed_stage import EmbedStage

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 15.7 GiB")

    monkeypatch.setattr(*((Collector, "update") if stage == "collect" else (EmbedStage, "_embed_table")), out_of_memory)
    config = BuildConfig(model="py:tiny_models:tiny_cnn", layers=["features.3"], data=f"folder:{colour_folder}", foundation=f"hf:{tiny_clip_dir}", k=4, workers=0)
    with pytest.raises(SemlensError, match=rf"out of memory in the {stage} stage \(CUDA out of memory. Tried to allocate 2.00 GiB\); give a smaller {re.escape(flag)}.*resumes"):
        build_lens(config, tmp_path / "l", progress=False)


def test_peak_focus_starts_crp_at_the_units_highest_position_alone() -> None:
    """``crp_focus = "peak"`` on a known answer: a 1x1 convolution with positive weights of a positive input, so
    unit c's activation at a pixel is that pixel's ``w_c . x`` and z+ hands it back to that pixel alone. The whole
    unit's heatmap is its activation map; the peak's is zero but at its highest pixel (for the negative copy of a
    signed unit: its lowest, where minus the activation is highest), which keeps its activation there."""
    from semlens.relevance.lrp import RelevanceModel, crp_heatmaps

    conv = nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 2.0, 0.5], [0.2, 0.1, 3.0]]).view(2, 3, 1, 1))
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3)).eval()
    inputs = torch.rand(4, 3, 8, 8) + 0.1
    channels, signs = torch.tensor([0, 1, 0, 1]), torch.tensor([1.0, 1.0, -1.0, 1.0])
    activation = torch.einsum("nkhw,ck->nchw", inputs, conv.weight.detach().view(2, 3))[torch.arange(4), channels]  # [4, 8, 8]
    with RelevanceModel(model, inputs).attributing() as modified:
        whole = crp_heatmaps(modified, inputs, "1", channels, signs)
        peak = crp_heatmaps(modified, inputs, "1", channels, signs, focus="peak")
        with pytest.raises(SemlensError, match="crp focus 'centre' is not one of unit, peak"):
            crp_heatmaps(modified, inputs, "1", channels, signs, focus="centre")
    torch.testing.assert_close(whole, activation * signs.view(-1, 1, 1), rtol=1e-5, atol=1e-6)
    signed = (activation * signs.view(-1, 1, 1)).flatten(1)
    highest = signed.argmax(dim=1)
    expected = torch.zeros_like(signed)
    expected[torch.arange(4), highest] = signed[torch.arange(4), highest]
    torch.testing.assert_close(peak.flatten(1), expected, rtol=1e-5, atol=1e-6)


def test_peak_positions_keep_one_cell_or_token_per_row_the_first_on_ties() -> None:
    from semlens.relevance.lrp import peak_positions

    cells = torch.tensor([[[[0.0, 3.0], [3.0, 1.0]]], [[[-2.0, -1.0], [-5.0, -1.5]]]])  # N,1,H,W
    assert peak_positions(cells).tolist() == [[[[0.0, 1.0], [0.0, 0.0]]], [[[0.0, 1.0], [0.0, 0.0]]]]
    tokens = torch.tensor([[[0.5], [2.0], [1.0]]])  # N,L,1
    assert peak_positions(tokens).tolist() == [[[0.0], [1.0], [0.0]]]


def test_an_unknown_crp_focus_is_refused_with_the_valid_ones() -> None:
    from semlens import BuildConfig

    with pytest.raises(SemlensError, match="crp_focus='max' is not one of unit, peak"):
        BuildConfig(model="m", layers=["l"], data="d", crp_focus="max")


class PatchTokens(nn.Module):
    """An 8x8 image as 16 tokens of its 2x2 patches (N,L,C), each token a linear map of its patch's 12 values."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(12, 4, bias=False)
        self.act = nn.ReLU()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = x.reshape(len(x), 3, 4, 2, 4, 2).permute(0, 2, 4, 1, 3, 5).reshape(len(x), 16, 12)
        return self.head(self.act(self.embed(patches)))


def test_peak_focus_of_a_token_layer_starts_at_the_units_highest_token() -> None:
    """Units on the last dimension of N,L,C tokens: the peak's heatmap lies within the patch of the token where the
    unit is highest and holds its activation there (z+, positive weights and inputs); the whole unit's holds all."""
    from semlens.relevance.lrp import RelevanceModel, crp_heatmaps

    torch.manual_seed(0)
    model = PatchTokens().eval()
    with torch.no_grad():
        model.embed.weight.abs_()
    inputs = torch.rand(3, 3, 8, 8) + 0.1
    channels, signs = torch.tensor([0, 2, 3]), torch.ones(3)
    with torch.no_grad():
        tokens = model.act(model.embed(inputs.reshape(3, 3, 4, 2, 4, 2).permute(0, 2, 4, 1, 3, 5).reshape(3, 16, 12)))
    unit = tokens[torch.arange(3), :, channels]  # [3, 16]
    with RelevanceModel(model, inputs).attributing() as modified:
        whole = crp_heatmaps(modified, inputs, "act", channels, signs)
        peak = crp_heatmaps(modified, inputs, "act", channels, signs, focus="peak")
    torch.testing.assert_close(whole.flatten(1).sum(dim=1), unit.sum(dim=1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(peak.flatten(1).sum(dim=1), unit.amax(dim=1), rtol=1e-4, atol=1e-5)
    for row, token in enumerate(unit.argmax(dim=1).tolist()):
        inside = torch.zeros(8, 8, dtype=torch.bool)
        inside[2 * (token // 4) : 2 * (token // 4) + 2, 2 * (token % 4) : 2 * (token % 4) + 2] = True
        assert peak[row][~inside].abs().max() == 0 and peak[row][inside].min() > 0


def test_loader_workers_leave_ctrl_c_to_the_main_process() -> None:
    """A worker that took Ctrl-C printed its own traceback before the build said it resumes: workers ignore it."""
    import signal

    from semlens._util.devices import quiet_worker

    previous = signal.getsignal(signal.SIGINT)
    try:
        quiet_worker(0)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
