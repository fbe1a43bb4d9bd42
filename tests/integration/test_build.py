"""End to end, offline: a tiny CNN and a tiny random CLIP (saved to disk) into a Lens, and back."""

from __future__ import annotations

import pytest
import tiny_models
import torch
from old_lenses import rewrite_as_before_rule_thetas

import semlens.pipeline.embed as embed_module
import semlens.pipeline.embed_stage as embed_stage_module
from semlens import BuildConfig, LayerSpec, Lens, build_lens, load_data, load_model
from semlens._util.errors import SemlensError, StaleLensError
from semlens.interventions.effects import Artifact
from semlens.analysis.responses import ResponseMoments
from semlens.pipeline.collect import collect_topk
from semlens.relevance.lrp import RelevanceModel, unit_relevance
from semlens.store.files import CROPS, RESPONSES, layer_file
from semlens.store.slots import rule_slots
from semlens.lens.search import probe as probe_of
from semlens.lens.audits import pruning_effect
from semlens.lens.explain import _explainer

LAYERS = ["features.0", "features.3:pool=max", "head:signed=true"]


def config(folder, clip, **overrides) -> BuildConfig:
    settings = dict(
        model="py:tiny_models:tiny_cnn",
        layers=LAYERS,
        data=f"folder:{folder}",
        foundation=f"hf:{clip}",
        k=5,
        batch_size=7,
        workers=0,
    )
    settings.update(overrides)
    return BuildConfig(**settings)


@pytest.fixture(scope="module")
def built(tmp_path_factory, colour_folder, tiny_clip_dir) -> Lens:
    return build_lens(config(colour_folder, tiny_clip_dir), tmp_path_factory.mktemp("lens") / "tiny.lens", progress=False)


def test_lens_has_every_layer_with_its_units_and_embeddings(built: Lens) -> None:
    assert built.layers == ["features.0", "features.3", "head"]
    assert built.units("head") == ["0", "1", "2", "0-", "1-", "2-"]
    dim = built.manifest["foundation"]["dim"]
    for layer, units in [("features.0", 8), ("features.3", 6), ("head", 6)]:
        assert built.arrays.theta(layer).shape == (units, dim)
        examples = built.arrays.example_embeddings(layer)
        assert examples.shape == (units, 5, dim)
        # theta is the mean of the examples' embeddings (stored in half precision)
        torch.testing.assert_close(examples.mean(dim=1), built.arrays.theta(layer), atol=2e-3, rtol=0)
    assert built.arrays.maps("features.0").shape[:2] == (8, 5) and built.arrays.maps("head") is None


def test_topk_equals_brute_force_over_the_same_pipeline(built: Lens, colour_folder) -> None:
    model, data = load_model("py:tiny_models:tiny_cnn"), load_data(f"folder:{colour_folder}")
    pixels = torch.stack([model.preprocessing(data.load(index)) for index in range(len(data))])
    outputs = {}
    hooks = [
        model.module.features[0].register_forward_hook(lambda m, i, o: outputs.__setitem__("features.0", o.mean((2, 3)))),
        model.module.features[3].register_forward_hook(lambda m, i, o: outputs.__setitem__("features.3", o.amax((2, 3)))),
    ]
    with torch.no_grad():
        head = model.module(pixels)
    for hook in hooks:
        hook.remove()
    outputs["head"] = torch.cat([head, -head], dim=1)
    for layer, scores in outputs.items():
        for unit in range(scores.shape[1]):
            expected = sorted(range(len(data)), key=lambda i: (-scores[i, unit].item(), i))[:5]
            assert built.arrays.samples(layer)[unit].tolist() == expected, (layer, unit)


def test_concept_examples_point_at_the_data(built: Lens, colour_folder) -> None:
    examples = built.examples.concept_examples("head/0")
    assert [example.rank for example in examples] == list(range(5))
    for example in examples:
        assert (colour_folder / example.source).is_file()
        x0, y0, x1, y1 = example.box
        assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32 and x1 - x0 == y1 - y0


