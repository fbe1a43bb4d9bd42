"""Cost of the collection pass (hooks + unit scores + streaming top-k) over a bare forward pass.

Both passes run the same model over the same in-memory batches, interleaved and repeated so that
machine noise hits both alike; the ratio of the medians is reported (goal: under 1.10).

    python benchmarks/collect.py [--model zoo:efficientnet-lite0] [--images 256] [--batch 32] [--k 30]
        [--device cuda] [--precision float32|bfloat16|float16]

``--precision`` other than float32 runs both passes under autocast in that dtype, as a build with
``--precision`` does (``auto`` is bfloat16 on CUDA).

``--rescore`` also times what exact top-k costs at reduced precision, forced on at any precision: the pass that
keeps ``CANDIDATES_PER_K`` x k candidates per unit (no maps), then the float32 re-scoring (TF32 off) of the
distinct candidates (``build.collect.rescore``), against the plain collection pass; it prints the share of the
images that were candidates. ``--displacement`` (with a reduced ``--precision``) says how many candidates the
margin needs: per unit, the lowest place in the reduced-precision order of a sample of the float32 top-k
(TF32 off), over k; and how far below the float32 k-th the reduced ranking's k-th sample scores. Random inputs make many units share few extreme images: pass ``--natural`` for
crops of the photographs that ship with scikit-image instead.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from semlens import LayerSpec, list_layers, load_model
from semlens._util.devices import strict_float32
from semlens.model.units import UnitReader, resolve_module
from semlens.pipeline.collect import CANDIDATES_PER_K, Collector, iterate_batches, rescore


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="zoo:efficientnet-lite0")
    parser.add_argument("--layers", nargs="*", default=None, help="default: every conv block output and the head")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--rescore", action="store_true", help="also time candidates + float32 re-scoring")
    parser.add_argument("--displacement", action="store_true", help="where float32's top-k sits in the reduced order")
    parser.add_argument("--natural", action="store_true", help="random crops of scikit-image's photographs as inputs")
    args = parser.parse_args()

    model = load_model(args.model)
    module = model.module.to(args.device).eval()
    infos = {info.name: info for info in list_layers(module, model.example_input().to(args.device))}
    if args.layers is None:
        top_level = [name for name, info in infos.items() if info.units and name.count(".") <= 1]
        args.layers = [name for name in top_level if name.startswith("_blocks.")] + [top_level[-1]]
    specs = [LayerSpec.parse(name) for name in args.layers]
    size = model.preprocessing.input_size
    if args.natural:
        data = model.preprocessing.normalise_pixels(natural_images(args.images, size)).to(args.device)
    else:
        data = torch.randn(args.images, 3, size, size, generator=torch.Generator().manual_seed(0)).to(args.device)

    autocast = None if args.precision == "float32" else getattr(torch, args.precision)
    device_type = torch.device(args.device).type

    def bare() -> None:
        with torch.no_grad(), torch.autocast(device_type, dtype=autocast, enabled=autocast is not None):
            for batch, _ids in iterate_batches(data, args.batch):
                module(batch)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def collecting() -> None:
        with Collector(module, specs, k=args.k, autocast=autocast) as collector:
            for batch, ids in iterate_batches(data, args.batch):
                collector.update(batch, ids)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    rescoring: dict[str, float] = {}

    def candidates_then_rescore() -> None:
        started = time.perf_counter()
        with Collector(module, specs, k=CANDIDATES_PER_K * args.k, autocast=autocast, maps=False) as collector:
            for batch, ids in iterate_batches(data, args.batch):
                collector.update(batch, ids)
        synchronize()
        middle = time.perf_counter()
        _, info = rescore(module, specs, collector.results, lambda ids: iterate_batches(data, args.batch, ids), args.k, args.images)
        synchronize()
        rescoring.setdefault("candidates", []).append(middle - started)
        rescoring.setdefault("rescore", []).append(time.perf_counter() - middle)
        rescoring.update(info)

    def synchronize() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    if args.displacement:
        displacement(module, specs, data, args.batch, args.k, autocast)
    bare()  # warm-up
    bare_times, collect_times = [], []
    for _ in range(args.repeats):
        bare_times.append(timed(bare))
        collect_times.append(timed(collecting))
        if args.rescore:
            candidates_then_rescore()
    bare_s, collect_s = statistics.median(bare_times), statistics.median(collect_times)
    units = sum(infos[name].units or 0 for name in args.layers)
    print(f"model {args.model} on {args.device} ({args.precision}), {args.images} images, batch {args.batch}, k {args.k}")
    print(f"layers hooked: {len(specs)} ({units} units)")
    print(f"bare forward   {bare_s:.3f} s  ({args.images / bare_s:.1f} images/s)")
    print(f"collect pass   {collect_s:.3f} s  ({args.images / collect_s:.1f} images/s)")
    print(f"ratio collect / bare = {collect_s / bare_s:.3f}  (goal <= 1.10)")
    if args.rescore:
        candidates_s, rescore_s = statistics.median(rescoring["candidates"]), statistics.median(rescoring["rescore"])
        print(f"candidates pass {candidates_s:.3f} s  ({CANDIDATES_PER_K * args.k} per unit, no maps)")
        print(f"float32 rescore {rescore_s:.3f} s  over {rescoring['rescored_samples']} distinct candidates "
              f"({rescoring['rescored_samples'] / args.images:.0%} of the images); {rescoring['unconfirmed_units']} units unconfirmed")
        print(f"ratio rescore / collect = {rescore_s / collect_s:.3f}; (candidates + rescore) / collect = {(candidates_s + rescore_s) / collect_s:.3f}")


def every_score(module, specs, data: torch.Tensor, batch: int, autocast: torch.dtype | None) -> dict[str, torch.Tensor]:
    """``[N, U]`` scores of each layer, the forward pass in ``autocast`` or else float32 with TF32 off; a module
    called twice in one forward pass is read the first time, as the Collector reads it."""
    readers = {spec.name: UnitReader(spec) for spec in specs}
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in readers}

    def read(name: str, output: torch.Tensor, calls: int) -> None:
        if len(parts[name]) == calls:
            parts[name].append(readers[name](output)[0].float().cpu())

    hooks = [resolve_module(module, name).register_forward_hook(lambda _m, _i, out, name=name: read(name, out, calls)) for name in readers]
    precision = strict_float32() if autocast is None else torch.autocast(data.device.type, dtype=autocast)
    with torch.no_grad(), precision:
        for calls, (inputs, _ids) in enumerate(iterate_batches(data, batch)):
            module(inputs)
    for hook in hooks:
        hook.remove()
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


def displacement(module, specs, data: torch.Tensor, batch: int, k: int, autocast: torch.dtype | None) -> None:
    """Print how many reduced-precision candidates each unit needs to hold its float32 top-k, and the misses
    of the reduced ranking (as the issue measured them: below the float32 k-th, relative to the unit's peak)."""
    exact, reduced = every_score(module, specs, data, batch, None), every_score(module, specs, data, batch, autocast)
    needed, misses = [], []
    for name, scores in exact.items():
        places = torch.empty_like(scores, dtype=torch.int64)
        order = reduced[name].argsort(dim=0, descending=True, stable=True)
        places.scatter_(0, order, torch.arange(scores.shape[0])[:, None].expand_as(order).contiguous())
        top = scores.argsort(dim=0, descending=True, stable=True)[:k]
        needed.append(places.gather(0, top).amax(dim=0) + 1)
        kth = scores.gather(0, top[-1:])[0]
        kept = scores.gather(0, order[:k]).amin(dim=0)  # float32 score of the worst sample the reduced ranking keeps
        misses.append((kth - kept).clamp_min(0) / scores.abs().amax(dim=0).clamp_min(1e-12))
    needed, misses = torch.cat(needed).float() / k, torch.cat(misses)
    print(f"displacement ({autocast} against float32, {len(needed)} units, k {k}): exact top-k without re-scoring in "
          f"{int((needed <= 1).sum())} units; candidates needed / k: median {needed.median():.2f}, 99 % {needed.quantile(0.99):.2f}, "
          f"max {needed.max():.2f} (kept: {CANDIDATES_PER_K}); worst miss {misses.max():.2%} of the unit's peak")


def natural_images(count: int, size: int) -> torch.Tensor:
    """``count`` random square crops (a quarter of the short side up to all of it, every other one mirrored) of
    scikit-image's photographs, as uint8 ``[count, 3, size, size]``."""
    import numpy as np
    import skimage.data

    names = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "immunohistochemistry", "camera", "coins", "clock", "cell", "page", "text", "moon", "grass", "gravel", "brick", "colorwheel", "logo"]  # fmt: skip
    photos = []
    for name in names:
        pixels = torch.from_numpy(np.asarray(getattr(skimage.data, name)())).float()
        pixels = pixels[..., None].expand(-1, -1, 3) if pixels.dim() == 2 else pixels[..., :3]
        photos.append(pixels.permute(2, 0, 1))
    generator, crops = torch.Generator().manual_seed(0), []
    for index in range(count):
        photo = photos[index % len(photos)]
        height, width = photo.shape[1:]
        side = int(torch.randint(min(height, width) // 4, min(height, width) + 1, (1,), generator=generator))
        top, left = (int(torch.randint(0, extent - side + 1, (1,), generator=generator)) for extent in (height, width))
        crop = torch.nn.functional.interpolate(photo[None, :, top : top + side, left : left + side], size=size, mode="bilinear", antialias=True)[0]
        crops.append(crop.flip(-1) if index % 2 else crop)
    return torch.stack(crops).clamp(0, 255).to(torch.uint8)


if __name__ == "__main__":
    main()
