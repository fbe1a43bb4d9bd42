"""Scale out: two gloo processes under torchrun, and shards merged, give exactly the single-process Lens."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from semlens import BuildConfig, Lens, build_lens
from semlens._util.errors import SemlensError
from semlens.cli import app
from semlens.pipeline.builder import LensBuilder
from semlens.pipeline.merge import merge_shards
from semlens.store.trust import UntrustedSpecError

LAYERS = ["features.0", "features.3:pool=max", "head:signed=true"]
# 30 images in 5 batches of 7 and relevance crops in batches of 16 split unevenly over 2 ranks; 4 embedding chunks of 16
OPTIONS = dict(k=5, batch_size=7, embed_batch_size=4, workers=0)
ARRAYS = ("scores", "samples", "maps", "inactive", "boxes", "theta", "example_embeddings")


def config(folder: Path, clip: Path, **overrides) -> BuildConfig:
    return BuildConfig(
        model="py:tiny_models:tiny_cnn", layers=LAYERS, data=f"folder:{folder}", foundation=f"hf:{clip}", **{**OPTIONS, **overrides}
    )


def run_args(folder: Path, clip: Path, out: Path, *extra: str) -> list[str]:
    return [
        "run", "--model", "py:tiny_models:tiny_cnn", "--data", f"folder:{folder}", "--foundation", f"hf:{clip}",
        "--out", str(out), "-k", "5", "--batch-size", "7", "--embed-batch-size", "4", "--workers", "0", "--no-progress",
        *[part for layer in LAYERS for part in ("--layer", layer)], *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory, colour_folder, tiny_clip_dir) -> Lens:
    return build_lens(config(colour_folder, tiny_clip_dir), tmp_path_factory.mktemp("single") / "one.lens", progress=False)


def assert_same_lens(ours: Lens, reference: Lens) -> None:
    assert ours.manifest["identity"] == reference.manifest["identity"]
    assert ours.manifest["layers"] == reference.manifest["layers"]
    assert ours.examples.failures() == reference.examples.failures()
    assert ours.store.read_json("samples.json") == reference.store.read_json("samples.json")
    for layer in reference.layers:
        for name in ARRAYS:
            mine, theirs = getattr(ours.arrays, name)(layer), getattr(reference.arrays, name)(layer)
            assert (mine is None) == (theirs is None), (layer, name)
            if mine is not None:
                assert torch.equal(mine.nan_to_num(), theirs.nan_to_num()), (layer, name)
        relevance = reference.arrays.class_relevance(layer)
        for key, value in (relevance or {}).items():
            assert torch.equal(ours.arrays.class_relevance(layer)[key].nan_to_num(), value.nan_to_num()), (layer, key)


def test_two_gloo_ranks_under_torchrun_equal_one_process(tmp_path, reference, colour_folder, tiny_clip_dir) -> None:
    out = tmp_path / "ranks.lens"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "semlens.cli"]
    finished = subprocess.run([*command, *run_args(colour_folder, tiny_clip_dir, out, "--json")], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-4000:]
    assert json.loads(finished.stdout)["samples"] == 30  # one summary: rank 0 alone reports
    assert not list(out.glob("collect.partial*")) and not (out / "embed.partial").exists()
    assert_same_lens(Lens.open(out), reference)


def test_two_ranks_building_whole_images_take_the_crop_responses_each_kept(tmp_path, colour_folder, tiny_clip_dir) -> None:
    """Each rank keeps the activations of its own samples; rank 0 reads every rank's file, runs no model pass."""
    out = tmp_path / "ranks.lens"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "semlens.cli"]
    finished = subprocess.run([*command, *run_args(colour_folder, tiny_clip_dir, out, "--crop", "none")], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-4000:]
    single = build_lens(config(colour_folder, tiny_clip_dir, crop="none"), tmp_path / "one.lens", progress=False)
    ranks = Lens.open(out)
    stage = ranks.manifest["stages"]["responses"]
    assert stage["from_collection"] == stage["crops"] > 1 and not list(out.glob("collect.activations*"))
    for layer in single.layers:
        torch.testing.assert_close(ranks.arrays.read(layer, "responses")["cross"], single.arrays.read(layer, "responses")["cross"], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, colour_folder, tiny_clip_dir) -> list[Path]:
    """The collect stage in 3 shards, each a partial Lens, as a job array would run them."""
    root = tmp_path_factory.mktemp("shards")
    parts = [root / f"part{index}.lens" for index in range(3)]
    for index, part in enumerate(parts):
        result = CliRunner().invoke(app, run_args(colour_folder, tiny_clip_dir, part, "--shard", f"{index}/3", "--json"))
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["stages"] == {"collect": "done"}
    return parts