def test_reopening_gives_identical_arrays(built: Lens) -> None:
    again = Lens.open(built.path)
    for layer in built.layers:
        for name in ("scores", "samples", "theta", "boxes", "example_embeddings", "inactive"):
            assert torch.equal(getattr(again.arrays, name)(layer).nan_to_num(), getattr(built.arrays, name)(layer).nan_to_num()), (layer, name)


def test_a_second_run_skips_finished_stages_and_a_changed_one_is_refused(built, colour_folder, tiny_clip_dir, capsys) -> None:
    from semlens.cli.build import report_summary
    from semlens.pipeline.builder import LensBuilder

    before = {path: path.stat().st_mtime_ns for path in built.path.rglob("*.safetensors")}
    summary = LensBuilder(config(colour_folder, tiny_clip_dir), built.path, progress=False).run()
    assert {path: path.stat().st_mtime_ns for path in built.path.rglob("*.safetensors")} == before
    assert summary.reused == list(summary.stages)  # said, not shown as if computed now
    report_summary(summary, as_json=False)
    shown = capsys.readouterr()
    assert "the Lens was complete already: nothing was computed again" in " ".join((shown.out + shown.err).split())
    with pytest.raises(StaleLensError, match=r"\(collect\.k: was 5, now 6\)"):
        build_lens(config(colour_folder, tiny_clip_dir, k=6), built.path, progress=False)


def test_each_distinct_crop_is_embedded_once(tmp_path, colour_folder, tiny_clip_dir, monkeypatch) -> None:
    monkeypatch.setenv("SEMLENS_TEST_CLIP", str(tiny_clip_dir))
    tiny_models.EMBEDDED.clear()
    lens = build_lens(
        config(colour_folder, tiny_clip_dir, foundation="py:tiny_models:tiny_clip", crop="none"), tmp_path / "l", progress=False
    )
    stage = lens.manifest["stages"]["embed"]
    distinct_samples = torch.unique(torch.cat([lens.arrays.samples(layer).reshape(-1) for layer in lens.layers]))
    assert stage["distinct_crops"] == len(distinct_samples) < stage["example_slots"] == (8 + 6 + 6) * 5
    assert sum(tiny_models.EMBEDDED) == stage["distinct_crops"]


def test_the_embed_stage_records_where_its_seconds_went(built: Lens) -> None:
    stage = built.manifest["stages"]["embed"]
    assert set(stage["parts"]) == {"heatmaps", "boxes", "embedding"}
    assert stage["parts"]["heatmaps"] > 0 and stage["parts"]["embedding"] > 0  # relevance crops were computed, crops embedded
    assert sum(stage["parts"].values()) <= stage["seconds"]


def test_boxes_snap_to_the_grid_and_nearly_equal_crops_are_embedded_once(built: Lens, tmp_path, colour_folder, tiny_clip_dir) -> None:
    """A grid of 16 cells a side (2 px at 32 px) against the default boxes to the pixel, cut from the same heatmaps:
    each snapped box is the pixel box grown to the grid, and the Lens embeds fewer distinct crops."""
    from semlens.pipeline.crops import snap_boxes

    snapped = build_lens(config(colour_folder, tiny_clip_dir, crop_grid=16, heatmaps_from=str(built.path), class_relevance=False), tmp_path / "g16.lens", progress=False)
    assert snapped.manifest["identity"]["embed"]["crop_grid"] == 16 and "crop_grid" not in built.manifest["identity"]["embed"]
    for layer in built.layers:
        for rule in built.arrays.crop_rules:
            boxes, valid = snapped.arrays.boxes(layer, rule), snapped.arrays.valid(layer)
            assert torch.equal(boxes[valid], snap_boxes(built.arrays.boxes(layer, rule), (32, 32), 16)[valid]), (layer, rule)
            assert (boxes[valid] % 2 == 0).all()
    assert snapped.manifest["stages"]["embed"]["distinct_crops"] < built.manifest["stages"]["embed"]["distinct_crops"]


