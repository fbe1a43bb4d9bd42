"""A run killed with SIGKILL (mid-collection, mid-heatmaps, mid-embedding, then mid class relevance) and started again
gives the same Lens."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from semlens import BuildConfig, Lens, build_lens
from semlens.store.files import LensStore

LAYERS = ["features.0", "features.3", "head"]
OPTIONS = dict(k=4, batch_size=4, embed_batch_size=2, workers=0, relevance_batch_size=4)


def command(out: Path, clip: Path) -> list[str]:
    settings = out.parent / "small-passes.toml"  # heatmaps in many passes, so that a checkpoint falls between two
    settings.write_text("relevance_batch_size = 4\n")
    return [
        sys.executable, "-m", "semlens.cli", "run",
        "--model", "py:tiny_models:tiny_cnn", "--data", "py:tiny_models:slow_colours",
        "--foundation", "py:tiny_models:tiny_clip", "--out", str(out),
        *[part for layer in LAYERS for part in ("--layer", layer)],
        "-k", "4", "--batch-size", "4", "--embed-batch-size", "2", "--workers", "0",
        "--checkpoint-seconds", "0", "--no-progress", "--config", str(settings),
    ]  # fmt: skip


def kill_when(process: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    """SIGKILL ``process`` as soon as ``ready()`` holds; fail if it ends or times out first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"run ended before it could be killed:\n{process.stderr.read()}"
        assert time.monotonic() < deadline, "run never reached the point to kill it"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_sigkill_in_every_stage_then_resume_equals_uninterrupted(tmp_path, tiny_clip_dir, monkeypatch):
    monkeypatch.setenv("SEMLENS_TEST_CLIP", str(tiny_clip_dir))
    out = tmp_path / "resumed.lens"
    slow = {**os.environ, "SEMLENS_TEST_DELAY": "0.05"}

    first = subprocess.Popen(command(out, tiny_clip_dir), env=slow, stderr=subprocess.PIPE, text=True)
    kill_when(first, lambda: (out / "collect.partial.safetensors").is_file())
    assert not LensStore(out).read_manifest()["stages"].get("collect", {}).get("complete")

    computing = subprocess.Popen(command(out, tiny_clip_dir), env=slow, stderr=subprocess.PIPE, text=True)
    kill_when(computing, lambda: any((out / "layers").glob("*.crops.partial.safetensors")))  # mid-heatmaps of a layer
    resumed_from = {path.name: LensStore(out).read_tensors(f"layers/{path.name}")["heat"].shape[0] for path in (out / "layers").glob("*.crops.partial.*")}

    second = subprocess.Popen(command(out, tiny_clip_dir), env=slow, stderr=subprocess.PIPE, text=True)
    kill_when(second, lambda: any((out / "embed.partial").glob("*/*.safetensors")))
    assert resumed_from and not list((out / "layers").glob("*.crops.partial*"))  # removed with the layer's heatmaps
    stages = LensStore(out).read_manifest()["stages"]
    assert stages["collect"]["complete"] and not stages.get("embed", {}).get("complete")

    third = subprocess.Popen(command(out, tiny_clip_dir), env=slow, stderr=subprocess.PIPE, text=True)
    kill_when(third, lambda: (out / "relevance.partial.safetensors").is_file())  # mid class relevance
    assert not LensStore(out).read_manifest()["stages"].get("relevance", {}).get("complete")
    checkpointed = int(LensStore(out).read_metadata("relevance.partial.safetensors")["next_index"])

    finished = subprocess.run(command(out, tiny_clip_dir), stderr=subprocess.PIPE, text=True)
    assert finished.returncode == 0, finished.stderr
    assert not (out / "collect.partial.safetensors").exists() and not (out / "embed.partial").exists()
    assert not (out / "relevance.partial.safetensors").exists()
    assert LensStore(out).read_manifest()["stages"]["relevance"]["resumed_at_sample"] == checkpointed > 0  # not explained again
    for name, pairs in resumed_from.items():  # the checkpoint's pairs were taken up, not computed again
        assert LensStore(out).read_manifest()["resumed"][f"layers/{name.replace('.partial', '')}"] == pairs

    reference = build_lens(
        BuildConfig(
            model="py:tiny_models:tiny_cnn",
            layers=LAYERS,
            data="py:tiny_models:slow_colours",
            foundation="py:tiny_models:tiny_clip",
            **OPTIONS,
        ),
        tmp_path / "reference.lens",
        progress=False,
    )
    resumed = Lens.open(out)
    files = sorted(path.relative_to(out) for path in out.rglob("*") if path.is_file() and path.name != "manifest.json")
    assert files == sorted(path.relative_to(reference.path) for path in reference.path.rglob("*") if path.is_file() and path.name != "manifest.json")
    for name in files:  # every file byte for byte, metadata included; the manifests differ by build id, times and resumes
        assert (out / name).read_bytes() == (reference.path / name).read_bytes(), name
    assert resumed.manifest["arrays"] == reference.manifest["arrays"]
    assert resumed.manifest["identity"] == reference.manifest["identity"]
    assert resumed.manifest["layers"] == reference.manifest["layers"]
    for layer in reference.layers:
        for name in ("scores", "samples", "maps", "inactive", "boxes", "theta", "example_embeddings"):
            ours, theirs = getattr(resumed.arrays, name)(layer), getattr(reference.arrays, name)(layer)
            if ours is None:
                assert theirs is None
                continue
            assert torch.equal(ours.nan_to_num(), theirs.nan_to_num()), (layer, name)
        ours, theirs = resumed.arrays.class_relevance(layer), reference.arrays.class_relevance(layer)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[key].nan_to_num(), theirs[key].nan_to_num()) for key in ours), layer
