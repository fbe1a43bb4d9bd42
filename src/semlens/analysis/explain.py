"""The concepts behind one prediction (the paper's Fig. 1, step 3): which units carried the class's
relevance on one image, grouped by their labels, and where in the image (their conditional heatmaps).

A unit's share is its relevance for the class on this image divided by the summed absolute relevance
of its layer (as in class relevance, ``build/class_relevance.py``), so the absolute shares of a layer
sum to 1; in a layer read through a sparse autoencoder the SAE's error term (what its features do not
reconstruct) counts in that sum with its own share. Units with a positive share drove the class and are
listed by concept; those with a negative share spoke against it and are listed apart. A signed layer's
two copies of a channel share the channel's relevance: the
channel is counted once, under the copy whose activations carry most of its relevance on this image
(``i-`` where that relevance lies where the channel is negative). Inactive units (their examples are
arbitrary) are never listed; their part of the relevance is reported as ``left_out``. A tied unit is listed
with the crops and label of the unit whose crops it shares.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .._util.display import HtmlResult

PREDICTION_TOP = 5  # classes listed with their probabilities


@dataclass
class ExplainedUnit:
    """One unit on this image: its share of its layer's relevance for the class, its score (activation,
    pooled as at collection), label, concept examples (``ConceptExample``) and conditional heatmap
    ``[H, W]`` in the model's input view (not in ``to_dict``)."""

    unit: str
    share: float = field(metadata={"description": "share of its layer's summed absolute relevance for the class on this image"})
    score: float = field(metadata={"description": "its activation on this image, pooled as at collection"})
    label: str | None
    examples: list[Any] = field(default_factory=list)
    heatmap: torch.Tensor | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "share": self.share, "score": self.score, "label": self.label, "examples": [asdict(e) for e in self.examples]}


@dataclass
class ConceptGroup:
    """Units with the same label (an unlabelled unit is a group of its own) and their summed share."""

    label: str | None = field(metadata={"description": "the units' label; null for one unlabelled unit"})
    share: float
    units: list[ExplainedUnit]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "share": self.share, "units": [unit.to_dict() for unit in self.units]}


@dataclass
class LayerExplanation:
    """One layer: its concept groups (most relevant first), its total relevance for the class on this
    image, the share carried by inactive units (``left_out``), the units that spoke
    against the class (``against``, most negative share first) and, for an SAE layer, the share of the SAE's
    error term (``sae_error``; None for other layers)."""

    layer: str
    groups: list[ConceptGroup]
    relevance: float
    left_out: float = field(metadata={"description": "share carried by inactive units (never fired on the probe data: their examples are arbitrary)"})
    against: list[ExplainedUnit] = field(
        default_factory=list, metadata={"description": "units with the most negative shares (they spoke against the class); overlay: where"}
    )
    sae_error: float | None = field(
        default=None, metadata={"description": "SAE layers: the share carried by the SAE's error term; null for other layers"}
    )

    @property
    def units(self) -> list[ExplainedUnit]:
        return [unit for group in self.groups for unit in group.units]

    def to_dict(self) -> dict[str, Any]:
        groups = [group.to_dict() for group in self.groups]
        against = [unit.to_dict() for unit in self.against]
        return {
            "layer": self.layer, "relevance": self.relevance, "left_out": self.left_out, "sae_error": self.sae_error,
            "groups": groups, "against": against,
        }  # fmt: skip


