"""The report's optional sections: audits, a comparison with another Lens, attribution graphs.

Each returns an HTML fragment with every name escaped: class, concept, layer and Lens names come from
files someone else may have written. Figures never carry plotly.js (the overview map, first on the
page, does).
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING

from ..analysis.audit import DRAWN_CAVEAT, UNCONFIRMED_BY_DRAWINGS, VERDICTS
from ..model.imagenet import shown_class
from .figures import graph_figure, overlap_figure

if TYPE_CHECKING:
    from ..analysis.audit import Audit, AuditedUnit
    from ..analysis.compare import Comparison
    from ..relevance.graph import AttributionGraph

def _plot(figure) -> str:
    return figure.to_html(full_html=False, include_plotlyjs=False)


def _names(names: list[str]) -> str:
    return html.escape(", ".join(names)) if names else "<i>none</i>"


def flagged_units(audit: Audit) -> list[tuple[str, str]]:
    """(unit, note) for the units that align with a spurious concept: what the audit asks you to look at."""
    return [(unit.unit, _note(unit)) for unit in audit.flagged]


def _note(unit: AuditedUnit) -> str:
    note = (
        f"{unit.verdict}, relevance {unit.relevance:.3f}, z_valid {unit.z_valid:.1f}, z_spur {unit.z_spur:.1f} "
        f"(a_valid {unit.a_valid:.3f}, a_spur {unit.a_spur:.3f})"
    )
    if unit.tight_shift is not None:
        note += f"; in its tight boxes the spurious alignment moves {unit.tight_shift:+.1f} robust spreads"
    if unit.copies:
        note += f"; merged with {', '.join(unit.copies)}"
    if unit.test is not None:
        test = unit.test
        zeroed = test.get("zeroed", True)
        verdict = ("confirmed" if test["confirmed"] else "unconfirmed") if zeroed else ("detects it" if test["detects"] else "measured") + ", not switched off"
        note += (
            f"; concept test: {verdict} (activation AUC "
            f"{test['activation_auc']:.2f}, raised {test['concept_rise']:+.2f} by the concept"
            + ("" if test["class_rise"] is None else f", {test['class_rise']:+.2f} by the class's own images")
            + ("" if test["located_iou"] is None else f"; its top activations at the pasted concept: {location_words(test)}")
            + (
                f"; zeroing it lowers the class probability by {test['drop_with']:.3f} with the concept, "
                f"{test['drop_without']:.3f} without, and removes {test['reliance_removed']:+.2f} of the log odds ratio)"
                if zeroed
                else ")"
            )
        )
    return note


def audit_summary(audit: Audit) -> str:
    """The rule, the relevance by verdict (with "spurious or both") and, after a concept test, the class's
    measured reliance on the concept and the confirmed and unconfirmed findings; every name escaped."""
    counts = {verdict: sum(unit.verdict == verdict for unit in audit.units) for verdict in VERDICTS}
    counts["spurious_or_both"] = counts["spurious"] + counts["both"]
    rows = "".join(
        f"<tr><td>{kind.replace('_', ' ')}</td><td>{counts[kind]}</td><td>{audit.shares[kind]:.1%}</td></tr>"
        for kind in (*VERDICTS, "spurious_or_both")
    )
    rule = audit.rule
    if audit.reliance is None:
        tested = "<p>reliance not measured: no concept test was asked for (images with and without the concept)</p>"
    else:
        r = audit.reliance
        tested = (
            (f"<p><b>concept test</b>: {html.escape(r['drawn'])}; {html.escape(DRAWN_CAVEAT)}</p>" if r.get("drawn") else "")
            + f"<p><b>reliance on the concept</b>: class probability {r['without']:.3f} without, {r['with']:.3f} with "
            f"({r['effect']:+.3f}; log-odds {r['log_odds']:+.2f}: {'relies on it' if r['relies'] else 'does not rely on it'}; "
            f"{r['samples'][0]} and {r['samples'][1]} images, {'pairs' if r['paired'] else 'unpaired'})<br>"
            + (
                f"<b>spurious share, as tested</b>: {audit.spurious_share:.1%} of the relevance (the confirmed findings'"
                f"{' and the units the reliance runs through' if audit.carriers else ''}; the table's shares are by alignment)<br>"
                if audit.share_tested
                else f"<b>spurious share, by alignment</b>: {audit.spurious_share:.1%} ({html.escape(UNCONFIRMED_BY_DRAWINGS)})<br>"
            )
            + f"confirmed findings: {_names(audit.confirmed)}<br>unconfirmed: {_names(audit.unconfirmed)}"
            + (f"<br>not flagged, but the reliance runs through them (the concept test alone): {_names(audit.carriers)}" if audit.carriers else "")
            + (f"<br><b>{html.escape(audit.advice)}</b>" if audit.advice else "")
            + (f"<br>detect the concept (raised by it more than by the class, where it is; every examined unit): {_names(audit.detectors)}" if r["relies"] else "")
            + (f"<br>flagged, but not raised by the concept (verdict from the valid alignment): {_names(audit.not_raised)}" if audit.rule.by_rise else "")
            + (
                f"<br>flagged, but firing away from the pasted concept (verdict from the valid alignment): {_names(audit.unlocated)}"
                f"<br>named valid by their crop responses, firing where the concept is pasted and raised by it (both): {_names(audit.both_by_location)}"
                if audit.judged_by_location
                else ""
            )
            + "</p>"
        )
    left_out = f"<p>relevant units left out (inactive: never fired or constant on the probe data): {_names(audit.left_out)}</p>" if audit.left_out else ""
    if audit.few_class_images:
        left_out += f"<p>{html.escape(audit.few_class_images)}</p>"
    if audit.small_nulls:
        rough = ", ".join(f"{layer} ({count} units)" for layer, count in audit.small_nulls.items())
        left_out += f"<p>rough z-scores: small nulls in {html.escape(rough)}</p>"
    by_label = f"; {html.escape(audit.by_label_text)}" if audit.judged_by_label else ""
    return f"""<p>valid: {_names(audit.valid)}<br>spurious: {_names(audit.spurious)}<br>