def test_preprocessing_in_the_loader_workers_as_on_a_gpu_gives_the_same_lens(built, tmp_path, colour_folder, tiny_clip_dir, monkeypatch) -> None:
    monkeypatch.setattr(embed_stage_module, "preprocess_in_workers", lambda device: True)
    again = build_lens(config(colour_folder, tiny_clip_dir, workers=1), tmp_path / "workers.lens", progress=False)
    for layer in built.layers:
        assert torch.equal(again.arrays.theta(layer), built.arrays.theta(layer))
        assert torch.equal(again.arrays.example_embeddings(layer).nan_to_num(), built.arrays.example_embeddings(layer).nan_to_num())


def test_a_half_precision_tower_embeds_the_same_whether_its_batches_are_cast_in_the_workers_or_on_its_device(
    tmp_path, colour_folder, tiny_clip_dir, monkeypatch
) -> None:
    """On a GPU the workers hand a half-precision tower its batches in its dtype; the tower sees the same numbers.
    (No worker processes here, so that the batches' dtype can be read: the loader runs the same code in-process.)"""
    half = dict(embed_precision="bfloat16", crop="activation")
    on_device = build_lens(config(colour_folder, tiny_clip_dir, **half), tmp_path / "device.lens", progress=False)
    handed: list[torch.dtype] = []
    cast = embed_module.cast_floating

    def recorded(pixels, dtype):
        batch = cast(pixels, dtype)
        handed.extend(tensor.dtype for tensor in (batch.values() if isinstance(batch, dict) else [batch]) if tensor.is_floating_point())
        return batch

    monkeypatch.setattr(embed_module, "cast_floating", recorded)
    monkeypatch.setattr(embed_stage_module, "preprocess_in_workers", lambda device: True)
    in_workers = build_lens(config(colour_folder, tiny_clip_dir, **half), tmp_path / "workers.lens", progress=False)
    assert handed and set(handed) == {torch.bfloat16}
    for layer in on_device.layers:
        assert torch.equal(in_workers.arrays.example_embeddings(layer).nan_to_num(), on_device.arrays.example_embeddings(layer).nan_to_num())


def test_collect_topk_api_reads_a_model_directly() -> None:
    model = tiny_models.TinyCNN().eval()
    data = torch.randn(20, 3, 32, 32)
    from semlens.pipeline.collect import iterate_batches

    result = collect_topk(model, [LayerSpec.parse("head")], iterate_batches(data, 6), k=3)["head"]
    expected = model(data).detach().T.topk(3, dim=1)
    assert torch.equal(result.ids, expected.indices)


@pytest.mark.parametrize("crop, model", [("relevance", "tiny_cnn"), ("activation", "tiny_cnn"), ("activation", "strided_cnn")])
def test_a_masked_build_embeds_each_example_faded_by_its_own_heatmap(built, tmp_path, colour_folder, tiny_clip_dir, crop, model) -> None:
    """Each example faded by its heatmap; a strided network's activation maps placed where their cells sit."""
    from semlens.foundation import load_foundation_model
    from semlens.pipeline.crops import masked_crop

    layers = {"model": f"py:tiny_models:{model}", "layers": ["features.3"]} if model == "strided_cnn" else {}
    settings = config(colour_folder, tiny_clip_dir, crop=crop, crop_view="masked", class_relevance=False, **layers)
    masked = build_lens(settings, tmp_path / "m.lens", progress=False)
    assert masked.manifest["identity"]["embed"]["crop_view"] == "masked"
    assert "skipped" in masked.manifest["stages"]["responses"] and masked.labels.default_method == "centred"  # faded crops
    assert built.arrays.has_responses and built.labels.default_method == "responses"
    loaded, data = load_model(f"py:tiny_models:{model}"), load_data(f"folder:{colour_folder}")
    foundation = load_foundation_model(f"hf:{tiny_clip_dir}")
    faded = 0
    for layer in masked.layers:
        if crop == "relevance":  # the same boxes as the box view of the same rule: only what is embedded differs
            assert torch.equal(masked.arrays.boxes(layer), built.arrays.boxes(layer))
        heat, ids, inactive = masked.arrays.heatmaps(layer), masked.arrays.samples(layer), masked.arrays.inactive(layer)
        crops, slots = [], torch.nonzero(ids >= 0).tolist()
        for unit, slot in slots:
            view, box = loaded.preprocessing.view(data.load(int(ids[unit, slot]))), tuple(masked.arrays.boxes(layer)[unit, slot].tolist())
            fires = heat is not None and not inactive[unit] and float(heat[unit, slot].max()) > 0
            crops.append(masked_crop(view, box, heat[unit, slot], masked.arrays.heatmap_shift(layer)) if fires else view.crop(box))
            faded += fires
        expected = foundation.encode_images(crops)
        found = masked.arrays.example_embeddings(layer)[tuple(torch.tensor(slots).T)]
        torch.testing.assert_close(found, expected, atol=3e-3, rtol=0)
    assert masked.arrays.heatmap_shift(masked.layers[-1]) == (pytest.approx((-1.5, -1.5), abs=0.5) if model == "strided_cnn" else (0.0, 0.0))
    if model == "strided_cnn":
        return
    assert faded >= 40
    boxed = torch.cat([built.arrays.read(layer, "embed")["crop_index"][:, :5].flatten() for layer in built.layers]).unique()  # the peak boxes
    assert masked.manifest["stages"]["embed"]["distinct_crops"] > int((boxed >= 0).sum())  # masked slots are not shared across units
    with pytest.raises(StaleLensError, match="crop_view"):  # a Lens of another view is never reused
        build_lens(config(colour_folder, tiny_clip_dir, crop_view="masked"), built.path, progress=False)


