"""The overview map: all units of one or more layers in 2-D (UMAP of theta), clustered and named.

Clusters come from k-means on the normalised theta (k grows with the number of units, as in the
paper's 60..160 for thousands of units). The names and colours come from the labels users see elsewhere: each
cluster is named by the two labels its units show most often and each unit is coloured by its label's category
(the dissection's). Naming clusters by the concepts best aligned with their mean theta instead disagreed with
the units' own labels: on the demo world every cluster of circle, ring and watermark units read "person / fire"
(text probes of hub concepts align with any mean theta), and every unit was coloured "distractors".
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .._util.display import HtmlResult

NO_CONCEPT = "no concept"  # a cluster none of whose units shows a concept, as every face names such a unit


@dataclass
class OverviewMap(HtmlResult):
    """Positions, clusters and categories of units; ``units[i]`` sits at ``xy[i]``. In a notebook: the map as a
    picture, and the clusters with their units' most common labels."""

    units: list[str]
    xy: np.ndarray  # [n, 2]
    cluster: np.ndarray  # [n] int
    cluster_names: list[str]
    category: np.ndarray  # [n] int, index into category_names
    category_names: list[str]

    def cluster_sizes(self) -> list[tuple[str, int]]:
        """Each cluster's name and how many units it holds, largest first."""
        sizes = [(name, int((self.cluster == index).sum())) for index, name in enumerate(self.cluster_names)]
        return sorted(sizes, key=lambda entry: -entry[1])

    def __repr__(self) -> str:
        """Outside a notebook: the units and clusters (the dataclass's repr printed every position)."""
        shown = ", ".join(f"{name} ({count})" for name, count in self.cluster_sizes()[:8])
        more = f", and {len(self.cluster_names) - 8} more" if len(self.cluster_names) > 8 else ""
        return f"OverviewMap: {len(self.units)} units in {len(self.cluster_names)} clusters: {shown}{more}"

    def to_dict(self) -> dict:
        return {
            "units": self.units,
            "x": self.xy[:, 0].round(4).tolist(),
            "y": self.xy[:, 1].round(4).tolist(),
            "cluster": self.cluster.tolist(),
            "cluster_names": self.cluster_names,
            "category": [self.category_names[index] for index in self.category.tolist()],
        }


def cluster_count(units: int) -> int:
    """k for k-means: about sqrt(units / 2), at least 2, at most 160 (and never more than units)."""
    return max(1, min(units, 160, max(2, round(math.sqrt(units / 2)))))


def embed_2d(theta: torch.Tensor, seed: int = 0) -> np.ndarray:
    """UMAP (cosine) of theta; PCA when there are too few units for a neighbourhood graph."""
    points = F.normalize(theta.float(), dim=-1).numpy()
    if points.shape[0] < 8:
        centred = points - points.mean(axis=0)
        _, _, components = np.linalg.svd(centred, full_matrices=False)
        projected = centred @ components[:2].T
        return np.pad(projected, ((0, 0), (0, 2 - projected.shape[1])))
    import umap

    reducer = umap.UMAP(n_neighbors=min(15, points.shape[0] - 1), metric="cosine", random_state=seed, n_jobs=1)
    return reducer.fit_transform(points)


def name_clusters(assignment: np.ndarray, k: int, labels: list[str | None]) -> list[str]:
    """Each cluster's name: the two labels its units show most often (ties: the first unit's first), or "no concept"
    where none shows one; a name already given to another cluster gets a number ("ring / circle #2")."""
    names: list[str] = []
    for cluster in range(k):
        shown = Counter(label for label, member in zip(labels, (assignment == cluster).tolist()) if member and label is not None)
        name = " / ".join(label for label, _ in shown.most_common(2)) or NO_CONCEPT
        repeats = sum(given == name or given.startswith(f"{name} #") for given in names)
        names.append(f"{name} #{repeats + 1}" if repeats else name)
    return names


def build_overview(
    units: list[str],
    theta: torch.Tensor,
    labels: list[str | None] | None,
    categories: list[str] | None,
    category_names: list[str],
    clusters: int | None = None,
    seed: int = 0,
) -> OverviewMap:
    """Lay out, cluster, name and colour the units whose theta is given (an empty map for none) by each unit's
    shown label (None: no concept) and its category (one of ``category_names``); without labels (a space of
    images only) clusters are numbered and every unit is in one category, "units"."""
    from sklearn.cluster import KMeans

    if not units:
        nothing = np.zeros(0, dtype=np.int64)
        return OverviewMap([], np.zeros((0, 2)), nothing, [], nothing, category_names)
    k = clusters or cluster_count(len(units))
    normalised = F.normalize(theta.float(), dim=-1)
    assignment = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(normalised.numpy())
    if labels is None or categories is None:
        names, category, category_names = [f"cluster {index + 1}" for index in range(k)], np.zeros(len(units), dtype=np.int64), ["units"]
    else:
        names, category = name_clusters(assignment, k, labels), np.array([category_names.index(name) for name in categories], dtype=np.int64)
    return OverviewMap(units, embed_2d(theta, seed), assignment, names, category, category_names)
