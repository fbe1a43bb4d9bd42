"""Modules that the torch.fx rewrite (``residual.py``) puts in place of tensor operations, so that LRP can
give them a rule (``rules.LeanEpsilonPlusFlat``'s layer map)."""

from __future__ import annotations

import torch
from torch import nn


class Reduction(nn.Module):
    """A sum or mean over ``dim`` as the model computes it, as a module so that LRP can give it the average
    pools' rule (``rules.LeanNorm``)."""

    def __init__(self, dim: int | tuple[int, ...], keepdim: bool, mean: bool) -> None:
        super().__init__()
        self.dim, self.keepdim, self.mean = dim, keepdim, mean

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return reduce_over(input, self.dim, self.keepdim, self.mean)


def reduce_over(input: torch.Tensor, dim: int | tuple[int, ...], keepdim: bool, mean: bool) -> torch.Tensor:
    """``input``'s sum, or mean, over ``dim``."""
    return (torch.mean if mean else torch.sum)(input, dim=dim, keepdim=keepdim)
