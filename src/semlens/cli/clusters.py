"""The ``clusters`` command: a unit's concept examples grouped into the concepts they show."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._app import AsJson, Foundation, Trust, app, console, emit_json, friendly, open_lens, rounded, say_if_left_out, table


@app.command()
@friendly
def clusters(
    lens: Path = typer.Argument(..., help="Lens directory."),
    unit: str = typer.Argument(..., help="Unit as layer/index, e.g. _fc/281."),
    vocabulary: Optional[Path] = typer.Option(
        None, "--vocabulary", "-v", help="Concepts naming the clusters (default: the stored labels' vocabulary; none: unnamed)."
    ),
    examples: str = typer.Option("activation", "--examples", help="The top samples by activation (default) or by relevance."),
    trust: Trust = False,
    foundation: Foundation = None,
    as_json: AsJson = False,
) -> None:
    """A unit's concept clusters: one for a monosemantic unit, two for a polysemantic one, each with its
    examples' ranks and the concept that sets its mean embedding apart from the layer's units."""
    opened = open_lens(lens, trust, foundation=foundation)
    result = opened.concept_clusters(unit, str(vocabulary) if vocabulary else None, examples)
    if as_json:
        emit_json(result.to_dict())
        return
    rows = [
        (index, cluster.size, " ".join(map(str, cluster.ranks)), cluster.concept or "", "" if cluster.alignment is None else cluster.alignment)
        for index, cluster in enumerate(result.clusters)
    ]
    title = f"{unit}: {len(result.clusters)} concept cluster(s) of its {result.examples} examples (polysemanticity {rounded(result.polysemanticity)}, split p {rounded(result.split_p)}: two where p < 0.01, each of 2 or more examples and their means 0.05 apart)"
    console.print(table(title, ("cluster", "size", "example ranks", "best concept", "alignment"), rows))
    say_if_left_out(opened, unit)
