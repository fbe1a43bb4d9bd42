"""Results draw themselves in a notebook (``_repr_html_``): tables with the units' names, labels and shares,
thumbnails of their concept examples where the Lens that made them has them, every name escaped, no script."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import torch

from semlens import Comparison, Lens, RelevantUnit, RelevantUnits, SearchHit, SearchResults, SemlensError, Vocabulary
from semlens.analysis.audit import Audit, AuditedUnit
from semlens.analysis.explain import ConceptGroup, ExplainedUnit, Explanation, LayerExplanation
from semlens.lens.example_sets import ExampleSets

THUMBNAIL = '<img src="data:image/jpeg;base64,'
SCRIPT = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def lens(explorer_lenses) -> Lens:
    return Lens.open(explorer_lenses[0], trust=True)


def shown(result) -> str:
    page = result._repr_html_()
    assert "<script" not in page.lower()  # a notebook page without scripts
    return page


def test_search_hits_are_a_list_drawn_as_a_table_with_concept_examples(lens) -> None:
    hits = lens.search("red", top=3)
    assert isinstance(hits, list) and len(hits) == 3 and isinstance(hits[0], SearchHit)
    assert hits.to_dict() == [hit.to_dict() for hit in hits] and json.dumps(hits.to_dict())
    page = shown(hits)
    assert all(hit.unit in page for hit in hits) and page.count(THUMBNAIL) == 3 * 3  # three examples a unit
    assert all(f"{hit.score:.3f}" in page for hit in hits)
    assert "score: alignment with the probe; ranked by alignment with the probe and response together" in page  # the scores need not fall
    similar = lens.search_similar(lens, hits[0].unit, top=2)
    assert isinstance(similar, SearchResults) and THUMBNAIL in shown(similar)


def test_labels_are_drawn_per_layer_with_coverage_and_the_most_common_labels(lens) -> None:
    labelling = lens.label(save=False)
    page = shown(labelling)
    coverage = labelling.coverage()
    total = coverage["all"]
    assert repr(labelling) == (f"Labelling(vocabulary 'builtin' of {len(labelling.vocabulary.concepts)} concepts, layers {', '.join(lens.layers)}: "
                               f"{total['labelled']} of {total['valid_units']} valid units show a concept)")  # outside a notebook
    for layer in lens.layers:
        share = coverage["layers"][layer]["coverage"]  # None: no valid unit in the layer
        assert f"<td>{layer}</td>" in page and ("<td>-</td>" if share is None else f"{share:.1%}") in page
        assert all(f"{concept} ({count})" in page for concept, count in labelling.most_common(layer))
    assert f"{coverage['all']['coverage']:.1%}" in page


def test_a_class_s_relevant_units_are_drawn_with_shares_labels_and_concept_examples(lens) -> None:
    """Where an audit without a suspect sends a user first: which units the class relies on, and what they show."""
    units = lens.relevant_units("red", top=2)
    assert isinstance(units, RelevantUnits) and isinstance(units[0], RelevantUnit) and units.class_name == "red"
    page = shown(units)
    assert all(unit.unit in page and f"{unit.mean_share:.1%}" in page for unit in units) and page.count(THUMBNAIL) == 3 * len(units)
    assert "Units class red relies on most" in page and units.to_dict()[0] == units[0].to_dict()
    shown_line = repr(units).splitlines()
    assert shown_line[0].startswith(f"RelevantUnits: {len(units)} units class 'red' relies on most") and len(shown_line) == len(units) + 1


def test_measures_of_every_layer_are_drawn_as_layer_means_and_the_least_clear_units(lens) -> None:
    """``lens.measures()`` with no layer measures them all (it needed a layer and returned bare tensors)."""
    measures = lens.measures()
    assert list(measures.values) == lens.layers and measures.of("head")["clarity"].shape == (len(lens.units("head")),)
    page = shown(measures)
    for layer in lens.layers:
        assert f"<td>{layer}</td>" in page and f"{measures.summary(layer)['clarity']:.3f}" in page
        unit, value = measures.extremes(layer, "clarity", 1, highest=False)[0]
        assert unit in page and f"clarity {value:.3f}" in page and _text_of(lens.labels.label_of(unit)) in page
    assert THUMBNAIL in page and "typical pair" in page
    assert repr(measures).splitlines()[1].startswith(f"  {lens.layers[0]}: clarity ")
    torch.testing.assert_close(lens.measures(lens.layers[0]).of(lens.layers[0])["clarity"], measures.of(lens.layers[0])["clarity"], equal_nan=True, rtol=0, atol=0)
    with pytest.raises(KeyError, match="measured: head"):
        lens.measures("head").of(lens.layers[0])


def test_the_overview_map_is_drawn_as_a_picture_with_its_clusters(lens) -> None:
    """``lens.overview()`` in a notebook showed a dataclass with every position; now the map and its clusters."""
    overview = lens.overview()
    page = shown(overview)
    assert page.startswith('<img src="data:image/png;base64,') and "units</th>" in page
    assert all(f"<td>{_text_of(name)}</td>" in page for name in overview.cluster_names)
    sizes = overview.cluster_sizes()
    assert sum(count for _, count in sizes) == len(overview.units) and [count for _, count in sizes] == sorted((count for _, count in sizes), reverse=True)
    assert repr(overview).startswith(f"OverviewMap: {len(overview.units)} units in {len(overview.cluster_names)} clusters: {sizes[0][0]} ({sizes[0][1]})")


def test_an_attribution_graph_of_an_unlabelled_lens_is_drawn_with_its_groups_and_flows(explorer_lenses, tmp_path) -> None:
    """It raised "run `semlens label LENS` first" on a Lens not labelled yet, which every other face shows with the
    default vocabulary's labels; in a notebook it showed a dataclass listing every unit."""
    lens = Lens.open(_unlabelled_copy(explorer_lenses[0], tmp_path), trust=True)
    graph = lens.attribution_graph(lens.classes[0], cut=0.0)
    assert not list(lens.path.rglob("*labels*"))  # the labels it shows are held in memory, as every result's
    page = shown(graph)
    assert f"Concepts behind class {lens.classes[0]}" in page and graph.nodes and graph.edges
    assert all(_text_of(node.label) in page and f"{node.relevance:.3f}" in page for node in graph.nodes)
    upper, lower, weight = graph.strongest_edges(1)[0]
    assert abs(weight) == max(abs(edge["weight"]) for edge in graph.edges) and f"{weight:.3f}" in page and THUMBNAIL in page
    assert repr(graph).startswith(f"AttributionGraph(class {lens.classes[0]!r}: {len(graph.nodes)} concept groups")
    with pytest.raises(SemlensError, match=f"needs at least two layers: give two or more of {', '.join(lens.layers)}, or none for all"):
        lens.attribution_graph(lens.classes[0], layers=["head"])


