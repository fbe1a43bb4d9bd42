"""What a build may choose about relevance, named apart from zennit: a config is checked, and ``import semlens``
runs, without importing zennit (and torchvision's models with it: seconds before every command's first line)."""

from __future__ import annotations

#: the rule for convolutions a build may choose (``BuildConfig.lrp_rule``), and its γ where it has one: z⁺ (signed
#: where inputs carry both signs; the default) or the generalised γ rule
LRP_RULES: dict[str, float | None] = {"zplus": None, "gamma": 0.25}
LRP_RULE_NAMES = tuple(LRP_RULES)
#: where a CRP heatmap starts within a unit's map: at every position (the unit's whole activation, the paper's
#: CRP) or at the position of its highest activation alone (zennit-crp's receptive-field references): a unit
#: that fires weakly on every edge of an image and most on one concept shows that concept, not all its edges
CRP_FOCUS = ("unit", "peak")
