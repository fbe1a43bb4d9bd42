"""Auditing a class (the paper's Sec. 3.4 and 4.2): do the units it relies on encode valid concepts?

For the units relevant to a class (highest relevance share above a cut), a_valid is the best
alignment with any valid concept and a_spur with any spurious one (null-subtracted, Eq. 4). A bare
``a > 0`` flags far too much: every unit aligns a little with most prompts. So each alignment is
calibrated against a null distribution: the alignment of every unit of the same layer with the same
probe. z is the unit's robust z-score in that null, (a - median) / (1.4826 MAD), and a unit counts as
aligned with a probe when z > ``Z_CUT``. The verdict compares the two with a margin: "spurious" when
z_spur beats z_valid by more than ``MARGIN`` and is aligned, "valid" likewise, "both" when the better one
is aligned but the two are within the margin, "unexpected" when neither is aligned (inspect it). The
class's relevance is split by verdict; "both" counts with "spurious" in ``spurious_or_both``.

Where a concept co-occurs with the class in the data (a watermark on most stars), a class unit's examples
show it too, though the unit looks elsewhere. A Lens built with a tight second crop rule (the default's
share boxes) tells the two apart: a unit counts as aligned with the spurious concept only if the concept
holds where it looks, i.e. its alignment in the tight boxes falls by no more than ``MARGIN`` robust
spreads of its layer's null below the alignment in the first rule's boxes (``tight_shift``).

The alignment compares a unit with the other units of its layer; it misses units whose examples barely
differ from their layer's (an early layer's artefact units: every unit there sees the same small
crops). A Lens that kept its units' crop responses (``build.response_stage``) also names each unit's
best concept among the audit's concepts and a vocabulary by the ``responses`` labelling method, which
compares the concepts within the unit and separates co-occurring ones by the unit's activations on all
the Lens's crops. Where that name is one of the audit's concepts it decides the verdict ("spurious" or
"valid"); elsewhere the alignment rule does (``AlignmentRule.by_label``).

Both read the unit's examples; neither sees whether the concept moves the unit nor where in an image it
fires. The concept test does: a flagged unit the concept does not raise (``AlignmentRule.by_rise``) or, where
the test pastes the concept, that does not fire where it is (``interventions.effects.located``,
``AlignmentRule.by_location``) is no detector of it, and its verdict falls back to its valid alignment; a
contested unit (named valid by its crop responses, flagged by its alignment) that fires there and is raised
by the concept responds to both (``Audit.revise_by_test``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .._util.display import HtmlResult
from .._util.errors import SemlensError, asked, in_python
from .alignment import robust_null

VERDICTS = ("valid", "spurious", "both", "unexpected")
FLAGGED = ("spurious", "both")
AUDIT_CUT = 0.028  # the paper's example: units with more than 2.8 % of a layer's relevance
#: the paper's cut holds for layers of up to this many channels; a wider layer's default cut falls in proportion,
#: as its relevance spreads over more channels (2.8 % is 1.8 times the even share of 64 channels, and stays 1.8
#: times the even share at any width). Without it the audit of a 320-channel EfficientNet block found no unit
#: above 2.8 % (largest share 0.019; docs/explanation/planted-judge.md) and examined none
AUDIT_CUT_CHANNELS = 64


def layer_cut(channels: int, cut: float = AUDIT_CUT) -> float:
    """The default relevance cut of a layer of ``channels`` channels (``AUDIT_CUT_CHANNELS``)."""
    return cut * min(1.0, AUDIT_CUT_CHANNELS / max(channels, 1))
Z_CUT = 3.0  # robust z above which a unit counts as aligned with a probe (see docs/record.md: "The audit's z cut")
MARGIN = 1.0  # z units by which one kind of concept must beat the other for a one-sided verdict
MIN_NULL = 10  # a null of fewer units gives rough z-scores: the audit says so
#: a class's relevance shares averaged over fewer of its probe images than this are said to rest on few images: a
#: unit's share may follow those images (their backgrounds, their one view of the class) more than the class
MIN_CLASS_IMAGES = 10
NULL_RULE = "robust z of the alignment among the units of its layer: (a - median) / (1.4826 MAD)"
# The concept test's location bar (``interventions.location_test``): beside NetDissect's IoU >= 0.04
# (``interventions.LOCATE_IOU``), a tested unit must reach two thirds or more of the best IoU that a unit of
# its layer raised by the concept reaches (the tested units and the audit's other examined units,
# ``concept_tests``' ``peers``): how well a unit can fire where the concept is depends on the layer's grid and
# the concept's size, and a unit far below its layer's best detector fires mostly elsewhere: it answers the
# concept among other things (``AlignmentRule.locate_share`` sets another share). Chosen on the stored benchmark
# runs whose class relies on its artefact (flagged units at IoU >= 0.04 and raised, as a share of the best:
# true artefact units 0.23 to 1.00, 32 of 34 at 0.72 or more; other units 0.41 to 1.00, 9 of 13 at 0.61 or
# less; pooled precision 0.70 -> 0.88 at recall 0.64 -> 0.60 on the 18 stored runs), then checked on worlds drawn
# after it: over every relying run measured, precision 0.75 -> 0.90 and recall 0.66 -> 0.58, the recall lost
# where one unit of a layer detects the concept far better than the others (docs/quality.md: "The location bar").
LOCATE_SHARE = 2 / 3
# ... but an IoU of 0.06 (one and a half times NetDissect's 0.04) always suffices: a unit that fires where the
# concept is at that overlap detects it, however much better another unit of its layer does. Without that cap,
# one outstanding detector (patch on square: IoU 0.52, a bar of 0.35) took back the other true units of its layer
# (0.07 to 0.23). Chosen on the records of 11 relying benchmark runs, checked on 3 drawn after it (docs/quality.md: "The
# location bar, capped"): the audit's flags ("spurious" or "both") over all 14, precision 0.88 -> 0.81 at
# recall 0.52 -> 0.76.
LOCATE_ENOUGH = 0.06


@dataclass(frozen=True)
class AlignmentRule:
    """When a unit counts as aligned (z > ``z``) and by how much one kind must beat the other (``margin``)."""

    z: float = Z_CUT
    margin: float = MARGIN
    by_label: bool = True  # a unit's best concept by its crop responses, where it is an audited concept, decides
    by_location: bool = True  # where the concept test pastes the concept, where a tested unit fires revises its verdict
    by_rise: bool = True  # a flagged unit the concept test finds the concept does not raise loses its flag
    # the location bar as a share of the layer's best detector (0: NetDissect's 0.04 alone): lower finds more
    # of the units that carry the concept, higher flags fewer units that answer it among other things
    locate_share: float = LOCATE_SHARE
    # an IoU that always suffices, whatever the layer's best (1: the share alone)
    locate_enough: float = LOCATE_ENOUGH

    def __post_init__(self) -> None:
        for name, what in (("locate_share", "a share of the layer's best located IoU"), ("locate_enough", "an IoU with the pasted concept")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise SemlensError(f"{name} is {what}, from 0 to 1 (got {value})")

    def to_dict(self) -> dict:
        return {
            "null": NULL_RULE, "z": self.z, "margin": self.margin, "by_label": self.by_label, "by_location": self.by_location,
            "by_rise": self.by_rise, "locate_share": self.locate_share, "locate_enough": self.locate_enough,
        }  # fmt: skip


def null_stats(alignments: torch.Tensor, groups: torch.Tensor, members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per unit, its group's null median and robust spread (1.4826 MAD) ``[U, P]`` of the alignment with each
    probe (``groups`` ``[U]``: the layer of each unit; ``members`` ``[U]``: the units that make up the null,
    e.g. those with examples of their own). NaN for groups with no member."""
    centre, scale = torch.full_like(alignments, float("nan")), torch.full_like(alignments, float("nan"))
    for group in torch.unique(groups).tolist():
        rows = groups == group
        null = alignments[rows & members]
        if not len(null):
            continue
        centre[rows], scale[rows] = robust_null(null)
    return centre, scale


