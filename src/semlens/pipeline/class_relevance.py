"""Class relevance: how much each unit contributes, by LRP, to each class's predictions.

For every sample, a unit's relevance share is its relevance for the sample's class divided by the
summed absolute relevance of its layer. Over a labelled test set (or the predicted classes) semlens
keeps, per unit and class, the maximum and mean share, and the samples with the highest share.
"""

from __future__ import annotations

import torch

from .collect import TopK

TOP_SAMPLES = 5


class ClassRelevance:
    """Streaming per-class statistics of one layer's relevance shares (``classes`` model outputs)."""

    def __init__(self, units: int, classes: int, top: int = TOP_SAMPLES) -> None:
        self.maximum = torch.full((units, classes), float("-inf"))
        self.total = torch.zeros(units, classes, dtype=torch.float64)
        self.count = torch.zeros(classes, dtype=torch.int64)
        self.top = top
        self.samples: dict[int, TopK] = {}

    def update(self, shares: torch.Tensor, targets: torch.Tensor, ids: torch.Tensor) -> None:
        """Fold in a batch: ``shares`` ``[N, U]`` for classes ``targets`` ``[N]`` of samples ``ids``."""
        shares, targets, ids = shares.float().cpu(), targets.cpu(), ids.cpu()
        index = targets.unsqueeze(0).expand(shares.shape[1], -1)
        self.maximum.scatter_reduce_(1, index, shares.T, reduce="amax")
        self.total.scatter_add_(1, index, shares.T.double())
        self.count += torch.bincount(targets, minlength=self.count.numel())
        for target in targets.unique().tolist():
            rows = targets == target
            self.samples.setdefault(target, TopK.empty(shares.shape[1], self.top)).update(shares[rows], ids[rows])

    def checkpoint(self, prefix: str) -> dict[str, torch.Tensor]:
        """Everything :meth:`from_checkpoint` needs to go on exactly where this left off (the float64 totals too)."""
        seen = sorted(self.samples)
        tensors = {f"{prefix}maximum": self.maximum, f"{prefix}total": self.total, f"{prefix}count": self.count}
        tensors[f"{prefix}seen_classes"] = torch.tensor(seen, dtype=torch.int64)
        for target in seen:
            tensors.update(self.samples[target].state(prefix=f"{prefix}class{target}."))
        return tensors

    @classmethod
    def from_checkpoint(cls, tensors: dict[str, torch.Tensor], prefix: str, top: int = TOP_SAMPLES) -> ClassRelevance:
        units, classes = tensors[f"{prefix}maximum"].shape
        restored = cls(units, classes, top)
        restored.maximum, restored.total, restored.count = (tensors[f"{prefix}{name}"] for name in ("maximum", "total", "count"))
        for target in tensors[f"{prefix}seen_classes"].tolist():
            restored.samples[target] = TopK.from_state(tensors, prefix=f"{prefix}class{target}.")
        return restored

    def mean(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1)).float()

    def state(self) -> dict[str, torch.Tensor]:
        """Arrays for the Lens: max/mean share ``[U, K]`` (NaN for classes never seen), sample counts
        ``[K]``, and per seen class the top samples ``[K_seen, U, top]`` with their shares."""
        seen = (self.count > 0).nonzero().flatten()
        unseen = self.count == 0
        maximum = self.maximum.masked_fill(unseen.unsqueeze(0), float("nan"))
        mean = self.mean().masked_fill(unseen.unsqueeze(0), float("nan"))
        tops = [self.samples[int(c)] for c in seen]
        empty = torch.empty(0, self.maximum.shape[0], self.top)
        return {
            "max_share": maximum,
            "mean_share": mean,
            "count": self.count,
            "seen_classes": seen,
            "top_samples": torch.stack([top.ids for top in tops]) if tops else empty.long(),
            "top_shares": torch.stack([top.scores for top in tops]) if tops else empty,
        }
