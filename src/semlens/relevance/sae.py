"""LRP through a sparse autoencoder: relevance at a layer's output handed to the SAE's features.

During the backward pass the layer's output ``x`` is read as ``decode(encode(x)) + err`` with
``err = x - decode(encode(x))`` a constant, bias-like term (``b_dec`` counted in it). The forward pass
is unchanged (the rewrite equals ``x``). The decoder is a linear map of the codes ``c``, so the ε rule
splits the relevance ``R_d`` of each output coordinate ``d`` (``s_d = R_d / stabilize(x_d)``) into

    R_j = c_j · Σ_d W_dec[j, d] s_d    (feature j)        R_err = Σ_d err_d s_d    (the error's share)

and ``Σ_j R_j + R_err = Σ_d R_d · x_d / stabilize(x_d)``: relevance is conserved up to ε. Downwards,
feature ``j`` hands ``c_j W_dec[j, d] s_d`` back to coordinate ``d`` and the error ``err_d s_d``, which adds
up to ``R_d`` again, so layers below see what they see without the SAE. When the relevance arriving at the
features is changed (CRP masks it to some features), each feature's pieces are scaled by the same factor
(its relevance over the unconditioned one) and the error's share stays behind, so only the kept
features' shares of ``x`` travel down.
"""

from __future__ import annotations

from collections.abc import Collection
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from .._util.errors import LayerError
from ..model.sae import SparseAutoencoder
from ..model.units import hooks, resolve_module, select_output


class _Relay:
    """What the decoder's backward hands to the encoder's: ``s`` and the unconditioned feature relevance;
    ``keep_error`` False when relevance is conditioned on features (then the error's share stays behind)."""

    share: torch.Tensor
    features: torch.Tensor
    keep_error: bool = True


class _Encode(torch.autograd.Function):
    """Forward: the codes (computed outside; ``x`` is an input only so that the backward reaches it);
    backward: each feature's relevance back to ``x`` along its decoded share of every coordinate."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, codes: torch.Tensor, decoder: torch.Tensor, relay: _Relay) -> torch.Tensor:
        ctx.save_for_backward(codes, decoder)
        ctx.relay = relay
        return codes.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        codes, decoder = ctx.saved_tensors
        unconditioned = ctx.relay.features
        nonzero = unconditioned != 0
        factor = torch.where(nonzero, grad / torch.where(nonzero, unconditioned, 1.0), 0.0)
        return ctx.relay.share * ((factor * codes) @ decoder), None, None, None


class _Decode(torch.autograd.Function):
    """Forward: ``x`` (which equals ``decode(codes) + err``); backward: the ε rule of the decoder, to the codes
    and to the constant error term (whose share goes straight back to ``x``)."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, codes: torch.Tensor, decoder: torch.Tensor, relay: _Relay, epsilon: float, errors: list
    ) -> torch.Tensor:
        ctx.save_for_backward(x, codes, decoder)
        ctx.relay, ctx.epsilon, ctx.errors = relay, epsilon, errors
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, codes, decoder = ctx.saved_tensors
        share = grad / (x + ctx.epsilon * torch.where(x >= 0, 1.0, -1.0))
        features = codes * (share @ decoder.T)
        error = (x - codes @ decoder) * share
        ctx.relay.share, ctx.relay.features = share, features
        ctx.errors.append(error.detach().flatten(1).sum(dim=1))
        return error if ctx.relay.keep_error else torch.zeros_like(error), features, None, None, None, None


