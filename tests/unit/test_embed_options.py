"""The embed stage's speed options: channels-last and compiled towers give the same theta up to float
rounding, half precisions give theta within their looser tolerance, and only the precision is part of
the embed fingerprint. On a small random CNN tower (``py:tiny_models:conv_foundation``) on the CPU."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

import semlens._util.devices as devices
import semlens.pipeline.context as context
from semlens import BuildConfig, Lens
from semlens._util.devices import inference_dtype
from semlens._util.errors import SemlensError, SpecError, StaleLensError
from semlens.cli import app
from semlens.foundation import load_foundation_model
from semlens.foundation.hf import load_hf
from semlens.pipeline.builder import LensBuilder
from semlens.world.foundation import ImageTower

CONV = "py:tiny_models:conv_foundation"
LAYERS = ["features.3", "head"]
#: theta of the same function computed in another memory layout or compiled: max abs difference
SAME_FUNCTION = 1e-4
#: theta embedded in bfloat16 or float16 against float32: smallest cosine over the units
HALF_COSINE = 0.999


def build(folder: Path, path: Path, **options) -> LensBuilder:
    config = BuildConfig(
        model="py:tiny_models:tiny_cnn", layers=LAYERS, data=f"folder:{folder}", foundation=CONV, k=5, workers=0,
        crop="activation", class_relevance=False, **options,
    )  # fmt: skip
    builder = LensBuilder(config, path, progress=False)
    builder.run()
    return builder


def theta(builder: LensBuilder) -> dict[str, torch.Tensor]:
    lens = Lens.open(builder.store.root)
    return {layer: lens.arrays.theta(layer) for layer in lens.layers}


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory, colour_folder: Path) -> LensBuilder:
    """float32, contiguous, eager: the reference."""
    return build(colour_folder, tmp_path_factory.mktemp("plain") / "plain.lens", embed_channels_last=False)


@pytest.fixture(scope="module")
def reference(plain: LensBuilder) -> dict[str, torch.Tensor]:
    found = theta(plain)
    for values in found.values():  # units differ by far more than the tolerances below: the checks mean something
        assert (values - values.mean(dim=0)).abs().max() > 100 * SAME_FUNCTION
        assert F.cosine_similarity(values[:, None], values[None], dim=-1).min() < HALF_COSINE - 0.1
    return found


def embed_record(builder: LensBuilder) -> dict:
    return builder.manifest["stages"]["embed"]


def test_channels_last_gives_the_same_theta_up_to_rounding(reference, plain, tmp_path, colour_folder) -> None:
    fast = build(colour_folder, tmp_path / "cl.lens")  # the default
    assert embed_record(fast)["channels_last"] and not embed_record(plain)["channels_last"]
    for layer, values in theta(fast).items():
        assert (values - reference[layer]).abs().max() < SAME_FUNCTION, layer


def test_channels_last_converts_convolutional_towers_only(tiny_clip_dir) -> None:
    conv = load_foundation_model(CONV, device="cpu")
    conv.speed_up(channels_last=True)
    assert conv.channels_last and conv.tower.features[3].weight.is_contiguous(memory_format=torch.channels_last)
    assert conv._to_device(torch.rand(2, 3, 8, 8)).is_contiguous(memory_format=torch.channels_last)
    vit = load_hf(str(tiny_clip_dir), device="cpu")  # its patch embedding is its only convolution
    vit.speed_up(channels_last=True)
    assert not vit.channels_last


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_half_precision_on_the_cpu_gives_theta_within_its_tolerance(precision, reference, tmp_path, colour_folder) -> None:
    half = build(colour_folder, tmp_path / f"{precision}.lens", embed_precision=precision, embed_channels_last=False)
    assert half.identity["embed"]["precision"] == half.manifest["foundation"]["dtype"] == precision
    for layer, values in theta(half).items():
        assert not torch.equal(values, reference[layer]), layer  # it did run in half precision
        assert F.cosine_similarity(values, reference[layer]).min() > HALF_COSINE, layer


def test_a_failed_compile_falls_back_to_the_same_theta_and_is_reported(reference, tmp_path, colour_folder, monkeypatch) -> None:
    def broken(function):
        def call(*args, **kwargs):
            raise RuntimeError("no C++ compiler\nfound")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    fallen = build(colour_folder, tmp_path / "fallen.lens", embed_compile=True, embed_channels_last=False)
    record = embed_record(fallen)
    assert not record["compiled"] and "RuntimeError: no C++ compiler found" in record["compile_fallback"]
    assert record["compile_fallback"] in fallen.summary().fallbacks
    for layer, values in theta(fallen).items():
        assert torch.equal(values, reference[layer]), layer


@pytest.mark.slow  # compiling the tower on a CPU takes 10-50 s
@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="torch.compile's CPU backend needs a C++ compiler")
def test_a_compiled_tower_gives_the_same_theta_up_to_rounding(reference, tmp_path, colour_folder) -> None:
    compiled = build(colour_folder, tmp_path / "compiled.lens", embed_compile=True, embed_channels_last=False)
    record = embed_record(compiled)
    assert record["compiled"] and "compile_fallback" not in record
    for layer, values in theta(compiled).items():
        assert (values - reference[layer]).abs().max() < SAME_FUNCTION, layer


def test_precision_is_part_of_the_embed_fingerprint_and_the_speed_ups_are_not(plain, colour_folder) -> None:
    path = plain.store.root
    before = {file: file.stat().st_mtime_ns for file in path.rglob("*.safetensors")}
    again = build(colour_folder, path, embed_precision="float32", embed_channels_last=True, embed_compile=True)
    assert again.context.stage_key("embed") == plain.context.stage_key("embed")
    assert {file: file.stat().st_mtime_ns for file in path.rglob("*.safetensors")} == before  # nothing embedded again
    with pytest.raises(StaleLensError, match=r"embed\.precision: was None, now 'bfloat16'"):
        build(colour_folder, path, embed_precision="bfloat16")


def test_the_id_does_not_depend_on_the_precision() -> None:
    full = load_foundation_model(CONV, device="cpu")
    half = load_foundation_model(CONV, device="cpu", dtype=torch.bfloat16)
    assert half.tower.head.weight.dtype == torch.bfloat16 and full.tower.head.weight.dtype == torch.float32
    assert half.id == full.id  # a Lens embedded on a GPU opens on a CPU, and the other way round


def test_a_py_factory_without_dtype_is_refused_a_precision_but_loads_in_auto(tiny_clip_dir, monkeypatch) -> None:
    monkeypatch.setenv("SEMLENS_TEST_CLIP", str(tiny_clip_dir))
    with pytest.raises(SpecError, match="takes no dtype argument, so it cannot embed in float16"):
        load_foundation_model("py:tiny_models:tiny_clip", device="cpu", dtype=torch.float16)
    assert load_foundation_model("py:tiny_models:tiny_clip", device="cpu").dtype == torch.float32


def test_an_unknown_embed_precision_names_the_valid_ones() -> None:
    with pytest.raises(SemlensError, match="embed_precision='half' is not one of auto, float32, bfloat16, float16"):
        BuildConfig(model="m", layers=["x"], data="d", embed_precision="half")


@pytest.mark.parametrize(("bf16", "transformer"), [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_on_a_gpu_is_float16_for_cnns_and_bfloat16_where_supported_for_the_rest(bf16, transformer, monkeypatch) -> None:
    monkeypatch.setattr(devices.torch.cuda, "is_bf16_supported", lambda: bf16)
    cnn, vit = ImageTower(), torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, 4), torch.nn.Flatten(), torch.nn.Linear(8, 8))
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert (inference_dtype(cuda, cnn), inference_dtype(cuda, vit), inference_dtype(cuda)) == (torch.float16, transformer, transformer)
    assert inference_dtype(cpu, cnn) == inference_dtype(cpu, vit) == torch.float32


class Attention(torch.nn.Module):
    """A layer named as timm and open_clip name theirs."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = torch.nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.mix(tokens, tokens, tokens)[0]


