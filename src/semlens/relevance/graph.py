"""Attribution graphs (the paper's Sec. 4.1.2, D.5): which concepts feed a class, and through which.

Units relevant to the class (mean relevance share above a cut) are grouped by label, unlabelled ones
under "?". For each group of an upper layer, CRP conditions the backward pass on that group (relevance
at the upper layer masked to its units); the relevance that reaches each group of the layer below is
the weight of the edge between them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..model.units import hooks, resolve_module, select_output
from .lrp import RelevanceModel, _one_hot_logit, _per_unit, unit_relevance

UNLABELLED = "?"
GRAPH_CUT = 0.01


@dataclass
class Node:
    id: str
    layer: str
    label: str
    units: list[str]
    relevance: float


@dataclass
class AttributionGraph:
    class_name: str
    nodes: list[Node] = field(default_factory=list)
    edges: list[dict] = field(default_factory=list)  # {"source", "target", "weight"}

    def to_dict(self) -> dict:
        return {"class": self.class_name, "nodes": [node.__dict__ for node in self.nodes], "edges": self.edges}


def group_units(
    layer: str, units: list[str], shares: torch.Tensor, labels: list[str | None], cut: float = GRAPH_CUT
) -> dict[str, list[int]]:
    """Indices of the units above ``cut``, grouped by label (``?`` for unlabelled), most relevant group first."""
    groups: dict[str, list[int]] = {}
    for index in (shares > cut).nonzero().flatten().tolist():
        groups.setdefault(labels[index] or UNLABELLED, []).append(index)
    return dict(sorted(groups.items(), key=lambda item: -float(shares[item[1]].sum())))


def conditional_relevance(
    modified: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, upper: str, lower: str, keep: torch.Tensor
) -> torch.Tensor:
    """Relevance ``[N, U_lower]`` reaching ``lower`` when relevance at ``upper`` is masked to units ``keep``
    (a boolean ``[U_upper]``): the class logit's CRP through one group of upper units."""
    captured: dict[str, torch.Tensor] = {}

    def capture(name: str):
        def hook(_module, _inputs, output):
            tensor = select_output(output, None, name)
            captured.setdefault(name, tensor)
            if name == upper:
                shape = (1, -1) + (1,) * (tensor.dim() - 2) if tensor.dim() != 3 else (1, 1, -1)
                tensor.register_hook(lambda grad: grad * keep.to(grad.dtype).view(shape))

        return hook

    handles = [resolve_module(modified, name).register_forward_hook(capture(name)) for name in (upper, lower)]
    with hooks(handles), torch.enable_grad():
        outputs = modified(inputs.detach().clone().requires_grad_(True))
    (grad,) = torch.autograd.grad(outputs, captured[lower], grad_outputs=_one_hot_logit(outputs, targets))
    return _per_unit(grad).detach()


def edges_between(
    upper_groups: dict[str, list[int]], lower_groups: dict[str, list[int]], flows: dict[str, torch.Tensor], total: float
) -> list[tuple[str, str, float]]:
    """(upper label, lower label, weight): relevance flowing from each upper group into each lower group,
    as a share of the lower layer's total absolute relevance. ``flows[g]`` is the mean ``[U_lower]``
    relevance conditioned on upper group ``g``."""
    edges = []
    for upper_label in upper_groups:
        for lower_label, members in lower_groups.items():
            weight = float(flows[upper_label][members].sum()) / total if total > 0 else 0.0
            if weight > 0:
                edges.append((upper_label, lower_label, weight))
    return edges


def build_graph(
    lrp: RelevanceModel,
    inputs: torch.Tensor,
    class_index: int,
    class_name: str,
    layers: list[str],
    units: dict[str, list[str]],
    labels: dict[str, list[str | None]],
    cut: float = GRAPH_CUT,
) -> AttributionGraph:
    """The attribution graph of one class over ``layers`` (lowest first): per layer, the units above ``cut``
    grouped by label; edges weighted by the lower groups' relevance conditioned on each upper group."""
    targets = torch.full((len(inputs),), class_index)
    graph = AttributionGraph(class_name)
    with lrp.attributing() as modified:
        _, plain = unit_relevance(modified, inputs, targets, layers)
        shares = {layer: (plain[layer] / plain[layer].abs().sum(1, keepdim=True).clamp_min(1e-12)).mean(0) for layer in layers}
        groups = {layer: group_units(layer, units[layer], shares[layer], labels[layer], cut) for layer in layers}
        for layer in layers:
            for label, members in groups[layer].items():
                graph.nodes.append(Node(f"{layer}:{label}", layer, label, [units[layer][i] for i in members], float(shares[layer][members].sum())))
        for lower, upper in zip(layers, layers[1:]):
            flows = {}
            for label, members in groups[upper].items():
                keep = torch.zeros(len(units[upper]), dtype=torch.bool)
                keep[members] = True
                flows[label] = conditional_relevance(modified, inputs, targets, upper, lower, keep).mean(0)
            total = float(plain[lower].mean(0).abs().sum())
            for source, target, weight in edges_between(groups[upper], groups[lower], flows, total):
                graph.edges.append({"source": f"{upper}:{source}", "target": f"{lower}:{target}", "weight": weight})
    return graph
