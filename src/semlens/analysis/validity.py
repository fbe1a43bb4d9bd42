"""Which units have concept examples of their own. An inactive unit never told samples apart, so its top-k
examples are arbitrary; a tied unit's examples are the same crops as another unit's, so its theta is a
copy. Both are recorded at build time and left out of every analysis by default (``Lens.valid``)."""

from __future__ import annotations

import torch


def inactive_units(scores: torch.Tensor) -> torch.Tensor:
    """Units whose top-k ``scores`` ``[U, k]`` never told samples apart, so that their examples are arbitrary:
    they never fired (no positive score on any sample) or their kept scores are all equal."""
    return (scores[:, 0] <= 0) | (scores[:, 0] == scores[:, -1])


def tied_units(indices: dict[str, torch.Tensor], inactive: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per layer, True for units whose concept examples are the same crops as an earlier unit's (layers in
    order, then rows): their theta is that unit's, so they say nothing of their own. ``indices[l]`` is the
    crop table's ``[U, k]`` index; inactive units are neither tied nor the unit others are tied to."""
    layers = list(indices)
    crops = torch.cat([torch.sort(indices[layer], dim=1).values for layer in layers])  # the set, not the order
    active = (~torch.cat([inactive[layer] for layer in layers])).nonzero().flatten()
    tied = torch.zeros(crops.shape[0], dtype=torch.bool)
    if len(active):
        _, group = torch.unique(crops[active], dim=0, return_inverse=True)
        position = torch.arange(len(active))
        first = torch.full((int(group.max()) + 1,), len(active)).scatter_reduce(0, group, position, reduce="amin")
        tied[active] = first[group] != position
    return dict(zip(layers, torch.split(tied, [indices[layer].shape[0] for layer in layers])))
