"""``semlens report``: one self-contained HTML page about a Lens (plotly inlined, images as data URIs).

It works offline and can be mailed around: no CDN, no external file. Sections: the overview map, the
dissection chart, measure distributions, the least clear and most polysemantic units, and the
unexpected (unlabelled) units, each unit with its concept examples; then, when given, class audits,
a comparison with another Lens and attribution graphs (``semlens.report.sections``).
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .._util.errors import SemlensError
from ..lens.lens import Lens
from ..lens.sources import data_described
from ..model.imagenet import shown_class
from .figures import dissection_figure, firing_picture, heat_overlay, overview_figure
from .sections import audit_section, audit_summary, comparison_section, flagged_units, graph_section, location_words

if TYPE_CHECKING:
    from ..analysis.audit import Audit
    from ..analysis.compare import Comparison
    from ..relevance.graph import AttributionGraph

THUMBNAIL = 96
EXAMPLES_SHOWN = 6
OVERLAYS_SHOWN = 3  # heatmaps over the full view, beside the crops (yellow outline)
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table.meta td { padding: 2px 12px 2px 0; }
.unit { display: flex; align-items: center; gap: 10px; margin: 6px 0; }
.unit .name { width: 260px; font-family: monospace; font-size: 0.9em; }
.unit img { width: 72px; height: 72px; border-radius: 3px; }
.unit img.heat { outline: 2px solid #ffdd00; }
table.verdicts td, table.verdicts th, table.concepts td { padding: 2px 12px 2px 0; text-align: left; vertical-align: top; }
"""


def _figure_html(figure, include_plotlyjs: bool) -> str:
    return figure.to_html(full_html=False, include_plotlyjs=include_plotlyjs)


def thumbnail(image, size: int = THUMBNAIL) -> str:
    """``image`` as a small square JPEG data URI: pages that carry their images travel as one file."""
    buffer = io.BytesIO()
    image.convert("RGB").resize((size, size)).save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _title(example) -> str:
    return f'title="{html.escape(example.source)} ({example.score:.3g})"'


def example_thumbnails(
    lens: Lens, unit: str, shown: int = EXAMPLES_SHOWN, size: int = THUMBNAIL, by: str = "activation", ranks: Sequence[int] | None = None
) -> str:
    """``<img>`` tags of where ``unit`` fires on its first ``shown`` concept examples of the set ``by`` (of those of
    ``ranks``, where given: a concept cluster's) (``firing_picture``), each titled with its source and score."""
    examples = lens.examples.concept_examples(unit, by=by)
    examples = [example for example in examples if ranks is None or example.rank in ranks][:shown]
    return "".join(f'<img src="{thumbnail(firing_picture(lens, unit, example, by), size)}" {_title(example)}>' for example in examples)


def images_missing(lens: Lens) -> SemlensError | None:
    """Why the Lens's concept examples cannot be pictured (its probe data out of reach: data passed in memory, a moved
    folder, a Lens from someone else opened without it), or None: pages then name the examples' sources instead."""
    try:
        lens.sources.probe_data  # noqa: B018 (loaded, checked against its fingerprint, kept)
    except SemlensError as error:
        return error
    return None


def _unit_rows(lens: Lens, units: list[tuple[str, str]], pictured: bool = True) -> str:
    """One line per unit: name, a note (label, measure), its first concept examples and, where the crops
    were cut from heatmaps, the first examples' heatmaps over their full views; the examples' sources where they
    cannot be ``pictured``."""
    rows = []
    for unit, note in units:
        if not pictured:
            sources = ", ".join(example.source for example in lens.examples.concept_examples(unit)[:EXAMPLES_SHOWN])
            rows.append(f'<div class="unit"><span class="name">{html.escape(unit)}<br><small>{html.escape(note)}</small></span><small>{html.escape(sources)}</small></div>')
            continue
        layer, row = lens.units.index(unit)
        heatmaps = lens.arrays.heatmaps(layer)
        overlays = []
        for example in lens.examples.concept_examples(unit)[:OVERLAYS_SHOWN] if heatmaps is not None else []:
            view = lens.examples.image(example, crop=False)
            overlay = heat_overlay(view, heatmaps[row, example.rank].float().numpy(), example.box, lens.arrays.heatmap_shift(layer))
            overlays.append(f'<img class="heat" src="{thumbnail(overlay)}" {_title(example)}>')
        images = example_thumbnails(lens, unit) + "".join(overlays)
        rows.append(f'<div class="unit"><span class="name">{html.escape(unit)}<br><small>{html.escape(note)}</small></span>{images}</div>')
    return "\n".join(rows)