def test_the_default_lens_searches_the_active_boxes_cut_from_where_units_fire(built: Lens) -> None:
    """The default rules, peak+active: questions read the relevance heatmaps' peak boxes, search the share boxes of
    the units' own activation maps (the collection's top-k maps), which the relevance heatmaps do not move."""
    from semlens.analysis.alignment import alignment
    from semlens.pipeline.crops import crop_boxes

    assert built.arrays.crop_rules == ["peak", "active"] and built.arrays.search_rule == "active"
    assert built.manifest["identity"]["embed"]["crop_rule"] == "peak+active"
    for layer in ("features.0", "features.3"):
        assert built.manifest["layers"][layer]["crop"]["mode"] == "relevance"
        maps = built.store.read_tensors(layer_file(layer, "topk"))["maps"]
        expected = crop_boxes(maps, (32, 32), "share", share=0.8)
        inactive = built.arrays.inactive(layer)
        assert torch.equal(built.arrays.boxes(layer, "active")[~inactive], expected[~inactive])
    hits = built.search("red", top=3)
    probe, null = probe_of(built, "red")
    expected = alignment(built.arrays.theta(hits[0].layer, "active")[hits[0].index : hits[0].index + 1], probe[None], null)
    assert hits[0].score == pytest.approx(float(expected), abs=1e-5)


