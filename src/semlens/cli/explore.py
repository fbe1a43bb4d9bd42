"""Commands that ask a Lens: info, search, similar, relevant, show, label, dissect, map, measures, compare, report,
export, serve, trust."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

from .._util.progress import step_bar
from ..analysis.label import MIN_CONFIDENCE
from ..analysis.measures import EXTREMES, TYPICAL_PAIR
from ..lens.search import SearchResults
from ..lens.sources import data_described
from ..model.imagenet import shown_class
from ._app import AsJson, Foundation, Model, ProbeData, Space, Trust, app, console, emit_json, errors, friendly, labelled_to_show, open_lens, parent_made, printable, rounded, say, say_if_left_out, table
from .validate import ConceptArtifact, ConceptAt, ConceptMask, ConceptTint, NoDraw, SpuriousData, TestAll, TestData, concept_test, drawable

Vocabulary = typer.Option(None, "--vocabulary", "-v", help="Concepts: .txt (one per line), .toml/.json (category -> concepts), or builtin; default: the foundation model's own concepts where it names them (the concept world's), else builtin.")
Layers = typer.Option(None, "--layer", "-l", help="Only these layers (repeatable; default all).")
ExampleSet = typer.Option(
    "activation", "--examples", help="Whose theta: the top samples by activation (default) or by relevance (Lenses built with --relevance-examples)."
)
Method = typer.Option(None, "--method", help="Labelling method: responses (the default where the Lens has them, else centred), centred, alignment, clip-dissect or contrastive.")


@app.command()
@friendly
def info(lens: Path = typer.Argument(..., help="Lens directory."), as_json: AsJson = False) -> None:
    """Describe a Lens: model, data, foundation model, layers."""
    opened = open_lens(lens)
    manifest = opened.manifest
    if as_json:
        emit_json(manifest)
        return
    identity = manifest["identity"]
    say(str(opened.path))
    say(f"model       {identity['model']['spec']} (weights {identity['model']['fingerprint']})")
    say(f"data        {data_described(opened.manifest)}")
    say(f"foundation  {manifest['foundation']['spec']} (id {manifest['foundation']['id']}, dim {manifest['foundation']['dim']})")
    say(f"spaces      {', '.join(f'{space.name} ({space.spec})' + ('' if space.complete else ' (unfinished)') for space in opened.embedding.spaces)}")
    rule = identity["relevance"].get("lrp_rule", "zplus")  # as recorded: info describes even a Lens it would not explain with
    say(f"k           {opened.examples.k}, crop {identity['embed']['crop']}, LRP rule {rule}{', relevance examples too' if opened.examples.has_relevance else ''}")
    say(f"trusted     {'yes' if opened.trusted else 'no (it runs no code and reads no files it names; see `semlens trust`)'}")
    coverage = opened.labels.coverage()
    if coverage is None:
        say("labels      none yet (`semlens label LENS`)")
    else:
        say(f"labels      {opened.labels.vocabulary.name!r} by {opened.labels.method}: {coverage['all']['labelled']} of {coverage['all']['valid_units']} valid units, {_share(coverage['all'])}")
    from ..model.sae import sae_summary

    rows = [
        (name, layer["units"], layer["inactive_units"], int(opened.arrays.tied(name).sum()), layer["output"],
         _crops(layer.get("crop", {})), _shift(opened.arrays.map_shift(name)), _locality(opened.arrays.map_locality(name)),
         sae_summary(opened.units.sae(name)))
        for name, layer in manifest["layers"].items()
    ]  # fmt: skip
    console.print(table(None, ("layer", "units", "inactive", "tied", "output", "crops", "shift px", "locality", "sae"), rows))
    if any(row[6] != "-" for row in rows):
        say("shift px: how far the layer's map cells sit off the even grid (rows, columns); locality: how much a cell draws on "
            "its own place ('not located': the audit's location test leaves the layer out)")  # fmt: skip
    from ..pipeline.builder import fallbacks

    for fallback in fallbacks(manifest):
        say(f"note: {fallback}")


def _locality(locality: float | None) -> str:
    """How much a layer's map cells draw on their own place, as ``info`` shows it: "-" where not measured, and
    whether the audit's location test takes the layer (``receptive.LOCAL_CONCENTRATION``)."""
    from ..model.receptive import LOCAL_CONCENTRATION

    if locality is None:
        return "-"
    return f"{locality:g}" + ("" if locality >= LOCAL_CONCENTRATION else " (not located)")


