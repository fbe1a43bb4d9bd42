"""The slot layout of a Lens's crops: which crop rules a Lens was cut with, where each rule's boxes sit among a
unit's slots, and the theta each rule keys. Read by the build that writes these arrays and by the Lens that
reads them, so it lives below both."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._util.errors import SemlensError
from ..analysis.validity import tied_units

#: how a box is cut from a heatmap: around everything above a share of its peak (the paper's rule), the
#: smallest square holding a share of its positive mass, or around the cells above the unit's quantile
#: over all of its k maps (NetDissect-style); or, "active", the smallest square holding a share of the unit's
#: own activation map on the example (where it fires), whatever map the others read: a relevance heatmap
#: spreads to every input that feeds the unit, a unit of a small map fires on one part of them
CROP_RULES = ("peak", "share", "quantile", "active")


#: several rules joined by "+" (e.g. "peak+share") cut one box per rule from each example's heatmap, each
#: box embedded: a Lens answers from the first rule's boxes and searches by the share boxes (``rule_slots``)
RULE_JOIN = "+"


def recorded_shift(layer: dict, unmeasured: tuple[float, float] | None = (0.0, 0.0)) -> tuple[float, float] | None:
    """Where a layer's activation map cells sit off the even grid, in input pixels, as its manifest entry records
    it (the collect stage measures it: ``model.receptive``); ``unmeasured`` where it was not (layers without maps,
    Lenses built before it was measured): by default the even grid, on which their boxes were cut."""
    shift = layer.get("map_shift")
    return unmeasured if shift is None else (float(shift[0]), float(shift[1]))


def crop_rules(rule: str) -> list[str]:
    """The rules of a ``crop_rule`` setting: one of ``CROP_RULES``, or distinct ones joined by ``RULE_JOIN``."""
    rules = rule.split(RULE_JOIN)
    if not all(part in CROP_RULES for part in rules) or len(set(rules)) != len(rules):
        raise SemlensError(
            f"crop_rule={rule!r} is not one of {', '.join(CROP_RULES)}, nor distinct ones joined by "
            f"{RULE_JOIN!r} (e.g. peak{RULE_JOIN}share: one box per rule, each example embedded as their mean)"
        )
    return rules


def rule_slots(per_slot: torch.Tensor, k: int, rule: int) -> torch.Tensor:
    """Crop rule ``rule``'s k slots ``[U, k, ...]`` of per-slot values ``[U, V·k, ...]`` (rule v's box of example s
    is slot v·k + s); a layer cut without heatmaps (whole images) has one slot per example whatever the rules."""
    return per_slot if per_slot.shape[1] == k else per_slot[:, rule * k : (rule + 1) * k]


def theta_key(rules: list[str], rule: int) -> str:
    """The key of crop rule ``rule``'s theta in a layer's embed file: ``theta`` for the first rule (the one a
    Lens answers from), ``theta.<rule>`` for each other."""
    return "theta" if rule == 0 else f"theta.{rules[rule]}"


def first_rule_ties(indices: dict[str, torch.Tensor], topk: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``tied_units`` by the boxes of the first crop rule (what a Lens answers from; ``rule_slots``): ``indices``
    the crop table's ``[U, V·k]`` index per layer, ``topk`` each layer's top-k arrays (``ids``, ``inactive``)."""
    return tied_units(first_rule_crops(indices, topk), {layer: topk[layer]["inactive"] for layer in indices})


def first_rule_crops(indices: dict[str, torch.Tensor], topk: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Each layer's crop rows of its first crop rule ``[U, k]`` (``rule_slots``), from the arguments of ``first_rule_ties``."""
    return {layer: rule_slots(index, topk[layer]["ids"].shape[1], 0) for layer, index in indices.items()}


def mean_of_examples(embeddings: torch.Tensor) -> torch.Tensor:
    """theta ``[U, d]`` from example embeddings ``[U, k, d]`` (NaN rows in empty slots): their mean, 0 where none."""
    filled = ~embeddings[..., 0].isnan()
    return embeddings.nan_to_num(0).sum(dim=1) / filled.sum(dim=1, keepdim=True).clamp_min(1)


def slot_embeddings(read: Callable[[torch.Tensor], torch.Tensor], index: torch.Tensor) -> torch.Tensor:
    """The embeddings ``[*index.shape, d]`` (float32) of crop rows ``index`` read by ``read``, NaN rows where a
    slot is empty (-1): what ``mean_of_examples`` and the labelling methods take."""
    embeddings = read(index.clamp_min(0)).float()
    embeddings[index < 0] = float("nan")
    return embeddings