def test_boxes_cut_from_a_strided_networks_maps_sit_where_its_cells_see(built: Lens, tmp_path, colour_folder, tiny_clip_dir) -> None:
    """Strided convolutions with padding centre a map's cells off the even grid: the collect stage measures it and
    every box cut from the activation maps moves with it (relevance heatmaps are computed at the input: no move)."""
    from semlens.lens.arrays import recorded_placements
    from semlens.model.receptive import SHIFT_IMAGES, map_placement, map_shift, shift_boxes
    from semlens.pipeline.crops import crop_boxes

    settings = config(colour_folder, tiny_clip_dir, model="py:tiny_models:strided_cnn", layers=["features.3"], crop="activation", class_relevance=False)
    lens = build_lens(settings, tmp_path / "strided.lens", progress=False)
    model = lens.sources.model()
    data = load_data(f"folder:{colour_folder}")
    first = torch.stack([model.preprocessing(data.load(index)) for index in range(min(SHIFT_IMAGES, len(data)))])
    shift = map_shift(model.module, LayerSpec("features.3"), first)  # measured on the first probe images, as the build does
    assert shift == pytest.approx((-1.5, -1.5), abs=0.5)  # 3x3 convolutions of stride 2, padding 1, twice: -1.5 where every path counts alike
    assert lens.manifest["layers"]["features.3"]["map_shift"] == list(shift)
    locality = map_placement(model.module, LayerSpec("features.3"), first).locality  # measured with the shift
    assert lens.arrays.map_locality("features.3") == locality > 1 and built.arrays.map_locality("head") is None
    assert recorded_placements(lens.arrays, ["features.3"]) == ({"features.3": shift}, {"features.3": locality})
    assert lens.arrays.map_shift("features.3") == lens.arrays.heatmap_shift("features.3") == shift and "map_shift_failed" not in lens.manifest["layers"]["features.3"]
    assert built.arrays.heatmap_shift("features.3") == (0.0, 0.0) and built.arrays.map_shift("head") is None  # relevance: at the input; no map
    assert built.manifest["layers"]["features.3"]["map_shift"] == [0.0, 0.0]  # behind a max pool: the even grid
    maps, valid = lens.arrays.maps("features.3"), lens.arrays.valid("features.3")
    for rule, cut in (("peak", lambda: crop_boxes(maps, (32, 32), "peak")), ("active", lambda: crop_boxes(maps, (32, 32), "share"))):
        expected = shift_boxes(cut(), shift, (32, 32))
        assert torch.equal(lens.arrays.boxes("features.3", rule)[valid], expected[valid]), rule
        assert not torch.equal(expected[valid], cut()[valid])


def test_joined_rules_with_a_layer_cut_without_heatmaps(tmp_path, colour_folder, tiny_clip_dir) -> None:
    # activation crops: the linear head has no maps, so its examples are whole images, one slot each
    lens = build_lens(config(colour_folder, tiny_clip_dir, crop="activation", crop_rule="peak+share", class_relevance=False), tmp_path / "j.lens", progress=False)
    widths = {layer: lens.arrays.read(layer, "embed")["crop_index"].shape[1] for layer in lens.layers}
    assert set(widths.values()) == {5, 10}, widths
    for layer in lens.layers:
        assert torch.equal(lens.arrays.tied(layer), lens.arrays.read(layer, "embed")["tied"])  # recorded by the first rule's boxes, as read
        if widths[layer] == 5:
            assert torch.equal(lens.arrays.theta(layer, "share"), lens.arrays.theta(layer)) and torch.equal(lens.arrays.boxes(layer, "share"), lens.arrays.boxes(layer))