class AttentionPool2d(Attention):
    """One attention over a CNN's last map, as CLIP's ResNets end."""


def test_a_tower_with_transformer_blocks_gets_bfloat16_behind_convolutions_too(monkeypatch) -> None:
    """A ViT behind a convolutional stem (MobileCLIP-B) or a CNN whose last stages attend (MobileCLIP-S) can pass
    float16's range in its attention and MLPs as a ViT can; one attention pool on a CNN's map (CLIP's ResNets) keeps
    the CNN's float16."""
    monkeypatch.setattr(devices.torch.cuda, "is_bf16_supported", lambda: True)
    stem = [torch.nn.Conv2d(3, 8, 3, 2), torch.nn.Conv2d(8, 8, 3, 2)]
    vit_behind_a_stem = torch.nn.Sequential(*stem, torch.nn.Flatten(2), *(torch.nn.Sequential(Attention(), torch.nn.Linear(8, 8)) for _ in range(3)))
    hybrid = torch.nn.Sequential(*stem, *(torch.nn.Conv2d(8, 8, 3) for _ in range(6)), torch.nn.Flatten(2), Attention(), Attention())
    resnet_with_a_pool = torch.nn.Sequential(*stem, torch.nn.Conv2d(8, 8, 3), torch.nn.Flatten(2), AttentionPool2d())
    cuda = torch.device("cuda")
    assert [inference_dtype(cuda, tower) for tower in (vit_behind_a_stem, hybrid, resnet_with_a_pool, ImageTower())] == [
        torch.bfloat16, torch.bfloat16, torch.float16, torch.float16,
    ]  # fmt: skip