def null_z(alignments: torch.Tensor, groups: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """Robust z ``[U, P]`` of each unit's alignment with each probe against its group's null (``null_stats``)."""
    centre, scale = null_stats(alignments, groups, members)
    return (alignments - centre) / scale


def tight_shift(alignments: torch.Tensor, tight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """How far ``[U, P]`` each unit's alignment moves from its usual boxes (``alignments``) to tight boxes around
    where it looks (``tight``), in robust spreads ``scale`` of its group's null of the usual ones (``null_stats``):
    below ``-MARGIN``, the concept is in the unit's images rather than where it looks."""
    return (tight - alignments) / scale


def verdicts(
    z_valid: torch.Tensor,
    z_spur: torch.Tensor,
    rule: AlignmentRule = AlignmentRule(),
    localised: torch.Tensor | None = None,
    named: list[str | None] | None = None,
) -> list[str]:
    """Per unit: spurious (z_spur > rule.z and beats z_valid by more than the margin), valid (likewise),
    both (the better one is aligned, the two within the margin), or unexpected (neither aligned; NaN too).
    ``localised`` ``[U]``: False where the spurious concept is not where the unit looks (``tight_shift``): its
    z_spur does not count. ``named``: per unit "valid" or "spurious" where its best concept by its crop
    responses is one of the audit's valid or spurious concepts (None elsewhere); with ``rule.by_label`` that
    decides its verdict."""
    if localised is not None:
        z_spur = z_spur.masked_fill(~localised, float("-inf"))
    gap = z_spur - z_valid
    aligned = torch.maximum(z_valid, z_spur) > rule.z
    kinds = torch.full(gap.shape, 3)  # unexpected
    kinds[aligned & (gap.abs() <= rule.margin)] = 2
    kinds[aligned & (gap > rule.margin)] = 1
    kinds[aligned & (gap < -rule.margin)] = 0
    found = [VERDICTS[kind] for kind in kinds.tolist()]
    if named is None or not rule.by_label:
        return found
    return [kind or verdict for kind, verdict in zip(named, found)]


@dataclass
class AuditedUnit:
    unit: str
    relevance: float  # highest share of its layer's relevance on samples of the class
    mean_relevance: float  # mean share over samples of the class
    a_valid: float
    a_spur: float
    z_valid: float = field(metadata={"description": "a_valid as a robust z among the units of its layer"})  # its best valid probe's
    z_spur: float
    verdict: str
    copies: list[str] = field(default_factory=list, metadata={"description": "a signed layer's other copy of the same channel, merged into this unit"})
    examples: list[str] = field(default_factory=list)
    test: dict | None = None  # the concept test of a flagged or contested (or, with test_all, any) unit (interventions.concept_tests)
    tight_shift: float | None = field(default=None, metadata={  # its best spurious probe's tight_shift (None: no tight boxes in the Lens)
        "description": "the spurious alignment's move into the unit's tight boxes, in robust spreads of its layer; below -margin z_spur does not count"
    })  # fmt: skip
    responses_label: str | None = field(default=None, metadata={
        "description": "the unit's best concept by its crop responses, of the audit's concepts and the vocabulary; an audited concept "
        "decides the verdict (None: the Lens kept no crop responses)"
    })  # fmt: skip
    verdict_before_test: str | None = None  # its verdict before the concept test revised it (revise_by_test)
    contested: bool = False  # named valid by its crop responses while its alignment alone flags it: tested too


@dataclass
class Audit(HtmlResult):
    """One class's audit; ``shares`` splits the relevant units' mean relevance by verdict, ``reliance`` is
    the measured effect of the spurious concept on the class (None unless a concept test was asked for)."""

    class_name: str
    cut: float
    valid: list[str]
    spurious: list[str]
    units: list[AuditedUnit]
    shares: dict[str, float] = field(metadata={"description": "relevance by verdict, and spurious_or_both"})
    rule: AlignmentRule = AlignmentRule()
    left_out: list[str] = field(default_factory=list, metadata={"description": "relevant inactive units: they never fired or were constant on the probe data, so their examples are arbitrary"})
    null_units: dict[str, int] = field(default_factory=dict)  # per layer, the units its null is made of
    sae_error: dict[str, float] = field(
        default_factory=dict, metadata={"description": "per SAE layer, the class's mean share of its relevance carried by the SAE's error term"}
    )
    reliance: dict | None = None
    cuts: dict[str, float] = field(default_factory=dict, metadata={"description": "per layer, the relevance cut its units were kept by"})
    named_among: str | None = field(default=None, metadata={
        "description": "besides the audit's concepts, what the units' crop responses were ranked among to name them (responses_label)"
    })  # fmt: skip
    class_images: int | None = field(default=None, metadata={"description": "the probe images of the class whose relevance the shares average"})

    @property
    def cut_text(self) -> str:
        """The relevance cut as a reader sees it: one share, or each layer's where they differ."""
        cuts = sorted(set(self.cuts.values()))
        if len(cuts) <= 1:
            return f"{cuts[0] if cuts else self.cut:.1%}"
        return ", ".join(f"{value:.2%} ({layer})" for layer, value in self.cuts.items())

    @property
    def small_nulls(self) -> dict[str, int]:
        """Layers whose null has fewer than ``MIN_NULL`` units: their z-scores are rough."""
        return {layer: count for layer, count in self.null_units.items() if count < MIN_NULL}

    @property
    def few_class_images(self) -> str | None:
        """That the shares rest on fewer than ``MIN_CLASS_IMAGES`` probe images of the class, in words; None where not."""
        if self.class_images is None or self.class_images >= MIN_CLASS_IMAGES:
            return None
        return (
            f"the shares rest on {self.class_images} probe image{'s' if self.class_images != 1 else ''} of the class (under {MIN_CLASS_IMAGES}): "
            "a unit's share may follow those images more than the class; more images of it make the audit firmer"
        )

    @property
    def judged_by_label(self) -> bool:
        """Whether the units' best concepts by their crop responses took part in the verdicts (``AlignmentRule.by_label``
        and a Lens that kept crop responses)."""
        return self.rule.by_label and any(unit.responses_label is not None for unit in self.units)

    @property
    def by_label_text(self) -> str:
        """How the units' crop responses took part in the verdicts, as every face says it ("" where they did not)."""
        if not self.judged_by_label:
            return ""
        among = f" (ranked among the audit's concepts and {self.named_among})" if self.named_among else ""
        return f"a unit whose best concept by its crop responses{among} is an audited concept and sets it apart from its layer takes its verdict from it"

    @property
    def judged_by_location(self) -> bool:
        """Whether the concept test measured where the units fire and that took part in the verdicts (``AlignmentRule.by_location``)."""
        return self.rule.by_location and any(unit.test and unit.test.get("located") is not None for unit in self.units)

    @property
    def unlocated(self) -> list[str]:
        """Units the alignment or their crop responses flagged that the concept test found firing away from the
        pasted concept (``revise_by_test``)."""
        return [unit.unit for unit in self.units if unit.verdict_before_test in FLAGGED and (unit.test or {}).get("located") is False]

    @property
    def not_raised(self) -> list[str]:
        """Units the alignment or their crop responses flagged that the concept test found the concept does not
        raise (``revise_by_test``)."""
        return [unit.unit for unit in self.units if unit.verdict_before_test in FLAGGED and (unit.test or {}).get("raised") is False]

    @property
    def both_by_location(self) -> list[str]:
        """Contested units (named valid by their crop responses, flagged by their alignment) that the concept
        test found raised by the pasted concept, where it is: "both" (``revise_by_test``)."""
        return [unit.unit for unit in self.units if unit.verdict_before_test == "valid" and unit.verdict == "both"]

    def to_test(self, located: bool = True) -> list[AuditedUnit]:
        """The units a concept test examines unless it tests all: the flagged ones, and the contested ones where
        the test can measure where units fire (``located``: a pasted artefact), as only that can make them "both"."""
        return [unit for unit in self.units if unit.verdict in FLAGGED or (located and unit.contested)]

    def revise_by_test(self) -> None:
        """After the concept test: a flagged unit the concept does not raise (its test's ``raised`` False; with
        ``rule.by_rise``) or, where the test measured where units fire, that does not fire where the concept was
        pasted (``located`` False; with ``rule.by_location``) is no detector of it; its verdict falls back to its
        valid alignment ("valid" where z_valid passes ``rule.z``, else "unexpected"). With ``rule.by_location``, a
        contested unit (named valid by its crop responses, flagged by its alignment) that fires there and is raised
        by the concept (``located`` and ``raised``) responds to both: "both". The shares follow."""
        for unit in self.units:
            test = unit.test or {}
            refuted = (self.rule.by_rise and test.get("raised") is False) or (self.rule.by_location and test.get("located") is False)
            if unit.verdict in FLAGGED and refuted:
                unit.verdict_before_test = unit.verdict
                unit.verdict = "valid" if unit.z_valid > self.rule.z else "unexpected"
            elif self.rule.by_location and unit.contested and unit.verdict == "valid" and test.get("located") and test.get("raised"):
                unit.verdict_before_test, unit.verdict = "valid", "both"
        self.shares = relevance_by_verdict(torch.tensor([unit.mean_relevance for unit in self.units]), [unit.verdict for unit in self.units])

    @property
    def flagged(self) -> list[AuditedUnit]:
        """The units judged spurious or both, with their evidence (``AuditedUnit``; ``[u.unit for u in audit.flagged]``
        for their names, which ``confirmed``, ``unconfirmed``, ``carriers`` and ``detectors`` list)."""
        return [unit for unit in self.units if unit.verdict in FLAGGED]

    @property
    def confirmed(self) -> list[str]:
        """Names of the flagged units the concept test confirmed (the class relies on the concept through them)."""
        return [unit.unit for unit in self.flagged if unit.test and unit.test["confirmed"]]

    @property
    def unconfirmed(self) -> list[str]:
        """Names of the flagged units the concept test tested and did not confirm."""
        return [unit.unit for unit in self.flagged if unit.test and not unit.test["confirmed"]]

    @property
    def confirmed_share(self) -> float | None:
        """The share of the class's relevance (as in ``shares``) that the confirmed findings carry, with the units the
        reliance runs through though not flagged (``carriers``, where every unit was tested); None without a concept
        test. What remains of the spurious share once the concept test has judged it."""
        if self.reliance is None:
            return None
        confirmed = set(self.confirmed) | set(self.carriers)
        relevance = torch.tensor([unit.mean_relevance for unit in self.units])
        return relevance_share(relevance, torch.tensor([unit.unit in confirmed for unit in self.units], dtype=torch.bool))

    @property
    def spurious_share(self) -> float:
        """The share of the class's relevance the audit finds on the spurious concept: with a concept test the
        confirmed findings' and carriers' (``confirmed_share``), since a flagged unit the test does not confirm (the concept
        does not raise it, zeroing it takes none of the reliance away, or the class does not rely on the concept
        at all) carries no reliance on it; without one the "spurious" units' (``shares``), as after a test of
        semlens's drawings that confirms none (``share_tested``)."""
        return self.confirmed_share if self.share_tested else self.shares["spurious"]

    @property
    def share_tested(self) -> bool:
        """Whether ``spurious_share`` is the concept test's: a test of the images given, or of semlens's drawings
        (``reliance["drawn"]``) where it confirms a unit; a drawing may differ from what the model learnt (another
        colour, another text), so a drawn test that confirms nothing refutes nothing."""
        if self.reliance is None:
            return False
        return not self.reliance.get("drawn") or bool(self.confirmed or self.carriers)

    @property
    def carriers(self) -> list[str]:
        """Units the audit did not flag whose concept test passes as a confirmed finding would (tested with
        ``test_all``): the reliance runs through them, though their examples do not align with the concept."""
        return [unit.unit for unit in self.units if unit.verdict not in FLAGGED and unit.test and unit.test["confirmed"]]

    @property
    def detectors(self) -> list[str]:
        """Units the concept test finds detect the concept, flagged or not: the class relies on it, it raises them
        (AUC >= ``CONFIRM_AUC``), more than the class does and, where the test measured it, where it is. Each
        encodes the concept the class relies on; the confirmed findings and carriers are those the reliance is
        also shown to run through (zeroing one removes a share of it), which redundant detectors may not show. Every
        examined unit is measured (those the test does not switch off too), so detectors are found without
        ``test_all``."""
        return [unit.unit for unit in self.units if unit.test and unit.test.get("detects")]

    @property
    def advice(self) -> str | None:
        """What to run next, where the class relies on the concept but no flagged unit is confirmed and some relevant
        units were not tested (the default tests the flagged ones): the reliance may run through units whose examples
        do not align with the concept, which only testing every relevant unit finds; else None."""
        asked_for = advice_asked(self)
        return None if asked_for is None else in_python(asked_for)

    def __repr__(self) -> str:
        """Outside a notebook: the question and its answer in a line (the dataclass's repr was every unit's every field)."""
        flagged = [unit.unit for unit in self.flagged]
        shown = ", ".join(flagged[:5]) + (", ..." if len(flagged) > 5 else "")
        tested = "" if self.reliance is None else f"; confirmed {len(self.confirmed)} of them"
        return (f"Audit(class {self.class_name!r}, valid {self.valid}, spurious {self.spurious}: {len(self.units)} relevant units, "
                f"{len(flagged)} flagged{f' ({shown})' if flagged else ''}{tested}; spurious share {self.spurious_share:.2f})")  # fmt: skip

    def to_dict(self) -> dict:
        return {
            "class": self.class_name,
            "cut": self.cut,
            "cuts": self.cuts,
            "valid": self.valid,
            "spurious": self.spurious,
            "rule": self.rule.to_dict(),
            "null_units": self.null_units,
            "class_images": self.class_images,
            "few_class_images": self.few_class_images,
            "shares": self.shares,
            "spurious_share": self.spurious_share,
            "reliance": self.reliance,
            "confirmed": self.confirmed,
            "confirmed_share": self.confirmed_share,
            "unconfirmed": self.unconfirmed,
            "unlocated": self.unlocated,
            "not_raised": self.not_raised,
            "both_by_location": self.both_by_location,
            "carriers": self.carriers,
            "detectors": self.detectors,
            "advice": self.advice,
            "left_out": self.left_out,
            "sae_error": self.sae_error,
            "named_among": self.named_among,
            "units": [unit.__dict__ for unit in self.units],
        }


def relevance_share(relevance: torch.Tensor, chosen: torch.Tensor) -> float:
    """The fraction of the (non-negative part of the) ``relevance [N]`` that the ``chosen [N]`` units carry
    (NaN counts as none; 0 when no unit carries any)."""
    weights = relevance.nan_to_num(0).clamp_min(0)
    total = float(weights.sum())
    return float(weights[chosen].sum()) / total if total > 0 else 0.0


def relevance_by_verdict(relevance: torch.Tensor, unit_verdicts: list[str]) -> dict[str, float]:
    """Fractions of the (non-negative part of the) relevance carried by each verdict (they sum to 1), and
    ``spurious_or_both``: what the audit flags."""
    shares = {
        verdict: relevance_share(relevance, torch.tensor([v == verdict for v in unit_verdicts], dtype=torch.bool))
        for verdict in VERDICTS
    }
    return {**shares, "spurious_or_both": shares["spurious"] + shares["both"]}


def merge_copies(channel: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Merge units that are copies of one channel (``channel`` ``[U]``, equal for the positive and negative
    copy of a signed unit): per channel, the index of its first unit, each unit's channel number (0..C-1)
    and the highest of each of ``values`` over its copies (NaN only where every copy is NaN)."""
    _, inverse = torch.unique(channel, return_inverse=True)
    count = int(inverse.max()) + 1 if len(inverse) else 0
    first = torch.full((count,), len(channel)).scatter_reduce(0, inverse, torch.arange(len(channel)), reduce="amin")
    merged = []
    for value in values:
        best = torch.full((count,), float("-inf")).scatter_reduce(0, inverse, value.nan_to_num(float("-inf"), posinf=float("inf")), reduce="amax")
        merged.append(best.masked_fill(best == float("-inf"), float("nan")))
    return first, inverse, merged


def audit_units(
    class_name: str,
    units: list[str],
    max_share: torch.Tensor,
    mean_share: torch.Tensor,
    a_valid: torch.Tensor,
    a_spur: torch.Tensor,
    z_valid: torch.Tensor,
    z_spur: torch.Tensor,
    valid: list[str],
    spurious: list[str],
    cut: float | torch.Tensor = AUDIT_CUT,
    rule: AlignmentRule = AlignmentRule(),
    channel: torch.Tensor | None = None,
    examples: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    labels: list[str | None] | None = None,
) -> Audit:
    """Audit the units whose max relevance share for the class exceeds ``cut`` (most relevant first).

    ``channel`` ``[U]`` names the channel of each unit: the two copies of a signed unit share their
    channel's relevance, so they are merged into one audited unit (relevance counted once; alignments:
    the better copy's, which also names it). ``examples`` ``[U]``: False for units whose examples say nothing
    of them (inactive); they are listed as ``left_out`` instead of audited. ``shift`` ``[U]``: the
    ``tight_shift`` of each unit's best spurious probe; below ``-rule.margin`` its z_spur does not count.
    ``labels``: each unit's best concept by its crop responses (None: none); where it is one of ``valid`` or
    ``spurious`` (a merged channel: its named copy's) it decides the verdict (``verdicts``)."""
    count = len(units)
    channel = torch.arange(count) if channel is None else channel
    examples = torch.ones(count, dtype=torch.bool) if examples is None else examples
    hidden = ~examples  # a copy without examples lends no alignment to its channel
    z_v, z_s = z_valid.masked_fill(hidden, float("nan")), z_spur.masked_fill(hidden, float("nan"))
    best_copy = torch.maximum(z_v.nan_to_num(float("-inf")), z_s.nan_to_num(float("-inf")))
    shift = torch.full((count,), float("nan")) if shift is None else shift.masked_fill(hidden, float("nan"))
    first, inverse, (m_max, m_mean, m_av, m_as, m_zv, m_zs, m_best, m_shift) = merge_copies(
        channel, max_share, mean_share, a_valid.masked_fill(hidden, float("nan")),
        a_spur.masked_fill(hidden, float("nan")), z_v, z_s, best_copy, shift,
    )  # fmt: skip
    has_examples = torch.zeros(len(first), dtype=torch.bool).scatter_reduce(0, inverse, examples, reduce="amax")
    channel_cut = cut[first] if isinstance(cut, torch.Tensor) else cut  # a cut per unit: its channel's
    relevant = (m_max.nan_to_num(float("-inf")) > channel_cut).nonzero().flatten()
    left_out = [units[int(first[i])] for i in relevant.tolist() if not has_examples[i]]
    relevant = relevant[has_examples[relevant]]
    relevant = relevant[torch.argsort(m_mean[relevant].nan_to_num(0), descending=True, stable=True)]
    labels = [None] * count if labels is None else labels
    members = [(inverse == i).nonzero().flatten().tolist() for i in relevant.tolist()]  # each channel's copies
    # the copy that names each channel: the one with the best alignment
    named = [next((m for m in copies if float(best_copy[m]) == float(m_best[i])), copies[0]) for i, copies in zip(relevant.tolist(), members)]
    kinds = [("spurious" if labels[m] in spurious else "valid" if labels[m] in valid else None) for m in named]
    localised = ~(m_shift[relevant] < -rule.margin)
    unit_verdicts = verdicts(m_zv[relevant], m_zs[relevant], rule, localised, kinds)
    by_alignment = verdicts(m_zv[relevant], m_zs[relevant], rule, localised)
    audited = []
    for i, m, copies, verdict, aligned in zip(relevant.tolist(), named, members, unit_verdicts, by_alignment):
        audited.append(AuditedUnit(
            units[m], float(m_max[i]), float(m_mean[i]), float(m_av[i]), float(m_as[i]), float(m_zv[i]),
            float(m_zs[i]), verdict, [units[other] for other in copies if other != m],
            tight_shift=None if m_shift[i].isnan() else float(m_shift[i]), responses_label=labels[m],
            contested=verdict == "valid" and aligned in FLAGGED,
        ))  # fmt: skip
    shares = relevance_by_verdict(m_mean[relevant].nan_to_num(0), unit_verdicts)
    nominal = float(cut.max()) if isinstance(cut, torch.Tensor) else cut
    return Audit(class_name, nominal, list(valid), list(spurious), audited, shares, rule, left_out)


@dataclass
class AuditedLayers:
    """What the audit of one class reads from a Lens over the units of the audited layers, one layer after the
    other: per layer its unit count and channel count (``sizes``, ``bases``: a signed layer's two copies of a
    channel share its relevance), per unit its name, whether it has examples of its own (``examples``: the null's
    members) and whether it is audited (``audited``: also a tied unit, whose examples and theta are an earlier
    unit's; None: ``examples``), the
    class's relevance shares, and its alignments ``[U, P]`` with the valid and the spurious probes (the
    spurious ones also in the tight boxes, ``tight``, where the Lens has a tight second crop rule)."""

    units: list[str]
    sizes: list[int]
    bases: list[int]
    examples: torch.Tensor
    max_share: torch.Tensor
    mean_share: torch.Tensor
    a_valid: torch.Tensor
    a_spur: torch.Tensor
    tight: torch.Tensor | None = None
    labels: list[str | None] | None = None
    audited: torch.Tensor | None = None


def audit_layers(
    class_name: str, layers: AuditedLayers, valid: list[str], spurious: list[str], cut: float | None = None, rule: AlignmentRule = AlignmentRule()
) -> Audit:
    """``audit_units`` over the units of ``layers``: each alignment as a robust z against the null of its layer's
    units with examples (``null_stats``), each unit's spurious z its best probe's, and that probe's
    ``tight_shift`` where the tight boxes' alignments are given; the units kept by ``cut``, by default each
    layer's ``layer_cut``."""
    groups = torch.repeat_interleave(torch.arange(len(layers.sizes)), torch.tensor(layers.sizes))
    offsets = torch.tensor([0] + layers.sizes[:-1]).cumsum(0)
    channel = torch.cat([offset + torch.arange(size) % base for offset, size, base in zip(offsets.tolist(), layers.sizes, layers.bases)])
    examples, a_spur = layers.examples, layers.a_spur
    centre, scale = null_stats(a_spur, groups, examples)  # once: the z of the usual boxes and the tight boxes' shift
    z_valid, z_spurs = null_z(layers.a_valid, groups, examples).amax(dim=1), (a_spur - centre) / scale
    z_spur, best = z_spurs.nan_to_num(float("-inf")).max(dim=1)
    z_spur = z_spur.masked_fill(z_spurs.isnan().all(dim=1), float("nan"))
    shift = None if layers.tight is None else tight_shift(a_spur, layers.tight, scale).gather(1, best[:, None])[:, 0]
    cuts = [layer_cut(base) if cut is None else cut for base in layers.bases]
    result = audit_units(
        class_name, layers.units, layers.max_share, layers.mean_share, layers.a_valid.amax(dim=1), a_spur.amax(dim=1),
        z_valid, z_spur, valid, spurious, torch.tensor(cuts).repeat_interleave(torch.tensor(layers.sizes)), rule, channel,
        examples if layers.audited is None else layers.audited, shift, layers.labels,
    )  # fmt: skip
    result.cut = AUDIT_CUT if cut is None else cut
    result.cuts = {unit.rpartition("/")[0]: value for unit, value in zip([layers.units[offset] for offset in offsets.tolist()], cuts)}
    return result


#: why an audit whose test of semlens's drawings confirmed no unit keeps the alignment's spurious share (``Audit.share_tested``)
UNCONFIRMED_BY_DRAWINGS = (
    "the test of semlens's drawings confirmed no unit, and a drawing may differ from what the model learnt (another colour, "
    "text or size): no flag falls by it; images of the concept as it is in the data test each finding"
)


#: what a reliance on semlens's drawings does not rule out (measured: concept worlds rely on drawings that share their
#: class's look, emblems over stripes, a green emblem for a class of green objects, where the planted artefact's test
#: finds no reliance; a class of the drawing's colour alone is told apart by its control, drawn.control: docs/quality.md)
DRAWN_CAVEAT = "a drawing that looks like the class's own objects or pattern can raise it without the concept itself"


def advice_asked(audit: Audit) -> str | None:
    """``Audit.advice`` with what it asks for in each face's words (``_util.errors.asked``): the command line prints
    ``on_the_command_line`` of it."""
    if not (audit.reliance and audit.reliance["relies"]) or audit.confirmed or all(unit.test is not None and unit.test.get("zeroed", True) for unit in audit.units):
        return None
    return f"the class relies on the concept, but no flagged unit is confirmed: test every relevant unit ({asked('audit(..., test_all=True)', '--test-all')})"