def test_another_crop_rule_reuses_the_heatmaps_and_another_model_data_or_lrp_rule_does_not(built, tmp_path, colour_folder, tiny_clip_dir, monkeypatch) -> None:
    import shutil

    import semlens.relevance.lrp as lrp
    from semlens.store.files import LensStore

    calls = []
    original = lrp.crp_heatmaps
    monkeypatch.setattr(lrp, "crp_heatmaps", lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
    source = str(built.path)
    settings = config(colour_folder, tiny_clip_dir, crop_rule="quantile", heatmaps_from=source, class_relevance=False)
    quantile = build_lens(settings, tmp_path / "q.lens", progress=False)
    assert not calls
    for layer in built.layers:
        assert quantile.manifest["layers"][layer]["crop"]["heatmaps"] == f"reused from {LensStore(source).root}"
        assert torch.equal(quantile.arrays.heatmaps(layer), built.arrays.heatmaps(layer))
    assert any(not torch.equal(quantile.arrays.boxes(layer), built.arrays.boxes(layer)) for layer in built.layers)  # cut by another rule

    joined = build_lens(config(colour_folder, tiny_clip_dir, crop_rule="peak+quantile", heatmaps_from=source, class_relevance=False), tmp_path / "pq.lens")
    assert not calls
    assert joined.arrays.crop_rules == ["peak", "quantile"] and joined.arrays.search_rule == "peak"  # no share boxes to search by
    crops = joined.store.read_array("crops.safetensors", "embeddings").float()
    for layer in built.layers:  # each example in both boxes; every question reads one rule's, the first by default
        stored = joined.store.read_tensors(f"layers/{layer}.embed.safetensors")
        index = stored["crop_index"]
        assert torch.equal(joined.arrays.boxes(layer), built.arrays.boxes(layer)) and torch.equal(joined.arrays.boxes(layer, "quantile"), quantile.arrays.boxes(layer))
        assert torch.equal(stored["boxes"][:, 5:], quantile.arrays.boxes(layer))
        torch.testing.assert_close(joined.arrays.example_embeddings(layer), crops[index[:, :5]])
        torch.testing.assert_close(joined.arrays.example_embeddings(layer, "quantile"), crops[index[:, 5:]])
        torch.testing.assert_close(joined.arrays.theta(layer), built.arrays.theta(layer), atol=2e-3, rtol=0)  # as the peak Lens's
        torch.testing.assert_close(joined.arrays.theta(layer, "quantile"), quantile.arrays.theta(layer), atol=2e-3, rtol=0)
        torch.testing.assert_close(stored["theta"], joined.arrays.theta(layer), atol=2e-3, rtol=0)  # the build stores the first rule's
    with pytest.raises(SemlensError, match="its rules: peak, quantile"):
        joined.arrays.theta(built.layers[0], "share")
    # a joined Lens built before each rule's theta was stored (theta the mean over every box, ties over every
    # box): its answers are computed from the crop table, the same as the stored ones
    for layer in built.layers:
        rewrite_as_before_rule_thetas(joined, layer_file(layer, "embed"), "theta.quantile", tied=False)
    reopened = Lens.open(joined.path)
    for layer in built.layers:
        torch.testing.assert_close(reopened.arrays.theta(layer), joined.arrays.theta(layer), atol=2e-3, rtol=0)
        torch.testing.assert_close(reopened.arrays.theta(layer, "quantile"), joined.arrays.theta(layer, "quantile"), atol=2e-3, rtol=0)
        assert torch.equal(reopened.arrays.tied(layer), joined.arrays.tied(layer))

    fewer = tmp_path / "fewer"
    shutil.copytree(colour_folder, fewer)
    next(fewer.rglob("*.png")).unlink()
    others = {
        "model": dict(model="py:tiny_models:twin_cnn"), "data": dict(data=f"folder:{fewer}"), "crp_focus": dict(crp_focus="peak"),
        "lrp_rule": dict(lrp_rule="gamma"),
    }  # fmt: skip
    for name, overrides in others.items():
        calls.clear()
        settings = config(colour_folder, tiny_clip_dir, heatmaps_from=source, class_relevance=False, **overrides)
        other = build_lens(settings, tmp_path / f"{name}.lens", progress=False)
        assert calls, name
        assert {other.manifest["layers"][layer]["crop"]["heatmaps"] for layer in other.layers} == {"computed"}, name
        if name == "crp_focus":  # recorded; the heatmaps of a unit that fires in more than one place change
            assert other.manifest["identity"]["embed"]["crp_focus"] == "peak" and "crp_focus" not in built.manifest["identity"]["embed"]
            assert any(not torch.equal(other.arrays.heatmaps(layer), built.arrays.heatmaps(layer)) for layer in built.layers)
    # the γ rule's Lens records it (its explanations and graphs use it too) and its heatmaps differ from z⁺'s
    assert (built.units.lrp_rule, other.units.lrp_rule) == ("zplus", "gamma")
    from torch import nn

    from semlens.relevance.rules import LeanGamma

    explainer = _explainer(other).prepared(torch.rand(2, 3, 32, 32))  # its explanations and graphs take the rule too
    assert isinstance(explainer.composite.mapping({"first_layer_visited": True}, "conv", nn.Conv2d(3, 3, 1)), LeanGamma)
    other.manifest["identity"]["relevance"]["lrp_rule"] = "alpha2beta1"  # as an altered Lens would say
    with pytest.raises(SemlensError, match="the LRP rule 'alpha2beta1', which this semlens does not know"):
        _ = other.units.lrp_rule
    layer = built.layers[-1]
    gamma_heat, zplus_heat = (LensStore(lens.path).read_tensors(layer_file(layer, "crops"))["heat"] for lens in (other, built))
    difference = (gamma_heat.float() - zplus_heat.float()).abs().amax()
    assert gamma_heat.shape == zplus_heat.shape and difference > 0.05 * zplus_heat.float().abs().amax()


def crop_rows(lens: Lens) -> torch.Tensor:
    """The distinct first-rule crops of ``lens`` (rows of its crop table), ascending."""
    rows = torch.unique(torch.cat([rule_slots(lens.arrays.read(layer, "embed")["crop_index"], 5, 0).flatten() for layer in lens.layers]))
    return rows[rows >= 0]


def crop_response_moments(lens: Lens, folder) -> ResponseMoments:
    """The moments of the tiny CNN's pooled activations on each distinct first-rule crop of ``lens``, read one
    crop at a time."""
    from PIL import Image

    from semlens.interventions.effects import unit_scores

    model, data = load_model("py:tiny_models:tiny_cnn"), load_data(f"folder:{folder}")
    table = lens.store.read_tensors(CROPS)
    moments = ResponseMoments(table["embeddings"].shape[1])
    for row in crop_rows(lens).tolist():
        sample, *box = table["samples"][row : row + 1].tolist() + table["boxes"][row].tolist()
        crop = model.preprocessing.view(data.load(sample)).crop(tuple(box)).resize((32, 32), Image.BILINEAR)
        unit_embeddings = moments.add_embeddings(table["embeddings"][row : row + 1])
        for name, scores in unit_scores(model, [crop], [LayerSpec.parse(spec) for spec in LAYERS]).items():
            moments.add_activations(name, scores, unit_embeddings)
    return moments


def test_crop_responses_are_the_models_scores_on_each_first_rule_crop(built: Lens, tmp_path, colour_folder, tiny_clip_dir) -> None:
    """The responses stage (crops cut, resized and stacked by data-loader workers) holds the moments of the
    model's pooled activations on each distinct first-rule crop."""
    with_workers = build_lens(config(colour_folder, tiny_clip_dir, workers=1), tmp_path / "workers.lens", progress=False)
    moments = crop_response_moments(built, colour_folder)
    table, side = built.store.read_tensors(CROPS), 32
    whole_views = (table["boxes"][crop_rows(built)] == torch.tensor([0, 0, side, side])).all(dim=1)
    assert 0 < built.manifest["stages"]["responses"]["from_collection"] == int(whole_views.sum()) < len(whole_views)
    for lens in (built, with_workers):
        for layer in built.layers:
            torch.testing.assert_close(lens.arrays.read(layer, RESPONSES)["cross"], moments.cross(layer), rtol=1e-5, atol=1e-6)


def test_a_whole_image_build_takes_the_crop_responses_from_the_collection_pass(tmp_path, colour_folder, tiny_clip_dir, monkeypatch) -> None:
    """Crop mode none: every crop is a sample's whole view, whose activations the collection pass kept (pruned
    to the top-k's samples as it went), so the responses stage runs no model pass and gives the same moments."""
    import semlens.pipeline.kept_activations as kept_module
    import semlens.pipeline.response_stage as response_module

    monkeypatch.setattr(kept_module, "MIN_PRUNE_ROWS", 4)  # prune often: what a long pass does
    monkeypatch.setattr(response_module, "read_units", lambda *args: pytest.fail("the responses stage ran the model"))
    failing = pytest.MonkeyPatch()
    failing.setattr(response_module.ResponseMoments, "scatter", lambda self: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # the stage fails after reading them: they stay for the resumed build
        build_lens(config(colour_folder, tiny_clip_dir, crop="none"), tmp_path / "none.lens", progress=False)
    failing.undo()
    assert list((tmp_path / "none.lens").glob("collect.activations*"))
    lens = build_lens(config(colour_folder, tiny_clip_dir, crop="none"), tmp_path / "none.lens", progress=False)
    stage = lens.manifest["stages"]["responses"]
    assert stage["from_collection"] == stage["crops"] > 1
    assert not list(lens.path.glob("collect.activations*"))  # the stage removes what it read
    moments = crop_response_moments(lens, colour_folder)
    for layer in lens.layers:
        torch.testing.assert_close(lens.arrays.read(layer, RESPONSES)["cross"], moments.cross(layer), rtol=1e-5, atol=1e-6)


def test_a_layer_read_channels_last_gets_its_channels_as_units_and_their_relevance(tmp_path, colour_folder, tiny_clip_dir) -> None:
    layers = ["conv.0", "mlp.1:channels_last=true,pool=max"]
    lens = build_lens(config(colour_folder, tiny_clip_dir, model="py:tiny_models:channels_last_cnn", layers=layers), tmp_path / "nhwc.lens", progress=False)
    assert lens.units("mlp.1") == [str(unit) for unit in range(6)]  # the 6 hidden channels, not the 16 rows of the map
    model, data = load_model("py:tiny_models:channels_last_cnn"), load_data(f"folder:{colour_folder}")
    pixels = torch.stack([model.preprocessing(data.load(index)) for index in range(len(data))])
    kept = []
    hook = model.module.mlp[1].register_forward_hook(lambda m, i, o: kept.append(o))
    with torch.no_grad():
        model.module(pixels)
    hook.remove()
    scores = kept[0].amax(dim=(1, 2))  # N,H,W,C pooled over H and W
    for unit in range(6):
        expected = sorted(range(len(data)), key=lambda i: (-scores[i, unit].item(), i))[:5]
        assert lens.arrays.samples("mlp.1")[unit].tolist() == expected, unit
    # LRP supports the model: both layers get relevance crops and class relevance (test_relevance checks the
    # channels-last layer's against known answers)
    assert {lens.manifest["layers"][layer]["crop"]["mode"] for layer in ("conv.0", "mlp.1")} == {"relevance"}
    assert lens.arrays.class_relevance("conv.0") is not None and lens.arrays.class_relevance("mlp.1") is not None
    assert "mlp.1" not in lens.manifest["relevance"].get("left_out", {})
    # an attribution graph reads it per channel of the last dimension too: its nodes hold the 6 channels (not
    # the 16 rows of pixels), and CRP through each group of them reaches the layer below
    lens.label()
    graph = lens.attribution_graph("red", ["conv.0", "mlp.1"], cut=0.0)
    upper = {unit for node in graph.nodes if node.layer == "mlp.1" for unit in node.units}
    assert upper and upper <= {f"mlp.1/{channel}" for channel in range(6)}
    assert graph.edges and all(edge["source"].startswith("mlp.1:") and edge["target"].startswith("conv.0:") for edge in graph.edges)
    # a projection removes a direction of its 6 channels on the last dimension, and moves the tinted images'
    # component along it to the clean mean at every position, as for any map (test_correction: known answers)
    fix = lens.correct("red", Artifact(tint=(255, 0, 0)), layer="mlp.1", progress=False).fix
    assert fix.channels_last and fix.direction.shape == (6,)
    assert pruning_effect(lens, ["mlp.1/2"], data)["pruned"] == {"mlp.1": [2]}  # switched off on its last dimension (test_units)
    # an explanation reads the layer's channels along its last dimension: each unit's relevance on the image
    # is the one LRP gives through the channels-second view, and its heatmap is CRP through that channel
    (layer,) = lens.explain(0, layers=["mlp.1"], top=3).layers
    units = [unit for group in layer.groups for unit in group.units] + layer.against
    inputs = model.preprocessing(data.load(0))[None]
    relevance = RelevanceModel(model.module, inputs)
    with relevance.attributing() as modified:
        target = modified(inputs).argmax(dim=1)
        _, expected = unit_relevance(modified, inputs, target, ["mlp.1"], channels_last={"mlp.1"})
    assert len(units) >= 3 and len({unit.unit for unit in units}) == len(units)
    shares = expected["mlp.1"][0] / expected["mlp.1"][0].abs().sum()  # of the layer's summed absolute relevance
    for unit in units:
        assert unit.share == pytest.approx(float(shares[int(unit.unit.split("/")[1])]), rel=1e-4, abs=1e-6)
        assert unit.heatmap.shape == inputs.shape[-2:] and bool(unit.heatmap.isfinite().all())
