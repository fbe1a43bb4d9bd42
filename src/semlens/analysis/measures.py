"""Human-interpretability measures (paper Sec. 3.5) and knowledge overlap between models (Sec. 4.1.3).

Pure torch over whole layers at once: ``examples`` are ``[U, n, d]`` (each unit's n concept-example
embeddings, NaN rows in empty slots, as ``Lens.arrays.example_embeddings`` gives them), thetas are
``[U, d]``. Everything runs in float32 on the inputs' device and never modifies the inputs. A vector
without a direction (NaN, infinite or zero) takes part in nothing; a measure left with nothing to
work on is NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .._util.display import HtmlResult

# Similarities held at once when matching units: 2**26 float32 = 256 MiB, whatever the layer sizes.
_BLOCK_ELEMENTS = 2**26


def _directions(examples: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
    """Unit-length rows in float32, zeros where unusable (so that sums skip them), and the usable mask.

    A row is usable if its norm is finite and non-zero (and ``valid`` allows it). Masking before
    dividing keeps this to a few passes over what may be gigabytes of examples.
    """
    x = examples.float()
    norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    usable = torch.isfinite(norms) & (norms > 0)
    if valid is not None:
        usable &= valid.to(device=x.device, dtype=torch.bool).unsqueeze(-1)
    return x.masked_fill(~usable, 0.0).div_(norms.masked_fill(~usable, 1.0)), usable.squeeze(-1)


def _unit_rows(theta: Tensor) -> Tensor:
    """Unit-length rows, NaN for rows without a direction, so that their similarities are NaN."""
    units, usable = _directions(theta, None)
    return units.masked_fill(~usable.unsqueeze(-1), float("nan"))


def clarity(examples: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean pairwise cosine similarity of each unit's concept examples (Eq. 7).

    Uses the paper's closed form ``|V|/(|V|-1) * (||mean_i v_i/||v_i|| ||^2 - 1/|V|)``, i.e.
    ``(||sum_i u_i||^2 - |V|) / (|V|(|V|-1))`` with ``u_i`` the unit-length examples, so no ``n x n``
    similarity matrix is formed.

    Parameters
    ----------
    examples : Tensor ``[U, n, d]``
    valid : Tensor ``[U, n]`` of bool, optional
        Slots to use; by default every row without NaN. Rows without a direction are never used.

    Returns
    -------
    Tensor ``[U]`` in ``[-1/(|V|-1), 1]``; NaN for units with fewer than two usable examples.
    """
    units, usable = _directions(examples, valid)
    count = usable.sum(dim=-1).float()
    value = (units.sum(dim=-2).pow(2).sum(dim=-1) - count) / (count * (count - 1))
    return value.masked_fill(count < 2, float("nan"))


def _farthest(units: Tensor, usable: Tensor, reference: Tensor) -> Tensor:
    """Each unit's usable example farthest from ``reference [U, d]`` (first on ties).

    ``||u - r||^2 = ||u||^2 + ||r||^2 - 2 u.r``: the farthest has the least ``2 u.r - ||u||^2``.
    """
    closeness = 2 * (units @ reference.unsqueeze(-1)).squeeze(-1) - units.pow(2).sum(dim=-1)
    closeness = closeness.masked_fill(~usable, float("inf"))
    return torch.take_along_dim(units, closeness.argmin(dim=-1)[:, None, None], dim=-2).squeeze(-2)


def _nearest(units: Tensor, usable: Tensor, centroids: Tensor) -> Tensor:
    """k-means assignment step for h = 2: True where an example is strictly nearer the second centroid."""
    distances = centroids.pow(2).sum(dim=-1).unsqueeze(-2) - 2 * (units @ centroids.transpose(-1, -2))
    return (distances[..., 1] < distances[..., 0]) & usable


def _cluster_means(units: Tensor, usable: Tensor, second: Tensor, previous: Tensor) -> tuple[Tensor, Tensor]:
    """k-means update step: means ``[U, 2, d]`` and sizes ``[U, 2]``; an empty cluster keeps its centroid."""
    members = torch.stack([usable & ~second, second], dim=-2).float()
    sizes = members.sum(dim=-1)
    means = members @ units / sizes.clamp_min(1).unsqueeze(-1)
    return torch.where((sizes > 0).unsqueeze(-1), means, previous), sizes


