"""Relevance through attention with its weights held constant (CP-LRP, Ali et al. 2022).

With the softmax weights ``A`` treated as constants, attention is a linear map of the values, ``y = A v``,
and the ε-rule gives each value its share of each output's relevance, ``R_v = v * Aᵀ (R / y)``; queries
and keys get none, so relevance is conserved. ``HeldAttention`` is a torch function mode that swaps
``F.scaled_dot_product_attention`` (what timm's ViTs, DINOv2-style and most current transformers call)
for that rule while LRP runs; the forward values stay what the model computes, up to float rounding.
Attention written out (``q @ k.T``, a softmax, ``@ v``) gets the same rule where torch.fx finds it
(``held_weights_product``, put there by ``residual.py``); where it cannot trace the module, the
conservation check refuses the model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .rules import stabilize


def attention_weights(
    query: torch.Tensor, key: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool, scale: float | None
) -> torch.Tensor:
    """The softmax weights ``[..., L, S]`` that ``F.scaled_dot_product_attention`` applies to the values."""
    scores = query @ key.transpose(-2, -1) * (1 / math.sqrt(query.shape[-1]) if scale is None else scale)
    if is_causal:
        causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return scores.softmax(dim=-1)


class _HeldWeights(torch.autograd.Function):
    """``A v`` with ``A`` constant: its backward is the ε-rule on the values."""

    @staticmethod
    def forward(ctx, weights: torch.Tensor, value: torch.Tensor, epsilon: float) -> torch.Tensor:
        output = weights @ value
        ctx.save_for_backward(weights, value, output)
        ctx.epsilon = epsilon
        return output

    @staticmethod
    def backward(ctx, relevance: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        weights, value, output = ctx.saved_tensors
        shares = weights.transpose(-2, -1) @ (relevance / stabilize(output, ctx.epsilon))
        return None, (value * shares).sum_to_size(value.shape), None


def held_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    epsilon: float = 1e-6,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` (no dropout: models are explained in eval mode) whose relevance
    goes to the values by the ε-rule, the weights held constant."""
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        repeat = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(repeat, dim=-3), value.repeat_interleave(repeat, dim=-3)
    with torch.no_grad():
        weights = attention_weights(query, key, attn_mask, is_causal, scale)
    return held_weights_product(weights, value, epsilon)


def held_weights_product(weights: torch.Tensor, values: torch.Tensor, epsilon: float = 1e-6) -> torch.Tensor:
    """``weights @ values`` of attention written out (the weights a softmax's), with the weights held: the
    rule that ``residual.py`` puts where it finds one."""
    return _HeldWeights.apply(weights.detach(), values, epsilon)


class HeldAttention(TorchFunctionMode):
    """While active, ``F.scaled_dot_product_attention`` is ``held_attention``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            return held_attention(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))
