"""The report's optional sections (audits, a comparison, attribution graphs) appear only when given and
escape every name (Lenses travel: class and concept names come from files someone else wrote); the
overview map has one coloured trace per concept category and boxed, readable cluster names."""

from __future__ import annotations

import re

import numpy as np
import pytest
from matplotlib.figure import Figure

from semlens import Lens
from semlens.analysis import overview as overview_module
from semlens.analysis.audit import Audit, AuditedUnit
from semlens.analysis.overview import OverviewMap
from semlens.relevance.graph import AttributionGraph, Node
from semlens.report.figures import overlap_figure, overview_figure, overview_png
from semlens.report.html import write_report

HOSTILE = "<script>alert(1)</script>"
PLOTLY_JS = "window.PlotlyConfig"  # written once per copy of plotly.js


@pytest.fixture(autouse=True)
def quick_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """UMAP compiles for ~10 s on its first call; the layout itself is not under test here."""
    monkeypatch.setattr(overview_module, "embed_2d", lambda theta, seed=0: theta[:, :2].float().numpy())


@pytest.fixture(scope="module")
def lenses(explorer_lenses) -> tuple[Lens, Lens]:
    return Lens.open(explorer_lenses[0]), Lens.open(explorer_lenses[1])


def escaped(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def unescaped_json(page: str) -> str:
    """The page with plotly's JSON escapes (``\\u003c`` for ``<``...) undone: the text plotly renders as HTML."""
    return re.sub(r"\\u([0-9a-fA-F]{4})", lambda match: chr(int(match[1], 16)), page)


def hostile_audit(unit: str) -> Audit:
    test = {"activation_auc": 0.9, "concept_rise": 0.8, "class_rise": 0.3, "located_iou": 0.12, "located_bar": 0.08, "located": True, "drop_with": 0.2, "drop_without": 0.05,
            "reliance_removed": 0.5, "detects": True, "confirmed": True}  # fmt: skip
    flagged = AuditedUnit(unit, 0.4, 0.3, -0.1, 0.2, 0.5, 6.0, "spurious", test=test)
    shares = {"valid": 0.0, "spurious": 1.0, "both": 0.0, "unexpected": 0.0, "spurious_or_both": 1.0}
    reliance = {"samples": [20, 20], "paired": True, "without": 0.1, "with": 0.4, "effect": 0.3, "log_odds": 1.8, "relies": True}
    return Audit(HOSTILE, 0.01, [HOSTILE], ["watermark & <b>logo</b>"], [flagged], shares, left_out=[HOSTILE], reliance=reliance)


def hostile_graph() -> AttributionGraph:
    nodes = [
        Node(f"head:{HOSTILE}", "head", HOSTILE, ["head/0"], 1.0),
        Node("features.3:no concept", "features.3", "no concept", ["features.3/1"], 0.5),
    ]
    return AttributionGraph(HOSTILE, nodes, [{"source": nodes[0].id, "target": nodes[1].id, "weight": 0.5}])


def test_report_sections_only_when_given(lenses, tmp_path) -> None:
    lens, _ = lenses
    page = write_report(lens, tmp_path / "plain.html").read_text()
    assert page.count(PLOTLY_JS) == 1
    assert "Audit of class" not in page and "Comparison with" not in page and "Attribution graph" not in page


def test_report_with_audits_comparison_and_graphs(lenses, tmp_path) -> None:
    lens, other = lenses
    audit = lens.audit("red", valid=["red"], spurious=["blue"], cut=0.0)
    comparison = lens.compare(other)
    comparison.shared_concepts.append(HOSTILE)
    unit = f"features.3/{lens.units('features.3')[0]}"
    page = write_report(
        lens,
        tmp_path / "report.html",
        audits=[audit, hostile_audit(unit)],
        comparison=comparison,
        graphs=[hostile_graph()],
        other_name=HOSTILE,
    ).read_text()
    page = unescaped_json(page)

    assert "<script>alert" not in page and "<b>logo" not in page  # not even inside the plotly JSON
    assert page.count(PLOTLY_JS) == 1  # the overview map carries plotly.js; the new figures do not

    assert "<h2>Audit of class red</h2>" in page and f"<h2>Audit of class {escaped(HOSTILE)}</h2>" in page
    assert page.count('<table class="verdicts">') == 2
    assert "<tr><td>spurious</td><td>1</td><td>100.0%</td></tr>" in page  # the hostile audit's shares
    assert "<tr><td>spurious or both</td><td>1</td><td>100.0%</td></tr>" in page and "aligned: z &gt; 3" in page
    assert "class probability 0.100 without, 0.400 with (+0.300" in page and "reliance not measured" in page  # red: no test
    flagged = page.split(f"<h2>Audit of class {escaped(HOSTILE)}</h2>")[1].split("<h2>")[0]
    assert "Flagged units" in flagged and unit in flagged and 'src="data:image/jpeg;base64,' in flagged
    assert "watermark &amp; &lt;b&gt;logo&lt;/b&gt;" in flagged
    assert f"detect the concept (raised by it more than by the class, where it is; every examined unit): {unit}" in flagged
    assert f"confirmed findings: {unit}" in flagged and "concept test: confirmed (activation AUC 0.90" in flagged
    assert "its top activations at the pasted concept: IoU 0.12 (bar 0.08)" in flagged
    assert f"left out (inactive: never fired or constant on the probe data): {escaped(HOSTILE)}" in flagged

    comparing = page.split(f"<h2>Comparison with {escaped(HOSTILE)}</h2>")[1].split("<h2>")[0]
    assert comparing.count('"texttemplate":"%{z:.3f}"') == 2 and lens.path.name in comparing  # the two S heatmaps
    assert f"shared ({len(comparison.shared_concepts)})" in comparing and escaped(HOSTILE) in comparing

    graphed = page.split(f"<h2>Attribution graph of class {escaped(HOSTILE)}</h2>")[1]
    assert '"type":"sankey"' in graphed and f"{escaped(HOSTILE)} (head)" in graphed


def test_overlap_figure_shows_both_matrices_annotated(lenses) -> None:
    lens, other = lenses
    comparison = lens.compare(other)
    figure = overlap_figure(comparison, "a.lens", HOSTILE)
    assert [trace.type for trace in figure.data] == ["heatmap", "heatmap"]
    assert [list(map(list, trace.z)) for trace in figure.data] == [comparison.a_to_b, comparison.b_to_a]
    assert list(figure.data[0].y) == comparison.layers_a and list(figure.data[0].x) == comparison.layers_b
    assert all(trace.texttemplate for trace in figure.data)
    assert HOSTILE not in unescaped_json(figure.to_json())


def overview_map() -> OverviewMap:
    rng = np.random.default_rng(0)
    return OverviewMap(
        units=[f"layer/{i}" for i in range(9)],
        xy=rng.normal(size=(9, 2)),
        cluster=np.array([0, 0, 0, 1, 1, 1, 2, 2, 2]),
        cluster_names=["stripes / dots", HOSTILE, "price $5 / $6"],
        category=np.array([0, 0, 0, 0, 2, 2, 2, 3, 3]),
        category_names=["textures", "empty", "objects", "colours"],
    )


@pytest.mark.parametrize("webgl", [True, False])
def test_overview_figure_one_trace_per_category_and_boxed_cluster_names(webgl: bool) -> None:
    figure = overview_figure(overview_map(), {"layer/0": HOSTILE}, webgl=webgl)
    assert [trace.name for trace in figure.data] == ["textures", "objects", "colours"]  # empty categories left out
    assert {trace.type for trace in figure.data} == {"scattergl" if webgl else "scatter"}
    assert all(trace.showlegend is not False for trace in figure.data) and figure.layout.legend.title.text
    assert len({trace.marker.color for trace in figure.data}) == 3
    assert [len(trace.x) for trace in figure.data] == [4, 3, 2]
    annotations = figure.layout.annotations
    assert len(annotations) == 3 and annotations[1].text == escaped(HOSTILE)
    for annotation in annotations:
        assert annotation.bgcolor == "rgba(255,255,255,0.8)" and annotation.bordercolor and annotation.font.size >= 12
        assert annotation.opacity in (None, 1)
    assert HOSTILE not in unescaped_json(figure.to_json())


def test_overview_figure_of_a_lens_uses_its_categories(lenses) -> None:
    lens, _ = lenses
    overview = lens.overview()
    figure = overview_figure(overview)
    present = [name for index, name in enumerate(overview.category_names) if (overview.category == index).any()]
    assert [trace.name for trace in figure.data] == present
    assert sum(len(trace.x) for trace in figure.data) == len(overview.units)


def test_overview_of_a_lens_agrees_with_the_labels_users_see(lenses) -> None:
    """Every cluster is named by the labels its units show most often and every unit is coloured by its own
    label's category (the dissection's), whatever vocabulary labelled the Lens; not by text probes aligned with
    the clusters' mean theta, which named every demo cluster "person / fire"."""
    from collections import Counter

    lens = Lens.open(lenses[0].path)  # labels held in this process only: the shared Lens keeps its own
    lens.label(["red", "green", "blue", "circle", "square"], save=False)  # a vocabulary of the user's own
    overview = lens.overview()
    for cluster, name in enumerate(overview.cluster_names):
        shown = Counter(lens.labels.label_of(unit) for unit, c in zip(overview.units, overview.cluster) if c == cluster)
        shown.pop(None, None)
        expected = " / ".join(label for label, _ in shown.most_common(2)) or "no concept"
        assert name.split(" #")[0] == expected
    for unit, category in zip(overview.units, overview.category.tolist()):
        layer = unit.split("/")[0]
        assert unit in lens.labels.category_units(layer, overview.category_names[category])


def test_overview_png_has_a_category_legend_and_boxed_cluster_names(tmp_path, monkeypatch) -> None:
    drawn: list[Figure] = []
    save = Figure.savefig
    monkeypatch.setattr(
        Figure, "savefig", lambda figure, *args, **kwargs: (drawn.append(figure), save(figure, *args, **kwargs))[1]
    )
    picture = overview_png(overview_map(), tmp_path / "map.png")
    assert picture.stat().st_size > 0
    axes = drawn[0].axes[0]
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["textures", "objects", "colours"]
    names = axes.texts
    assert len(names) == 3 and all(text.get_bbox_patch() is not None and text.get_fontsize() >= 10 for text in names)


def test_an_audit_tested_on_semlens_drawings_says_so_and_keeps_the_alignment_share_where_it_confirms_none() -> None:
    from semlens.report.sections import audit_summary

    audit = hostile_audit("features.3/1")
    audit.reliance["drawn"] = "frames semlens drew (cyan, <i>of 12</i>)"
    shown = audit_summary(audit)
    assert "<b>concept test</b>: frames semlens drew (cyan, &lt;i&gt;of 12&lt;/i&gt;)" in shown and audit.share_tested
    assert "spurious share, as tested</b>: 100.0%" in shown  # it confirmed the unit: the share is the test's
    audit.units[0].test = {**audit.units[0].test, "confirmed": False, "detects": False}
    unconfirmed = audit_summary(audit)
    assert not audit.share_tested and audit.spurious_share == audit.shares["spurious"] == 1.0
    assert "spurious share, by alignment</b>: 100.0% (the test of semlens&#x27;s drawings confirmed no unit" in unconfirmed
    del audit.reliance["drawn"]  # the user's own images: a test that confirms none leaves no spurious share
    assert audit.share_tested and audit.spurious_share == 0.0
