"""Memory of the collection pass: its peak RSS must stay flat as the data grows.

A synthetic stream of N random 32x32 images (made from the sample index on the fly, never held)
goes through the real collect stage (data loader, preprocessing, hooks, streaming top-k,
checkpoints) of a tiny CNN. Each size runs in a fresh process, so every peak is its own.

    python benchmarks/memory.py [--images 10000 1000000] [--batch 256] [--k 30] [--workers 0] [--json]

Reported per size: the peak RSS of the process (``ru_maxrss``), its RSS before the pass, the
growth between the two, and the images per second.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from semlens import BuildConfig, LoadedModel, Preprocessing
from semlens.pipeline.builder import LensBuilder

IMAGES_VARIABLE = "SEMLENS_MEMORY_IMAGES"
LAYERS = ["features.0", "features.2", "head"]


class SyntheticStream:
    """``count`` random RGB images, each made from its index when asked for (the same every time)."""

    def __init__(self, count: int, side: int = 32) -> None:
        self.count, self.side = count, side

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return np.random.default_rng(index).integers(0, 256, (self.side, self.side, 3), dtype=np.uint8)

    def fingerprint(self) -> str:
        return f"synthetic-stream-{self.count}x{self.side}"


def synthetic_stream() -> SyntheticStream:
    """The ``py:memory:synthetic_stream`` data spec; its size comes from the environment."""
    return SyntheticStream(int(os.environ[IMAGES_VARIABLE]))


def stream_cnn() -> LoadedModel:
    """The ``py:memory:stream_cnn`` model spec: two strided convs and a linear head (seeded weights)."""
    torch.manual_seed(0)
    module = nn.Sequential()
    module.features = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())
    module.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    module.head = nn.Linear(32, 10)
    return LoadedModel(module.eval(), "py:memory:stream_cnn", Preprocessing(input_size=32, resize=32))


def rss_mb() -> float:
    """The current resident set size, from /proc (no psutil needed)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure(images: int, batch: int, k: int, workers: int) -> dict[str, float]:
    """One collect stage over ``images`` synthetic images, in this process."""
    os.environ[IMAGES_VARIABLE] = str(images)
    sys.path.insert(0, str(Path(__file__).parent))
    config = BuildConfig(
        model="py:memory:stream_cnn", layers=LAYERS, data="py:memory:synthetic_stream",
        k=k, batch_size=batch, workers=workers, device="cpu",
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as directory:
        builder = LensBuilder(config, Path(directory) / "stream.lens", progress=False)
        before = rss_mb()
        started = time.perf_counter()
        builder.collect()
        seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "images": images,
        "peak_rss_mb": round(peak, 1),
        "rss_before_mb": round(before, 1),
        "growth_mb": round(peak - before, 1),
        "seconds": round(seconds, 1),
        "images_per_second": round(images / seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--workers", type=int, default=0, help="data loader workers (their memory is not counted)")
    parser.add_argument("--json", action="store_true", help="one JSON object per size")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_process:
        print(json.dumps(measure(args.images[0], args.batch, args.k, args.workers)))
        return
    for images in args.images:
        command = [sys.executable, __file__, "--in-process", "--images", str(images), "--batch", str(args.batch)]
        command += ["--k", str(args.k), "--workers", str(args.workers)]
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            print(
                f"{result['images']:>9} images: peak RSS {result['peak_rss_mb']:.1f} MB "
                f"(before the pass {result['rss_before_mb']:.1f} MB, +{result['growth_mb']:.1f} MB), "
                f"{result['seconds']:.1f} s, {result['images_per_second']} images/s",
                flush=True,
            )


if __name__ == "__main__":
    main()
