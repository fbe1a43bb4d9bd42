"""Which units, and which of their examples, say something of their own. An inactive unit never told
samples apart, so its top-k examples are arbitrary; a tied unit's examples are the same crops as
another unit's, so its theta is a copy. Both are recorded at build time and left out of every analysis
by default (``Lens.arrays.valid``). Within a valid unit, slots kept by chance at a tied cut-off are dropped."""

from __future__ import annotations

import torch


def inactive_units(scores: torch.Tensor, values: bool = False) -> torch.Tensor:
    """Units whose top-k ``scores`` ``[U, k]`` never told samples apart, so that their examples are arbitrary:
    their kept scores are all equal, or they never fired (no positive score on any sample: a rectified map that stays
    at zero, relevance that never favours the class). Scores that are the units' ``values`` (a vector output: a logit,
    a linear layer's neuron) rank samples whatever their sign: a logit below zero on every probe image still tells
    them apart, so only equal scores make such a unit inactive. With k = 1 a single score cannot show that: only units
    that never fired are inactive then."""
    constant = scores[:, 0] == scores[:, -1] if scores.shape[1] > 1 else torch.zeros_like(scores[:, 0], dtype=torch.bool)
    return constant if values else (scores[:, 0] <= 0) | constant


def arbitrary_slots(scores: torch.Tensor) -> torch.Tensor:
    """Slots ``[U, k]`` whose sample was kept by chance: the unit's last kept score is shared by two or more
    slots, so more samples may share it and which of them were kept is arbitrary (typically a rectified
    unit that fired on fewer than k samples, its other slots filled with zeros). These slots take no part
    in theta or the concept examples. Inactive units keep theirs (they are left out whole)."""
    last = scores[:, -1:]
    at_cut = (scores == last) & torch.isfinite(last)
    return at_cut & (at_cut.sum(dim=1, keepdim=True) >= 2) & ~inactive_units(scores)[:, None]


def tied_units(indices: dict[str, torch.Tensor], inactive: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per layer, True for units whose concept examples are the same crops as an earlier unit's of their layer:
    their theta is that unit's, so they say nothing the layer does not say already. ``indices[l]`` is the crop
    table's ``[U, k]`` index; inactive units are neither tied nor the unit others are tied to. Units of different
    layers may share their crops (a class logit and a feature that drives it, both on whole images): each is a
    unit of its own layer, audited, measured and searched with it."""
    return {layer: _tied_within(index, inactive[layer]) for layer, index in indices.items()}


def _tied_within(index: torch.Tensor, inactive: torch.Tensor) -> torch.Tensor:
    first = first_with_the_same_crops(index, inactive)
    return (first >= 0) & (first != torch.arange(len(first)))


def first_with_the_same_crops(index: torch.Tensor, inactive: torch.Tensor) -> torch.Tensor:
    """Per unit, the row of the earliest active unit of its layer whose examples are the same crops (its own row
    where none is earlier; -1 for an inactive unit): the unit whose examples, theta and label a tied unit shows."""
    crops = torch.sort(index, dim=1).values  # the set, not the order
    active = (~inactive).nonzero().flatten()
    rows = torch.full((crops.shape[0],), -1, dtype=torch.long)
    if len(active):
        _, group = torch.unique(crops[active], dim=0, return_inverse=True)
        position = torch.arange(len(active))
        first = torch.full((int(group.max()) + 1,), len(active)).scatter_reduce(0, group, position, reduce="amin")
        rows[active] = active[first[group]]
    return rows