def polysemanticity(examples: Tensor, valid: Tensor | None = None, iterations: int = 20) -> Tensor:
    """How far apart the two semantic directions in each unit's concept examples are (Eq. 10, h = 2).

    The unit-length examples of all units are split into two clusters at once by k-means: it starts
    from the example farthest from the unit's mean and the example farthest from that one (so the
    result is deterministic), then runs Lloyd iterations until no assignment changes. The measure is
    ``1 - clarity({cluster means})``, which for two clusters is ``1 - cos(c1, c2)``.

    Parameters
    ----------
    examples : Tensor ``[U, n, d]``
    valid : Tensor ``[U, n]`` of bool, optional
        As for :func:`clarity`.
    iterations : int
        Most Lloyd iterations.

    Returns
    -------
    Tensor ``[U]`` in ``[0, 2]``: 0 when the examples do not split (one cluster would be empty, e.g.
    identical examples); NaN for units with fewer than two usable examples.
    """
    units, usable = _directions(examples, valid)
    _, means, sizes = _two_means(units, usable, iterations)
    value = (1 - clarity(means)).masked_fill(sizes.min(dim=-1).values == 0, 0.0)
    return value.masked_fill(usable.sum(dim=-1) < 2, float("nan"))


def _two_means(units: Tensor, usable: Tensor, iterations: int) -> tuple[Tensor, Tensor, Tensor]:
    """k-means with h = 2 on every unit's examples at once (unit-length ones here; any, with zeros in unusable
    rows, for the reference draws of ``clusters.split_test``), started deterministically (see
    :func:`polysemanticity`): which examples are in the second cluster ``[U, n]``, the means ``[U, 2, d]``
    and the sizes ``[U, 2]``."""
    mean = units.sum(dim=-2) / usable.sum(dim=-1, keepdim=True).clamp_min(1)
    first = _farthest(units, usable, mean)
    centroids = torch.stack([first, _farthest(units, usable, first)], dim=-2)
    second = _nearest(units, usable, centroids)
    for _ in range(iterations):
        centroids = _cluster_means(units, usable, second, centroids)[0]
        update = _nearest(units, usable, centroids)
        if torch.equal(update, second):
            break
        second = update
    means, sizes = _cluster_means(units, usable, second, centroids)
    return second, means, sizes


def similarity(theta_a: Tensor, theta_b: Tensor) -> Tensor:
    """Cosine similarity of every pair of concepts ``[A, B]`` (Eq. 8); NaN for a theta without direction."""
    return _unit_rows(theta_a) @ _unit_rows(theta_b).T


