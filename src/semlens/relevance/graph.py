"""Attribution graphs (the paper's Sec. 4.1.2, D.5): which concepts feed a class, and through which.

Units relevant to the class (mean relevance share above a cut) are grouped by label, unlabelled ones
under "no concept". For each group of an upper layer, CRP conditions the backward pass on that group (relevance
at the upper layer masked to its units); the relevance that reaches each group of the layer below is
the weight of the edge between them.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from .._util.display import HtmlResult
from ..model.sae import SparseAutoencoder
from .sae import unit_tensors

if TYPE_CHECKING:  # zennit, and torchvision's models with it, load when a graph is built, not with semlens
    from .lrp import RelevanceModel

UNLABELLED = "no concept"  # as every face names a unit whose best concept sets it apart from none
GRAPH_CUT = 0.01


@dataclass
class Node:
    id: str
    layer: str
    label: str
    units: list[str]
    relevance: float


@dataclass
class AttributionGraph(HtmlResult):
    """The concepts behind a class: per layer, its relevant units grouped by label (``nodes``, most relevant first),
    and the relevance flowing from each upper group down to the groups below (``edges``). In a notebook: the groups
    per layer with their shares and the strongest flows."""

    class_name: str
    nodes: list[Node] = field(default_factory=list)
    edges: list[dict] = field(default_factory=list, metadata={"description": "{source, target, weight}: relevance flowing down"})
    left_out: dict[str, float] = field(default_factory=dict)  # per layer: share of the units not listed (inactive) above the cut

    def strongest_edges(self, count: int = 10) -> list[tuple[Node, Node, float]]:
        """The ``count`` heaviest flows between groups as (upper group, lower group, weight), heaviest first."""
        nodes = {node.id: node for node in self.nodes}
        ranked = sorted(self.edges, key=lambda edge: -abs(edge["weight"]))[:count]
        return [(nodes[edge["source"]], nodes[edge["target"]], float(edge["weight"])) for edge in ranked]

    def __repr__(self) -> str:
        """Outside a notebook: the class and each layer's leading concept groups (the dataclass's repr listed every unit)."""
        layers = dict.fromkeys(node.layer for node in self.nodes)
        lead = "; ".join(
            f"{layer}: " + ", ".join(f"{node.label} {node.relevance:.2f}" for node in [node for node in self.nodes if node.layer == layer][:3])
            for layer in layers
        )
        return f"AttributionGraph(class {self.class_name!r}: {len(self.nodes)} concept groups, {len(self.edges)} flows; leading groups per layer: {lead})"

    def to_dict(self) -> dict:
        nodes = [node.__dict__ for node in self.nodes]
        return {"class": self.class_name, "nodes": nodes, "edges": self.edges, "left_out": self.left_out}


def relevant_samples(top_samples: torch.Tensor, top_shares: torch.Tensor, weights: torch.Tensor, count: int) -> list[int]:
    """The ``count`` samples of a class on which its relevant units matter most, best first.

    ``top_samples``/``top_shares`` ``[U, top]`` are each unit's samples of the class with the highest
    relevance share (-1: none); a sample scores the sum of its shares weighted by each unit's mean share
    for the class ``weights`` ``[U]`` (negative weights count as 0), so the graph is drawn on samples the
    class's decision rests on, not on the lowest sample ids.
    """
    ids, scores = top_samples.reshape(-1), (top_shares * weights.nan_to_num(0).clamp_min(0)[:, None]).reshape(-1)
    keep = (ids >= 0) & scores.isfinite()
    distinct, inverse = torch.unique(ids[keep], return_inverse=True)
    totals = torch.zeros(len(distinct), dtype=torch.float64).index_add_(0, inverse, scores[keep].double())
    order = torch.sort(totals, descending=True, stable=True).indices[:count]
    return distinct[order].tolist()


def group_units(
    layer: str,
    units: list[str],
    shares: torch.Tensor,
    labels: list[str | None],
    cut: float = GRAPH_CUT,
    valid: torch.Tensor | None = None,
) -> dict[str, list[int]]:
    """Indices of the units above ``cut``, grouped by label (``?`` for unlabelled), most relevant group first;
    units not ``valid`` (inactive: their examples are arbitrary, so is their label) are left out."""
    groups: dict[str, list[int]] = {}
    chosen = shares > cut if valid is None else (shares > cut) & valid
    for index in chosen.nonzero().flatten().tolist():
        groups.setdefault(labels[index] or UNLABELLED, []).append(index)
    return dict(sorted(groups.items(), key=lambda item: -float(shares[item[1]].sum())))


def conditional_relevance(
    modified: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    upper: str,
    lower: str,
    keep: torch.Tensor,
    saes: dict[str, SparseAutoencoder | str] | None = None,
    channels_last: Collection[str] = (),
) -> torch.Tensor:
    """Relevance ``[N, U_lower]`` reaching ``lower`` when relevance at ``upper`` is masked to units ``keep``
    (a boolean ``[U_upper]``): the class logit's CRP through one group of upper units (SAE features for
    the layers in ``saes``, channels of the last dimension for those in ``channels_last``)."""
    from .lrp import _one_hot_logit, _per_unit

    with unit_tensors(modified, [upper, lower], None, saes, channels_last) as reader, torch.enable_grad():
        outputs = modified(inputs.detach().clone().requires_grad_(True))
    tensor = reader.units[upper]
    reader.condition(upper)
    shape = (1, -1) + (1,) * (tensor.dim() - 2) if tensor.dim() != 3 else (1, 1, -1)
    tensor.register_hook(lambda grad: grad * keep.to(grad.dtype).view(shape))
    (grad,) = torch.autograd.grad(outputs, reader.units[lower], grad_outputs=_one_hot_logit(outputs, targets))
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
    valid: dict[str, torch.Tensor] | None = None,
    saes: dict[str, SparseAutoencoder | str] | None = None,
    channels_last: Collection[str] = (),
) -> AttributionGraph:
    """The attribution graph of one class over ``layers`` (lowest first): per layer, the valid units above
    ``cut`` grouped by label; edges weighted by the lower groups' relevance conditioned on each upper group.
    The relevance share of the invalid units above ``cut`` is reported per layer as ``left_out``. The units of
    the layers in ``saes`` are their SAE features, those of the layers in ``channels_last`` the last
    dimension of their maps."""
    from .lrp import unit_relevance

    targets = torch.full((len(inputs),), class_index)
    graph = AttributionGraph(class_name)
    with lrp.attributing() as modified:
        _, plain = unit_relevance(modified, inputs, targets, layers, None, saes, channels_last)
        shares = {layer: (plain[layer] / plain[layer].abs().sum(1, keepdim=True).clamp_min(1e-12)).mean(0) for layer in layers}
        valid = valid or {layer: torch.ones(len(units[layer]), dtype=torch.bool) for layer in layers}
        groups = {layer: group_units(layer, units[layer], shares[layer], labels[layer], cut, valid[layer]) for layer in layers}
        graph.left_out = {layer: float(shares[layer][(shares[layer] > cut) & ~valid[layer]].sum()) for layer in layers}
        for layer in layers:
            for label, members in groups[layer].items():
                graph.nodes.append(Node(f"{layer}:{label}", layer, label, [units[layer][i] for i in members], float(shares[layer][members].sum())))
        for lower, upper in zip(layers, layers[1:]):
            flows = {}
            for label, members in groups[upper].items():
                keep = torch.zeros(len(units[upper]), dtype=torch.bool)
                keep[members] = True
                flows[label] = conditional_relevance(modified, inputs, targets, upper, lower, keep, saes, channels_last).mean(0)
            total = float(plain[lower].mean(0).abs().sum())
            for source, target, weight in edges_between(groups[upper], groups[lower], flows, total):
                graph.edges.append({"source": f"{upper}:{source}", "target": f"{lower}:{target}", "weight": weight})
    return graph
