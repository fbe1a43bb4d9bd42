"""The ``explain`` command: the concepts behind the model's prediction on one image."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .._util.errors import SemlensError
from ..model.imagenet import shown_class
from ._app import AsJson, Foundation, Model, ProbeData, Trust, app, console, emit_json, friendly, labelled_to_show, open_lens, say, table


@app.command()
@friendly
def explain(
    lens: Path = typer.Argument(..., help="Lens directory."),
    image: str = typer.Argument(..., help="Image file, or the index of a probe sample."),
    class_name: Optional[str] = typer.Option(None, "--class", "-c", help="Class (name or index) to explain; default: the predicted one."),
    layer: Optional[list[str]] = typer.Option(None, "--layer", "-l", help="Only these layers (repeatable; default: all, SAE layers with --trust)."),
    top: int = typer.Option(6, "--top", "-n", min=1, help="Units listed per layer."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the input view and each unit's heatmap overlay (PNG)."),
    trust: Trust = False,
    model: Model = None,
    probe_data: ProbeData = None,
    foundation: Foundation = None,
    as_json: AsJson = False,
) -> None:
    """Explain one prediction: the model's top classes and, for the predicted (or given) class, per layer the
    units with the highest share of the layer's relevance on this image, grouped by label, with their concept
    examples and (with --out) where in the image each one's relevance lies (CRP heatmaps)."""
    from ..report.explain import write_overlays

    if out is not None and out.suffix.lower() in (".png", ".jpg", ".jpeg", ".html") and not out.is_dir():
        raise SemlensError(f"--out {out} names a folder for the input view and each unit's overlay, not a file: e.g. --out {out.with_suffix('')}")
    result = labelled_to_show(open_lens(lens, trust, probe_data, foundation=foundation, model=model)).explain(image, class_name, layer or None, top)
    files = write_overlays(result, out) if out else {}
    if as_json:
        emit_json({**result.to_dict(), "files": files})
        return
    odds = ", ".join(f"{shown_class(entry['class'])} {entry['probability']:.3f}" for entry in result.prediction)
    say(f"{result.image}: {odds}")
    say(f"explaining class {shown_class(result.class_name)} ({'predicted' if result.predicted else 'given'})")
    for explained in result.layers:
        rows = [
            (group.label or "(no concept)", round(group.share, 4), unit.unit, round(unit.share, 4), ", ".join(e.source for e in unit.examples[:3]))
            for group in explained.groups
            for unit in group.units
        ]
        title = (
            f"{explained.layer}: the layer's relevance {explained.relevance:.4g} (shares are of it); inactive units "
            f"hold {round(explained.left_out, 3) + 0.0:.3f} of it"  # + 0.0: a share that rounds to zero is 0.000, not -0.000
        )
        if explained.sae_error is not None:
            title += f", SAE error term {explained.sae_error:.3f}"
        if rows:
            console.print(table(title, ("concept", "group share", "unit", "share", "concept examples"), rows))
        else:
            say(f"{title}: no active unit carries relevance here (the ones that do never fired on the probe data)")
        if explained.against:
            rows = [
                (unit.label or "(no concept)", unit.unit, round(unit.share, 4), ", ".join(e.source for e in unit.examples[:3]))
                for unit in explained.against
            ]
            columns = ("concept", "unit", "share", "concept examples")
            console.print(table(f"{explained.layer}: against {shown_class(result.class_name)}", columns, rows))
    if files:
        say(f"wrote {len(files)} images to {out}")
