"""How results draw themselves in a notebook: search hits, labels, a class's relevant units, an audit, an
explanation, an attribution graph, a unit's concept clusters, measures, the overview map, a dissection, a comparison, and the Lens itself.

Small self-contained HTML: tables, thumbnails as JPEG data URIs, no script (notebooks that do not trust a
cell's output drop scripts anyway). Every name is escaped: units, labels, classes and concepts may come from
a Lens or vocabulary someone else made. A result made by a Lens (``semlens._util.display.made_by``) shows its
units' first concept examples where they fire (``html.example_thumbnails``), one made elsewhere omits them;
an explanation also shows each unit's heatmap on the explained image, which it carries. ``import semlens``
imports this module, which registers the pictures with the result types (``display.renders_html``).
"""

from __future__ import annotations

import html
import math
from typing import Iterable, Sequence

from .._util.display import lens_of, renders_html
from .._util.errors import SemlensError
from ..analysis.audit import Audit
from ..analysis.compare import Comparison
from ..analysis.explain import ExplainedUnit, Explanation
from ..analysis.measures import EXTREMES, TYPICAL_PAIR, Measures
from ..analysis.overview import OverviewMap
from ..lens.audits import RelevantUnits
from ..lens.clusters import UnitClusters
from ..relevance.graph import AttributionGraph
from ..lens.labels import Dissection, Labelling
from ..lens.lens import Lens
from ..lens.search import SearchResults
from ..model.imagenet import shown_class
from .explain import explanation_overlays
from .html import example_thumbnails, thumbnail
from .sections import _names, audit_summary

SIZE = 64  # px: a row of thumbnails stays one line of a table
SHOWN = 3  # concept examples per unit
CLUSTER_SHOWN = 6  # concept examples per cluster of a unit's examples
MATCHES = 10  # best matches a comparison lists


def _text(value: object) -> str:
    return html.escape(str(value))


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A table of cells that are HTML already (escaped by the caller) under an escaped header."""
    head = "".join(f"<th>{_text(name)}</th>" for name in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class _Examples:
    """Thumbnails of units' concept examples from the Lens that made a result: none without one, nor where
    its probe data cannot be read (a Lens from someone else opened without it: ``note`` says why)."""

    def __init__(self, result: object, by: str = "activation") -> None:
        self.lens, self.by, self.missing = lens_of(result), by, None

    def __call__(self, unit: str, ranks: Sequence[int] | None = None, shown: int = SHOWN) -> str:
        if self.lens is None or self.missing is not None:
            return ""
        try:
            return example_thumbnails(self.lens, unit, shown, SIZE, self.by, ranks)
        except SemlensError as error:
            self.missing = str(error)
            return ""

    def note(self) -> str:
        return "" if self.missing is None else f"<p><small>no concept examples shown: {_text(self.missing)}</small></p>"


@renders_html(SearchResults)
def search_html(hits: SearchResults) -> str:
    """The hits, best first: unit, score, response (where the Lens kept crop responses), label, concept examples
    (their sources where no picture can be made)."""
    pictures = _Examples(hits, hits.by)
    responses = any(hit.response is not None for hit in hits)
    header = ["unit", "score", *(["response"] if responses else []), "label", "concept examples"]
    rows = [
        [
            _text(hit.unit), f"{hit.score:.3f}", *([_text("-" if hit.response is None else f"{hit.response:.3f}")] if responses else []),
            _text(hit.label or "-"), pictures(hit.unit) or _text(", ".join(hit.examples)),
        ]
        for hit in hits
    ]  # fmt: skip
    note = f"<p><small>note: {_text(hits.note)}</small></p>" if hits.note else ""
    return _table(header, rows) + pictures.note() + _ranked_note(hits) + note


def _ranked_note(hits: SearchResults) -> str:
    """What ordered the hits (so that the score column, the alignment, need not fall down the table)."""
    if hits.rank is None:
        return ""
    score = "" if hits.rank == "model" else "score: alignment with the probe; "
    return f"<p><small>{score}ranked {_text(hits.ranking())} (rank={hits.rank})</small></p>"


@renders_html(Labelling)
def labelling_html(labelling: Labelling) -> str:
    """Per layer and over the Lens: valid units, how many show a concept, the share, the median confidence,
    and the layer's most common labels with their unit counts."""
    coverage = labelling.coverage()

    def row(name: str, entry: dict, common: str) -> list[str]:
        confidence = entry["median_confidence"]
        z = "-" if confidence is None else f"{confidence:.1f}"
        return [_text(name), str(entry["valid_units"]), str(entry["labelled"]), _share(entry["coverage"]), z, common]

    rows = [
        row(layer, entry, _text(", ".join(f"{concept} ({count})" for concept, count in labelling.most_common(layer))))
        for layer, entry in coverage["layers"].items()
    ]
    vocabulary = labelling.vocabulary
    header = ["layer", "valid units", "labelled", "coverage", "median confidence (z)", "most common labels"]
    return (
        f"<p>labels from the vocabulary {_text(vocabulary.name)} ({len(vocabulary.concepts)} concepts)</p>"
        + _table(header, [*rows, row("all", coverage["all"], "")])
    )