def _best_match(theta_a: Tensor, theta_b: Tensor, exclude_self: bool, chunk_rows: int | None) -> tuple[Tensor, Tensor]:
    """For each row of ``theta_a``: the most similar row of ``theta_b`` (first on ties) and its similarity.

    Works through ``theta_a`` in blocks of rows so that the full ``[A, B]`` matrix never exists at once.
    Rows without a direction match nothing (index -1, similarity NaN) and are never matched.
    ``exclude_self`` skips the diagonal, for ``theta_b`` being ``theta_a``.
    """
    a, b = _unit_rows(theta_a), _unit_rows(theta_b)
    best = torch.full((a.shape[0],), float("nan"), device=a.device)
    index = torch.full((a.shape[0],), -1, dtype=torch.int64, device=a.device)
    if b.shape[0] == 0:
        return index, best
    rows = chunk_rows or max(1, _BLOCK_ELEMENTS // b.shape[0])
    for start in range(0, a.shape[0], rows):
        block = a[start : start + rows] @ b.T
        block.masked_fill_(block.isnan(), float("-inf"))
        if exclude_self:
            own = torch.arange(block.shape[0], device=a.device)
            block[own, start + own] = float("-inf")
        values, indices = block.max(dim=-1)
        found = values > float("-inf")
        best[start : start + rows] = values.masked_fill(~found, float("nan"))
        index[start : start + rows] = indices.masked_fill(~found, -1)
    return index, best


def redundancy(theta: Tensor, chunk_rows: int | None = None) -> Tensor:
    """Each concept's similarity to its most similar other concept in the set (the summand of Eq. 9).

    Returns
    -------
    Tensor ``[m]``; NaN for a theta without direction or without another concept to compare with.
    """
    return _best_match(theta, theta, exclude_self=True, chunk_rows=chunk_rows)[1]


def typical_pair(theta: Tensor) -> Tensor:
    """Each concept's mean similarity to the other concepts of the set: the scale its redundancy is read against
    (``typical_similarity`` within one set). Redundancy near it says the unit's closest match is no closer than
    any unit of its layer, as where a foundation model puts every crop near one direction.

    Returns
    -------
    Tensor ``[m]``; NaN for a theta without direction or without another concept to compare with.
    """
    rows = theta.float()
    usable = rows.isfinite().all(dim=1) & (rows.norm(dim=1) > 0)
    unit = F.normalize(rows.nan_to_num(0.0), dim=1) * usable[:, None]
    others = int(usable.sum()) - 1
    typical = (unit @ unit.sum(dim=0) - 1.0) / max(others, 1)
    return typical.masked_fill(~usable | (others < 1), float("nan"))


def layer_redundancy(theta: Tensor) -> float:
    """Redundancy of a set of concepts (Eq. 9): the mean of :func:`redundancy` over units that have one."""
    return redundancy(theta).nanmean().item()


def knowledge_overlap(theta_m: Tensor, theta_n: Tensor, chunk_rows: int | None = None) -> tuple[float, Tensor, Tensor]:
    """How much of model M's knowledge model N also has (Eq. 5): ``S_{M->N}``, not symmetric.

    Parameters
    ----------
    theta_m : Tensor ``[M, d]``
    theta_n : Tensor ``[N, d]``
        Concepts of any two layers or models embedded by the same foundation model.
    chunk_rows : int, optional
        Units of M compared at once; by default as many as keep one block at 2**26 similarities.

    Returns
    -------
    score : float
        Mean over units of M (those with a theta) of the best similarity in N.
    index : Tensor ``[M]`` of int64
        Each unit of M's best match in N (-1 if none).
    best : Tensor ``[M]``
        Its similarity (NaN if none).
    """
    index, best = _best_match(theta_m, theta_n, exclude_self=False, chunk_rows=chunk_rows)
    return best.nanmean().item(), index, best


def typical_similarity(theta_m: Tensor, theta_n: Tensor) -> float:
    """The mean cosine of any unit of M with any unit of N (rows without a direction left out): the scale S_{M->N}
    and redundancy are read against. Where a foundation model puts every crop near one direction (ConSE's
    embeddings; CLIP's share a large common part), unrelated models score S near 1, and so does this; S well
    above it says the matches are closer than any pair. NaN where either has no unit with a direction."""
    def mean_direction(theta: Tensor) -> Tensor | None:
        rows = theta.float()
        rows = F.normalize(rows[rows.isfinite().all(dim=1) & (rows.norm(dim=1) > 0)], dim=1)
        return rows.mean(dim=0) if len(rows) else None

    m, n = mean_direction(theta_m), mean_direction(theta_n)
    return float("nan") if m is None or n is None else float(m @ n)


#: what the typical pair is, said beside the layer means on every face
TYPICAL_PAIR = (
    "typical pair: the mean cosine of a unit with the layer's other units; redundancy near it says units are no closer "
    "to their nearest neighbour than to any"
)

#: the units each face lists per layer beside the means: (title, measure, highest first)
EXTREMES = (("least clear", "clarity", False), ("most polysemantic", "polysemanticity", True))


@dataclass
class Measures(HtmlResult):
    """Clarity, polysemanticity and redundancy per unit of several layers (``layer -> measure -> [U]``), and each
    unit's typical pair (``typical``), the scale its redundancy is read against; of the ``examples`` set
    ("activation" or "relevance"). In a notebook: the layer means and each layer's least clear and most
    polysemantic units."""

    values: dict[str, dict[str, Tensor]]
    units: dict[str, list[str]]
    examples: str = "activation"

    def of(self, layer: str) -> dict[str, Tensor]:
        """One layer's measures, ``measure -> [U]`` in the order of its units."""
        if layer not in self.values:
            raise KeyError(f"no measures of layer {layer!r}; measured: {', '.join(self.values)}")
        return self.values[layer]

    def __repr__(self) -> str:
        """Outside a notebook: a line of means per layer (the dataclass's repr printed every tensor)."""
        lines = [f"Measures of {sum(map(len, self.units.values()))} units by their {self.examples} examples; layer means:"]
        for layer in self.values:
            summary = self.summary(layer)
            lines.append(f"  {layer}: " + ", ".join(f"{measure} {value:.3f}" for measure, value in summary.items()))
        return "\n".join(lines)

    def summary(self, layer: str) -> dict[str, float]:
        """Layer means, NaN (units without usable examples) left out."""
        return {measure: round(float(tensor.nanmean()), 5) for measure, tensor in self.values[layer].items()}

    def extremes(self, layer: str, measure: str, count: int, highest: bool) -> list[tuple[str, float]]:
        """The ``count`` units with the lowest (or highest) value of ``measure``; units without one (NaN) are no extreme."""
        values = self.values[layer][measure]
        order = values.nan_to_num(float("-inf") if highest else float("inf")).argsort(descending=highest, stable=True)
        order = order[~values[order].isnan()][:count]
        return [(f"{layer}/{self.units[layer][i]}", float(values[i])) for i in order.tolist()]

    def to_dict(self) -> dict:
        return {
            layer: {
                "summary": self.summary(layer),
                "units": {
                    f"{layer}/{unit}": {measure: round(float(tensor[row]), 5) for measure, tensor in values.items()}
                    for row, unit in enumerate(self.units[layer])
                },
            }
            for layer, values in self.values.items()
        }