units with more than {html.escape(audit.cut_text)} of their layer's relevance: {len(audit.units)}<br>
aligned: z &gt; {rule.z:g}, the {html.escape(rule.to_dict()["null"])}; a one-sided verdict needs a margin of {rule.margin:g}
(within it: both){by_label}</p>
<table class="verdicts"><tr><th>verdict</th><th>units</th><th>share of relevance</th></tr>{rows}</table>
{tested}{left_out}"""


def audit_section(audit: Audit, figure: str, flagged_rows: str) -> str:
    """One class's audit: concepts, rule, relevance by verdict, reliance, the scatter (``figure``, already
    HTML) and the flagged units with their concept examples (``flagged_rows``, already HTML)."""
    return f"""<h2>Audit of class {html.escape(shown_class(audit.class_name))}</h2>
{audit_summary(audit)}
{figure}
<h3>Flagged units (spurious or both)</h3>
{flagged_rows or "<p>none: no relevant unit aligns with a spurious concept beyond its null or is named by it</p>"}
"""


def comparison_section(comparison: Comparison, name_a: str, name_b: str) -> str:
    """S_{A->B} and S_{B->A} as heatmaps, then the concepts both Lenses have and those only one has."""
    a, b = html.escape(name_a), html.escape(name_b)
    typical = [value for row in comparison.typical for value in row if not math.isnan(value)]
    scale = f" The typical pair (any unit of A with any unit of B) has a cosine of {min(typical):.3f} to {max(typical):.3f}: S near it says the matches are no closer than any pair." if typical else ""
    return f"""<h2>Comparison with {b}</h2>
<p>A = {a}, B = {b}. S(A→B) is the mean, over units of A, of the best cosine similarity to a unit of B:
how much of what A encodes B also encodes.{scale}</p>
{_plot(overlap_figure(comparison, name_a, name_b))}
<table class="concepts">
<tr><td>shared ({len(comparison.shared_concepts)})</td><td>{_names(comparison.shared_concepts)}</td></tr>
<tr><td>only in A ({len(comparison.only_a)})</td><td>{_names(comparison.only_a)}</td></tr>
<tr><td>only in B ({len(comparison.only_b)})</td><td>{_names(comparison.only_b)}</td></tr>
</table>
"""


def graph_section(graph: AttributionGraph) -> str:
    return f"<h2>Attribution graph of class {html.escape(shown_class(graph.class_name))}</h2>\n{_plot(graph_figure(graph))}\n"


def location_words(test: dict) -> str:
    """Where a tested unit fires against the pasted concept, in words: its IoU and bar, and where the concept is
    larger than where the unit fires, the share of its firing cells on the concept and that bar."""
    words = f"IoU {test['located_iou']:.2f} (bar {test['located_bar']:.2f})"
    if test.get("located_precision_bar") is not None:
        words += f", {test['located_precision']:.0%} of its top cells on it (bar {test['located_precision_bar']:.0%})"
    return words