@renders_html(RelevantUnits)
def relevant_units_html(units: RelevantUnits) -> str:
    """The units a class relies on, with their shares, labels and concept examples."""
    pictures = _Examples(units)
    rows = [
        [_text(unit.unit), _share(unit.mean_share), _share(unit.max_share), _text(unit.label or "(no concept)"), pictures(unit.unit)]
        for unit in units
    ]  # fmt: skip
    header = ["unit", "mean share", "max share", "label", "concept examples"]
    title = f"<h4>Units class {_text(shown_class(units.class_name))} relies on most</h4>"
    return title + _table(header, rows) + pictures.note() + "<p><small>share: of the unit's layer's relevance over the class's samples</small></p>"


@renders_html(Measures)
def measures_html(measures: Measures) -> str:
    """The layer means, then each layer's least clear and most polysemantic units with their labels and concept examples."""
    pictures, lens = _Examples(measures, measures.examples), lens_of(measures)
    means = [[_text(layer), *(f"{value:.3f}" for value in measures.summary(layer).values())] for layer in measures.values]
    rows = []
    for layer in measures.values:
        for title, measure, highest in EXTREMES:
            for unit, value in measures.extremes(layer, measure, SHOWN, highest):
                label = lens.labels.label_of(unit) if lens is not None else None
                rows.append([_text(title), _text(unit), f"{measure} {value:.3f}", _text(label or "(no concept)"), pictures(unit)])
    header = ["layer", "clarity", "polysemanticity", "redundancy", "typical pair"]
    return (
        f"<h4>Measures by the {_text(measures.examples)} examples</h4>" + _table(header, means)
        + f"<p><small>{_text(TYPICAL_PAIR)}</small></p>"
        + _table(["", "unit", "value", "label", "concept examples"], rows) + pictures.note()
    )  # fmt: skip


@renders_html(OverviewMap)
def overview_html(overview: OverviewMap) -> str:
    """The map as a PNG (a notebook shows no script, so not the report's interactive map), then its clusters."""
    import base64
    import io

    from .figures import overview_png

    picture = base64.b64encode(overview_png(overview, io.BytesIO()).getvalue()).decode("ascii")
    rows = [[_text(name), str(count)] for name, count in overview.cluster_sizes()]
    return (
        f'<img src="data:image/png;base64,{picture}" alt="overview map" style="max-width: 100%">'
        + _table(["cluster (its units' most common labels)", "units"], rows)
    )


