"""Every unit's pooled activation on the samples some top-k keeps, taken in the collection pass.

The responses stage regresses each unit's activation on the Lens's own crops, and where a crop is a sample's
whole view (every crop of a whole-image build, crop mode ``none``; a relevance crop whose heatmap spreads over
the whole image) that is the very input the collection pass already ran the model on. Keeping those
activations spares the responses stage a second model pass over them (a quarter of a ResNet-50 whole-image
build on a CPU: docs/explanation/performance.md).

Which samples end in a top-k is known only at the end, but a sample in a unit's final top-k was in its running
top-k from the moment it was seen. So the pass keeps the samples that enter any top-k and now and then drops
those that every unit has pushed out: at most units x k samples, each all units' activations, within
``MAX_BYTES`` (past it a sample is not kept, and the responses stage runs the model on it as before). A
checkpoint carries them up to ``CHECKPOINT_BYTES``; past that a resumed pass leaves the earlier ones to the model.
"""

from __future__ import annotations

import torch

from .collect import TopK, candidate_ids

MAX_BYTES = 1 << 30  # host memory for the kept activations, float32
CHECKPOINT_BYTES = 1 << 28  # kept activations a checkpoint carries at most (more: a resumed pass leaves them to the model)
MIN_PRUNE_ROWS = 1024  # samples kept before the first clean-up of those no top-k holds any more
FULL_PRUNE_BATCHES = 16  # when full, batches between clean-ups (each a pass over the kept samples)


class KeptActivations:
    """Sample id -> every chosen layer's pooled activations ``[U_total]`` (layers in ``layers`` order), on the CPU."""

    def __init__(self, layers: list[str], max_bytes: int = MAX_BYTES) -> None:
        self.layers = layers
        self.max_bytes = max_bytes
        self.rows: dict[int, torch.Tensor] = {}
        self.widths: list[int] = []
        self._prune_at = MIN_PRUNE_ROWS
        self._since_prune = 0

    @property
    def nbytes(self) -> int:
        """The kept activations' size."""
        return 4 * len(self.rows) * sum(self.widths)

    def add(self, ids: torch.Tensor, scores: dict[str, torch.Tensor], results: dict[str, TopK]) -> None:
        """Keep the samples ``ids`` of a batch (``scores`` per layer ``[B, U_layer]``) that ``results`` now hold. Which
        entered is asked on the results' device; the held ids are gathered on the CPU only to clean up."""
        entered = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
        for topk in results.values():
            entered |= torch.isin(ids, topk.ids.reshape(-1).to(ids.device))
        entered = entered.nonzero().flatten()
        self._since_prune += 1
        if not entered.numel():
            return
        self.widths = [scores[name].shape[1] for name in self.layers]
        capacity = self.max_bytes // (4 * max(sum(self.widths), 1))
        growing = len(self.rows) + entered.numel()
        if growing > self._prune_at or (growing > capacity and self._since_prune >= FULL_PRUNE_BATCHES):
            self.prune(candidate_ids(results))
        entered = entered[: max(capacity - len(self.rows), 0)]
        values = torch.cat([scores[name][entered].float() for name in self.layers], dim=1).cpu()
        for sample, row in zip(ids[entered].tolist(), values):
            self.rows[sample] = row.clone()  # its own storage: a view would hold its whole batch

    def prune(self, held: torch.Tensor) -> None:
        """Drop the samples not in ``held`` (the ids some top-k keeps)."""
        keep = set(held.tolist())
        self.rows = {sample: row for sample, row in self.rows.items() if sample in keep}
        self._prune_at = max(2 * len(self.rows), MIN_PRUNE_ROWS)
        self._since_prune = 0

    def state(self) -> dict[str, torch.Tensor]:
        """Flat tensors (``ids`` ``[R]``, one ``[R, U_layer]`` per layer by position) for a checkpoint or the store."""
        ids = sorted(self.rows)
        table = torch.stack([self.rows[sample] for sample in ids]) if ids else torch.zeros(0, sum(self.widths))
        parts = table.split(self.widths, dim=1) if self.widths else [torch.zeros(0, 0)] * len(self.layers)
        return {"kept.ids": torch.tensor(ids, dtype=torch.int64), **{f"kept.{position}.activations": part for position, part in enumerate(parts)}}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        """Take back what :meth:`state` wrote (a resumed pass)."""
        if "kept.ids" not in tensors:
            return
        parts = [tensors[f"kept.{position}.activations"] for position in range(len(self.layers))]
        self.widths = [part.shape[1] for part in parts]
        table = torch.cat(parts, dim=1)
        self.rows = {sample: row.clone() for sample, row in zip(tensors["kept.ids"].tolist(), table)}
        self._prune_at = max(2 * len(self.rows), MIN_PRUNE_ROWS)


def kept_layer_activations(tensors: dict[str, torch.Tensor], layers: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """From a stored :meth:`KeptActivations.state`: the sample ids ``[R]`` (ascending) and each layer's ``[R, U_layer]``."""
    return tensors["kept.ids"], {name: tensors[f"kept.{position}.activations"] for position, name in enumerate(layers)}
