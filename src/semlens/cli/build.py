"""Commands that make Lenses and show what goes into them: run, merge, layers, list, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from .._util.errors import SemlensError, on_the_command_line
from ..data.base import MIN_SIDE
from ..pipeline.config import BuildConfig
from ._app import AsJson, Trust, app, console, emit_json, errors, friendly, say, table
from ._options import config_from_options, config_options


@app.command()
@friendly
@config_options(BuildConfig, after="config", placed={"out": "foundation"})
def run(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML file with the build settings (flags override it)."),
    out: Path = typer.Option(..., "--out", "-o", help="Lens directory to write (resumed if interrupted)."),
    overwrite: bool = typer.Option(
        False, help="Delete an existing Lens at --out and rebuild it (only a Lens semlens built: a folder with other files is refused, nothing deleted)."
    ),
    as_json: AsJson = False,
    progress: bool = typer.Option(True, help="Show progress bars."),
    **options: Any,
) -> None:
    """Build a Lens: collect top-k concept examples per unit, embed them, store them.

    Under `torchrun --nproc_per_node N -m semlens.cli run ...` the N processes share the work."""
    from ..pipeline.builder import LensBuilder
    from ..pipeline.parallel import end_rank_process

    settings = config_from_options(BuildConfig, options, config)
    builder = LensBuilder(settings, out, overwrite=overwrite, progress=progress and not as_json)
    summary = builder.run()
    if builder.ranks.is_main:
        report_summary(summary, as_json)
    if builder.joined_group:
        end_rank_process()


@app.command()
@friendly
def merge(
    out: Path = typer.Argument(..., help="Lens directory to write."),
    parts: list[Path] = typer.Argument(..., help="The partial Lenses of `semlens run --shard i/n`, every shard once."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N (default: as the shards recorded)."),
    precision: Optional[str] = typer.Option(None, help="The precision the shards were collected in, when this machine's auto differs."),
    workers: Optional[int] = typer.Option(None, help="Data loader worker processes."),
    embed_batch_size: Optional[int] = typer.Option(None, help="Foundation model batch size."),
    overwrite: bool = typer.Option(
        False, help="Delete an existing Lens at OUT and rebuild it (only a Lens semlens built: a folder with other files is refused, nothing deleted)."
    ),
    trust: Trust = False,
    as_json: AsJson = False,
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Merge shards into one Lens (exactly the Lens one `semlens run` gives) and run its remaining stages."""
    from ..pipeline.merge import merge_shards

    summary = merge_shards(
        parts, out, overwrite, progress and not as_json, trust, device=device, precision=precision, workers=workers, embed_batch_size=embed_batch_size
    )
    report_summary(summary, as_json)


#: the build's stages as its summary names them (the manifest's keys are shorter)
STAGE_NAMES = {"relevance": "class relevance", "examples": "relevance examples", "embed": "crops and embedding"}


def stage_time(stage: str, seconds: float, parts: dict[str, float]) -> str:
    """A stage's seconds, with where they went where it recorded that ("crops and embedding 761.5s (heatmaps 715.0s,
    ...)": relevance crops cost more than the foundation model on a CPU)."""
    within = f" ({', '.join(f'{part} {spent:.1f}s' for part, spent in parts.items())})" if parts else ""
    return f"{STAGE_NAMES.get(stage, stage)} {seconds:.1f}s{within}"


def report_summary(summary: Any, as_json: bool) -> None:
    if as_json:
        emit_json(summary.to_dict())
        return
    rows = [(layer.name, layer.units, layer.inactive_units, layer.tied_units, layer.output) for layer in summary.layers]
    console.print(table(f"Lens at {summary.path}", ("layer", "units", "inactive", "tied", "output"), rows))
    console.print(
        f"{summary.samples} samples"
        + (f" ({summary.failed} could not be read (broken, or under {MIN_SIDE} px a side) and {'was' if summary.failed == 1 else 'were'} skipped: listed in {summary.path}/failures.json); " if summary.failed else "; ")
        + (f"{summary.example_slots} concept examples from {summary.distinct_crops} distinct crops; " if "embed" in summary.stages
           else "a shard: its top-k collected, nothing embedded yet (`semlens merge OUT PARTS...` makes the Lens of every shard); ")
        + ", ".join(stage_time(stage, seconds, summary.parts.get(stage, {})) for stage, seconds in summary.seconds.items()),
        markup=False,
    )
    if summary.reused:
        whole = set(summary.reused) >= set(summary.stages)
        say("the Lens was complete already: nothing was computed again (the seconds are its build's)" if whole
            else f"resumed: {', '.join(summary.reused)} done before (their seconds are that run's), the rest computed now")
    unread = summary.failure_warning() if summary.mostly_unread else None  # most unread: why, loudly
    for warning in [unread] * bool(unread) + summary.fallbacks + summary.unit_warnings():
        errors.print(f"[yellow]warning:[/] {escape(on_the_command_line(warning))}")


@app.command()
@friendly
def layers(
    model: str = typer.Argument(..., help="Model spec, e.g. zoo:efficientnet-lite0."),
    sae: Optional[list[str]] = typer.Option(None, "--sae", help="LAYER=PATH: read LAYER through this SAE (SAELens directory or safetensors file); repeatable."),
    as_json: AsJson = False,
) -> None:
    """List a model's layers with their output shapes and unit counts (SAE features for layers given --sae)."""
    from ..model.loading import load_model
    from ..model.sae import sae_summary
    from ..model.units import list_layers

    saes = dict(item.partition("=")[::2] for item in sae or [])
    if any(not name or not path for name, path in saes.items()):
        raise SemlensError(f"--sae takes LAYER=PATH, got {', '.join(sae)}")
    loaded = load_model(model)
    infos = list_layers(loaded.module, loaded.example_input(), saes)
    if as_json:
        emit_json([info.to_dict() for info in infos])
        return
    size = loaded.preprocessing.input_size
    rows = [(info.name, info.type, info.shape, "" if info.units is None else info.units, sae_summary(info.sae)) for info in infos]
    console.print(table(f"{model}: {len(infos)} layers (input 1x3x{size}x{size})", ("layer", "type", "output", "units", "sae"), rows))


@app.command("list")
def list_specs(as_json: AsJson = False) -> None:
    """List the spec forms for models, data and foundation models."""
    from ..data import DATASETS
    from ..foundation import FOUNDATION_MODELS
    from ..model.loading import MODELS

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
    from ..world.demo import run_demo

    run_demo(out, str(world) if world else None, progress=progress, console=console)