@renders_html(AttributionGraph)
def graph_html(graph: AttributionGraph) -> str:
    """Each layer's concept groups (label, units, relevance, the first unit's concept examples), then the strongest
    flows between them (the report and the explorer draw the graph itself, with scripts a notebook drops)."""
    pictures = _Examples(graph)
    rows = [
        [_text(node.layer), _text(node.label), str(len(node.units)), f"{node.relevance:.3f}", pictures(node.units[0]) if node.units else ""]
        for node in graph.nodes
    ]  # fmt: skip
    flows = [[_text(f"{upper.layer}: {upper.label}"), _text(f"{lower.layer}: {lower.label}"), f"{weight:.3f}"] for upper, lower, weight in graph.strongest_edges()]
    return (
        f"<h4>Concepts behind class {_text(shown_class(graph.class_name))}</h4>"
        + _table(["layer", "concept group", "units", "relevance", "concept examples (its first unit)"], rows) + pictures.note()
        + "<p><small>strongest flows of relevance, from a group down to one below</small></p>"
        + _table(["from", "to", "relevance"], flows)
    )  # fmt: skip


@renders_html(UnitClusters)
def unit_clusters_html(clusters: UnitClusters) -> str:
    """Each of a unit's concept clusters: its size, its concept and label, and its own concept examples."""
    pictures = _Examples(clusters, clusters.examples)
    rows = [
        [str(cluster.size), _text(cluster.concept or "-"), _text(cluster.label or "(no concept)"), pictures(clusters.unit, cluster.ranks, CLUSTER_SHOWN)]
        for cluster in clusters.clusters
    ]  # fmt: skip
    split = "" if clusters.split_p is None else f"; one concept's spread splits as cleanly with chance {clusters.split_p:.3g}"
    polysemanticity = "-" if clusters.polysemanticity is None else f"{clusters.polysemanticity:.3f}"
    return (
        f"<h4>Concept clusters of {_text(clusters.unit)}</h4><p>polysemanticity {polysemanticity}{split}</p>"
        + _table(["examples", "concept", "label", "concept examples"], rows) + pictures.note()
    )  # fmt: skip


@renders_html(Lens)
def lens_html(lens: Lens) -> str:
    """What ``semlens info`` prints, read from the manifest (nothing computed): model, data, foundation model, k and
    crops, labels, each layer's units, then what the build did instead of what was asked."""
    from ..lens.sources import data_described
    from ..pipeline.builder import fallbacks

    manifest = lens.manifest
    identity, coverage = manifest["identity"], lens.labels.coverage()
    labels = (
        "none stored: the default vocabulary's are shown until <code>lens.label()</code> stores some" if coverage is None
        else _text(f"{lens.labels.vocabulary.name!r} by {lens.labels.method}: {coverage['all']['labelled']} of {coverage['all']['valid_units']} valid units show a concept")
    )  # fmt: skip
    facts = [
        ("model", identity["model"]["spec"]), ("data", data_described(manifest)), ("foundation model", manifest["foundation"]["id"]),
        ("examples", f"k {lens.examples.k}, crop {identity['embed']['crop']}"),
    ]  # fmt: skip
    head = "".join(f"<tr><th>{_text(name)}</th><td>{_text(value)}</td></tr>" for name, value in facts) + f"<tr><th>labels</th><td>{labels}</td></tr>"
    rows = [
        [_text(name), str(layer["units"]), str(layer["inactive_units"]), str(int(lens.arrays.tied(name).sum())), _text(layer["output"])]
        for name, layer in manifest["layers"].items()
    ]  # fmt: skip
    notes = "".join(f"<p><small>note: {_text(note)}</small></p>" for note in fallbacks(manifest))
    return f"<h4>Lens {_text(lens.path)}</h4><table>{head}</table>" + _table(["layer", "units", "inactive", "tied", "output"], rows) + notes


@renders_html(Dissection)
def dissection_html(dissection: Dissection) -> str:
    """Units per label category (columns) per layer (rows), in the dissection's order (the vocabulary's categories, then
    "unlabelled" and "inactive or tied")."""
    categories = list(next(iter(dissection.values()), {}))
    rows = [[_text(layer), *(str(counts.get(category, 0)) for category in categories)] for layer, counts in dissection.items()]
    return "<h4>Units per label category</h4>" + _table(["layer", *categories], rows)


