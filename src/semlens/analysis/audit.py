"""Auditing a class (the paper's Sec. 3.4 and 4.2): do the units it relies on encode valid concepts?

For the units relevant to a class (highest relevance share above a cut), a_valid is the best
alignment with any valid concept and a_spur with any spurious one (null-subtracted). Ideally every
relevant unit has a_valid > 0 and a_spur <= 0. A unit aligned with a spurious concept only is
"spurious", with both "both", with neither "unexpected" (inspect it). The class's relevance is split
by verdict to say how much of the decision rests on what.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

VERDICTS = ("valid", "spurious", "both", "unexpected")
AUDIT_CUT = 0.028  # the paper's example: units with more than 2.8 % of a layer's relevance


def verdict(valid: bool, spurious: bool) -> str:
    if valid and spurious:
        return "both"
    if valid:
        return "valid"
    return "spurious" if spurious else "unexpected"


def verdicts(a_valid: torch.Tensor, a_spur: torch.Tensor, margin: float = 0.0) -> list[str]:
    """Per unit: valid (only a_valid > margin), spurious (only a_spur > margin), both, or unexpected."""
    return [verdict(v, s) for v, s in zip((a_valid > margin).tolist(), (a_spur > margin).tolist())]


@dataclass
class AuditedUnit:
    unit: str
    relevance: float  # highest share of its layer's relevance on samples of the class
    mean_relevance: float  # mean share over samples of the class
    a_valid: float
    a_spur: float
    verdict: str
    examples: list[str] = field(default_factory=list)


@dataclass
class Audit:
    """One class's audit; ``shares`` splits the relevant units' mean relevance by verdict."""

    class_name: str
    cut: float
    valid: list[str]
    spurious: list[str]
    units: list[AuditedUnit]
    shares: dict[str, float]

    def to_dict(self) -> dict:
        return {
            "class": self.class_name,
            "cut": self.cut,
            "valid": self.valid,
            "spurious": self.spurious,
            "shares": self.shares,
            "units": [unit.__dict__ for unit in self.units],
        }


def relevance_by_verdict(relevance: torch.Tensor, unit_verdicts: list[str]) -> dict[str, float]:
    """Fractions of the (non-negative part of the) relevance carried by each verdict; sum to 1."""
    weights = relevance.clamp_min(0)
    total = float(weights.sum())
    return {
        verdict: (float(weights[[v == verdict for v in unit_verdicts]].sum()) / total if total > 0 else 0.0)
        for verdict in VERDICTS
    }


def audit_units(
    class_name: str,
    units: list[str],
    max_share: torch.Tensor,
    mean_share: torch.Tensor,
    a_valid: torch.Tensor,
    a_spur: torch.Tensor,
    valid: list[str],
    spurious: list[str],
    cut: float = AUDIT_CUT,
    margin: float = 0.0,
) -> Audit:
    """Audit the units whose max relevance share for the class exceeds ``cut`` (most relevant first)."""
    relevant = (max_share.nan_to_num(float("-inf")) > cut).nonzero().flatten()
    relevant = relevant[torch.argsort(mean_share[relevant].nan_to_num(0), descending=True, stable=True)]
    unit_verdicts = verdicts(a_valid[relevant], a_spur[relevant], margin)
    audited = [
        AuditedUnit(units[i], float(max_share[i]), float(mean_share[i]), float(a_valid[i]), float(a_spur[i]), verdict)
        for i, verdict in zip(relevant.tolist(), unit_verdicts)
    ]
    shares = relevance_by_verdict(mean_share[relevant].nan_to_num(0), unit_verdicts)
    return Audit(class_name, cut, list(valid), list(spurious), audited, shares)
