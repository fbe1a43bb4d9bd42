"""Ranking all units of a Lens by alignment with a probe: exact, or through an index when there are very many.

Alignment a(theta, p) = s(theta, p) - s(theta, null) equals theta^ . (p^ - null^) (Eq. 4 with unit
vectors), so a search is a maximum-inner-product search over the normalised theta of all units. Brute
force reads every theta for every query: about 0.2 s for 1 000 000 units x 512 dims on 2 CPU cores.
From ``INDEX_MIN_UNITS`` units on, a faiss index (optional extra ``semlens[index]``) proposes
candidates instead. It is product quantisation with 4-bit fast-scan codes, two dimensions per code
(d/4 bytes per unit), and it scans *every* unit, so its recall does not depend on theta being
clustered (an IVF or graph index would). The candidates are re-scored exactly: returned scores are
exact, only the choice of candidates is approximate (recall@10 is measured in benchmarks/search.py).
The index is built on first use and kept in faiss's own format with the fingerprint of the theta it was
built from, in the Lens's folder in the user cache: never in the Lens, so a Lens from elsewhere cannot plant one.

Where the Lens kept its units' responses to its crops (``cross``, ``analysis.responses``), a unit must also
*respond* to the probe: its activation over all the Lens's crops rises with their alignment to it (a Pearson
correlation, linear in the probe like the alignment). The ranking is the lower of the two scores, each
standardised over the table's units: a unit whose top examples look like the probe only because the probe's
concept shares their images (a square unit among squares that carry a patch) ranks below one that answers the
probe wherever it is. Measured on the quality benchmark's worlds (docs/quality.md "Search by alignment and response").
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .._util.errors import SpecError, quoted, warn_caller
from .._util.fingerprint import hash_json
from .._util.imports import import_optional
from ..store.files import LensStore, atomic_write

#: below this many units brute force is fast enough (about 30 ms at 512 dims on 2 cores) and exact
INDEX_MIN_UNITS = 100_000
#: candidates proposed per wanted result, then re-scored exactly
CANDIDATE_FACTOR = 100
#: ranking by alignment and response, the candidates (proposed by alignment) are widened fourfold until no unit
#: left out can rank among the best; beyond this share of the units brute force is cheaper (benchmarks/search.py)
MAX_CANDIDATE_SHARE = 1 / 32
#: units the product quantiser is trained on (a seeded random subset)
TRAINING_UNITS = 50_000
#: units encoded per call while building the index
ADD_BLOCK = 65_536
#: F.normalize's floor on a norm (an all-zero theta stays zero)
NORM_EPSILON = 1e-12
INDEX_FILE = "index/units.faiss"
INDEX_INFO = "index/units.json"


def top_positions(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Positions of the ``count`` highest scores, ties to the lower position: the head of a stable
    descending sort, without sorting all scores."""
    if count <= 0:
        return torch.empty(0, dtype=torch.int64)
    if count < scores.numel():
        threshold = torch.topk(scores, count).values[-1]
        tied_or_better = (scores >= threshold).nonzero().flatten()
        order = torch.sort(scores[tied_or_better], descending=True, stable=True).indices
        return tied_or_better[order][:count]
    return torch.sort(scores, descending=True, stable=True).indices