@renders_html(Audit)
def audit_html(audit: Audit) -> str:
    """The audit's concepts, rule and relevance by verdict (``sections.audit_summary``), then its units with
    their verdicts and concept examples."""
    pictures = _Examples(audit)
    rows = [
        [
            _text(unit.unit), _text(unit.verdict), f"{unit.relevance:.3f}", f"{unit.z_valid:.2f}", f"{unit.z_spur:.2f}",
            _text(unit.responses_label or "-"), pictures(unit.unit),
        ]
        for unit in audit.units
    ]  # fmt: skip
    header = ["unit", "verdict", "relevance", "z valid", "z spurious", "by its responses", "concept examples"]
    return f"<h4>Audit of class {_text(shown_class(audit.class_name))}</h4>{audit_summary(audit)}{_table(header, rows)}{pictures.note()}"


@renders_html(Explanation)
def explanation_html(explanation: Explanation) -> str:
    """The prediction, then per layer its units by concept (and those that spoke against the class): share,
    the unit's heatmap on this image, its concept examples."""
    pictures = _Examples(explanation)
    overlays = {} if explanation.view is None else explanation_overlays(explanation)

    def row(concept: str, unit: ExplainedUnit) -> list[str]:
        heat = f'<img src="{thumbnail(overlays[unit.unit], SIZE)}">' if unit.unit in overlays else ""
        return [concept, _text(unit.unit), f"{unit.share:+.1%}", heat, pictures(unit.unit)]

    header = ["concept (share)", "unit", "share", "on this image", "concept examples"]
    layers = []
    for layer in explanation.layers:
        rows = [row(_text(f"{group.label or 'unlabelled'} ({group.share:.1%})"), unit) for group in layer.groups for unit in group.units]
        rows += [row(_text(f"against: {unit.label or 'unlabelled'}"), unit) for unit in layer.against]
        notes = f"inactive units: {layer.left_out:.1%}" + ("" if layer.sae_error is None else f"; SAE error term: {layer.sae_error:.1%}")
        layers.append(f"<h5>{_text(layer.layer)}</h5>{_table(header, rows)}<p><small>{notes}</small></p>")
    kind = "Predicted" if explanation.predicted else "Explained"
    prediction = ", ".join(f"{shown_class(entry['class'])} {entry['probability']:.1%}" for entry in explanation.prediction)
    view = "" if explanation.view is None else f'<img src="{thumbnail(explanation.view, 2 * SIZE)}">'
    return (
        f"<h4>{kind} class {_text(shown_class(explanation.class_name))} on {_text(explanation.image)}</h4>{view}"
        f"<p>most probable: {_text(prediction)}</p>{''.join(layers)}{pictures.note()}"
    )


@renders_html(Comparison)
def comparison_html(comparison: Comparison) -> str:
    """S(A→B) and S(B→A) per layer pair, the concepts both Lenses have and those only one has, and the units of
    A matched best in B."""

    def matrix(title: str, values: list[list[float]]) -> str:
        rows = [[_text(layer), *("-" if math.isnan(value) else f"{value:.3f}" for value in row)] for layer, row in zip(comparison.layers_a, values)]
        return f"<p>{title} (-: a layer without valid units)</p>" + _table(["layer of A \\ of B", *comparison.layers_b], rows)

    concepts = [
        (f"shared ({len(comparison.shared_concepts)})", _names(comparison.shared_concepts)),
        (f"only in A ({len(comparison.only_a)})", _names(comparison.only_a)),
        (f"only in B ({len(comparison.only_b)})", _names(comparison.only_b)),
    ]
    best = sorted(comparison.best_match.items(), key=lambda item: -item[1][1])[:MATCHES]
    matches = [[_text(unit), _text(match), f"{similarity:.3f}"] for unit, (match, similarity) in best]
    return (
        matrix("S(A→B): how much of what A encodes B also encodes (mean best cosine per layer pair)", comparison.a_to_b)
        + matrix("S(B→A): how much of what B encodes A also encodes", comparison.b_to_a)
        + matrix("typical pair: the mean cosine of any unit of A with any unit of B (S near it: the matches are no closer than any pair)", comparison.typical)
        + _table(["concepts", ""], concepts)
        + f"<p>units of A matched best in B ({len(best)} of {len(comparison.best_match)})</p>"
        + _table(["unit of A", "unit of B", "cosine"], matches)
    )
