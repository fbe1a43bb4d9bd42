"""Search latency over a million units: brute force against the faiss index, with its recall@10, in one run.

The units are random Gaussian vectors, the hardest case for an approximate index (no clusters to
exploit; real theta are clustered). Each query is a text probe with its null, as in ``Lens.search``;
both paths go through ``semlens.lens.index.UnitTable.top``, which re-scores the index's candidates exactly.
With ``--responses R`` every unit also gets a response row (its ``cross``) whose score correlates R with its
alignment over the units (on real Lenses 0.41 to 0.90 per query, median 0.79: docs/explanation/performance.md;
0 is the worst case), and both paths rank by alignment and response (``Lens.search``'s default): the index's
candidates are proposed by alignment alone and widened until the ranking is complete, so its recall is
measured against brute force ranking by both.

    python benchmarks/search.py [--units 1000000] [--dim 512] [--queries 50] [--threads 2] [--responses R]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from semlens.lens.index import CANDIDATE_FACTOR, UnitIndex, UnitTable


def latencies(table: UnitTable, queries: torch.Tensor, top: int) -> tuple[list[float], list[set[int]]]:
    """Seconds per query and the rows found, one query at a time (a user's search)."""
    seconds, found = [], []
    for probe, null in queries:
        start = time.perf_counter()
        rows, _ = table.top(probe, null, top)
        seconds.append(time.perf_counter() - start)
        found.append(set(rows.tolist()))
    return seconds, found


def describe(name: str, seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{name:<12} median {statistics.median(seconds) * 1e3:7.1f} ms   p95 {p95 * 1e3:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--responses", type=float, default=None, metavar="R",
        help="rank by alignment and response, as Lens.search does, the response correlating R with the alignment",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)

    generator = torch.Generator().manual_seed(0)
    theta = {"units": torch.randn(args.units, args.dim, generator=generator)}
    if args.responses is not None:
        mixed = torch.randn(args.units, args.dim, generator=generator).mul_((1 - args.responses**2) ** 0.5)
        responses = {"units": mixed.add_(theta["units"], alpha=args.responses)}  # in place: no third copy of theta
        table, indexed = (UnitTable.stack(theta, None, responses, torch.eye(args.dim)) for _ in range(2))
    else:
        table, indexed = UnitTable.stack(theta), UnitTable.stack(theta)
    queries = torch.randn(args.queries, 2, args.dim, generator=generator)  # (probe, null) pairs

    start = time.perf_counter()
    indexed.index = UnitIndex.build(table)
    build_s = time.perf_counter() - start
    if args.responses is not None:
        start = time.perf_counter()
        indexed._moments  # once per Lens: the two scores' spread over the units, for the candidates
        moments_s = time.perf_counter() - start

    latencies(table, queries[:2], args.top)  # warm-up
    latencies(indexed, queries[:2], args.top)
    brute_s, truth = latencies(table, queries, args.top)
    index_s, found = latencies(indexed, queries, args.top)
    recall = sum(len(a & b) for a, b in zip(truth, found)) / (args.top * args.queries)

    print(
        f"{args.units} random units x {args.dim} dims, {args.queries} queries, top {args.top}, {args.threads} threads, "
        + (f"ranked by alignment and response (correlating {args.responses:g})" if args.responses is not None else "ranked by alignment")
    )
    print(
        f"index: faiss PQ fast-scan {args.dim // 2}x4 bit, {CANDIDATE_FACTOR} candidates per result, built in {build_s:.1f} s"
        + (f"; the scores' moments in {moments_s:.1f} s" if args.responses is not None else "")
    )
    print(describe("brute force", brute_s))
    print(describe("index", index_s))
    print(
        f"speed-up (median) = {statistics.median(brute_s) / statistics.median(index_s):.1f}x   recall@{args.top} = {recall:.3f}"
    )


if __name__ == "__main__":
    main()