@dataclass
class Explanation(HtmlResult):
    """One image's prediction and the concepts behind the explained class, per layer. ``view`` is the
    image as the model saw it (the heatmaps' frame; not in ``to_dict``)."""

    image: str
    class_name: str
    class_index: int
    predicted: bool = field(metadata={"description": "true when the explained class is the model's prediction"})  # no class was given
    prediction: list[dict[str, Any]]
    layers: list[LayerExplanation]
    view: Any = None

    def __repr__(self) -> str:
        """Outside a notebook: the class explained and each layer's leading concept (the dataclass's repr held the view)."""
        how = "predicted" if self.predicted else "given"
        lead = "; ".join(
            f"{layer.layer}: {layer.groups[0].label or '(no concept)'} {layer.groups[0].share:.2f}" if layer.groups else f"{layer.layer}: -"
            for layer in self.layers
        )
        return f"Explanation({self.image}: class {self.class_name!r} ({how}); leading concept per layer, with its share: {lead})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "class": self.class_name,
            "class_index": self.class_index,
            "predicted": self.predicted,
            "prediction": self.prediction,
            "layers": [layer.to_dict() for layer in self.layers],
        }


def top_classes(probabilities: torch.Tensor, names: list[str] | None, top: int = PREDICTION_TOP) -> list[dict[str, Any]]:
    """The ``top`` most probable classes as ``{"class", "index", "probability"}``, most probable first."""
    values, indices = probabilities.topk(min(top, probabilities.numel()))
    return [
        {"class": names[i] if names else str(i), "index": i, "probability": float(p)} for p, i in zip(values.tolist(), indices.tolist())
    ]


def channel_units(relevance: torch.Tensor, negative: torch.Tensor, signed: bool) -> torch.Tensor:
    """Per channel ``[C]``, the row of the unit that stands for it on this image: the channel itself, or in a
    signed layer the copy ``i-`` (row ``C + i``) where most of the channel's relevance ``relevance`` lies where
    it is negative (``negative``: that part), i.e. where the channel's negated copy fires."""
    plain = torch.arange(relevance.numel())
    if not signed:
        return plain
    return torch.where(negative.abs() > (relevance - negative).abs(), plain + relevance.numel(), plain)


def relevance_total(relevance: torch.Tensor, error: torch.Tensor | None = None) -> torch.Tensor:
    """A layer's summed absolute relevance ``[...]`` over its units ``relevance`` ``[..., C]`` and, for an SAE
    layer, its error term ``error`` ``[...]`` (never below a tiny floor: no relevance gives no shares, not NaN)."""
    total = relevance.abs().sum(dim=-1)
    return (total if error is None else total + error.abs()).clamp_min(1e-12)


def relevance_shares(relevance: torch.Tensor, error: torch.Tensor | None = None) -> torch.Tensor:
    """Each unit's share ``[..., C]`` of its layer's summed absolute relevance (``relevance_total``)."""
    return relevance / relevance_total(relevance, error)[..., None]


def error_share(relevance: torch.Tensor, error: torch.Tensor) -> torch.Tensor:
    """An SAE layer's error term's share ``[...]`` of the layer's summed absolute relevance: with its features'
    shares (``relevance_shares``), the absolute shares sum to 1."""
    return error / relevance_total(relevance, error)


def rank_channels(shares: torch.Tensor, valid: torch.Tensor, top: int, against: bool = False) -> torch.Tensor:
    """The ``top`` channels with the highest positive share among the ``valid`` ones ``[C]``, highest first
    (units that carried none of the class's relevance did not drive it); with ``against``, those with the most
    negative share, most negative first (they spoke against the class)."""
    signed = -shares if against else shares
    candidates = (valid & (signed > 0)).nonzero().flatten()
    order = torch.argsort(signed[candidates], descending=True, stable=True)
    return candidates[order[:top]]


def group_by_label(units: list[ExplainedUnit]) -> list[ConceptGroup]:
    """Units grouped by label, unlabelled units each in a group of its own; highest summed share first."""
    groups: dict[Any, list[ExplainedUnit]] = {}
    for unit in units:
        groups.setdefault(unit.label if unit.label is not None else ("unlabelled", unit.unit), []).append(unit)
    made = [ConceptGroup(members[0].label, sum(member.share for member in members), members) for members in groups.values()]
    return sorted(made, key=lambda group: -group.share)
