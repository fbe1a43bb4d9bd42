"""What deduplicated embedding saves, and what the embed stage's speed options buy, in one run.

The reference library embeds every probe image (or, with cropping, every slot); semlens embeds each
distinct (sample, box) once. Both timings use the same foundation model, batch size and model views.

``--variants`` times the embed stage (loading the foundation model, compiling it if asked, embedding
every distinct crop, storing theta) once per variant per repeat, the variants alternating, on the
crops of one collect stage; each variant's theta is compared with the first's. A variant is ``+``-joined
options: ``plain`` (none), ``channels_last``, ``compile``, a precision (``float32``, ``bfloat16``,
``float16``), ``batch=N`` and ``workers=N`` (data-loader processes); an option left out is off (workers:
the build's default), the precision float32 on the CPU.

    PYTHONPATH=tests/support python benchmarks/embedding.py [--images 640] [--k 5] [--crop activation|none]
    PYTHONPATH=tests/support python benchmarks/embedding.py --no-every-image --repeats 3 \\
        --variants plain channels_last compile channels_last+compile

``--loader`` times instead the data-loader workers' hand-over alone: spans of 4 batches of 64 preprocessed
224 px crops (zeros: no decoding, no preprocessing), as float32, bfloat16 (what a half-precision GPU tower's
batches cross in since stop 57) and uint8, through shared memory, pinned on a GPU and copied to the device.

    PYTHONPATH=tests/support python benchmarks/embedding.py --loader [--device cuda] [--workers 1 4 8]

(``tests/support`` makes the dev environment's CUDA torchvision importable, which ``conse`` meets
through transformers; see tests/support/sitecustomize.py.)
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

import semlens.pipeline.embed_stage as embed_stage
from semlens import BuildConfig, load_foundation_model, load_model
from semlens._util.devices import PRECISIONS, embed_dtype, pick_device
from semlens.data import FolderData
from semlens.data.photos import SKIMAGE_PHOTOS, SKLEARN_PHOTOS, write_photo_folder
from semlens.pipeline.builder import LensBuilder
from semlens.pipeline.embed import chunks
from semlens.store.files import layer_file


def embed_every_image(foundation_spec: str, model_spec: str, folder: Path, batch: int, device: str) -> float:
    """Seconds to load the foundation model, then decode, view and embed every probe image once (what
    embedding the data set costs; the embed stage's time includes loading the model too)."""
    view, data = load_model(model_spec).preprocessing.view, FolderData(folder)
    start = time.perf_counter()
    foundation = load_foundation_model(foundation_spec, device=device)
    foundation.batch_size = batch
    for begin, end in chunks(len(data), batch * 4):
        foundation.encode_images([view(data.load(index)) for index in range(begin, end)])
    return time.perf_counter() - start


def tower_split(foundation_spec: str, device: str, precision: str, batch: int, crops: int) -> tuple[float, float]:
    """Where the embed stage's time goes: seconds the foundation model's image tower takes for ``crops``
    inputs already preprocessed (one batch of random 224 px images preprocessed once and embedded again
    and again, host-to-device copies included), and seconds one CPU core takes to preprocess ``crops``
    such images (the work the loader workers share, decoding and cutting the crops left out). A tower
    far faster than the stage means the stage waits on its loader workers."""
    foundation = load_foundation_model(foundation_spec, device=device, dtype=embed_dtype(precision))
    foundation.speed_up(channels_last=True)
    generator = torch.Generator().manual_seed(0)
    images = [
        Image.fromarray(torch.randint(0, 256, (224, 224, 3), dtype=torch.uint8, generator=generator).numpy())
        for _ in range(batch)
    ]
    start = time.perf_counter()
    pixels = foundation.preprocess(images)
    preprocess_s = (time.perf_counter() - start) * crops / batch
    if isinstance(pixels, torch.Tensor):
        pixels = pixels.pin_memory() if foundation.device.type == "cuda" else pixels
    foundation.embed_pixels(pixels)  # warm-up: kernels chosen, memory allocated
    synchronize = torch.cuda.synchronize if foundation.device.type == "cuda" else (lambda: None)
    synchronize()
    start = time.perf_counter()
    for _ in range(math.ceil(crops / batch)):
        foundation.embed_pixels(pixels)
    synchronize()
    return time.perf_counter() - start, preprocess_s


class _Spans(torch.utils.data.Dataset):
    """Spans as the embed stage's workers hand them over (``CropChunks``): 4 batches of 64 crops at 224 px, zeros."""

    def __init__(self, spans: int, dtype: torch.dtype) -> None:
        self.spans, self.dtype = spans, dtype

    def __len__(self) -> int:
        return self.spans

    def __getitem__(self, position: int) -> list[torch.Tensor]:
        return [torch.zeros(64, 3, 224, 224, dtype=self.dtype) for _ in range(4)]


def hand_over(device: torch.device, workers: list[int], spans: int = 24) -> None:
    """Crops per second that the workers' hand-over alone carries to ``device``, per dtype and worker count."""
    pinned = device.type == "cuda"
    synchronize = torch.cuda.synchronize if pinned else (lambda: None)
    print(f"the workers' hand-over alone: {spans} spans of 4 x 64 crops at 224 px to {device}{' (pinned)' if pinned else ''}")
    for dtype in (torch.float32, torch.bfloat16, torch.uint8):
        for count in workers:
            loader = torch.utils.data.DataLoader(_Spans(spans, dtype), batch_size=None, num_workers=count, pin_memory=pinned)
            start, crops = time.perf_counter(), 0
            for batches in loader:
                for batch in batches:
                    batch.to(device, non_blocking=True)
                    crops += batch.shape[0]
            synchronize()
            print(f"  {str(dtype):15s} workers {count:2d}: {crops / (time.perf_counter() - start):6.0f} crops/s", flush=True)


def variant_config(config: BuildConfig, variant: str) -> BuildConfig:
    """The build settings of a ``+``-joined variant such as ``channels_last+compile+batch=128``."""
    options = {"embed_channels_last": False, "embed_compile": False, "embed_precision": "float32"}
    for option in variant.split("+"):
        if option == "channels_last":
            options["embed_channels_last"] = True
        elif option == "compile":
            options["embed_compile"] = True
        elif option in PRECISIONS:
            options["embed_precision"] = option
        elif option.startswith("batch="):
            options["embed_batch_size"] = int(option.removeprefix("batch="))
        elif option.startswith("workers="):
            options["workers"] = int(option.removeprefix("workers="))
        elif option != "plain":
            raise SystemExit(
                f"unknown variant option {option!r}: plain, channels_last, compile, batch=N, workers=N or one of {', '.join(PRECISIONS)}"
            )
    return replace(config, **options)


def run_variant(builder: LensBuilder, config: BuildConfig) -> tuple[float, float, dict[str, torch.Tensor], dict]:
    """The embed stage under ``config``'s embed settings: its seconds, the seconds of loading the
    foundation model within them, theta per layer and the stage's record."""
    loading = []

    def timed_load(*args, **kwargs):
        start = time.perf_counter()
        model = load_foundation_model(*args, **kwargs)
        loading.append(time.perf_counter() - start)
        return model

    builder.context.config = config
    builder.manifest["stages"].pop("embed", None)  # the crops of the crop stage stay; embedding runs again
    embed_stage.load_foundation_model = timed_load
    try:
        builder.embed()
    finally:
        embed_stage.load_foundation_model = load_foundation_model
    record = builder.manifest["stages"]["embed"]
    theta = {spec.name: builder.store.read_tensors(layer_file(spec.name, "embed"))["theta"] for spec in builder.specs}
    return record["seconds"], loading[0], theta, record


def compare(theta: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Largest absolute difference and smallest cosine of theta against the reference, over all units."""
    diff = max(float((theta[layer] - reference[layer]).abs().max()) for layer in theta)
    cosine = min(float(F.cosine_similarity(theta[layer], reference[layer]).min()) for layer in theta)
    return diff, cosine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="zoo:efficientnet-lite0")
    parser.add_argument("--layers", nargs="*", default=["_blocks.15"])
    parser.add_argument("--images", type=int, default=640, help="probe images (crops of the bundled photos)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--crop", default="activation", choices=["activation", "none"])
    parser.add_argument("--crop-rule", default=None, help="crop rule(s) (default: the library's, peak+share; the docs' figures: peak)")
    parser.add_argument("--foundation", default="conse")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--variants", nargs="+", default=["channels_last"], help="embed settings to time, alternating")
    parser.add_argument("--repeats", type=int, default=1, help="runs of every variant")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    parser.add_argument("--no-every-image", action="store_true", help="skip timing the embedding of every probe image")
    parser.add_argument("--loader", action="store_true", help="only time the workers' hand-over per dtype (hand_over)")
    parser.add_argument("--workers", type=int, nargs="*", default=None, help="with --loader: worker counts (default 1 and cores - 1, at most 8)")
    parser.add_argument("--tower", action="store_true", help="also time the image tower alone and one core's preprocessing (tower_split)")
    args = parser.parse_args()
    if args.loader:
        hand_over(pick_device(args.device), args.workers or sorted({1, max(1, min(8, (os.cpu_count() or 2) - 1))}))
        return
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())

    with tempfile.TemporaryDirectory() as tmp:
        per_photo = math.ceil(args.images / (len(SKIMAGE_PHOTOS) + len(SKLEARN_PHOTOS)))
        folder = write_photo_folder(Path(tmp) / "photos", per_photo=per_photo)
        config = BuildConfig(
            model=args.model, layers=args.layers, data=f"folder:{folder}", foundation=args.foundation, k=args.k,
            crop=args.crop, crop_rule=args.crop_rule, class_relevance=False, embed_batch_size=args.batch, device=args.device,
        )  # fmt: skip
        load_foundation_model(args.foundation, device=args.device)  # imports and file caches warm for every timing alike
        builder = LensBuilder(config, Path(tmp) / "bench.lens", progress=False)
        builder.collect()
        seconds: dict[str, list[float]] = {variant: [] for variant in args.variants}
        embedding = {variant: [] for variant in args.variants}  # the stage less loading the model
        agreement, records = {}, {}
        for _ in range(args.repeats):
            reference = None
            for variant in args.variants:
                took, load, theta, records[variant] = run_variant(builder, variant_config(config, variant))
                seconds[variant].append(took)
                embedding[variant].append(took - load)
                reference = reference or theta
                agreement.setdefault(variant, compare(theta, reference))
        summary = builder.summary()
        every_s = None if args.no_every_image else embed_every_image(args.foundation, args.model, folder, args.batch, args.device)
        split = None
        if args.tower:
            precision = variant_config(config, args.variants[0]).embed_precision
            split = tower_split(args.foundation, args.device, precision, args.batch, summary.distinct_crops)

    units = sum(layer.units for layer in summary.layers)
    print(f"model {args.model}, layers {' '.join(args.layers)} ({units} units), k {args.k}, crop {args.crop}")
    device = torch.cuda.get_device_name() if builder.context.device.type == "cuda" else "CPU"
    print(f"probe images {summary.samples}, foundation {args.foundation}, batch {args.batch}, device {device}, torch threads {torch.get_num_threads()}")
    print(f"load average before / after: {load_before} / {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"(unit, example) slots      {summary.example_slots}")
    print(f"distinct crops embedded    {summary.distinct_crops}")
    print(f"ratio slots / distinct = {summary.example_slots / summary.distinct_crops:.2f}")
    print(f"ratio probe images / distinct = {summary.samples / summary.distinct_crops:.2f}")
    first, first_embedding = statistics.median(seconds[args.variants[0]]), statistics.median(embedding[args.variants[0]])
    print(f"\nembed stage per variant ({args.repeats} runs each, alternating; theta against {args.variants[0]};")
    print("'embedding' is the stage less loading the foundation model, compiling included):")
    print(
        f"{'variant':<24} {'stage runs (s)':<22} {'stage':>6} {'ratio':>6} {'embedding runs (s)':<22} {'embed':>6} {'ratio':>6}"
        f" {'max |dtheta|':>12} {'min cos':>9}  applied"
    )
    for variant in args.variants:
        median, (diff, cosine), record = statistics.median(seconds[variant]), agreement[variant], records[variant]
        embedded = statistics.median(embedding[variant])
        runs = " ".join(f"{value:.1f}" for value in seconds[variant])
        embedding_runs = " ".join(f"{value:.1f}" for value in embedding[variant])
        applied = f"channels_last={record['channels_last']} compiled={record['compiled']}"
        if record.get("compile_fallback"):
            applied += f" ({record['compile_fallback']})"
        print(
            f"{variant:<24} {runs:<22} {median:6.1f} {median / first:6.2f} {embedding_runs:<22} {embedded:6.1f}"
            f" {embedded / first_embedding:6.2f} {diff:12.2e} {cosine:9.6f}  {applied}"
        )
    if split is not None:
        tower_s, preprocess_s = split
        print(f"\nwhere the time goes ({summary.distinct_crops} crops, {args.variants[0]}'s precision):")
        print(f"image tower alone, inputs already preprocessed   {tower_s:.1f} s ({summary.distinct_crops / tower_s:.0f} crops/s)")
        print(f"preprocessing on one core (decoding, cutting aside) {preprocess_s:.1f} s ({summary.distinct_crops / preprocess_s:.0f} crops/s)")
        print(f"embed stage less loading, {args.variants[0]}        {first_embedding:.1f} s ({summary.distinct_crops / first_embedding:.0f} crops/s)")
    if every_s is not None:
        embed_s = statistics.median(seconds[args.variants[0]])
        print(f"\nembed stage (distinct crops, {args.variants[0]})   {embed_s:.1f} s")
        print(f"embed every probe image         {every_s:.1f} s")
        print(f"ratio every image / embed stage = {every_s / embed_s:.2f}")


if __name__ == "__main__":
    main()
