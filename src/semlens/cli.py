"""The ``semlens`` command line: parse, call the Python API, print (rich tables or ``--json``)."""

from __future__ import annotations

import json
import sys
from functools import wraps
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from ._util.errors import SemlensError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Understand and validate what a model's units encode.")
console = Console()
errors = Console(stderr=True)


def friendly(command: Callable) -> Callable:
    """Print a SemlensError as one clear line (exit code 2) instead of a traceback."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except SemlensError as error:
            errors.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def table(title: str | None, columns: tuple[str, ...], rows: list[tuple]) -> Table:
    """A rich table; numbers are right-aligned."""
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) and bool(rows) for i in range(len(columns))]
    result = Table(title=title)
    for column, right in zip(columns, numeric):
        result.add_column(column, justify="right" if right else "left")
    for row in rows:
        result.add_row(*(str(value) for value in row))
    return result


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=1, default=str) + "\n")


@app.command()
@friendly
def run(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML file with the build settings (flags override it)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model spec, e.g. zoo:efficientnet-lite0, py:pkg.mod:factory."),
    layer: Optional[list[str]] = typer.Option(None, "--layer", "-l", help="Layer NAME[:key=value,...]; repeat for several."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Data spec, e.g. folder:./images."),
    foundation: Optional[str] = typer.Option(None, "--foundation", "-f", help="Foundation model spec (default conse)."),
    out: Path = typer.Option(..., "--out", "-o", help="Lens directory to write (resumed if interrupted)."),
    k: Optional[int] = typer.Option(None, "-k", help="Concept examples per unit (default 30)."),
    pool: Optional[str] = typer.Option(None, help="Spatial/token pooling: mean (default) or max."),
    crop: Optional[str] = typer.Option(
        None, help="Crop mode: auto (default: relevance where LRP supports the model and it is affordable), relevance, activation or none."
    ),
    class_relevance: Optional[bool] = typer.Option(
        None, "--class-relevance/--no-class-relevance", help="Compute per-class LRP relevance of every unit (default on)."
    ),
    relevance_data: Optional[str] = typer.Option(None, help="Labelled data spec for class relevance (default: --data)."),
    batch_size: Optional[int] = typer.Option(None, help="Model batch size (default 32)."),
    embed_batch_size: Optional[int] = typer.Option(None, help="Foundation model batch size (default 64)."),
    device: Optional[str] = typer.Option(None, help="auto (default), cpu, cuda or cuda:N."),
    precision: Optional[str] = typer.Option(
        None, help="Model forward pass while collecting: auto (default: bfloat16 autocast on CUDA, float32 on CPU), float32, bfloat16, float16."
    ),
    workers: Optional[int] = typer.Option(None, help="Data loader worker processes (default: cores - 1, at most 4)."),
    checkpoint_seconds: Optional[float] = typer.Option(None, help="Seconds between resume checkpoints (default 30)."),
    shard: Optional[str] = typer.Option(
        None, help="i/n: collect only shard i of n of the data into a partial Lens (job arrays); combine with `semlens merge`."
    ),
    overwrite: bool = typer.Option(False, help="Delete an existing Lens at --out and rebuild it."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Build a Lens: collect top-k concept examples per unit, embed them, store them.

    Under `torchrun --nproc_per_node N -m semlens.cli run ...` the N processes share the work."""
    from .build.builder import BuildConfig, LensBuilder

    options = dict(
        model=model,
        layers=layer or None,
        data=data,
        foundation=foundation,
        k=k,
        pool=pool,
        crop=crop,
        class_relevance=class_relevance,
        relevance_data=relevance_data,
        batch_size=batch_size,
        embed_batch_size=embed_batch_size,
        device=device,
        precision=precision,
        workers=workers,
        checkpoint_seconds=checkpoint_seconds,
        shard=shard,
    )
    if config is not None:
        settings = BuildConfig.from_toml(config, **options)
    else:
        missing = [name for name in ("model", "layers", "data") if options[name] is None]
        if missing:
            raise SemlensError(f"missing {', '.join('--' + name.rstrip('s') for name in missing)} (or give --config FILE.toml)")
        settings = BuildConfig(**{key: value for key, value in options.items() if value is not None})
    builder = LensBuilder(settings, out, overwrite=overwrite, progress=progress and not as_json)
    summary = builder.run()
    if builder.ranks.is_main:
        report_summary(summary, as_json)