def test_an_embedding_with_inf_or_nan_stops_the_run_with_what_to_change(monkeypatch) -> None:
    """A half precision's overflow would make every theta it enters NaN, silently: the batch is refused instead."""
    remedies = {
        torch.float16: r"in float16: its activations passed float16's range; embed in float32 or bfloat16 \(BuildConfig\(embed_precision=",
        torch.float32: "in float32: the model itself gives them in float32",
    }
    for dtype, remedy in remedies.items():
        model = load_foundation_model(CONV, device="cpu", dtype=dtype)
        pixels = model.preprocess([Image.new("RGB", (32, 32), colour) for colour in ("red", "blue", "green")])
        assert torch.isfinite(model.embed_pixels(pixels)).all()
        overflowing = model._embed_pixels
        monkeypatch.setattr(model, "_embed_pixels", lambda batch: overflowing(batch).index_fill(0, torch.tensor([1]), float("inf")))
        with pytest.raises(SemlensError, match="gave inf or NaN embeddings for 1 of 3 images " + remedy):
            model.embed_pixels(pixels)


def test_the_cli_passes_the_embed_options_on(tmp_path, colour_folder, monkeypatch) -> None:
    monkeypatch.setattr(torch, "compile", lambda function: function)  # compiling itself is tested above
    out = tmp_path / "cli.lens"
    result = CliRunner().invoke(app, [
        "run", "--model", "py:tiny_models:tiny_cnn", "--data", f"folder:{colour_folder}", "--foundation", CONV,
        "--layer", "head", "-k", "3", "--workers", "0", "--crop", "none", "--no-class-relevance", "--no-progress",
        "--out", str(out), "--embed-precision", "bfloat16", "--no-embed-channels-last", "--embed-compile",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = Lens.open(out).manifest
    assert manifest["identity"]["embed"]["precision"] == "bfloat16"
    assert (manifest["stages"]["embed"]["channels_last"], manifest["stages"]["embed"]["compiled"]) == (False, True)


@pytest.mark.parametrize(
    ("device", "cores", "ranks", "workers"),
    [("cpu", 16, 1, 4), ("cuda", 16, 1, 8), ("cuda", 4, 1, 3), ("cuda", 16, 4, 3), ("cpu", 1, 1, 0)],
)
def test_loader_workers_are_cores_less_one_at_most_4_on_a_cpu_and_8_with_a_gpu(device, cores, ranks, workers, monkeypatch) -> None:
    monkeypatch.setattr(context.os, "cpu_count", lambda: cores)
    assert context.default_workers(torch.device(device), ranks) == workers