class UnitIndex:
    """A faiss fast-scan product-quantisation index over normalised unit vectors."""

    def __init__(self, index) -> None:
        self.index = index

    @staticmethod
    def _faiss():
        return import_optional("faiss", "index", "an index over many units")

    @classmethod
    def build(cls, table: UnitTable, seed: int = 0) -> UnitIndex:
        """Train the quantiser on a random subset of the table's units, then encode all of them a block
        at a time, so that the normalised vectors never exist all at once beside the Lens's theta."""
        faiss = cls._faiss()
        units, dim = table.shape
        index = faiss.IndexPQFastScan(dim, dim // 2 if dim % 2 == 0 else dim, 4, faiss.METRIC_INNER_PRODUCT)
        training = torch.randperm(units, generator=torch.Generator().manual_seed(seed))[:TRAINING_UNITS]
        index.train(table.normalised(torch.sort(training).values).numpy())
        for begin in range(0, units, ADD_BLOCK):
            index.add(table.normalised(torch.arange(begin, min(begin + ADD_BLOCK, units))).numpy())
        return cls(index)

    def candidates(self, query: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of the (about) ``count`` units with the highest inner product with ``query`` ``[d]``, and those
        inner products as the quantiser approximates them."""
        approximate, ids = self.index.search(query.float().reshape(1, -1).contiguous().numpy(), min(count, self.index.ntotal))
        found = ids[0] >= 0
        return torch.from_numpy(ids[0][found]), torch.from_numpy(approximate[0][found])

    def save(self, path: Path) -> None:
        atomic_write(path, lambda temporary: self._faiss().write_index(self.index, str(temporary)))

    @classmethod
    def load(cls, path: Path) -> UnitIndex:
        return cls(cls._faiss().read_index(str(path)))


@dataclass
class UnitTable:
    """The theta of several layers ranked as one table, so that one query ranks all their units.

    It holds the layers' own arrays (no copy: at a million units theta alone is 2 GB) and each unit's
    norm; an inner product with a normalised theta is the inner product with theta over its norm.
    """

    layers: list[str]
    thetas: list[torch.Tensor]
    offsets: list[int]
    norms: torch.Tensor
    excluded: torch.Tensor | None = None  # [units] bool: never ranked (e.g. units without examples of their own)
    index: UnitIndex | None = None
    responses: list[torch.Tensor] | None = None  # per layer [U, d]: the units' ``cross`` with the crops' embeddings
    scatter: torch.Tensor | None = None  # [d, d]: the crops' centred scatter (``analysis.responses``)

    @classmethod
    def stack(
        cls,
        thetas: dict[str, torch.Tensor],
        excluded: dict[str, torch.Tensor] | None = None,
        responses: dict[str, torch.Tensor] | None = None,
        scatter: torch.Tensor | None = None,
    ) -> UnitTable:
        """One table of the layers' ``thetas``; with ``responses`` (each layer's ``cross``, rows as its theta's) and
        the crops' ``scatter``, ranked by alignment and response (module docstring)."""
        offsets = [0]
        for theta in thetas.values():
            offsets.append(offsets[-1] + theta.shape[0])
        arrays = [theta.float() for theta in thetas.values()]
        norms = torch.cat([theta.norm(dim=-1) for theta in arrays]).clamp_min(NORM_EPSILON)  # as F.normalize
        mask = torch.cat([excluded[layer] for layer in thetas]) if excluded is not None else None
        crosses = None
        if responses is not None:
            crosses = [responses[layer].float() for layer in thetas]
            if any(cross.shape != theta.shape for cross, theta in zip(crosses, arrays)):
                raise ValueError("each layer's responses need one row per unit of its theta")
        return cls(list(thetas), arrays, offsets, norms, mask, None, crosses, None if scatter is None else scatter.float())

    @property
    def shape(self) -> tuple[int, int]:
        return self.offsets[-1], self.thetas[0].shape[1]

    @property
    def _excluded_count(self) -> int:
        return 0 if self.excluded is None else int(self.excluded.sum())

    def locate(self, row: int) -> tuple[str, int]:
        """(layer, row within the layer) of a stacked row."""
        position = bisect.bisect_right(self.offsets, row) - 1
        return self.layers[position], row - self.offsets[position]

    def normalised(self, rows: torch.Tensor) -> torch.Tensor:
        """The unit vectors of stacked ``rows`` ``[n]`` as ``[n, d]`` (gathered in numpy, single-threaded:
        see the re-scoring in :meth:`top`)."""
        return torch.from_numpy(self._gathered(self.thetas, rows) / self.norms.numpy()[rows.numpy(), None])

    def _gathered(self, arrays: list[torch.Tensor], rows: torch.Tensor) -> np.ndarray:
        """Stacked ``rows`` ``[n]`` of per-layer ``arrays`` (theta or responses) as one ``[n, d]`` array."""
        wanted = rows.numpy()
        layer_of = np.searchsorted(self.offsets[1:-1], wanted, side="right")
        vectors = np.empty((len(wanted), self.shape[1]), dtype=np.float32)
        for position, array in enumerate(arrays):
            mine = layer_of == position
            vectors[mine] = array.numpy()[wanted[mine] - self.offsets[position]]
        return vectors

    def correlations(self, direction: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Per unit (stacked ``rows``; None: all), the Pearson correlation of its activation over the Lens's crops
        with the crops' alignment to ``direction`` ``[d]``: ``cross . w / sqrt(w^T scatter w)``."""
        if self.scatter is None:
            raise ValueError("this table holds no responses")
        return self._response_dots(direction, rows) / (direction @ self.scatter @ direction).clamp_min(NORM_EPSILON).sqrt()

    def _response_dots(self, direction: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """``cross . w`` per unit (stacked ``rows``; None: all): the correlation up to a factor common to all units."""
        if self.responses is None:
            raise ValueError("this table holds no responses")
        if rows is None:
            return torch.cat([cross @ direction for cross in self.responses])
        return torch.from_numpy(self._gathered(self.responses, rows) @ direction.numpy())

    @cached_property
    def _moments(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Mean ``[d]`` and covariance ``[d, d]`` of the ranked units' normalised theta and of their responses, so
        that a linear score's mean and spread over the units follow for the index's candidates: estimated on a
        seeded random ``TRAINING_UNITS`` of them (as the quantiser is trained), a second at most at 512 dims."""
        rows = torch.arange(self.shape[0]) if self.excluded is None else (~self.excluded).nonzero().flatten()
        chosen = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))[:TRAINING_UNITS]
        rows = rows[torch.sort(chosen).values]
        gathers = {"theta": self.normalised, "responses": lambda block: torch.from_numpy(self._gathered(self.responses, block))}
        moments = {}
        for name, gather in gathers.items():
            total = torch.zeros(self.shape[1], dtype=torch.float64)
            products = torch.zeros(self.shape[1], self.shape[1], dtype=torch.float64)
            for begin in range(0, len(rows), ADD_BLOCK):
                block = gather(rows[begin : begin + ADD_BLOCK])
                total += block.double().sum(dim=0)
                products += (block.T @ block).double()
            mean = total / max(len(rows), 1)
            moments[name] = (mean, products / max(len(rows), 1) - torch.outer(mean, mean))
        return moments

    def _both(self, alignments: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        """The ranking by alignment and response over all units: the lower of the two, each standardised over the
        ranked ones."""
        responses = self._response_dots(direction, None)
        included = slice(None) if self.excluded is None else ~self.excluded
        return torch.minimum(standardised_over(alignments, alignments[included]), standardised_over(responses, responses[included]))

    def _standardised(self, values: torch.Tensor, direction: torch.Tensor, which: str) -> torch.Tensor:
        """Linear scores (with ``direction``) of some units, standardised by the mean and spread that all ranked
        units' ``which`` ("theta" or "responses") give them (``_moments``)."""
        mean, covariance = self._moments[which]
        w = direction.double()
        return ((values.double() - mean @ w) / (w @ covariance @ w).clamp_min(0).sqrt().clamp_min(NORM_EPSILON)).float()

    def top(self, probe: torch.Tensor, null: torch.Tensor | None, count: int, by_response: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows and alignments of the ``count`` best units, best first, ties to the lower row: ranked by alignment
        and response where the table holds responses and ``by_response`` (module docstring), else by alignment."""
        directions = unit_directions(probe, null)
        query = null_subtracted(directions)  # p^ - null^: a normalised theta's alignment is its dot product with this
        by_response = by_response and self.responses is not None
        wanted = (count + self._excluded_count) * CANDIDATE_FACTOR
        while self.index is not None:
            rows, scores, unseen = self._candidates(query, directions, wanted)
            if not by_response:
                return self._best(rows, scores, scores, count)
            ranking = torch.minimum(
                self._standardised(scores, query, "theta"), self._standardised(self._response_dots(query, rows), query, "responses")
            )
            # the ranking is complete once no unit the index left out can reach the count-th best: its
            # alignment, at most ``unseen``, is then no better standardised than that
            kth = torch.topk(ranking, min(count, len(ranking))).values[-1] if len(ranking) else float("inf")
            if self._standardised(unseen.reshape(1), query, "theta")[0] <= kth or wanted >= self.shape[0]:
                return self._best(rows, scores, ranking, count)
            wanted *= 4
            if wanted > self.shape[0] * MAX_CANDIDATE_SHARE:
                break
        # brute force: one pass over every theta for probe and null together
        dots = torch.cat([theta @ torch.stack(directions, dim=1) for theta in self.thetas]) / self.norms[:, None]
        scores = null_subtracted(list(dots.T))
        ranking = self._both(scores, query) if by_response else scores
        if self.excluded is not None:
            ranking = ranking.masked_fill(self.excluded, float("-inf"))
        rows = top_positions(ranking, min(count, self.shape[0] - self._excluded_count))
        return rows, scores[rows]

    def _candidates(
        self, query: torch.Tensor, directions: list[torch.Tensor], wanted: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The index's ``wanted`` best-aligned units that are ranked (rows, sorted), their exact alignments, and
        the most a unit it did not propose can be aligned: the last candidate's approximate alignment plus the
        largest error of the quantiser's approximation among the candidates."""
        proposed, approximate = self.index.candidates(query, wanted)
        order = torch.argsort(proposed)
        rows, approximate = proposed[order], approximate[order]
        # A thousand candidates are re-scored in numpy's single-threaded einsum: for so little work,
        # waking a thread pool (torch's, or BLAS's) costs more than the work itself, about 10 ms per
        # operation on a busy 2-core machine.
        candidates = self.normalised(rows).numpy()
        dots = [np.einsum("ij,j->i", candidates, direction.numpy()) for direction in directions]
        scores = null_subtracted([torch.from_numpy(dot) for dot in dots])
        unseen = approximate.min() + (scores - approximate).max() if len(rows) else torch.tensor(float("inf"))
        if self.excluded is not None:
            ranked = ~self.excluded[rows]
            rows, scores = rows[ranked], scores[ranked]
        return rows, scores, unseen

    @staticmethod
    def _best(rows: torch.Tensor, scores: torch.Tensor, ranking: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        best = top_positions(ranking, count)
        return rows[best], scores[best]


def unit_directions(probe: torch.Tensor, null: torch.Tensor | None) -> list[torch.Tensor]:
    """``[p^]``, or ``[p^, null^]`` where there is a null: the unit vectors whose inner products Eq. 4 subtracts."""
    return [F.normalize(vector.float().reshape(-1), dim=-1) for vector in ([probe] if null is None else [probe, null])]


def probe_direction(probe: torch.Tensor, null: torch.Tensor | None) -> torch.Tensor:
    """``p^ - null^`` (``p^`` without a null) ``[d]``: a normalised vector's alignment with the probe (Eq. 4) is its
    dot product with this."""
    return null_subtracted(unit_directions(probe, null))


def standardised_over(values: torch.Tensor, population: torch.Tensor) -> torch.Tensor:
    """``values`` less the ``population``'s mean, over its standard deviation (``values`` when it has none)."""
    return (values - population.mean()) / population.std(unbiased=False).clamp_min(NORM_EPSILON)


def null_subtracted(dots: list[torch.Tensor]) -> torch.Tensor:
    """Eq. 4 from the inner products with the normalised probe and, when there is one, null."""
    return dots[0] - dots[1] if len(dots) > 1 else dots[0]


def open_index(store: LensStore, table: UnitTable, fingerprint: str) -> UnitIndex | None:
    """The index of a Lens with at least ``INDEX_MIN_UNITS`` units: read from ``store`` (the Lens's user cache) when it
    was built from the same theta, else built and saved. None (brute force) below that size, or with a
    warning when faiss is not installed."""
    units, dim = table.shape
    if units < INDEX_MIN_UNITS:
        return None
    try:
        UnitIndex._faiss()
    except SpecError as error:
        warn_caller(f"searching {units} units by brute force: {quoted(error)}")
        return None
    key = hash_json([fingerprint, [units, dim], "pq-fastscan-4bit"])
    if store.path(INDEX_INFO).is_file() and store.read_json(INDEX_INFO).get("fingerprint") == key:
        return UnitIndex.load(store.path(INDEX_FILE))
    index = UnitIndex.build(table)
    index.save(store.path(INDEX_FILE))
    store.write_json(INDEX_INFO, {"fingerprint": key, "units": units, "dim": dim})
    return index