class SaeRelevance:
    """Reads layers through their SAEs during LRP; ``units[layer]`` is the tensor whose "gradient" is the
    relevance per unit (channels in dim 1, or last for tokens), ``errors[layer]`` the error's share ``[N]``
    of each backward pass. An SAE given as a path is loaded on first use, in place in ``saes``, so that a
    caller passing the same dict for every batch loads it once."""

    def __init__(self, saes: dict[str, SparseAutoencoder | str], epsilon: float = 1e-6) -> None:
        self.saes, self.epsilon = saes, epsilon
        self.units: dict[str, torch.Tensor] = {}
        self.errors: dict[str, list[torch.Tensor]] = {layer: [] for layer in saes}
        self._relays: dict[str, _Relay] = {}

    def condition(self, layer: str) -> None:
        """Relevance at ``layer`` is about to be masked to some units: for an SAE layer, the error's share then
        does not travel down either (only the kept features' shares of the output do)."""
        if layer in self._relays:
            self._relays[layer].keep_error = False

    def rewrite(self, layer: str, output: Any, channels_last: bool = False) -> torch.Tensor:
        """The layer's output routed through its SAE (same values); the features become ``units[layer]``,
        channels second for a map (its features read along the last dimension if ``channels_last``)."""
        if not isinstance(output, torch.Tensor):
            raise LayerError(f"relevance through an SAE needs a layer whose output is one tensor; {layer} returns {type(output).__name__}")
        is_map = output.dim() == 4
        channels_first = is_map and not channels_last
        x = output.movedim(1, -1) if channels_first else output
        sae = self.saes[layer]
        if not isinstance(sae, SparseAutoencoder):
            sae = self.saes[layer] = SparseAutoencoder.load(sae, x.shape[-1])
        decoder = sae.checked_decoder(f"relevance through the SAE of layer {layer}").to(output.device, x.dtype)
        with torch.no_grad():
            codes = sae.encode(x.float()).to(x.dtype)
        relay = self._relays[layer] = _Relay()
        features = _Encode.apply(x, codes, decoder, relay)
        units = features.movedim(-1, 1) if is_map else features
        self.units.setdefault(layer, units)
        codes_again = units.movedim(1, -1) if is_map else units  # through the unit tensor, so that masks on it act
        y = _Decode.apply(x, codes_again, decoder, relay, self.epsilon, self.errors[layer])
        return y.movedim(-1, 1) if channels_first else y


def decoded_share(sae: SparseAutoencoder, output: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row i of a layer's ``output`` (``N,C,H,W``, ``N,L,C`` or ``N,C``) reduced to feature ``features[i]``'s
    decoded share ``c W_dec[j]`` at every position (the start of CRP for an SAE feature), and its code ``c`` at
    every position (``N,H,W``, ``N,L`` or ``N``)."""
    channels_first = output.dim() == 4
    x = (output.movedim(1, -1) if channels_first else output).detach()
    decoder = sae.checked_decoder("CRP through an SAE").to(x.device)
    with torch.no_grad():
        codes = sae.encode(x.float())
        rows = torch.arange(len(features), device=x.device)
        chosen = codes.reshape(len(x), -1, codes.shape[-1])[rows, :, features].reshape(x.shape[:-1])
        share = (chosen[..., None] * decoder[features].reshape((len(x),) + (1,) * (x.dim() - 2) + (-1,))).to(x.dtype)
    return (share.movedim(-1, 1) if channels_first else share), chosen


@contextmanager
def unit_tensors(
    modified: nn.Module,
    layers: list[str],
    picks: dict[str, str | None] | None = None,
    saes: dict[str, SparseAutoencoder | str] | None = None,
    channels_last: Collection[str] = (),
) -> Iterator[SaeRelevance]:
    """Hooks that capture, on the next forward pass, each layer's unit tensor: its (picked) output, or for
    layers in ``saes`` its SAE features (the output then flows on through ``decode(encode(x)) + err``); for
    the layers in ``channels_last`` (maps N,H,W,C: their channels, or their SAE's features) a view with the
    channels second, through which the model goes on, so that relevance with respect to it comes per channel
    as for any map. The first call of a
    module called twice is kept."""
    picks, reader = picks or {}, SaeRelevance({} if saes is None else saes)

    def capture(name: str):
        def hook(_module, _inputs, output):
            if name in reader.saes:
                return reader.rewrite(name, output, name in channels_last) if name not in reader.units else None
            unit = select_output(output, picks.get(name), name)
            if name not in channels_last:
                reader.units.setdefault(name, unit)
                return None
            if unit is not output:
                raise LayerError(f"layer {name}: relevance of a layer read channels last needs its whole output, not a picked part")
            if name in reader.units:
                return None
            reader.units[name] = unit.movedim(-1, 1)
            return reader.units[name].movedim(1, -1)  # the model goes on from the captured view, so relevance reaches it

        return hook

    with hooks([resolve_module(modified, name).register_forward_hook(capture(name)) for name in layers]):
        yield reader