def test_shards_merged_equal_one_process(tmp_path, reference, shards) -> None:
    merge_shards(list(reversed(shards)), tmp_path / "merged.lens", progress=False)
    assert_same_lens(Lens.open(tmp_path / "merged.lens"), reference)


def test_shards_from_elsewhere_are_merged_only_when_trusted(tmp_path, reference, shards, monkeypatch) -> None:
    monkeypatch.setenv("SEMLENS_CACHE", str(tmp_path / "another-users-cache"))  # shards this user did not build
    with pytest.raises(UntrustedSpecError, match="was not built on this machine"):
        merge_shards(shards, tmp_path / "merged.lens", progress=False)
    assert not (tmp_path / "merged.lens").exists()
    merge_shards(shards, tmp_path / "merged.lens", progress=False, trust=True)
    assert_same_lens(Lens.open(tmp_path / "merged.lens"), reference)


def test_a_shard_whose_build_settings_were_edited_is_no_longer_trusted(tmp_path, shards) -> None:
    edited = tmp_path / "part0.lens"
    shutil.copytree(shards[0], edited)
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["settings"]["model"] = "py:planted_module:factory"  # merge builds from the settings: they must be trusted too
    (edited / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UntrustedSpecError, match="was not built on this machine"):
        merge_shards([edited, *shards[1:]], tmp_path / "merged.lens", progress=False)
    assert not (tmp_path / "merged.lens").exists()


def test_merge_refuses_parts_that_do_not_make_one_lens(tmp_path, reference, shards, colour_folder, tiny_clip_dir) -> None:
    other = tmp_path / "other.lens"
    LensBuilder(config(colour_folder, tiny_clip_dir, shard="1/3", k=4), other, progress=False).run()
    halves = tmp_path / "half.lens"
    LensBuilder(config(colour_folder, tiny_clip_dir, shard="1/2"), halves, progress=False).run()
    cases = [
        ([shards[0], shards[2]], "shard(s) 1/3 missing"),
        ([shards[0], shards[1], shards[1], shards[2]], "shard 1/3 is given more than once"),
        ([shards[0], other, shards[2]], "was built from other inputs than", "collect"),
        ([shards[0], halves, shards[2]], "different numbers of shards (2, 3)"),
        ([reference.path, shards[1]], "is not a shard"),
    ]
    runner = CliRunner()
    for parts, *fragments in cases:
        out = tmp_path / "merged.lens"
        result = runner.invoke(app, ["merge", str(out), *map(str, parts)])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        for fragment in fragments:
            assert fragment in " ".join(result.output.split()), result.output
        assert not out.exists()
    with pytest.raises(SemlensError, match="is shard 0/3 of a Lens"):
        Lens.open(shards[0])


def test_merge_refuses_shards_split_with_other_batch_sizes(tmp_path, shards, colour_folder, tiny_clip_dir) -> None:
    other = tmp_path / "batch8.lens"
    LensBuilder(config(colour_folder, tiny_clip_dir, shard="1/3", batch_size=8), other, progress=False).run()
    with pytest.raises(SemlensError, match="do not cover the data exactly once: build every shard with the same --batch-size"):
        merge_shards([shards[0], other, shards[2]], tmp_path / "merged.lens", progress=False)


def test_a_shard_without_samples_is_refused(tmp_path, colour_folder, tiny_clip_dir) -> None:
    with pytest.raises(SemlensError, match="shard 0/8 holds no samples: the data makes only 5 batches"):
        LensBuilder(config(colour_folder, tiny_clip_dir, shard="0/8"), tmp_path / "part.lens", progress=False)


def test_a_build_leaves_a_process_group_it_did_not_make(tmp_path, reference, colour_folder, tiny_clip_dir) -> None:
    """The user's own group (here one gloo rank) outlives the build; the Lens is the single-process one."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        lens = build_lens(config(colour_folder, tiny_clip_dir), tmp_path / "grouped.lens", progress=False)
        assert dist.is_initialized()
        dist.barrier()  # still usable
    finally:
        dist.destroy_process_group()
    assert_same_lens(lens, reference)


def test_a_shard_s_summary_says_it_is_a_shard_to_merge(tmp_path, colour_folder, tiny_clip_dir) -> None:
    result = CliRunner().invoke(app, run_args(colour_folder, tiny_clip_dir, tmp_path / "part.lens", "--shard", "0/2"))
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "a shard: its top-k collected, nothing embedded yet (`semlens merge OUT PARTS...`" in said and "0 distinct crops" not in said
