"""Vectorised clarity + polysemanticity over a whole layer against a per-unit scikit-learn loop.

Synthetic units: every third unit has its examples around two random directions (a polysemantic
unit), the rest are plain Gaussian noise; 2% of the slots are empty (NaN). The loop (numpy clarity,
``KMeans(n_clusters=2, n_init=1)``) runs on the first ``--subset`` units only and its time is scaled
linearly to all units for the ratio; both sides report the median of ``--repeats`` runs. Agreement
is reported on that subset, separately for the two kinds of unit: on noise units k-means has no
unique answer, so different starts may end in different local optima. For that reason the subset
is also clustered (untimed) with ``n_init=10``, which keeps the best of ten k-means++ starts.

    python benchmarks/measures.py [--units 10000] [--examples 30] [--dim 512] [--subset 500]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, TypeVar

import numpy as np
import torch
from sklearn.cluster import KMeans

from semlens.analysis.measures import clarity, polysemanticity

Result = TypeVar("Result")


def synthetic(units: int, examples: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    data = torch.randn(units, examples, dim, generator=generator)
    split = torch.arange(0, units, 3)
    centres = torch.randn(len(split), 2, dim, generator=generator)
    sizes = torch.randint(1, examples, (len(split), 1), generator=generator)
    side = (torch.arange(examples) >= sizes).long()
    data[split] = torch.take_along_dim(centres, side[..., None], dim=1) + 0.5 * data[split]
    data[torch.rand(units, examples, generator=generator) < 0.02] = float("nan")
    return data


def per_unit_loop(data: np.ndarray, n_init: int) -> tuple[np.ndarray, np.ndarray]:
    """The straightforward way: one unit at a time, a similarity matrix and a scikit-learn KMeans each."""
    clear, poly = np.full(len(data), np.nan), np.full(len(data), np.nan)
    for unit, examples in enumerate(data):
        x = examples[~np.isnan(examples).any(axis=1)]
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        n = len(x)
        clear[unit] = ((x @ x.T).sum() - n) / (n * (n - 1))
        labels = KMeans(n_clusters=2, n_init=n_init, random_state=0).fit(x).labels_
        a, b = x[labels == 0].mean(axis=0), x[labels == 1].mean(axis=0)
        poly[unit] = 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return clear, poly


def timed(function: Callable[[], Result], repeats: int) -> tuple[float, Result]:
    """Median wall time of ``repeats`` calls (machine noise is large on shared CPUs) and the last result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=10_000)
    parser.add_argument("--examples", type=int, default=30)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--subset", type=int, default=500, help="units run through the scikit-learn loop")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    data = synthetic(args.units, args.examples, args.dim, torch.Generator().manual_seed(0))
    on_device = data.to(args.device)
    subset = data[: args.subset].double().numpy()

    def synced(measure: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            values = measure(on_device)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            return values

        return run

    polysemanticity(on_device[:100])  # warm-up
    clarity_s, clear = timed(synced(clarity), args.repeats)
    poly_s, poly = timed(synced(polysemanticity), args.repeats)
    vector_s = clarity_s + poly_s
    loop_s, (loop_clear, loop_poly) = timed(lambda: per_unit_loop(subset, n_init=1), args.repeats)
    scaled_s = loop_s * args.units / len(subset)
    best_of_ten = per_unit_loop(subset, n_init=10)[1]

    ours = poly[: len(subset)].cpu().double().numpy()
    two = np.arange(len(subset)) % 3 == 0
    clarity_gap = np.abs(clear[: len(subset)].cpu().double().numpy() - loop_clear).max()
    print(
        f"{args.units} units x {args.examples} examples x {args.dim} dims ({two.mean():.0%} two-cluster units), "
        f"device {args.device}, {torch.get_num_threads()} torch threads, median of {args.repeats} runs"
    )
    print(
        f"vectorised clarity + polysemanticity: {vector_s:.3f} s  "
        f"(clarity {clarity_s:.3f} s, polysemanticity {poly_s:.3f} s)"
    )
    print(
        f"per-unit loop (numpy clarity + sklearn KMeans n_init=1): {loop_s:.3f} s for {len(subset)} units, "
        f"scaled x{args.units / len(subset):g} to {args.units} units: {scaled_s:.1f} s"
    )
    print(f"ratio loop (scaled) / vectorised = {scaled_s / vector_s:.1f}")
    print(f"agreement on the {len(subset)} loop units: clarity max |diff| {clarity_gap:.1e}")
    for reference, values in (("n_init=1 (timed)", loop_poly), ("n_init=10 (untimed)", best_of_ten)):
        difference = np.abs(ours - values)
        print(f"  polysemanticity vs sklearn {reference}:")
        for name, mask in (("all", slice(None)), ("two-cluster", two), ("noise", ~two)):
            print(
                f"    {name:>11} units: mean |diff| {difference[mask].mean():.2e}, max {difference[mask].max():.2e}, "
                f"same (|diff| < 1e-4) {np.mean(difference[mask] < 1e-4):.0%}, "
                f"mean value ours {ours[mask].mean():.3f} / sklearn {values[mask].mean():.3f}"
            )


if __name__ == "__main__":
    main()
