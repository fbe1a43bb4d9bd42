"""What deduplicated embedding saves: distinct crops embedded against (unit, example) slots, and the
embed stage against embedding every probe image with the same foundation model, in one run.

The reference library embeds every probe image (or, with cropping, every slot); semlens embeds each
distinct (sample, box) once. Both timings use the same foundation model, batch size and model views.

    PYTHONPATH=tests/support python benchmarks/embedding.py [--images 640] [--k 5] [--crop activation|none]

(``tests/support`` makes the dev environment's CUDA torchvision importable, which ``conse`` meets
through transformers; see tests/support/sitecustomize.py.)
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

from semlens import BuildConfig, load_foundation_model, load_model
from semlens.build.builder import LensBuilder
from semlens.build.embed import chunks
from semlens.data import FolderData
from semlens.data.photos import SKIMAGE_PHOTOS, SKLEARN_PHOTOS, write_photo_folder


def embed_every_image(foundation_spec: str, model_spec: str, folder: Path, batch: int) -> float:
    """Seconds to load the foundation model, then decode, view and embed every probe image once (what
    embedding the data set costs; the embed stage's time includes loading the model too)."""
    view, data = load_model(model_spec).preprocessing.view, FolderData(folder)
    start = time.perf_counter()
    foundation = load_foundation_model(foundation_spec)
    foundation.batch_size = batch
    for begin, end in chunks(len(data), batch * 4):
        foundation.encode_images([view(data.load(index)) for index in range(begin, end)])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="zoo:efficientnet-lite0")
    parser.add_argument("--layers", nargs="*", default=["_blocks.15"])
    parser.add_argument("--images", type=int, default=640, help="probe images (crops of the bundled photos)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--crop", default="activation", choices=["activation", "none"])
    parser.add_argument("--foundation", default="conse")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        per_photo = math.ceil(args.images / (len(SKIMAGE_PHOTOS) + len(SKLEARN_PHOTOS)))
        folder = write_photo_folder(Path(tmp) / "photos", per_photo=per_photo)
        config = BuildConfig(
            model=args.model, layers=args.layers, data=f"folder:{folder}", foundation=args.foundation, k=args.k,
            crop=args.crop, class_relevance=False, embed_batch_size=args.batch, device="cpu",
        )  # fmt: skip
        load_foundation_model(args.foundation)  # imports and file caches warm for both timings alike
        builder = LensBuilder(config, Path(tmp) / "bench.lens", progress=False)
        builder.collect()
        start = time.perf_counter()
        builder.embed()
        embed_s = time.perf_counter() - start
        summary = builder.summary()
        every_s = embed_every_image(args.foundation, args.model, folder, args.batch)

    units = sum(layer.units for layer in summary.layers)
    print(f"model {args.model}, layers {' '.join(args.layers)} ({units} units), k {args.k}, crop {args.crop}")
    print(f"probe images {summary.samples}, foundation {args.foundation}, batch {args.batch}")
    print(f"(unit, example) slots      {summary.example_slots}")
    print(f"distinct crops embedded    {summary.distinct_crops}")
    print(f"ratio slots / distinct = {summary.example_slots / summary.distinct_crops:.2f}")
    print(f"ratio probe images / distinct = {summary.samples / summary.distinct_crops:.2f}")
    print(f"embed stage (distinct crops)    {embed_s:.1f} s")
    print(f"embed every probe image         {every_s:.1f} s")
    print(f"ratio every image / embed stage = {every_s / embed_s:.2f}")


if __name__ == "__main__":
    main()
