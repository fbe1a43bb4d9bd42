"""A build whose collection pass runs in bfloat16 stores float32's top-k: one process, shards merged, and a run
killed while re-scoring and resumed. On the CPU, as a GPU's autocast would run it."""

from __future__ import annotations

from functools import reduce

import pytest
import torch

import semlens.pipeline.collect_stage as collect_stage
from semlens import BuildConfig, Lens, build_lens
from semlens.pipeline.builder import LensBuilder
from semlens.pipeline.collect import TopK
from semlens.store.files import RESPONSES, LensStore, layer_file

LAYERS = ["features.0", "features.3:pool=max", "head:signed=true"]
NAMES = ["features.0", "features.3", "head"]


def collect(folder, clip, out, **overrides) -> LensStore:
    """The collect stage alone (a shard runs only it), on the CPU also where a GPU is shown to the tests."""
    settings = dict(model="py:tiny_models:tiny_cnn", layers=LAYERS, data=f"folder:{folder}", foundation=f"hf:{clip}",
                    k=5, batch_size=7, workers=0, shard="0/1", device="cpu")  # fmt: skip
    LensBuilder(BuildConfig(**{**settings, **overrides}), out, progress=False).run()
    return LensStore(out)


def topk(store: LensStore, layer: str) -> TopK:
    return TopK.from_state(store.read_tensors(layer_file(layer, "topk")))


def assert_same_topk(ours: TopK, theirs: TopK) -> None:
    assert torch.equal(ours.ids, theirs.ids)
    torch.testing.assert_close(ours.scores, theirs.scores, rtol=1e-6, atol=1e-6)
    if theirs.maps is None:
        assert ours.maps is None
    else:
        torch.testing.assert_close(ours.maps, theirs.maps, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def float32(tmp_path_factory, colour_folder, tiny_clip_dir) -> LensStore:
    return collect(colour_folder, tiny_clip_dir, tmp_path_factory.mktemp("exact") / "float32.lens")


def test_a_bfloat16_collection_stores_the_float32_top_k_and_records_the_rescoring(float32, tmp_path, colour_folder, tiny_clip_dir) -> None:
    reduced = collect(colour_folder, tiny_clip_dir, tmp_path / "bfloat16.lens", precision="bfloat16")
    for layer in NAMES:
        assert_same_topk(topk(reduced, layer), topk(float32, layer))
    manifest = reduced.read_manifest()
    assert manifest["identity"]["collect"] == {"k": 5, "max_map_side": 32, "autocast": "bfloat16", "topk": "float32"}
    assert float32.read_manifest()["identity"]["collect"] == {"k": 5, "max_map_side": 32}  # a CPU float32 Lens as before
    rescored = manifest["stages"]["collect"]["rescored"]
    assert rescored["candidates_per_unit"] == 15 and 15 <= rescored["rescored_samples"] <= 30
    assert rescored["unconfirmed_units"] == 0


def test_bfloat16_shards_merge_into_the_float32_top_k(float32, tmp_path, colour_folder, tiny_clip_dir) -> None:
    parts = [collect(colour_folder, tiny_clip_dir, tmp_path / f"part{index}.lens", precision="bfloat16", shard=f"{index}/2") for index in range(2)]
    for layer in NAMES:
        assert_same_topk(reduce(TopK.merge, [topk(part, layer) for part in parts]), topk(float32, layer))


def test_a_run_killed_while_rescoring_resumes_from_its_candidates(float32, tmp_path, colour_folder, tiny_clip_dir, monkeypatch) -> None:
    out = tmp_path / "resumed.lens"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(collect_stage, "rescore", killed)
    with pytest.raises(KeyboardInterrupt):
        collect(colour_folder, tiny_clip_dir, out, precision="bfloat16", checkpoint_seconds=1e9)
    assert LensStore(out).read_metadata("collect.partial.safetensors")["next_index"] == "30"  # the whole pass kept
    monkeypatch.undo()
    passes = []
    monkeypatch.setattr(collect_stage.Collector, "update", lambda self, inputs, ids, update=collect_stage.Collector.update: (passes.append(self.k), update(self, inputs, ids))[1])
    resumed = collect(colour_folder, tiny_clip_dir, out, precision="bfloat16", checkpoint_seconds=1e9)
    assert passes and set(passes) == {5}  # only the float32 re-scoring ran, with k slots
    assert not (out / "collect.partial.safetensors").exists()
    for layer in NAMES:
        assert_same_topk(topk(resumed, layer), topk(float32, layer))


def whole_image_build(folder, clip, out, **overrides) -> Lens:
    settings = dict(model="py:tiny_models:tiny_cnn", layers=LAYERS, data=f"folder:{folder}", foundation=f"hf:{clip}",
                    k=5, batch_size=7, workers=0, device="cpu", crop="none")  # fmt: skip
    return build_lens(BuildConfig(**{**settings, **overrides}), out, progress=False)


def assert_same_responses(ours: Lens, theirs: Lens) -> None:
    assert ours.manifest["stages"]["responses"]["from_collection"] == ours.manifest["stages"]["responses"]["crops"] > 1
    for layer in NAMES:
        torch.testing.assert_close(ours.arrays.read(layer, RESPONSES)["cross"], theirs.arrays.read(layer, RESPONSES)["cross"], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def whole_float32(tmp_path_factory, colour_folder, tiny_clip_dir) -> Lens:
    return whole_image_build(colour_folder, tiny_clip_dir, tmp_path_factory.mktemp("whole") / "float32.lens")


def test_a_bfloat16_whole_image_build_takes_its_crop_responses_from_the_float32_rescoring(whole_float32, tmp_path, colour_folder, tiny_clip_dir) -> None:
    reduced = whole_image_build(colour_folder, tiny_clip_dir, tmp_path / "bfloat16.lens", precision="bfloat16")
    assert_same_responses(reduced, whole_float32)


def test_a_whole_image_build_interrupted_mid_pass_keeps_the_activations_it_had(whole_float32, tmp_path, colour_folder, tiny_clip_dir, monkeypatch) -> None:
    out, calls = tmp_path / "resumed.lens", []

    def killed_at_the_third_batch(self, inputs, ids, update=collect_stage.Collector.update):
        calls.append(len(ids))
        if len(calls) == 3:
            raise KeyboardInterrupt
        update(self, inputs, ids)

    monkeypatch.setattr(collect_stage.Collector, "update", killed_at_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        whole_image_build(colour_folder, tiny_clip_dir, out, checkpoint_seconds=0)
    assert LensStore(out).read_tensors("collect.partial.safetensors")["kept.ids"].numel() > 0
    monkeypatch.undo()
    assert_same_responses(whole_image_build(colour_folder, tiny_clip_dir, out, checkpoint_seconds=0), whole_float32)
