"""One prediction explained by LRP/CRP: the model's output on one image, every unit's relevance for a
class on it, and conditional heatmaps (CRP) of the class's relevance that flows through chosen units. A layer
read through a sparse autoencoder has its features as units (``semlens.relevance.sae``); its SAE's error term
carries the rest of its relevance.

The conditional heatmap of unit c is CRP's: the backward pass starts from the class logit as usual and
the relevance reaching the unit's layer is masked to unit c, so the heatmap is the part of the
class's input relevance that passes through c (summed over pixels it is, up to what biases absorb,
the unit's relevance). All units of a layer are explained in one batched backward pass per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._util.errors import SemlensError
from ..model.sae import SparseAutoencoder
from ..model.units import LayerSpec, UnitReader, hooks, resolve_module
from .lrp import RelevanceModel, _one_hot_logit, _per_unit, relevance_maps
from .sae import unit_tensors

HEATMAP_BATCH = 16  # copies of the image per backward pass when conditioning on units
Saes = dict[str, SparseAutoencoder | str] | None  # layers read through an SAE (paths are loaded in place)


@dataclass
class ImageRelevance:
    """One image through the model: ``logits`` ``[K]``, the explained class ``target``, per layer each
    channel's relevance ``[C]`` for it, the part of that relevance found where the channel is negative
    (``negative`` ``[C]``: what a signed layer's copy ``i-`` carries) and each unit's score ``[U]`` (pooled as
    at collection; ``U = 2C`` for a signed layer, whose copy ``i-`` scores the negated channel), and for SAE
    layers the relevance of the SAE's error term (``errors``)."""

    logits: torch.Tensor
    target: int
    relevance: dict[str, torch.Tensor]
    negative: dict[str, torch.Tensor]
    scores: dict[str, torch.Tensor]
    errors: dict[str, float]

    @property
    def probabilities(self) -> torch.Tensor:
        return self.logits.softmax(dim=0)


def unit_scores(module: nn.Module, inputs: torch.Tensor, specs: list[LayerSpec]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The model's logits ``[N, K]`` and every unit's score ``[N, U]`` in the layers of ``specs``, from one
    forward pass (scores as ``UnitReader`` makes them at collection)."""
    readers = {spec.name: UnitReader(spec) for spec in specs}
    scores: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_module, _inputs, output):
            scores.setdefault(name, readers[name](output)[0])

        return hook

    handles = [resolve_module(module, spec.name).register_forward_hook(keep(spec.name)) for spec in specs]
    with hooks(handles), torch.no_grad():
        logits = module(inputs)
    return logits.detach(), scores


def image_relevance(
    lrp: RelevanceModel, inputs: torch.Tensor, target: int | None, specs: list[LayerSpec], saes: Saes = None
) -> ImageRelevance:
    """Logits, unit scores and unit relevance of one image ``inputs`` ``[1, C, H, W]`` for class ``target``
    (None: the predicted class); the units of the layers in ``saes`` (loaded in place) are their SAE features."""
    logits, scores = unit_scores(lrp.model, inputs, specs)
    if target is not None and not 0 <= target < logits.shape[1]:
        raise SemlensError(f"class index {target} is out of range: the model has {logits.shape[1]} outputs")
    chosen = int(logits[0].argmax()) if target is None else target
    last = {spec.name for spec in specs if spec.channels_last}
    with lrp.attributing() as modified:
        _, maps, outputs, errors = relevance_maps(
            modified, inputs, torch.tensor([chosen]), [spec.name for spec in specs], {spec.name: spec.pick for spec in specs}, saes, last
        )
    relevance = {name: _per_unit(value)[0] for name, value in maps.items()}
    negative = {name: _per_unit(value * (outputs[name] < 0))[0] for name, value in maps.items()}
    found = {name: float(value[0]) for name, value in errors.items()}
    return ImageRelevance(logits[0], chosen, relevance, negative, {name: value[0] for name, value in scores.items()}, found)


def conditional_heatmaps(
    lrp: RelevanceModel,
    inputs: torch.Tensor,
    target: int,
    layer: str,
    channels: list[int],
    pick: str | None = None,
    saes: Saes = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """Heatmaps ``[M, H, W]``: row i is class ``target``'s input relevance on ``inputs`` ``[1, C, H, W]``
    that flows through unit ``channels[i]`` of ``layer`` (CRP, relevance at ``layer`` masked to it; an SAE
    feature where ``layer`` is in ``saes``, whose error term's share then stays behind; a channel of the last
    dimension for a layer read ``channels_last``)."""
    if not channels:
        return torch.zeros(0, *inputs.shape[-2:])
    last = [layer] if channels_last else []
    with lrp.attributing() as modified:
        chunks = torch.tensor(channels, dtype=torch.long).split(HEATMAP_BATCH)
        return torch.cat([_through_channels(modified, inputs, target, layer, chunk, pick, saes, last) for chunk in chunks])


def _through_channels(
    modified: nn.Module, inputs: torch.Tensor, target: int, layer: str, channels: torch.Tensor, pick: str | None, saes: Saes, last: list[str]
) -> torch.Tensor:
    """One chunk of ``conditional_heatmaps``: the image repeated once per unit, each copy's relevance at
    ``layer`` masked to its own unit on the way back."""
    count = len(channels)
    copies = inputs.detach().expand(count, *inputs.shape[1:]).clone().requires_grad_(True)
    layer_saes = saes if saes and layer in saes else None
    with unit_tensors(modified, [layer], {layer: pick}, layer_saes, last) as reader, torch.enable_grad():
        outputs = modified(copies)
    tensor = reader.units[layer]
    reader.condition(layer)
    keep = torch.zeros(count, tensor.shape[-1] if tensor.dim() == 3 else tensor.shape[1], dtype=tensor.dtype, device=tensor.device)
    keep[torch.arange(count), channels] = 1.0
    shape = (count, 1, -1) if tensor.dim() == 3 else (count, -1) + (1,) * (tensor.dim() - 2)
    tensor.register_hook(lambda grad: grad * keep.view(shape))
    (relevance,) = torch.autograd.grad(outputs, copies, grad_outputs=_one_hot_logit(outputs, torch.full((count,), target)))
    return relevance.sum(dim=1).detach()
