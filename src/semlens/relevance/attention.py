"""Relevance through attention with its weights held constant (CP-LRP, Ali et al. 2022).

With the softmax weights ``A`` treated as constants, attention is a linear map of the values, ``y = A v``,
and the ε-rule gives each value its share of each output's relevance, ``R_v = v * Aᵀ (R / y)``; queries
and keys get none, so relevance is conserved. ``HeldAttention`` is a torch function mode that swaps
``F.scaled_dot_product_attention`` (what timm's ViTs, DINOv2-style and most current transformers call)
for that rule while LRP runs; the forward values stay what the model computes, up to float rounding.
Attention written out (``q @ k.T``, a softmax, ``@ v``) gets the same rule where torch.fx finds it
(``held_weights_product``, put there by ``residual.py``); where it cannot trace the module, the
conservation check refuses the model. torch's ``nn.MultiheadAttention`` (torchvision's ViT, open_clip's,
many hand-written transformers) computes its projections inside one function, out of LRP's reach: while
LRP runs, ``MultiheadAttentionCanonizer`` gives it a forward that computes the same with the value
projection and the output projection as layers (the ε-rule) and the attention as ``held_attention``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from zennit.canonizers import AttributeCanonizer

from .rules import linear_map_rule, stabilize


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


def held_weights_einsum(equation: str, first: torch.Tensor, second: torch.Tensor, weights_first: bool, epsilon: float = 1e-6) -> torch.Tensor:
    """``torch.einsum(equation, first, second)`` of attention written with einsum (MaxViT's), the weights (a
    softmax's: ``first`` where ``weights_first``, else ``second``) held."""
    weights = (first if weights_first else second).detach()
    values = second if weights_first else first
    return linear_map_rule(lambda held: torch.einsum(equation, *((weights, held) if weights_first else (held, weights))), values, epsilon)


class HeldAttention(TorchFunctionMode):
    """While active, ``F.scaled_dot_product_attention`` is ``held_attention``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            return held_attention(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


class MultiheadAttentionCanonizer(AttributeCanonizer):
    """Each ``nn.MultiheadAttention`` gets, while LRP runs, a forward that computes what its own does (eval
    mode: no dropout) from layers LRP has rules for: the values projected by a ``nn.Linear`` holding its
    slice of the input projection, ``F.scaled_dot_product_attention`` (held by ``HeldAttention``), the
    output projection called as the layer it is. Queries and keys get no relevance, as under held attention
    anywhere. A key or value bias (``add_bias_kv``) or ``add_zero_attn`` has no rule here: ``unsupported``
    names the modules that use them."""

    def __init__(self) -> None:
        super().__init__(self._attributes)

    @staticmethod
    def unsupported(model: nn.Module) -> list[str]:
        return [
            f"{name} (MultiheadAttention): add_bias_kv or add_zero_attn"
            for name, module in model.named_modules()
            if isinstance(module, nn.MultiheadAttention) and (module.bias_k is not None or module.add_zero_attn)
        ]

    @staticmethod
    def _attributes(_name: str, module: nn.Module) -> dict[str, object] | None:
        if not isinstance(module, nn.MultiheadAttention):
            return None
        size = module.embed_dim
        weight = module.in_proj_weight[2 * size :] if module._qkv_same_embed_dim else module.v_proj_weight
        projection = nn.Linear(weight.shape[1], size, bias=module.in_proj_bias is not None).to(weight.device, weight.dtype)
        with torch.no_grad():
            projection.weight.copy_(weight)
            if module.in_proj_bias is not None:
                projection.bias.copy_(module.in_proj_bias[2 * size :])
        return {"canonizer_value_projection": projection, "forward": _held_forward(module, projection)}


def _held_forward(module: nn.MultiheadAttention, value_projection: nn.Linear):
    """``module``'s forward, computed from ``value_projection``, held attention and its output projection."""
    heads, size = module.num_heads, module.embed_dim
    if module._qkv_same_embed_dim:
        query_weight, key_weight = module.in_proj_weight[:size], module.in_proj_weight[size : 2 * size]
    else:
        query_weight, key_weight = module.q_proj_weight, module.k_proj_weight
    biases = (None, None) if module.in_proj_bias is None else (module.in_proj_bias[:size], module.in_proj_bias[size : 2 * size])

    def forward(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (tensor.unsqueeze(1) for tensor in (query, key, value))
        if not module.batch_first or unbatched:
            query, key, value = (tensor.transpose(0, 1) for tensor in (query, key, value))
        batch, targets, sources = query.shape[0], query.shape[1], key.shape[1]

        def split(tensor: torch.Tensor, length: int) -> torch.Tensor:
            return tensor.reshape(batch, length, heads, size // heads).transpose(1, 2)

        q = split(F.linear(query, query_weight, biases[0]), targets)
        k = split(F.linear(key, key_weight, biases[1]), sources)
        v = split(value_projection(value), sources)
        mask = _additive_mask(attn_mask, key_padding_mask, batch, heads, targets, sources, q.dtype)
        causal = is_causal and mask is None
        output = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        output = module.out_proj(output.transpose(1, 2).reshape(batch, targets, size))
        weights = None
        if need_weights:
            with torch.no_grad():
                weights = attention_weights(q, k, mask, causal, None)
                weights = weights.mean(dim=1) if average_attn_weights else weights
                weights = weights.squeeze(0) if unbatched else weights
        if not module.batch_first or unbatched:
            output = output.transpose(0, 1)
        return (output.squeeze(1) if unbatched else output), weights

    return forward


def _additive_mask(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    batch: int,
    heads: int,
    targets: int,
    sources: int,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """``nn.MultiheadAttention``'s masks (boolean: True where a position may not be attended; float: added to
    the scores) as one float mask ``[N, heads, L, S]`` for ``F.scaled_dot_product_attention``."""

    def additive(mask: torch.Tensor) -> torch.Tensor:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else mask.to(dtype)

    total = None
    if attn_mask is not None:
        total = additive(attn_mask).reshape(-1, heads, targets, sources) if attn_mask.dim() == 3 else additive(attn_mask)
    if key_padding_mask is not None:
        padding = additive(key_padding_mask).reshape(batch, 1, 1, sources)
        total = padding if total is None else total + padding
    return total
