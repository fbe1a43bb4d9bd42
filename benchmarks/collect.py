"""Cost of the collection pass (hooks + unit scores + streaming top-k) over a bare forward pass.

Both passes run the same model over the same in-memory batches, interleaved and repeated so that
machine noise hits both alike; the ratio of the medians is reported (goal: under 1.10).

    python benchmarks/collect.py [--model zoo:efficientnet-lite0] [--images 256] [--batch 32] [--k 30]
        [--device cuda] [--precision float32|bfloat16|float16]

``--precision`` other than float32 runs both passes under autocast in that dtype, as a build with
``--precision`` does (``auto`` is bfloat16 on CUDA).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from semlens import LayerSpec, list_layers, load_model
from semlens.build.collect import Collector, iterate_batches


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
    args = parser.parse_args()

    model = load_model(args.model)
    module = model.module.to(args.device).eval()
    infos = {info.name: info for info in list_layers(module, model.example_input().to(args.device))}
    if args.layers is None:
        top_level = [name for name, info in infos.items() if info.units and name.count(".") <= 1]
        args.layers = [name for name in top_level if name.startswith("_blocks.")] + [top_level[-1]]
    specs = [LayerSpec.parse(name) for name in args.layers]
    size = model.preprocessing.input_size
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

    bare()  # warm-up
    bare_times, collect_times = [], []
    for _ in range(args.repeats):
        bare_times.append(timed(bare))
        collect_times.append(timed(collecting))
    bare_s, collect_s = statistics.median(bare_times), statistics.median(collect_times)
    units = sum(infos[name].units or 0 for name in args.layers)
    print(f"model {args.model} on {args.device} ({args.precision}), {args.images} images, batch {args.batch}, k {args.k}")
    print(f"layers hooked: {len(specs)} ({units} units)")
    print(f"bare forward   {bare_s:.3f} s  ({args.images / bare_s:.1f} images/s)")
    print(f"collect pass   {collect_s:.3f} s  ({args.images / collect_s:.1f} images/s)")
    print(f"ratio collect / bare = {collect_s / bare_s:.3f}  (goal <= 1.10)")


if __name__ == "__main__":
    main()
