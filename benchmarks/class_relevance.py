"""Class relevance on unlabelled data: the LRP pass predicting each sample's class itself (``PREDICTED`` targets,
what the build does) against a forward pass to predict first and the LRP pass after it (the build before).

Both run over the same in-memory batches inside one ``RelevanceModel.attributing()`` block, alternating and
repeated so that machine noise hits both alike; the medians' ratio is reported, and whether both ways gave the
same predictions and the same relevance, bit for bit.

    python benchmarks/class_relevance.py [--model zoo:efficientnet-lite0] [--layers _blocks.10 _blocks.15]
        [--images 64] [--batch 16] [--repeats 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from semlens import load_model
from semlens._util.allocator import freed_memory_kept
from semlens.data import FolderData
from semlens.data.photos import write_photo_folder
from semlens.relevance.lrp import PREDICTED, RelevanceModel, unit_and_error_relevance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="zoo:efficientnet-lite0")
    parser.add_argument("--layers", nargs="+", default=["_blocks.10", "_blocks.15"])
    parser.add_argument("--images", type=int, default=64, help="views of the bundled photos")
    parser.add_argument("--batch", type=int, default=16, help="images per LRP pass (the build sizes it by input pixels)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    model = load_model(args.model)
    module = model.module.to(args.device)
    with tempfile.TemporaryDirectory() as folder:
        data = FolderData(write_photo_folder(folder, per_photo=max(1, args.images // 16)))
        images = torch.stack([model.preprocessing(data.load(index)) for index in range(min(args.images, len(data)))]).to(args.device)
    lrp = RelevanceModel(module, images[:2])
    if not lrp.check().supported:
        raise SystemExit(f"LRP does not support {args.model}: {lrp.check().reason}")

    def predict_first(modified, batch):
        with torch.no_grad():
            targets = module(batch).argmax(dim=1)
        return unit_and_error_relevance(modified, batch, targets, args.layers)

    def predicting_pass(modified, batch):
        return unit_and_error_relevance(modified, batch, torch.full((len(batch),), PREDICTED, device=batch.device), args.layers)

    ways = {"forward, then LRP": predict_first, "LRP predicting": predicting_pass}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    same = True
    with freed_memory_kept(), lrp.attributing() as modified:
        for way in ways.values():  # warm-up
            way(modified, images[: args.batch])
        for _ in range(args.repeats):
            results = {}
            for name, way in ways.items():
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                results[name] = [way(modified, batch) for batch in images.split(args.batch)]
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                seconds[name].append(time.perf_counter() - start)
            first, second = results.values()
            same &= all(
                torch.equal(a[0].argmax(1), b[0].argmax(1)) and all(torch.equal(a[1][layer], b[1][layer]) for layer in args.layers)
                for a, b in zip(first, second)
            )
    print(f"{args.model} {args.layers}, {len(images)} images, {args.batch} a pass, {args.device}, {torch.get_num_threads()} threads")
    for name, times in seconds.items():
        print(f"  {name:20s} median {statistics.median(times):.2f} s  ({', '.join(f'{t:.2f}' for t in times)})")
    ratio = statistics.median(seconds["LRP predicting"]) / statistics.median(seconds["forward, then LRP"])
    print(f"  ratio {ratio:.2f}; same predictions and relevance: {same}")


if __name__ == "__main__":
    main()
