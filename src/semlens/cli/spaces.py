"""Commands for a Lens's embedding spaces: embed (add a foundation model), spaces (list), compare-spaces."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._app import AsJson, ProbeData, Trust, app, console, emit_json, friendly, open_lens, say, table
from .explore import Vocabulary


@app.command()
@friendly
def embed(
    lens: Path = typer.Argument(..., help="Lens directory (writable)."),
    foundation: str = typer.Option(..., "--foundation", "-f", help="The foundation model (spec) to embed the Lens's crops with."),
    name: Optional[str] = typer.Option(None, "--name", help="The new space's name (default: made from the spec)."),
    precision: str = typer.Option("auto", help="Foundation model dtype: auto, float32, bfloat16, float16."),
    batch_size: int = typer.Option(64, help="Foundation model batch size."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    workers: Optional[int] = typer.Option(None, help="Data loader worker processes (default: cores - 1, at most 4; at most 8 on a GPU)."),
    overwrite: bool = typer.Option(False, help="Embed the space again even if it is there (e.g. its weights changed)."),
    trust: Trust = False,
    probe_data: ProbeData = None,
    as_json: AsJson = False,
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Add an embedding space: the Lens's crops embedded by another foundation model, without collecting or
    cropping again (needs the probe data; resumes if interrupted). Then use it with --space NAME."""
    from ..pipeline.spaces import add_space

    space = add_space(
        open_lens(lens, trust, probe_data), foundation, name, precision, batch_size, device, workers, overwrite, progress and not as_json
    )
    if as_json:
        emit_json(space.to_dict())
        return
    say(f"space {space.name}: {space.foundation_id} (dim {space.dim}); use it with --space {space.name}")


@app.command("spaces")
@friendly
def list_spaces(lens: Path = typer.Argument(..., help="Lens directory."), as_json: AsJson = False) -> None:
    """List a Lens's embedding spaces: the default one (its build's foundation model) and those added since."""
    spaces = open_lens(lens).embedding.spaces
    if as_json:
        emit_json([space.to_dict() for space in spaces])
        return
    rows = [
        (space.name + (" (default)" if space.default else ""), space.spec, space.foundation_id, space.dim, "yes" if space.complete else "no")
        for space in spaces
    ]
    console.print(table("embedding spaces", ("space", "spec", "foundation model", "dim", "complete"), rows))


@app.command("compare-spaces")
@friendly
def compare_spaces(
    lens: Path = typer.Argument(..., help="Lens directory."),
    a: str = typer.Argument(..., help="First space (a name from `semlens spaces`, or default)."),
    b: str = typer.Argument(..., help="Second space."),
    vocabulary: Optional[Path] = Vocabulary,
    query: Optional[list[str]] = typer.Option(None, "--query", "-q", help="Text queries to rank units by (repeatable; default: the vocabulary's concepts)."),
    top: int = typer.Option(10, "--top", "-n", min=1, help="Units per query whose overlap is measured."),
    layer: Optional[list[str]] = typer.Option(None, "--layer", "-l", help="Only these layers (repeatable; default all)."),
    trust: Trust = False,
    as_json: AsJson = False,
) -> None:
    """How far two embedding spaces agree: labels (same best concept, top-3 overlap), search rankings (top-N
    overlap, Spearman) and layout (linear CKA, correlation of unit-unit similarities)."""
    result = open_lens(lens, trust).compare_spaces(a, b, str(vocabulary) if vocabulary else None, query or None, top, layer or None)
    if as_json:
        emit_json(result.to_dict())
        return
    rows = [("structure", "linear CKA of theta", round(result.structure.cka, 4)),
            ("structure", f"correlation of unit-unit similarities ({result.structure.sampled} units)", round(result.structure.similarity_correlation, 4))]  # fmt: skip
    if result.labels is not None:
        rows += [("labels", "same best concept", round(result.labels.top1, 4)),
                 ("labels", f"top-{result.labels.top} overlap", round(result.labels.top_overlap, 4))]  # fmt: skip
    if result.search is not None:
        rows += [("search", f"top-{result.search.top} overlap ({len(result.search.queries)} queries)", round(result.search.top_overlap, 4)),
                 ("search", "Spearman of scores over units", round(result.search.spearman, 4))]  # fmt: skip
    console.print(table(f"{result.a} vs {result.b} on {result.units} units", ("what", "measure", "agreement"), rows))
    for note in result.notes:
        say(f"note: {note}")