def test_a_unit_s_concept_clusters_are_drawn_each_with_its_own_examples(lens) -> None:
    """``lens.concept_clusters(unit)`` showed a dataclass listing ranks; now each cluster with its own examples."""
    unit = lens.search("red", top=1)[0].unit
    clusters = lens.concept_clusters(unit)
    page = shown(clusters)
    assert f"Concept clusters of {unit}" in page and clusters.clusters
    assert page.count(THUMBNAIL) == sum(min(cluster.size, 6) for cluster in clusters.clusters)  # each cluster's own examples
    assert repr(clusters).startswith(f"UnitClusters({unit}: {len(clusters.clusters)} concept cluster")
    assert json.dumps(clusters.to_dict()) and "_lens" not in clusters.to_dict()


def test_a_dissection_is_a_dict_drawn_as_a_table_of_layers_by_categories(lens) -> None:
    counts = lens.labels.dissect()
    assert isinstance(counts, dict) and json.loads(json.dumps(counts)) == counts  # still the dict it was
    page = shown(counts)
    categories = list(counts[lens.layers[0]])
    assert all(f"<th>{_text_of(category)}</th>" in page for category in categories) and "unlabelled" in categories
    for layer in lens.layers:
        assert "<tr><td>" + layer + "</td>" + "".join(f"<td>{counts[layer][category]}</td>" for category in categories) + "</tr>" in page


def test_a_lens_in_a_notebook_shows_what_semlens_info_prints(lens, tmp_path) -> None:
    page = shown(lens)
    identity = lens.manifest["identity"]
    assert f"<td>{_text_of(identity['model']['spec'])}</td>" in page and f"k {lens.examples.k}" in page
    assert all(f"<tr><td>{layer}</td><td>{len(lens.units(layer))}</td>" in page for layer in lens.layers)
    assert "valid units show a concept" in page  # labelled
    copy = _unlabelled_copy(lens.path, tmp_path)
    assert "none stored: the default vocabulary's are shown" in shown(Lens.open(copy))
    assert not list(copy.rglob("*labels*"))  # drawing it labelled nothing


def _unlabelled_copy(path: Path, folder: Path) -> Path:
    copy = folder / "unlabelled.lens"
    shutil.copytree(path, copy)
    for stored in copy.rglob("*labels*"):
        stored.unlink()
    return copy


def _text_of(label: str | None) -> str:
    import html

    return html.escape(label or "(no concept)")


def test_an_audit_is_drawn_with_its_verdict_shares_and_its_units_concept_examples(lens) -> None:
    audit = lens.audit("red", valid=["red"], spurious=["noise"])
    page = shown(audit)
    assert audit.units and all(unit.unit in page for unit in audit.units)
    assert all(f"{share:.1%}" in page for share in audit.shares.values())
    assert page.count(THUMBNAIL) == 3 * len(audit.units)