def _crops(record: dict) -> str:
    """A layer's crop mode as ``info`` shows it, with the share of its crops that are the whole image where recorded."""
    whole, crops = record.get("whole_views", (0, 0))
    return record.get("mode", "-") + (f" ({100 * whole / crops:.0f} % whole images)" if crops else "")


def _shift(shift: tuple[float, float] | None) -> str:
    """A layer's map cells off the even grid (rows, columns), as ``info`` shows it: "-" where not measured."""
    return "-" if shift is None else f"{shift[0]:g},{shift[1]:g}"


def print_hits(hits: SearchResults, title: str, score: str, as_json: bool) -> None:
    if as_json:
        emit_json(hits.to_dict())
        return
    responses = any(hit.response is not None for hit in hits)  # a column only where the Lens kept crop responses
    columns = ("#", "unit", score, *(("response",) if responses else ()), "label", "top concept examples")  # '#': the ranking's order
    rows = [
        (position, hit.unit, round(hit.score, 4), *((rounded(hit.response),) if responses else ()), hit.label or "no concept", ", ".join(hit.examples))
        for position, hit in enumerate(hits, 1)
    ]
    console.print(table(title, columns, rows))


@app.command()
@friendly
def search(
    lens: Path = typer.Argument(..., help="Lens directory."),
    query: Optional[list[str]] = typer.Argument(None, help="Text prompt(s); several are averaged."),
    image: Optional[list[Path]] = typer.Option(None, "--image", "-i", help="Image probe file(s); averaged."),
    layer: Optional[list[str]] = Layers,
    top: int = typer.Option(10, "--top", "-n", min=1, help="How many units to show."),
    template: Optional[list[str]] = typer.Option(
        None, "--template", "-t", help="Template set (search, label, audit) or custom templates with {} (repeatable)."
    ),
    examples: str = ExampleSet,
    rank: Optional[str] = typer.Option(
        None, "--rank", help="named (the default for texts and opaque images): as both, with the units whose best concept by their crop responses is the query first (as the audit names units); both: by alignment and response to the probe, each standardised (alignment alone where the Lens has no crop responses); alignment: by alignment alone (the paper's Eq. 4); model (the default for images with transparent parts, for the name of a concept whose such images an audit pasted, and for a watermark, frame, logo, ruler or colour cast, which semlens draws, where the model loads): by how much pasting the images into the Lens's probe images raises each unit in the model itself (its activation AUC, as the audit's concept test)."
    ),
    trust: Trust = False,
    foundation: Foundation = None,
    model: Model = None,
    probe_data: ProbeData = None,
    space: Space = None,
    as_json: AsJson = False,
) -> None:
    """Rank units of all (or chosen) layers by a text and/or image probe: their examples' alignment with it and
    how their activation follows it over the Lens's crops, or (--rank model) how much the images raise them."""
    opened = open_lens(lens, trust, probe_data, foundation, model, space)
    hits = labelled_to_show(opened).search(query or None, image or (), layer or None, top, template or "search", examples=examples, rank=rank)
    ranked = "aligned with" if hits.rank == "alignment" or not opened.arrays.has_responses else "aligned with and responding to"
    ranked = "raised in the model by" if hits.rank == "model" else ranked
    probes = " + ".join([repr(text) for text in query or []] + [path.name for path in image or []])
    title = f"units {ranked} {hits.pasted() if hits.concept else probes}"
    print_hits(hits, title, "activation AUC" if hits.rank == "model" else "alignment", as_json)
    if hits.note and not as_json:
        say(f"note: {hits.note}")


@app.command()
@friendly
def similar(
    lens: Path = typer.Argument(..., help="Lens directory."),
    unit: str = typer.Argument(..., help="Unit as layer/index."),
    other: Optional[Path] = typer.Option(None, help="Search this other Lens (same foundation model) instead."),
    top: int = typer.Option(10, "--top", "-n", min=1, help="How many units to show."),
    space: Space = None,
    trust: Trust = False,
    foundation: Foundation = None,
    as_json: AsJson = False,
) -> None:
    """The units most similar to a unit (cosine of theta), in this Lens or another one."""
    opened = open_lens(lens, trust, foundation=foundation, space=space)
    target = open_lens(other, trust, foundation=foundation, space=space) if other else opened
    print_hits(target.search_similar(opened, unit, top), f"units similar to {unit}", "similarity", as_json)