def _clusters_note(lens: Lens, unit: str) -> str:
    """A unit's concept clusters in a few words: each one's best concept and size."""
    return " · ".join(f"{cluster.concept or 'unnamed'} ({cluster.size})" for cluster in lens.concept_clusters(unit).clusters)


def _histograms(measures: dict[str, dict[str, list[float]]]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = ("clarity", "polysemanticity", "redundancy")
    figure = make_subplots(rows=1, cols=3, subplot_titles=names)
    for column, name in enumerate(names, start=1):
        for layer, values in measures.items():
            figure.add_trace(go.Histogram(x=values[name], name=layer, legendgroup=layer, showlegend=column == 1, opacity=0.7), 1, column)
    figure.update_layout(barmode="overlay", title="interpretability measures per unit")
    return figure


def _redundancy_scale(measures: dict[str, dict[str, list[float]]]) -> str:
    """Each layer's mean redundancy next to its typical pair, the scale it is read against."""
    mean = lambda values: sum(values) / len(values) if values else float("nan")  # noqa: E731
    layers = "; ".join(f"{layer} {mean(values['redundancy']):.3f} against {mean(values['typical']):.3f}" for layer, values in measures.items())
    return f"Redundancy (each unit's closest other unit) against the typical pair (a unit with any other of its layer): {layers}."


def write_report(
    lens: Lens,
    out: str | Path,
    worst: int = 8,
    unexpected: int = 12,
    audits: Sequence[Audit] = (),
    comparison: Comparison | None = None,
    graphs: Sequence[AttributionGraph] = (),
    other_name: str | None = None,
) -> Path:
    """Write the report; labels the Lens with the default vocabulary first if it has no labels. ``audits``
    (from ``Lens.audit``), ``comparison`` (``Lens.compare`` against the Lens called ``other_name``) and
    ``graphs`` (``Lens.attribution_graph``) each add their sections at the end."""
    labelled = lens.labels.ensure()  # a space of images only: a report without labels
    unpictured = images_missing(lens)
    pictured = unpictured is None
    overview = lens.overview()
    labels = {unit: lens.labels.label_of(unit) for unit in overview.units}
    measured, measures, least_clear, most_poly, unlabelled = lens.measures(), {}, [], [], []
    for layer in lens.layers:
        units = [f"{layer}/{name}" for name in lens.units(layer)]
        measures[layer] = {name: [float(v) for v in tensor[~tensor.isnan()].tolist()] for name, tensor in measured.of(layer).items()}  # left-out units have none
        least_clear += [(unit, f"clarity {value:.3f}") for unit, value in measured.extremes(layer, "clarity", worst, False)]  # left-out units have none
        most_poly += [(unit, f"polysemanticity {value:.3f}; {_clusters_note(lens, unit)}") for unit, value in measured.extremes(layer, "polysemanticity", worst, True)]
        layer_labels = lens.labels.of(layer)
        if layer_labels is not None:  # None in a space of images only
            missing = (~layer_labels.labelled & lens.arrays.valid(layer)).nonzero().flatten()[:unexpected].tolist()
            unlabelled += [(units[i], _best_candidate(lens, units[i])) for i in missing]
    identity = lens.manifest["identity"]
    meta = "".join(
        f"<tr><td>{key}</td><td>{html.escape(str(value))}</td></tr>"
        for key, value in [
            ("model", f"{identity['model']['spec']} (weights {identity['model']['fingerprint']})"),
            ("data", data_described(lens.manifest)),
            ("foundation model", lens.embedding.foundation_id),
            ("layers", ", ".join(f"{layer} ({info['units']} units)" for layer, info in lens.manifest["layers"].items())),
            (
                "left out",
                ", ".join(f"{layer}: {int(lens.arrays.inactive(layer).sum())} inactive, {int(lens.arrays.tied(layer).sum())} tied" for layer in lens.layers),
            ),
            ("labels", _labels_meta(lens)),
            *([] if pictured else [("example images", f"not shown (their sources are named instead): {unpictured}")]),
        ]
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>semlens report: {html.escape(lens.path.name)}</title>
<style>{STYLE}</style></head><body>
<h1>semlens report: {html.escape(lens.path.name)}</h1>
<table class="meta">{meta}</table>
<h2>Overview map</h2>
{_figure_html(overview_figure(overview, labels), include_plotlyjs=True)}
<h2>Dissection: units per concept category</h2>
{_figure_html(dissection_figure(lens.labels.dissect()), include_plotlyjs=False) if labelled else NO_TEXT}
<h2>Interpretability measures</h2>
{_figure_html(_histograms(measures), include_plotlyjs=False)}
<p>{html.escape(_redundancy_scale(measures))}</p>
<h2>Least clear units</h2>
{_unit_rows(lens, least_clear, pictured)}
<h2>Most polysemantic units</h2>
{_unit_rows(lens, most_poly, pictured)}
<h2>Unexpected units (no concept sets them apart from their layer)</h2>
{_unit_rows(lens, unlabelled, pictured) or ("<p>none: every valid unit shows a concept</p>" if labelled else NO_TEXT)}
{_extra_sections(lens, audits, comparison, graphs, other_name, pictured)}
</body></html>
"""
    target = Path(out)
    target.write_text(page, encoding="utf-8")
    return target


NO_TEXT = "<p>no labels: this Lens's foundation model embeds images only (add a text-image space with <code>semlens embed</code>)</p>"


def _labels_meta(lens: Lens) -> str:
    """The vocabulary, method and coverage of the labels the report shows."""
    if lens.labels.vocabulary is None:
        return "none: the foundation model embeds images only"
    coverage = lens.labels.coverage()["all"]
    shown = f"{coverage['labelled']} of {coverage['valid_units']} valid units show a concept"
    if coverage["median_confidence"] is not None:
        shown += f" (median confidence z {coverage['median_confidence']:.1f})"
    return f"vocabulary {lens.labels.vocabulary.name!r}, {len(lens.labels.vocabulary.concepts)} concepts, by {lens.labels.method}; {shown}"


def _best_candidate(lens: Lens, unit: str) -> str:
    concept, alignment, confidence = lens.labels.candidates(unit)[0]
    return f"best candidate {concept} (alignment {alignment:.3f}" + ("" if confidence is None else f", confidence z {confidence:.2f}") + ")"


def _extra_sections(
    lens: Lens,
    audits: Sequence[Audit],
    comparison: Comparison | None,
    graphs: Sequence[AttributionGraph],
    other_name: str | None,
    pictured: bool = True,
) -> str:
    parts = [
        audit_section(
            audit,
            _figure_html(audit_figure(lens, audit, thumbnails=pictured), include_plotlyjs=False),
            _unit_rows(lens, flagged_units(audit), pictured),
        )
        for audit in audits
    ]
    if comparison is not None:
        parts.append(comparison_section(comparison, lens.path.name, other_name or "the other Lens"))
    parts += [graph_section(graph) for graph in graphs]
    return "\n".join(parts)


VERDICT_COLOURS = {"valid": "#2ca02c", "spurious": "#d62728", "both": "#ff7f0e", "unexpected": "#7f7f7f"}
HOVER_SCRIPT = """
<script>
document.querySelectorAll('.js-plotly-plot').forEach(function (plot) {
  plot.on('plotly_hover', function (event) {
    var point = event.points[0];
    document.getElementById('hovered').innerHTML = point.customdata[0] + point.customdata[1];
  });
});
</script>
"""


def audit_figure(lens: Lens, audit, thumbnails: bool = True):
    """Scatter of the audited units: x valid alignment, y spurious alignment, size relevance, colour verdict;
    each point carries its unit's thumbnails for the hover panel (unless ``thumbnails=False``: the explorer
    fetches them when a point is hovered)."""
    import plotly.graph_objects as go

    figure = go.Figure()
    largest = max([unit.relevance for unit in audit.units] + [1e-9])
    for verdict, colour in VERDICT_COLOURS.items():
        members = [unit for unit in audit.units if unit.verdict == verdict]
        if not members:
            continue
        hover = [
            [
                f"<b>{html.escape(unit.unit)}</b> ({verdict}, relevance {unit.relevance:.3f}"
                f"{'' if unit.responses_label is None else ', by its responses: ' + html.escape(unit.responses_label)})<br>",
                example_thumbnails(lens, unit.unit)
                if thumbnails
                else "",
            ]
            for unit in members
        ]
        figure.add_trace(
            go.Scatter(
                x=[unit.z_valid for unit in members], y=[unit.z_spur for unit in members], mode="markers", name=verdict,
                marker={"color": colour, "size": [8 + 40 * unit.relevance / largest for unit in members], "opacity": 0.75},
                text=[unit.unit for unit in members], customdata=hover,
                hovertemplate="%{text}<br>z valid %{x:.2f}, z spurious %{y:.2f}<extra></extra>",
            )
        )  # fmt: skip
    rule = audit.rule  # the verdict lines: aligned beyond the null (z), one-sided beyond the margin
    figure.add_hline(y=rule.z, line_dash="dot", line_color="gray")
    figure.add_vline(x=rule.z, line_dash="dot", line_color="gray")
    values = [value for unit in audit.units for value in (unit.z_valid, unit.z_spur) if math.isfinite(value)]
    reach = max([rule.z + 2 * rule.margin + 1, *values]) - rule.z  # the diagonal guides go as far as the points, no farther
    for offset in (-rule.margin, rule.margin):
        figure.add_shape(type="line", x0=rule.z, y0=rule.z + offset, x1=rule.z + reach, y1=rule.z + reach + offset, line={"dash": "dash", "color": "lightgray"})
    figure.update_layout(
        title=f"audit of class {html.escape(shown_class(audit.class_name))}",
        xaxis_title="alignment with valid concepts (z against the unit's layer)",
        yaxis_title="alignment with spurious concepts (z)",
    )
    return figure


def _test_verdict(unit) -> str:
    """The concept test's word on a unit for the audit page's table (empty: not tested)."""
    if unit.test is None:
        return ""
    located = "" if unit.test["located_iou"] is None else f", at the concept {location_words(unit.test)}"
    revised = "" if unit.verdict_before_test is None else f"; {html.escape(unit.verdict_before_test)} before the test"
    return f"{'confirmed' if unit.test['confirmed'] else 'unconfirmed'}{located}{revised}"


def write_audit_html(lens: Lens, audit, out: str | Path) -> Path:
    """A self-contained page: the audit scatter with a hover panel of concept examples (where they can be pictured:
    ``images_missing``), shares and the table."""
    missing = images_missing(lens)
    pictured = missing is None
    rows = "".join(
        f"<tr><td>{html.escape(unit.unit)}</td><td>{unit.verdict}</td><td>{html.escape(unit.responses_label or '-')}</td><td>{unit.relevance:.3f}</td>"
        f"<td>{unit.z_valid:.2f}</td><td>{unit.z_spur:.2f}</td><td>{'-' if unit.tight_shift is None else f'{unit.tight_shift:.2f}'}</td>"
        f"<td>{unit.a_valid:.3f}</td><td>{unit.a_spur:.3f}</td>"
        f"<td>{_test_verdict(unit)}</td></tr>"
        for unit in audit.units
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>audit: {html.escape(shown_class(audit.class_name))}</title>
<style>{STYLE} #hovered img {{ width: 72px; margin: 2px; }} td {{ padding: 2px 10px; }}</style></head><body>
<h1>Audit of class {html.escape(shown_class(audit.class_name))}</h1>
{audit_summary(audit)}
{_figure_html(audit_figure(lens, audit, thumbnails=pictured), include_plotlyjs=True)}
<div id="hovered"><i>{"hover a point to see the unit's concept examples" if pictured else html.escape(f"no concept examples shown: {missing}")}</i></div>
<h2>Units</h2><table><tr><th>unit</th><th>verdict</th><th>by its responses</th><th>relevance</th><th>z_valid</th><th>z_spur</th><th>tight shift</th><th>a_valid</th><th>a_spur</th><th>concept test</th></tr>{rows}</table>
{HOVER_SCRIPT}
</body></html>
"""
    target = Path(out)
    target.write_text(page, encoding="utf-8")
    return target