def test_an_explanation_is_drawn_with_heatmaps_and_concept_examples(lens) -> None:
    explanation = lens.explain(0, layers=["features.3"], top=2)
    page = shown(explanation)
    (layer,) = explanation.layers
    units = layer.units + layer.against
    assert explanation.class_name in page and all(unit.unit in page and f"{unit.share:+.1%}" in page for unit in units)
    # the input view, a heatmap per unit, and three concept examples per unit
    assert page.count(THUMBNAIL) == 1 + 4 * len(units)


def test_a_comparison_is_drawn_as_overlap_tables(lens, explorer_lenses) -> None:
    other = Lens.open(explorer_lenses[1], trust=True)
    comparison = lens.compare(other)
    page = shown(comparison)
    assert all(layer in page for layer in lens.layers + other.layers)
    assert f"{comparison.a_to_b[0][0]:.3f}" in page and f"{comparison.b_to_a[0][0]:.3f}" in page
    assert "nan" not in page
    without_valid_units = shown(Comparison(["features.3", "head"], ["head"], [[0.5], [float("nan")]], [[0.5], [float("nan")]]))
    assert "<td>-</td>" in without_valid_units and "nan" not in without_valid_units  # a layer without valid units
    best = max(comparison.best_match.items(), key=lambda item: item[1][1])
    assert f"<td>{best[0]}</td><td>{best[1][0]}</td><td>{best[1][1]:.3f}</td>" in page


def test_names_from_a_stranger_are_escaped_and_results_made_elsewhere_have_no_thumbnails(lens) -> None:
    hits = SearchResults([SearchHit(f"{SCRIPT}/0", SCRIPT, 0, 0.5, SCRIPT, ["a.png"])])
    page = shown(hits)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;/0" in page and "a.png" in page and THUMBNAIL not in page
    unit = AuditedUnit(f"{SCRIPT}/0", 0.5, 0.4, 0.1, 0.2, 4.0, 5.0, "spurious")
    audit = Audit(SCRIPT, 0.028, [SCRIPT], ["noise"], [unit], {"valid": 0.0, "spurious": 1.0, "both": 0.0, "unexpected": 0.0, "spurious_or_both": 1.0})
    assert "Audit of class &lt;script&gt;" in shown(audit)
    explained = ExplainedUnit(f"{SCRIPT}/1", 0.3, 1.0, SCRIPT)
    layer = LayerExplanation(SCRIPT, [ConceptGroup(SCRIPT, 0.3, [explained])], 1.0, 0.0)
    assert "&lt;script&gt;" in shown(Explanation(SCRIPT, SCRIPT, 0, True, [{"class": SCRIPT, "probability": 0.9}], [layer]))
    assert "&lt;script&gt;" in shown(Comparison([SCRIPT], [SCRIPT], [[0.5]], [[0.5]], {SCRIPT: (SCRIPT, 0.5)}, [SCRIPT]))
    labels = Lens.open(lens.path, trust=True).label(Vocabulary(SCRIPT, (SCRIPT, "red", "green", "blue"), ("a",) * 4), save=False)
    assert "vocabulary &lt;script&gt;alert(1)&lt;/script&gt; (4 concepts)" in shown(labels)


def test_a_lens_whose_images_cannot_be_read_draws_its_results_without_them(lens, monkeypatch) -> None:
    hits = lens.search("red", top=2)

    def unreadable(*args, **kwargs):
        raise SemlensError("probe data folder:gone not found")

    monkeypatch.setattr(ExampleSets, "image", unreadable)
    page = shown(hits)
    assert THUMBNAIL not in page and "no concept examples shown: probe data folder:gone not found" in page
    assert all(hit.unit in page for hit in hits)


def test_an_audit_whose_class_relies_on_the_concept_but_confirms_nothing_says_what_to_run_on_every_face() -> None:
    """The notebook's table and the report showed "spurious 0.0 %" and stopped, where only the CLI said that testing
    every relevant unit finds the units the reliance runs through; each shows the share as tested and that advice."""
    from semlens.report.sections import audit_summary

    flagged = AuditedUnit("layer2/6", 0.5, 0.4, 0.1, 0.2, 4.0, 5.0, "spurious")
    flagged.test = {"confirmed": False}
    untested = AuditedUnit("layer3/1", 0.5, 0.4, 0.1, 0.2, 4.0, 0.0, "valid")
    reliance = {"without": 0.25, "with": 0.81, "effect": 0.56, "log_odds": 2.5, "relies": True, "samples": [16, 16], "paired": True}
    shares = {"valid": 0.5, "spurious": 0.5, "both": 0.0, "unexpected": 0.0, "spurious_or_both": 0.5}
    audit = Audit("cross", 0.028, ["cross"], ["watermark"], [flagged, untested], shares, reliance=reliance)
    assert audit.advice and "test_all=True" in audit.advice
    for page in (shown(audit), audit_summary(audit)):
        assert "spurious share, as tested</b>: 0.0%" in page and "test every relevant unit (audit(..., test_all=True))" in page
    untested.test = {"confirmed": True}  # every relevant unit tested: the reliance runs through this one
    assert audit.advice is None and audit.carriers == ["layer3/1"]