@app.command()
@friendly
def relevant(
    lens: Path = typer.Argument(..., help="Lens directory (built with class relevance)."),
    class_name: str = typer.Option(..., "--class", "-c", help="Class name, WordNet id or index."),
    layer: Optional[list[str]] = Layers,
    top: int = typer.Option(10, "--top", "-n", min=1, help="How many units to show per layer."),
    trust: Trust = False,
    foundation: Foundation = None,
    as_json: AsJson = False,
) -> None:
    """The units a class relies on most, per layer: their mean and max share of the layer's relevance over the
    class's samples, and their labels (the reverse of the explorer's "most relevant for")."""
    opened = open_lens(lens, trust, foundation=foundation)
    units = opened.relevant_units(class_name, top, layer or None)
    if as_json:
        emit_json([unit.to_dict() for unit in units])
        return
    rows = [(unit.unit, *(f"{round(share, 4) + 0.0:.4f}" for share in (unit.mean_share, unit.max_share)), unit.label or "no concept") for unit in units]  # + 0.0: no "-0.0000"
    name = shown_class(opened.classes[opened.units.class_index(class_name)]) if opened.classes else class_name
    console.print(table(f"units most relevant for class {name}", ("unit", "mean share", "max share", "label"), rows))


@app.command()
@friendly
def show(
    lens: Path = typer.Argument(..., help="Lens directory."),
    unit: str = typer.Argument(..., help="Unit as layer/index, e.g. _fc/281."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG to write (default: UNIT.png here).", callback=parent_made),
    examples: str = typer.Option(
        "activation", "--examples", "--by", help="The top samples by activation (default) or by relevance (built with --relevance-examples)."
    ),
    trust: Trust = False,
    probe_data: ProbeData = None,
    foundation: Foundation = None,
    as_json: AsJson = False,
) -> None:
    """Write a PNG grid of a unit's concept examples (crops) with their scores."""
    from ..report.figures import concept_grid

    opened = open_lens(lens, trust, data=probe_data, foundation=foundation)
    shown = opened.examples.concept_examples(unit, by=examples)
    target = out or Path(unit.replace("/", "_") + ".png")
    label = opened.labels.label_of(unit)
    title = f"{unit}" + (f"  label: {label}" if label else "")
    grid = concept_grid([opened.examples.image(example) for example in shown], [f"{e.score:.3g}" for e in shown], title)
    grid.save(target)
    if as_json:
        emit_json({"unit": unit, "label": label, "png": str(target), "examples": [asdict(e) for e in shown]})
        return
    say(f"wrote {target} ({len(shown)} concept examples of {unit})")
    say_if_left_out(opened, unit)


@app.command()
@friendly
def label(
    lens: Path = typer.Argument(..., help="Lens directory."),
    vocabulary: Optional[Path] = Vocabulary,
    min_confidence: float = typer.Option(
        MIN_CONFIDENCE, help="Confidence (robust z against the unit's layer) under which a unit shows no concept."
    ),
    threshold: Optional[float] = typer.Option(
        None, help="Also a floor on the best concept's raw alignment (the paper's 0.025 suits CLIP; other models have their own scale)."
    ),
    examples: str = ExampleSet,
    trust: Trust = False,
    foundation: Foundation = None,
    space: Space = None,
    method: Optional[str] = Method,
    as_json: AsJson = False,
) -> None:
    """Label every unit with its best concept (and runner-ups) by a method; stored with the Lens (those by activation
    examples; each embedding space its own)."""
    opened = open_lens(lens, trust, foundation=foundation, space=space)
    stored = opened.labels.vocabulary if examples == "activation" else None  # None before any labels
    results = opened.label(str(vocabulary) if vocabulary else None, threshold, examples=examples, method=method, min_confidence=min_confidence)
    if stored is not None and stored.name != results.vocabulary.name:  # on stderr: a --json answer stays JSON
        errors.print(
            f"note: these labels replace the Lens's labels from vocabulary {stored.name!r} ({len(stored.concepts)} concepts); "
            "`semlens info` and `semlens dissect` show the stored labels without labelling again",
            markup=False, highlight=False,
        )
    coverage = results.coverage()
    if as_json:
        emit_json({"vocabulary": results.vocabulary.name, "method": opened.labels.method, "coverage": coverage, "layers": results.to_dict()})
        return
    rows = []
    for layer, labels in results.items():
        left_out = 0 if labels.valid is None else int((~labels.valid).sum())
        common = ", ".join(f"{name} ({count})" for name, count in results.most_common(layer))
        covered = coverage["layers"][layer]
        rows.append((layer, int(labels.labelled.sum()), covered["valid_units"] - covered["labelled"], left_out, _share(covered), common))
    gate = f"confidence >= {min_confidence:g}" + ("" if threshold is None else f", alignment >= {threshold:g}")
    title = f"labels from vocabulary {results.vocabulary.name!r} by {opened.labels.method} ({gate})"
    console.print(table(title, ("layer", "labelled", "no concept", "inactive or tied", "coverage (median confidence)", "most common labels"), rows))
    say(f"{coverage['all']['labelled']} of {coverage['all']['valid_units']} valid units show a concept: {_share(coverage['all'])}")


def _share(coverage: dict) -> str:
    """'83 % (z 2.4)': a coverage entry of ``Labelling.coverage`` as the tables show it."""
    if coverage["coverage"] is None:
        return "-"
    confidence = "" if coverage["median_confidence"] is None else f" (z {coverage['median_confidence']:.1f})"
    return f"{100 * coverage['coverage']:.0f} %{confidence}"


@app.command()
@friendly
def dissect(
    lens: Path = typer.Argument(..., help="Lens directory (labelled with `semlens label` first)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Bar chart PNG to write (default: dissect.png here; with --json, none unless given).", callback=parent_made),
    space: Space = None,
    method: Optional[str] = typer.Option(None, "--method", help="Fail unless the stored labels were made by this method."),
    trust: Trust = False,
    foundation: Foundation = None,
    as_json: AsJson = False,
) -> None:
    """Count units per label category per layer; table and bar chart."""
    from ..report.figures import dissection_png

    opened = open_lens(lens, trust, foundation=foundation, space=space)
    counts = opened.labels.dissect(method)
    if as_json:  # an answer to read: a chart only where asked for
        emit_json({"png": str(dissection_png(counts, out)) if out else None, "method": opened.labels.method, "counts": counts})
        return
    target = dissection_png(counts, out or Path("dissect.png"))
    categories = list(next(iter(counts.values())))
    rows = [(category, *(counts[layer][category] for layer in counts)) for category in categories]
    console.print(table(f"units per concept category (labels by {opened.labels.method})", ("category", *counts), rows))
    say(f"bar chart: {target}")


@app.command("map")
@friendly
def overview_map(
    lens: Path = typer.Argument(..., help="Lens directory."),
    layer: Optional[list[str]] = Layers,
    clusters: Optional[int] = typer.Option(None, help="Number of k-means clusters (default grows with the units)."),
    out: Path = typer.Option(Path("overview.html"), "--out", "-o", help="Interactive HTML to write (works offline).", callback=parent_made),
    png: Optional[Path] = typer.Option(None, help="Also write a PNG (default: next to the HTML).", callback=parent_made),
    trust: Trust = False,
    foundation: Foundation = None,
    space: Space = None,
    as_json: AsJson = False,
) -> None:
    """UMAP overview map of the units, clustered and named; interactive HTML and PNG."""
    from ..report.figures import overview_figure, overview_png

    opened = open_lens(lens, trust, foundation=foundation, space=space)
    with step_bar(["map: UMAP and clusters", "map: figures"], enabled=not as_json) as done:
        overview = opened.overview(layer or None, clusters)
        done()
        labels = {unit: opened.labels.label_of(unit) for unit in overview.units}
        overview_figure(overview, labels).write_html(str(out), include_plotlyjs=True, full_html=True)
        picture = overview_png(overview, png or out.with_suffix(".png"))
        done()
    if as_json:
        emit_json({"html": str(out), "png": str(picture), **overview.to_dict()})
        return
    rows = overview.cluster_sizes()
    console.print(table(f"{len(overview.units)} units in {len(rows)} clusters", ("cluster (its units' most common labels)", "units"), rows))
    say(f"map: {out} and {picture}")


@app.command()
@friendly
def measures(
    lens: Path = typer.Argument(..., help="Lens directory."),
    layer: Optional[list[str]] = Layers,
    worst: int = typer.Option(5, help="How many least clear / most polysemantic units to list per layer."),
    examples: str = ExampleSet,
    space: Space = None,
    as_json: AsJson = False,
) -> None:
    """Interpretability measures: clarity, polysemanticity, redundancy (and its scale, the typical pair), per unit and per layer."""
    opened = open_lens(lens, space=space)
    chosen = opened.units.checked(layer or None)
    result = opened.measures(chosen, examples)
    if as_json:
        emit_json(result.to_dict())
        return
    valid = {name: bool(opened.examples.valid(name, examples).any()) for name in chosen}
    rows = [
        (name, *(result.summary(name)[m] for m in ("clarity", "polysemanticity", "redundancy", "typical"))) if valid[name] else (name, "no valid units", "", "", "")
        for name in chosen
    ]
    console.print(table("layer means", ("layer", "clarity", "polysemanticity", "redundancy", "typical pair"), rows))
    say(TYPICAL_PAIR)
    for name in (name for name in chosen if valid[name]):
        for title, measure, highest in EXTREMES:
            units = result.extremes(name, measure, worst, highest)
            say(f"{name} {title}: " + ", ".join(f"{unit} ({value:.3f})" for unit, value in units))
    if not all(valid.values()):
        say(f"no valid units (every unit inactive or tied) in {', '.join(name for name in chosen if not valid[name])}")


@app.command()
@friendly
def compare(
    lens_a: Path = typer.Argument(..., help="First Lens (M)."),
    lens_b: Path = typer.Argument(..., help="Second Lens (N), embedded by the same foundation model."),
    vocabulary: Optional[Path] = Vocabulary,
    trust: Trust = False,
    foundation: Foundation = None,
    space: Space = None,
    as_json: AsJson = False,
) -> None:
    """Compare two Lenses: S_{M->N} and S_{N->M} per layer pair, best matches, shared and unique concepts."""
    first = open_lens(lens_a, trust, foundation=foundation, space=space)
    comparison = first.compare(open_lens(lens_b, trust, foundation=foundation, space=space), str(vocabulary) if vocabulary else None)
    if as_json:
        emit_json(comparison.to_dict())
        return
    say(f"A: {lens_a}\nB: {lens_b}")
    matrices = (
        ("S_{A->B}: how much of A's units B also has", comparison.a_to_b), ("S_{B->A}", comparison.b_to_a),
        ("typical pair: any unit of A with any unit of B (S near it: the matches are no closer than any pair)", comparison.typical),
    )  # fmt: skip
    for title, matrix in matrices:
        rows = [(layer, *(rounded(value) for value in row)) for layer, row in zip(comparison.layers_a, matrix)]
        console.print(table(title, ("A \\ B", *comparison.layers_b), rows))
    for title, concepts in (("shared concepts", comparison.shared_concepts), ("only in A", comparison.only_a), ("only in B", comparison.only_b)):
        say(f"{title} ({len(concepts)}): {', '.join(concepts)}")


@app.command()
@friendly
def export(
    lens: Path = typer.Argument(..., help="Lens directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the tables into."),
    format: str = typer.Option("parquet", "--format", help="parquet or csv (theta is always written as safetensors arrays)."),
    space: Space = None,
    as_json: AsJson = False,
) -> None:
    """Export units, labels, measures and concept examples as tables, and theta as arrays, for your own tools (of the
    default embedding space, or --space NAME's)."""
    from ..lens.export import export_lens

    result = export_lens(open_lens(lens, space=space), out, format)
    if as_json:
        emit_json(result.to_dict())
        return
    console.print(table(f"exported to {result.directory}", ("file", "rows"), [(str(path), result.rows.get(name, "")) for name, path in result.files.items()]))


@app.command()
@friendly
def serve(
    lens: list[Path] = typer.Argument(..., help="One or more Lens directories."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; the default lets only this machine connect."),
    port: int = typer.Option(8000, help="Port to listen on."),
    open_browser: bool = typer.Option(False, "--open", help="Open the explorer in the web browser."),
    trust: Trust = False,
    probe_data: ProbeData = None,
    foundation: Foundation = None,
) -> None:
    """The explorer: a local web app to search, browse, audit and compare Lenses."""
    from .._util.errors import SemlensError
    from ..web import serve as serve_explorer

    if probe_data is not None and len(lens) > 1:
        raise SemlensError("--probe-data names the data of one Lens: serve that Lens on its own")
    serve_explorer(lens, host, port, open_browser, opener=lambda path: open_lens(path, trust, probe_data, foundation))


@app.command("trust")
@friendly
def trust_lens(lens: Path = typer.Argument(..., help="Lens directory you received and trust.")) -> None:
    """Trust a Lens: from now on it may load the model, data and foundation model it names, even by code or
    local path (Lenses built on this machine are trusted already). Only for Lenses from people you trust."""
    from .._util.errors import SemlensError
    from ..store.trust import remember_trusted, trusted_text

    opened = open_lens(lens)
    if opened.manifest.get("build_id") is None:
        raise SemlensError(f"{opened.path} was built before Lenses had build ids: pass --trust to each command instead")
    remember_trusted(opened.manifest)
    say(f"trusted {opened.path}: {trusted_text(opened.manifest)}")


@app.command()
@friendly
def report(
    lens: Path = typer.Argument(..., help="Lens directory."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="HTML file to write (self-contained, offline).", callback=parent_made),
    class_name: Optional[list[str]] = typer.Option(
        None, "--class", "-c", help="Add an audit and an attribution graph of this class (repeatable; needs class relevance)."
    ),
    valid: Optional[list[str]] = typer.Option(None, "--valid", help="Valid concept for the audits (default: the class's own name)."),
    spurious: Optional[list[str]] = typer.Option(None, "--spurious", help="Spurious concept for the audits (repeatable)."),
    graph: bool = typer.Option(False, "--graph", help="Also add each --class's attribution graph (runs LRP: needs the model and probe data)."),
    test_data: TestData = None,
    spurious_data: SpuriousData = None,
    artifact: ConceptArtifact = None,
    mask: ConceptMask = None,
    at: ConceptAt = "0,0",
    tint: ConceptTint = None,
    test_all: TestAll = False,
    no_draw: NoDraw = False,
    compare: Optional[Path] = typer.Option(None, "--compare", help="Add a comparison with this other Lens."),
    trust: Trust = False,
    foundation: Foundation = None,
    probe_data: ProbeData = None,
    model: Model = None,
    as_json: AsJson = False,
) -> None:
    """Write one self-contained HTML report: map, dissection, measures, least clear and unexpected units; with
    --class and --spurious, class audits (with --test-data and --artifact/--tint/--spurious-data, each with the
    concept test, as `semlens audit`, or without them on semlens's drawings of a --spurious concept it draws; and
    --graph their attribution graphs); with --compare, a comparison."""
    from .._util.errors import SemlensError
    from ..report.html import images_missing, write_report

    opened = open_lens(lens, trust, probe_data, foundation, model)
    classes = class_name or []
    if classes and not spurious:
        raise SemlensError("an audit in the report needs --spurious CONCEPT (and optionally --valid)")
    concept = concept_test(test_data, spurious_data, artifact, mask, at, tint, test_all, drawable(spurious or [], [], no_draw))
    if concept is not None and not classes:
        raise SemlensError("the concept test runs in a class's audit: give --class and --spurious too")
    labelling = opened.labels.vocabulary is None and opened.embedding.embeds_text  # a space of images only: no labels
    steps = (["report: labels"] if labelling else []) + [f"report: audit of {name}" for name in classes]
    steps += [f"report: attribution graph of {name}" for name in classes] if graph else []
    steps += (["report: comparison"] if compare else []) + ["report: map, measures and page"]
    with step_bar(steps, enabled=not as_json) as done:
        if labelling:
            opened.labels.ensure()
            done()
        audits = []
        for name in classes:
            audits.append(opened.audit(name, valid or [], spurious, concept=concept, test_all=test_all, draw=not no_draw))  # no valid concept: the class's name
            done()
        graphs = []
        for name in classes if graph else []:
            graphs.append(opened.attribution_graph(name))
            done()
        other = open_lens(compare, trust, foundation=foundation) if compare else None
        comparison = opened.compare(other) if other else None
        if other:
            done()
        target = write_report(opened, out, audits=audits, comparison=comparison, graphs=graphs, other_name=other.path.name if other else None)
        done()
    if as_json:
        emit_json({"html": str(target), "audits": [audit.to_dict() for audit in audits], "graphs": len(graphs), "compared_with": str(compare) if compare else None})
        return
    say(f"report: {target}")
    if (missing := images_missing(opened)) is not None:
        errors.print(f"note: the report names its concept examples' sources, without their images: {printable(missing.on_the_command_line())}", markup=False)
