"""The report's optional sections: audits, a comparison with another Lens, attribution graphs.

Each returns an HTML fragment with every name escaped: class, concept, layer and Lens names come from
files someone else may have written. Figures never carry plotly.js (the overview map, first on the
page, does).
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from ..analysis.audit import VERDICTS
from .figures import graph_figure, overlap_figure

if TYPE_CHECKING:
    from ..analysis.audit import Audit
    from ..analysis.compare import Comparison
    from ..relevance.graph import AttributionGraph

FLAGGED = ("spurious", "both")


def _plot(figure) -> str:
    return figure.to_html(full_html=False, include_plotlyjs=False)


def _names(names: list[str]) -> str:
    return html.escape(", ".join(names)) if names else "<i>none</i>"


def flagged_units(audit: Audit) -> list[tuple[str, str]]:
    """(unit, note) for the units that align with a spurious concept: what the audit asks you to look at."""
    return [
        (
            unit.unit,
            f"{unit.verdict}, relevance {unit.relevance:.3f}, a_valid {unit.a_valid:.3f}, a_spur {unit.a_spur:.3f}",
        )
        for unit in audit.units
        if unit.verdict in FLAGGED
    ]


def audit_section(audit: Audit, figure: str, flagged_rows: str) -> str:
    """One class's audit: concepts, relevance by verdict, the scatter (``figure``, already HTML) and the
    flagged units with their concept examples (``flagged_rows``, already HTML)."""
    counts = {verdict: sum(unit.verdict == verdict for unit in audit.units) for verdict in VERDICTS}
    rows = "".join(
        f"<tr><td>{html.escape(verdict)}</td><td>{counts.get(verdict, 0)}</td><td>{share:.1%}</td></tr>"
        for verdict, share in audit.shares.items()
    )
    return f"""<h2>Audit of class {html.escape(audit.class_name)}</h2>
<p>valid: {_names(audit.valid)}<br>spurious: {_names(audit.spurious)}<br>
units with more than {audit.cut:.1%} of their layer's relevance: {len(audit.units)}</p>
<table class="verdicts"><tr><th>verdict</th><th>units</th><th>share of relevance</th></tr>{rows}</table>
{figure}
<h3>Flagged units (spurious or both)</h3>
{flagged_rows or "<p>none: no relevant unit aligns with a spurious concept</p>"}
"""


def comparison_section(comparison: Comparison, name_a: str, name_b: str) -> str:
    """S_{A->B} and S_{B->A} as heatmaps, then the concepts both Lenses have and those only one has."""
    a, b = html.escape(name_a), html.escape(name_b)
    return f"""<h2>Comparison with {b}</h2>
<p>A = {a}, B = {b}. S(A→B) is the mean, over units of A, of the best cosine similarity to a unit of B:
how much of what A encodes B also encodes.</p>
{_plot(overlap_figure(comparison, name_a, name_b))}
<table class="concepts">
<tr><td>shared ({len(comparison.shared_concepts)})</td><td>{_names(comparison.shared_concepts)}</td></tr>
<tr><td>only in A ({len(comparison.only_a)})</td><td>{_names(comparison.only_a)}</td></tr>
<tr><td>only in B ({len(comparison.only_b)})</td><td>{_names(comparison.only_b)}</td></tr>
</table>
"""


def graph_section(graph: AttributionGraph) -> str:
    return f"<h2>Attribution graph of class {html.escape(graph.class_name)}</h2>\n{_plot(graph_figure(graph))}\n"