@app.command()
@friendly
def merge(
    out: Path = typer.Argument(..., help="Lens directory to write."),
    parts: list[Path] = typer.Argument(..., help="The partial Lenses of `semlens run --shard i/n`, every shard once."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N (default: as the shards recorded)."),
    precision: Optional[str] = typer.Option(None, help="The precision the shards were collected in, when this machine's auto differs."),
    workers: Optional[int] = typer.Option(None, help="Data loader worker processes."),
    embed_batch_size: Optional[int] = typer.Option(None, help="Foundation model batch size."),
    overwrite: bool = typer.Option(False, help="Delete an existing Lens at OUT and rebuild it."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Merge shards into one Lens (exactly the Lens one `semlens run` gives) and run its remaining stages."""
    from .build.merge import merge_shards

    summary = merge_shards(
        parts, out, overwrite, progress and not as_json, device=device, precision=precision, workers=workers, embed_batch_size=embed_batch_size
    )
    report_summary(summary, as_json)


def report_summary(summary: Any, as_json: bool) -> None:
    if as_json:
        emit_json(summary.to_dict())
    else:
        print_summary(summary)


def print_summary(summary: Any) -> None:
    rows = [(layer.name, layer.units, layer.inactive_units, layer.output) for layer in summary.layers]
    console.print(table(f"Lens at {summary.path}", ("layer", "units", "inactive", "output"), rows))
    console.print(
        f"{summary.samples} samples ({summary.failed} failed to decode and were skipped); "
        f"{summary.example_slots} concept examples from {summary.distinct_crops} distinct crops; "
        + ", ".join(f"{stage} {seconds:.1f}s" for stage, seconds in summary.seconds.items())
    )
    for layer in summary.layers:
        if layer.inactive_units:
            errors.print(
                f"[yellow]warning:[/] layer {layer.name}: {layer.inactive_units} of {layer.units} units gave the same "
                "score to all their top-k samples (never fired, or constant on this data); their concept examples "
                "are arbitrary and marked inactive"
            )


@app.command()
@friendly
def layers(
    model: str = typer.Argument(..., help="Model spec, e.g. zoo:efficientnet-lite0."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """List a model's layers with their output shapes and unit counts."""
    from dataclasses import asdict

    from .model.loading import load_model
    from .model.units import list_layers

    loaded = load_model(model)
    infos = list_layers(loaded.module, loaded.example_input())
    if as_json:
        emit_json([asdict(info) for info in infos])
        return
    size = loaded.preprocessing.input_size
    rows = [(info.name, info.type, info.shape, "" if info.units is None else info.units) for info in infos]
    console.print(table(f"{model}: {len(infos)} layers (input 1x3x{size}x{size})", ("layer", "type", "output", "units"), rows))


@app.command()
@friendly
def info(
    lens: Path = typer.Argument(..., help="Lens directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Describe a Lens: model, data, foundation model, layers."""
    from .lens.lens import Lens

    opened = Lens.open(lens)
    manifest = opened.manifest
    if as_json:
        emit_json(manifest)
        return
    identity = manifest["identity"]
    console.print(f"[bold]{opened.path}[/]")
    console.print(f"model       {identity['model']['spec']} (weights {identity['model']['fingerprint']})")
    console.print(f"data        {identity['data']['spec']} ({identity['data']['samples']} samples)")
    console.print(f"foundation  {manifest['foundation']['id']} (dim {manifest['foundation']['dim']})")
    console.print(f"k           {opened.k}, crop {identity['embed']['crop']}")
    rows = [(name, layer["units"], layer["inactive_units"], layer["output"]) for name, layer in manifest["layers"].items()]
    console.print(table(None, ("layer", "units", "inactive", "output"), rows))


@app.command()
@friendly
def search(
    lens: Path = typer.Argument(..., help="Lens directory."),
    query: Optional[list[str]] = typer.Argument(None, help="Text prompt(s); several are averaged."),
    image: Optional[list[Path]] = typer.Option(None, "--image", "-i", help="Image probe file(s); averaged."),
    layer: Optional[list[str]] = typer.Option(None, "--layer", "-l", help="Only these layers (repeatable)."),
    top: int = typer.Option(10, "--top", "-n", help="How many units to show."),
    template: Optional[list[str]] = typer.Option(
        None, "--template", "-t", help="Template set (search, label, audit) or custom templates with {} (repeatable)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the hits as JSON."),
) -> None:
    """Rank units of all (or chosen) layers by alignment with a text and/or image probe."""
    from .lens.lens import Lens

    hits = Lens.open(lens).search(query or None, image or (), layer or None, top, template or "search")
    if as_json:
        emit_json([hit.to_dict() for hit in hits])
        return
    rows = [(hit.unit, round(hit.score, 4), hit.label or "", ", ".join(hit.examples)) for hit in hits]
    title = f"units aligned with {' + '.join(map(repr, query or []))}{' + images' if image else ''}"
    console.print(table(title, ("unit", "alignment", "label", "top concept examples"), rows))


@app.command()
@friendly
def show(
    lens: Path = typer.Argument(..., help="Lens directory."),
    unit: str = typer.Argument(..., help="Unit as layer/index, e.g. _fc/281."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG to write (default: UNIT.png here)."),
    as_json: bool = typer.Option(False, "--json", help="Print the concept examples as JSON."),
) -> None:
    """Write a PNG grid of a unit's concept examples (crops) with their scores."""
    from dataclasses import asdict

    from .lens.lens import Lens
    from .report.figures import concept_grid

    opened = Lens.open(lens)
    examples = opened.concept_examples(unit)
    target = out or Path(unit.replace("/", "_") + ".png")
    label = opened.label_of(unit)
    title = f"{unit}" + (f"  label: {label}" if label else "")
    grid = concept_grid([opened.example_image(example) for example in examples], [f"{e.score:.3g}" for e in examples], title)
    grid.save(target)
    if as_json:
        emit_json({"unit": unit, "label": label, "png": str(target), "examples": [asdict(e) for e in examples]})
        return
    console.print(f"wrote {target} ({len(examples)} concept examples of {unit})")


@app.command()
@friendly
def label(
    lens: Path = typer.Argument(..., help="Lens directory."),
    vocabulary: Optional[Path] = typer.Option(None, "--vocabulary", "-v", help="Concepts: .txt (one per line), .toml/.json (category -> concepts); default built-in."),
    threshold: float = typer.Option(0.025, help="Minimum alignment for a label; weaker units stay unlabelled."),
    as_json: bool = typer.Option(False, "--json", help="Print every unit's labels as JSON."),
) -> None:
    """Label every unit with its best concept (and runner-ups); stored in the Lens."""
    from .lens.lens import Lens

    opened = Lens.open(lens)
    results = opened.label(str(vocabulary) if vocabulary else None, threshold)
    concepts = opened.vocabulary.concepts
    if as_json:
        emit_json(
            {
                layer: [
                    {
                        "unit": f"{layer}/{name}",
                        "label": concepts[int(labels.concepts[row, 0])] if bool(labels.labelled[row]) else None,
                        "candidates": [
                            {"concept": concepts[int(c)], "alignment": round(float(a), 5)}
                            for c, a in zip(labels.concepts[row], labels.scores[row])
                        ],
                    }
                    for row, name in enumerate(opened.units(layer))
                ]
                for layer, labels in results.items()
            }
        )
        return
    rows = []
    for layer, labels in results.items():
        counts: dict[str, int] = {}
        for concept in labels.concepts[labels.labelled, 0].tolist():
            counts[concepts[concept]] = counts.get(concepts[concept], 0) + 1
        common = ", ".join(f"{name} ({count})" for name, count in sorted(counts.items(), key=lambda item: -item[1])[:6])
        rows.append((layer, int(labels.labelled.sum()), int((~labels.labelled).sum()), common))
    console.print(table(f"labels from vocabulary {opened.vocabulary.name!r} (threshold {threshold})", ("layer", "labelled", "unlabelled", "most common labels"), rows))


@app.command()
@friendly
def dissect(
    lens: Path = typer.Argument(..., help="Lens directory (labelled with `semlens label` first)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Bar chart PNG to write (default: dissect.png here)."),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON."),
) -> None:
    """Count units per label category per layer; table and bar chart."""
    from .lens.lens import Lens
    from .report.figures import dissection_png

    counts = Lens.open(lens).dissect()
    target = dissection_png(counts, out or Path("dissect.png"))
    if as_json:
        emit_json({"png": str(target), "counts": counts})
        return
    categories = list(next(iter(counts.values())))
    rows = [(category, *(counts[layer][category] for layer in counts)) for category in categories]
    console.print(table("units per concept category", ("category", *counts), rows))
    console.print(f"bar chart: {target}")


@app.command("map")
@friendly
def overview_map(
    lens: Path = typer.Argument(..., help="Lens directory."),
    layer: Optional[list[str]] = typer.Option(None, "--layer", "-l", help="Only these layers (default: all)."),
    clusters: Optional[int] = typer.Option(None, help="Number of k-means clusters (default grows with the units)."),
    out: Path = typer.Option(Path("overview.html"), "--out", "-o", help="Interactive HTML to write (works offline)."),
    png: Optional[Path] = typer.Option(None, help="Also write a PNG (default: next to the HTML)."),
    as_json: bool = typer.Option(False, "--json", help="Print the map (positions, clusters, categories) as JSON."),
) -> None:
    """UMAP overview map of the units, clustered and named; interactive HTML and PNG."""
    from .lens.lens import Lens
    from .report.figures import overview_figure, overview_png

    opened = Lens.open(lens)
    overview = opened.overview(layer or None, clusters)
    labels = {unit: opened.label_of(unit) for unit in overview.units}
    overview_figure(overview, labels).write_html(str(out), include_plotlyjs=True, full_html=True)
    picture = overview_png(overview, png or out.with_suffix(".png"))
    if as_json:
        emit_json({"html": str(out), "png": str(picture), **overview.to_dict()})
        return
    rows = [(name, int((overview.cluster == index).sum())) for index, name in enumerate(overview.cluster_names)]
    console.print(table(f"{len(overview.units)} units in {len(rows)} clusters", ("cluster (two best labels)", "units"), rows))
    console.print(f"map: {out} and {picture}")


@app.command()
@friendly
def measures(
    lens: Path = typer.Argument(..., help="Lens directory."),
    layer: Optional[list[str]] = typer.Option(None, "--layer", "-l", help="Only these layers (default: all)."),
    worst: int = typer.Option(5, help="How many least clear / most polysemantic units to list per layer."),
    as_json: bool = typer.Option(False, "--json", help="Print per-unit measures and layer summaries as JSON."),
) -> None:
    """Interpretability measures: clarity, polysemanticity, redundancy, per unit and per layer."""
    from .lens.lens import Lens

    opened = Lens.open(lens)
    result = {}
    for name in layer or opened.layers:
        values = opened.measures(name)
        units = opened.units(name)
        result[name] = {
            "summary": {measure: round(float(tensor.nanmean()), 5) for measure, tensor in values.items()},
            "units": {
                f"{name}/{unit}": {measure: round(float(tensor[row]), 5) for measure, tensor in values.items()}
                for row, unit in enumerate(units)
            },
        }
    if as_json:
        emit_json(result)
        return
    rows = [(name, *(entry["summary"][m] for m in ("clarity", "polysemanticity", "redundancy"))) for name, entry in result.items()]
    console.print(table("layer means", ("layer", "clarity", "polysemanticity", "redundancy"), rows))
    for name, entry in result.items():
        ranked = sorted(entry["units"].items(), key=lambda item: item[1]["clarity"])[:worst]
        poly = sorted(entry["units"].items(), key=lambda item: -item[1]["polysemanticity"])[:worst]
        console.print(f"[bold]{name}[/] least clear: " + ", ".join(f"{u} ({v['clarity']:.3f})" for u, v in ranked))
        console.print(f"[bold]{name}[/] most polysemantic: " + ", ".join(f"{u} ({v['polysemanticity']:.3f})" for u, v in poly))


@app.command()
@friendly
def similar(
    lens: Path = typer.Argument(..., help="Lens directory."),
    unit: str = typer.Argument(..., help="Unit as layer/index."),
    other: Optional[Path] = typer.Option(None, help="Search this other Lens (same foundation model) instead."),
    top: int = typer.Option(10, "--top", "-n", help="How many units to show."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """The units most similar to a unit (cosine of theta), in this Lens or another one."""
    from .lens.lens import Lens

    opened = Lens.open(lens)
    target = Lens.open(other) if other else opened
    hits = target.search_similar(opened, unit, top)
    if as_json:
        emit_json([hit.to_dict() for hit in hits])
        return
    rows = [(hit.unit, round(hit.score, 4), hit.label or "", ", ".join(hit.examples)) for hit in hits]
    console.print(table(f"units similar to {unit}", ("unit", "similarity", "label", "top concept examples"), rows))


@app.command()
@friendly
def compare(
    lens_a: Path = typer.Argument(..., help="First Lens (M)."),
    lens_b: Path = typer.Argument(..., help="Second Lens (N), embedded by the same foundation model."),
    vocabulary: Optional[Path] = typer.Option(None, "--vocabulary", "-v", help="Concepts for shared/unique labels."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Compare two Lenses: S_{M->N} and S_{N->M} per layer pair, best matches, shared and unique concepts."""
    from .lens.lens import Lens

    comparison = Lens.open(lens_a).compare(Lens.open(lens_b), str(vocabulary) if vocabulary else None)
    if as_json:
        emit_json(comparison.to_dict())
        return
    for title, matrix in (("S_{A->B}: how much of A's units B also has", comparison.a_to_b), ("S_{B->A}", comparison.b_to_a)):
        rows = [(layer, *(round(value, 3) for value in row)) for layer, row in zip(comparison.layers_a, matrix)]
        console.print(table(title, ("A \\ B", *comparison.layers_b), rows))
    console.print(f"shared concepts ({len(comparison.shared_concepts)}): {', '.join(comparison.shared_concepts)}")
    console.print(f"only in A ({len(comparison.only_a)}): {', '.join(comparison.only_a)}")
    console.print(f"only in B ({len(comparison.only_b)}): {', '.join(comparison.only_b)}")


@app.command()
@friendly
def report(
    lens: Path = typer.Argument(..., help="Lens directory."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="HTML file to write (self-contained, offline)."),
    as_json: bool = typer.Option(False, "--json", help="Print {\"html\": PATH} as JSON."),
) -> None:
    """Write one self-contained HTML report: map, dissection, measures, least clear and unexpected units."""
    from .lens.lens import Lens
    from .report.html import write_report

    target = write_report(Lens.open(lens), out)
    if as_json:
        emit_json({"html": str(target)})
        return
    console.print(f"report: {target}")


@app.command()
@friendly
def audit(
    lens: Path = typer.Argument(..., help="Lens directory (built with class relevance)."),
    class_name: Optional[str] = typer.Option(None, "--class", "-c", help="Class name or index to audit."),
    valid: Optional[list[str]] = typer.Option(None, "--valid", help="A valid concept for the class (repeatable)."),
    spurious: Optional[list[str]] = typer.Option(None, "--spurious", help="A spurious concept (repeatable)."),
    valid_image: Optional[list[Path]] = typer.Option(None, help="Image probe of a valid concept (repeatable)."),
    spurious_image: Optional[list[Path]] = typer.Option(None, help="Image probe of a spurious concept (repeatable)."),
    config: Optional[Path] = typer.Option(None, help="TOML with class, valid, spurious, valid_images, spurious_images, cut."),
    cut: Optional[float] = typer.Option(None, help="Relevance share above which a unit counts as relevant (default 0.028)."),
    layer: Optional[list[str]] = typer.Option(None, "--layer", "-l", help="Only these layers (default: all)."),
    all_classes: bool = typer.Option(False, "--all", help="Audit every class (valid concept: its own name) and rank by spurious share."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML page with the scatter plot (one class)."),
    as_json: bool = typer.Option(False, "--json", help="Print the audit as JSON."),
) -> None:
    """Audit a class: are the units it relies on aligned with valid or with spurious concepts?"""
    from .lens.lens import Lens

    opened = Lens.open(lens)
    settings = _audit_settings(config) if config else {}
    valid = valid or settings.get("valid", [])
    spurious = spurious or settings.get("spurious", [])
    valid_image = valid_image or settings.get("valid_images", [])
    spurious_image = spurious_image or settings.get("spurious_images", [])
    cut = cut if cut is not None else settings.get("cut")
    if all_classes:
        audits = opened.audit_classes(spurious, cut, spurious_image)
        if as_json:
            emit_json([result.to_dict() for result in audits])
            return
        rows = [(a.class_name, len(a.units), *(round(a.shares[v], 3) for v in ("valid", "spurious", "both", "unexpected"))) for a in audits]
        console.print(table("classes ranked by spurious share", ("class", "relevant units", "valid", "spurious", "both", "unexpected"), rows))
        return
    class_name = class_name or settings.get("class")
    if class_name is None:
        raise SemlensError("give --class (or `class` in --config), or --all")
    result = opened.audit(class_name, valid, spurious, valid_image, spurious_image, cut, layer or None)
    page = None
    if out is not None:
        from .report.html import write_audit_html

        page = str(write_audit_html(opened, result, out))
    if as_json:
        emit_json({**result.to_dict(), "html": page})
        return
    console.print("relevance by verdict: " + ", ".join(f"{v} {share:.1%}" for v, share in result.shares.items()))
    rows = [(u.unit, u.verdict, round(u.relevance, 3), round(u.a_valid, 3), round(u.a_spur, 3), ", ".join(u.examples)) for u in result.units]
    console.print(table(f"audit of {result.class_name}", ("unit", "verdict", "relevance", "a_valid", "a_spur", "examples"), rows))
    if page:
        console.print(f"scatter plot: {page}")


def _audit_settings(path: Path) -> dict:
    from ._util.tomlfiles import read_toml

    settings = read_toml(path, "audit config")
    known = {"class", "valid", "spurious", "valid_images", "spurious_images", "cut"}
    if set(settings) - known:
        raise SemlensError(f"audit config {path}: unknown keys {', '.join(sorted(set(settings) - known))}; valid: {', '.join(sorted(known))}")
    return settings


def _artifact(artifact: Optional[Path], mask: Optional[Path], at: str, tint: Optional[str]):
    from .analysis.interventions import Artifact

    if artifact is None and tint is None:
        return None
    try:
        position = tuple(int(value) for value in at.split(","))
        colour = None if tint is None else tuple(int(value) for value in tint.split(","))
    except ValueError:
        raise SemlensError(f"--at takes X,Y and --tint R,G,B integers; got --at {at!r} --tint {tint!r}") from None
    return Artifact.from_files(artifact, mask, position, colour)


@app.command("test-artifact")
@friendly
def test_artifact(
    lens: Path = typer.Argument(..., help="Lens directory (its model is reloaded and checked)."),
    class_name: str = typer.Option(..., "--class", "-c", help="Class whose probability the artefact may raise."),
    data: str = typer.Option(..., "--data", "-d", help="Clean images (data spec), ideally of other classes."),
    artifact: Optional[Path] = typer.Option(None, help="Artefact image (RGBA: its alpha is the mask)."),
    mask: Optional[Path] = typer.Option(None, help="Mask image (white = artefact) instead of the alpha channel."),
    at: str = typer.Option("0,0", help="Top-left X,Y of the artefact in the model's input view."),
    tint: Optional[str] = typer.Option(None, help="Instead of an image: tint every pixel towards R,G,B (0.7 p + 0.3 c)."),
    spurious_only: Optional[str] = typer.Option(None, help="Data spec of images with only the spurious features: report the AUC."),
    real: Optional[str] = typer.Option(None, help="Data spec of real class images, for the AUC."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Insert an artefact into clean images and measure the class probability and accuracy change (and the AUC)."""
    from .data import load_data
    from .lens.lens import Lens
    from .analysis.interventions import artifact_effect, separation_auc

    opened = Lens.open(lens)
    model, index = opened.model(), opened.class_index(class_name)
    result: dict = {"class": class_name, "class_index": index}
    chosen = _artifact(artifact, mask, at, tint)
    if chosen is not None:
        result["insertion"] = artifact_effect(model, load_data(data), index, chosen)
    if spurious_only is not None:
        result["separation_auc"] = separation_auc(model, index, load_data(real or data), load_data(spurious_only))
    if len(result) == 2:
        raise SemlensError("give an --artifact or --tint to insert, and/or --spurious-only images for the AUC")
    if as_json:
        emit_json(result)
        return
    insertion = result.get("insertion")
    if insertion:
        rows = [(key, *(None if insertion[part][key] is None else round(insertion[part][key], 4) for part in ("clean", "artifact", "change"))) for key in insertion["clean"]]
        console.print(table(f"artefact insertion on {insertion['samples']} images (class {class_name})", ("measure", "clean", "artefact", "change"), rows))
    if "separation_auc" in result:
        console.print(f"separation AUC of the {class_name} logit, real vs spurious-only images: {result['separation_auc']:.3f}")


@app.command()
@friendly
def prune(
    lens: Path = typer.Argument(..., help="Lens directory (its model is reloaded and checked)."),
    unit: list[str] = typer.Option(..., "--unit", "-u", help="Unit to switch off, layer/index (repeatable)."),
    data: str = typer.Option(..., "--data", "-d", help="Labelled test data (data spec)."),
    class_name: Optional[str] = typer.Option(None, "--class", "-c", help="Class whose probability to report."),
    artifact: Optional[Path] = typer.Option(None, help="Also test on these images with this artefact inserted."),
    mask: Optional[Path] = typer.Option(None, help="Mask for the artefact image."),
    at: str = typer.Option("0,0", help="Top-left X,Y of the artefact."),
    tint: Optional[str] = typer.Option(None, help="Artefact as a tint R,G,B."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Switch units off and compare accuracy (clean and with the artefact) before and after."""
    from .data import load_data
    from .lens.lens import Lens
    from .analysis.interventions import pruning_effect

    opened = Lens.open(lens)
    index = None if class_name is None else opened.class_index(class_name)
    result = pruning_effect(opened.model(), load_data(data), opened.channels(unit), index, _artifact(artifact, mask, at, tint))
    if as_json:
        emit_json(result)
        return
    rows = []
    for name in ("clean", "artifact"):
        if name in result:
            for key in result[name]["before"]:
                before, after = result[name]["before"][key], result[name]["after"][key]
                rows.append((name, key, None if before is None else round(before, 4), None if after is None else round(after, 4)))
    console.print(table(f"pruning {', '.join(unit)} ({result['samples']} images)", ("images", "measure", "before", "after"), rows))


@app.command()
@friendly
def graph(
    lens: Path = typer.Argument(..., help="Lens directory (built with class relevance)."),
    class_name: str = typer.Option(..., "--class", "-c", help="Class name or index."),
    layer: Optional[list[str]] = typer.Option(None, "--layer", "-l", help="Two or more layers, lowest first (default: all)."),
    cut: Optional[float] = typer.Option(None, help="Relevance share above which a unit enters the graph (default 0.01)."),
    out: Path = typer.Option(Path("graph.html"), "--out", "-o", help="Interactive HTML (Sankey) to write."),
    as_json: bool = typer.Option(False, "--json", help="Print the graph as JSON."),
) -> None:
    """Attribution graph of a class: concept groups per layer and the CRP relevance flowing between them."""
    from .lens.lens import Lens
    from .report.figures import graph_figure

    result = Lens.open(lens).attribution_graph(class_name, layer or None, cut)
    graph_figure(result).write_html(str(out), include_plotlyjs=True, full_html=True)
    if as_json:
        emit_json({**result.to_dict(), "html": str(out)})
        return
    rows = [(node.layer, node.label, round(node.relevance, 3), len(node.units)) for node in result.nodes]
    console.print(table(f"attribution graph of {result.class_name}", ("layer", "concept", "relevance", "units"), rows))
    rows = [(edge["source"], edge["target"], round(edge["weight"], 3)) for edge in result.edges]
    console.print(table("edges (relevance flowing down)", ("from", "to", "weight"), rows))
    console.print(f"graph: {out}")


@app.command()
@friendly
def serve(
    lens: list[Path] = typer.Argument(..., help="One or more Lens directories."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; the default lets only this machine connect."),
    port: int = typer.Option(8000, help="Port to listen on."),
    open_browser: bool = typer.Option(False, "--open", help="Open the explorer in the web browser."),
) -> None:
    """The explorer: a local web app to search, browse, audit and compare Lenses (needs the web extra)."""
    from .web import serve as serve_explorer

    serve_explorer(lens, host, port, open_browser)


@app.command("list")
def list_specs(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """List the spec forms for models, data and foundation models."""
    from .data import DATASETS
    from .foundation import FOUNDATION_MODELS
    from .model.loading import MODELS

    registries = {"model": MODELS, "data": DATASETS, "foundation model": FOUNDATION_MODELS}
    if as_json:
        emit_json({kind: [{"usage": f.usage, "summary": f.summary} for f in r.forms()] for kind, r in registries.items()})
        return
    rows = [(kind, form.usage, form.summary) for kind, registry in registries.items() for form in registry.forms()]
    console.print(table("spec forms", ("kind", "spec", "what"), rows))


@app.command()
@friendly
def demo(
    out: Path = typer.Option(Path("semlens-demo"), "--out", "-o", help="Folder for the Lenses, report and summary."),
    world: Optional[Path] = typer.Option(None, help="A concept-world TOML config (default: the built-in world)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """The whole job offline in the concept world: train, build Lenses, search, label, audit, test, compare, report."""
    from .world.demo import run_demo

    run_demo(out, str(world) if world else None, progress=progress, console=console)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
