"""``semlens correct``: correct the model's reliance on an artefact (projection or fine-tuning), measure
the artefact test before and after, and save the correction (for ``test-artifact --correction`` and the
model spec ``corrected:FILE``) or the corrected model's weights. A correction that costs more clean
accuracy than the tolerance fails: the figures are shown, nothing is written, the exit code is 1."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .._util.errors import SemlensError
from ..interventions.correction import ACCURACY_TOLERANCE
from ..model.imagenet import shown_class
from ._app import (
    AsJson,
    Model,
    ProbeData,
    Trust,
    app,
    console,
    emit_json,
    errors,
    friendly,
    open_lens,
    parent_made,
    printable,
    say,
    table,
    user_data,
)
from .validate import ArtifactAt, ArtifactImage, ArtifactMask, ArtifactTint, _artifact


@app.command()
@friendly
def correct(
    lens: Path = typer.Argument(..., help="Lens directory (its model is reloaded and checked)."),
    class_name: str = typer.Option(..., "--class", "-c", help="Class whose reliance on the artefact to remove."),
    method: str = typer.Option("project", help="project (remove the concept's direction from a layer) or finetune (the last modules)."),
    data: Optional[str] = typer.Option(
        None, "--data", "-d", help="Labelled test images (folder or data spec); default: half of each class's train images, drawn at random (--seed), held out."
    ),
    train_data: Optional[str] = typer.Option(None, help="Labelled images to learn the correction on (default: the Lens's probe data)."),
    artifact: Optional[Path] = ArtifactImage,
    mask: Optional[Path] = ArtifactMask,
    at: str = ArtifactAt,
    tint: Optional[str] = ArtifactTint,
    layer: Optional[str] = typer.Option(None, "--layer", "-l", help="project: the layer (default: the Lens layer, but the last, that works best)."),
    estimator: str = typer.Option("mean", help="project: the concept direction, mean (difference of means) or logistic."),
    concept_data: Optional[str] = typer.Option(None, help="project: images that show the concept (folder or data spec), against the train images, instead of inserting the artefact."),
    last: int = typer.Option(1, help="finetune: how many of the last parameterised modules to train."),
    epochs: int = typer.Option(3, help="finetune: passes over the images."),
    learning_rate: float = typer.Option(1e-2, help="finetune: Adam's learning rate."),
    tolerance: float = typer.Option(ACCURACY_TOLERANCE, help="The clean test accuracy the correction may cost; beyond it the correction fails."),
    seed: int = typer.Option(0, help="Seed of the held-out split (without --data)."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Save the correction here (safetensors; load the corrected model as corrected:FILE).", callback=parent_made
    ),
    export_weights: Optional[Path] = typer.Option(
        None, help="Write the corrected model's state dict here (safetensors; the correction folded into the weights).", callback=parent_made
    ),
    trust: Trust = False,
    model: Model = None,
    probe_data: ProbeData = None,
    as_json: AsJson = False,
) -> None:
    """Correct the class's reliance on an artefact (--artifact or --tint) and compare the artefact test
    (class probability with minus without it, clean accuracy) before and after the correction."""
    from ..interventions.correction import Tuning
    from ..interventions.effects import ConceptImages

    chosen = _artifact(artifact, mask, at, tint)
    if chosen is None:
        raise SemlensError("give the artefact to correct for: --artifact IMAGE (with --at, --mask) or --tint R,G,B")
    opened = open_lens(lens, trust, probe_data, model=model)
    train = None if train_data is None else user_data(train_data)
    concept = None if concept_data is None else ConceptImages(opened.sources.probe_data if train is None else train, shown=user_data(concept_data))
    result = opened.correct(
        class_name, chosen, method, None if data is None else user_data(data), layer, estimator, Tuning(last, epochs, learning_rate),
        train, concept, progress=not as_json, tolerance=tolerance, seed=seed, exportable=export_weights is not None,
    )  # fmt: skip
    saved = exported = None
    if not result.failed:
        saved = None if out is None else str(result.save(out))
        exported = None if export_weights is None else str(result.export_weights(opened.sources.model(), export_weights))
    summary = {**result.to_dict(), "saved": saved, "exported": exported}
    if as_json:
        emit_json(summary)
    else:
        _show(result, summary)
    if result.failed:
        errors.print(f"[bold red]failed:[/] {printable(result.failed)}; nothing was written", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _show(result, summary: dict) -> None:
    rows = [
        (f"{part} {key}", *(None if values[key] is None else round(values[key], 4) for values in (result.before[part], result.after[part])))
        for part in ("clean", "artifact", "change") for key in result.before[part]
    ]  # fmt: skip
    console.print(table(f"{result.method} correction of {shown_class(result.class_name)} ({summary['samples']} test images)", ("measure", "before", "after"), rows))
    settings = ", ".join(f"{key} {value}" for key, value in summary["settings"].items()) if isinstance(summary["settings"], dict) else summary["settings"]
    say(f"settings: {settings}; learnt in {summary['seconds']:.1f} s")
    change = result.before["change"].get("class_probability")
    if change is not None and change <= 0:
        say(f"note: the artefact does not raise {shown_class(result.class_name)}'s probability on these images (change {change:.4f}): there was no "
            "reliance on it to correct, and the correction changes the model all the same")
    if summary["saved"]:
        saved = summary["saved"]
        say(f"correction saved: {saved} (apply it: semlens test-artifact LENS --correction {saved} ...; the corrected model: --model corrected:{saved})")
    if summary["exported"]:
        say(f"corrected weights written: {summary['exported']} (module.load_state_dict(safetensors.torch.load_file(...)))")
