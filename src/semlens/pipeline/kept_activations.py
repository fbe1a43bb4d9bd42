"""Every unit's pooled activation on the samples some top-k keeps, taken in the collection pass.

The responses stage regresses each unit's activation on the Lens's own crops, and where a crop is a sample's
whole view (every crop of a whole-image build, crop mode ``none``; a relevance crop whose heatmap spreads over
the whole image) that is the very input the collection pass already ran the model on. Keeping those
activations spares the responses stage a second model pass over them (a quarter of a ResNet-50 whole-image
build on a CPU: docs/explanation/performance.md).

Which samples end in a top-k is known only at the end, but a sample in a unit's final top-k was in its running
top-k from the moment it was seen. So the pass keeps the samples that enter any top-k and now and then drops
those that every unit has pushed out: at most units x k samples, each all units' activations, within
``MAX_BYTES`` (past it a sample is not kept, and the responses stage runs the model on it as before).
"""

from __future__ import annotations

import torch

from .collect import TopK, candidate_ids

MAX_BYTES = 1 << 30  # host memory for the kept activations, float32
MIN_PRUNE_ROWS = 1024  # samples kept before the first clean-up of those no top-k holds any more


class KeptActivations:
    """Sample id -> every chosen layer's pooled activations ``[U_total]`` (layers in ``layers`` order), on the CPU."""

    def __init__(self, layers: list[str], max_bytes: int = MAX_BYTES) -> None:
        self.layers = layers
        self.max_bytes = max_bytes
        self.rows: dict[int, torch.Tensor] = {}
        self.widths: list[int] = []
        self._prune_at = MIN_PRUNE_ROWS

    def add(self, ids: torch.Tensor, scores: dict[str, torch.Tensor], results: dict[str, TopK]) -> None:
        """Keep the samples ``ids`` of a batch (``scores`` per layer ``[B, U_layer]``) that ``results`` now hold."""
        ids = ids.cpu()
        held = candidate_ids(results)
        entered = torch.isin(ids, held).nonzero().flatten()
        if not entered.numel():
            return
        self.widths = [scores[name].shape[1] for name in self.layers]
        if len(self.rows) + entered.numel() > self._prune_at:
            self.prune(held)
        room = self.max_bytes // (4 * max(sum(self.widths), 1)) - len(self.rows)
        entered = entered[: max(room, 0)]
        on_device = entered.to(scores[self.layers[0]].device)
        values = torch.cat([scores[name][on_device].float() for name in self.layers], dim=1).cpu()
        for sample, row in zip(ids[entered].tolist(), values):
            self.rows[sample] = row

    def prune(self, held: torch.Tensor) -> None:
        """Drop the samples not in ``held`` (the ids some top-k keeps)."""
        keep = set(held.tolist())
        self.rows = {sample: row for sample, row in self.rows.items() if sample in keep}
        self._prune_at = max(2 * len(self.rows), MIN_PRUNE_ROWS)

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
        self.rows = dict(zip(tensors["kept.ids"].tolist(), table))
        self._prune_at = max(2 * len(self.rows), MIN_PRUNE_ROWS)


def kept_layer_activations(tensors: dict[str, torch.Tensor], layers: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """From a stored :meth:`KeptActivations.state`: the sample ids ``[R]`` (ascending) and each layer's ``[R, U_layer]``."""
    return tensors["kept.ids"], {name: tensors[f"kept.{position}.activations"] for position, name in enumerate(layers)}
