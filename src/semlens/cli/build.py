"""Commands that make Lenses and show what goes into them: run, merge, layers, list, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from .._util.errors import SemlensError
from ..data.base import MIN_SIDE
from ._app import AsJson, Trust, app, console, emit_json, errors, friendly, table


@app.command()
@friendly
def run(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML file with the build settings (flags override it)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model spec, e.g. zoo:efficientnet-lite0, py:pkg.mod:factory."),
    layer: Optional[list[str]] = typer.Option(None, "--layer", "-l", help="Layer NAME[:key=value,...]; repeat for several."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Data spec, e.g. folder:./images."),
    foundation: Optional[list[str]] = typer.Option(
        None, "--foundation", "-f", help="Foundation model spec (default conse); repeat to embed into more spaces (the first is the default)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Lens directory to write (resumed if interrupted)."),
    k: Optional[int] = typer.Option(None, "-k", help="Concept examples per unit (default 30)."),
    pool: Optional[str] = typer.Option(None, help="Spatial/token pooling: mean (default) or max."),
    crop: Optional[str] = typer.Option(
        None, help="Crop mode: auto (default: relevance where LRP supports the model and it is affordable), relevance, activation or none."
    ),
    crop_threshold: Optional[float] = typer.Option(
        None, help="Share of a heatmap's peak that a crop keeps (default 0.01, the paper's 1 % rule); 0 < t < 1."
    ),
    crop_rule: Optional[str] = typer.Option(
        None,
        help="How a box is cut from a heatmap: peak (everything above --crop-threshold of the peak), share, quantile, or active "
        "(share of the unit's activation map: where it fires); or several joined by + (one box each). Default peak+active: labels, "
        "audits and measures read the peak boxes, search the active boxes; peak alone embeds 2 to 4 times fewer crops.",
    ),
    crop_share: Optional[float] = typer.Option(
        None, help="With --crop-rule share: the smallest square holding this share of the heatmap's positive mass (default 0.8)."
    ),
    crop_quantile: Optional[float] = typer.Option(
        None, help="With --crop-rule quantile: the box around cells above this quantile of the unit's values over its k maps (default 0.95)."
    ),
    crop_view: Optional[str] = typer.Option(
        None, help="What is embedded: box (default: the crop's pixels) or masked (the crop faded to its mean colour where the unit's heatmap is low)."
    ),
    lrp_rule: Optional[str] = typer.Option(
        None, help="The convolutions' LRP rule: zplus (default: z+, the signed rule where inputs carry both signs) or gamma (generalised, 0.25)."
    ),
    crp_focus: Optional[str] = typer.Option(
        None, help="Where a relevance crop's CRP heatmap starts: unit (default: the unit's whole map, the paper's) or peak (its highest position alone)."
    ),
    heatmaps_from: Optional[str] = typer.Option(
        None, help="A Lens of the same model, layers and data whose CRP heatmaps to reuse (e.g. to compare crop rules and views)."
    ),
    class_relevance: Optional[bool] = typer.Option(
        None, "--class-relevance/--no-class-relevance", help="Compute per-class LRP relevance of every unit (default on)."
    ),
    relevance_data: Optional[str] = typer.Option(None, help="Labelled data spec for class relevance (default: --data)."),
    relevance_examples: Optional[bool] = typer.Option(
        None, "--relevance-examples/--no-relevance-examples",
        help="Also keep each unit's top-k samples by relevance for the model's output, cropped and embedded: a second theta (default off).",
    ),
    batch_size: Optional[int] = typer.Option(None, help="Model batch size (default 32)."),
    embed_batch_size: Optional[int] = typer.Option(None, help="Foundation model batch size (default 64)."),
    embed_precision: Optional[str] = typer.Option(
        None,
        help="Foundation model dtype: auto (default: float32 on CPU; on CUDA float16 for CNN towers, bfloat16 for towers with transformer blocks), float32, bfloat16, float16.",
    ),
    embed_channels_last: Optional[bool] = typer.Option(
        None, "--embed-channels-last/--no-embed-channels-last", help="Channels-last convolutional foundation towers (default on; same numbers up to rounding)."
    ),
    embed_compile: Optional[bool] = typer.Option(
        None, "--embed-compile/--no-embed-compile", help="torch.compile the foundation model's image tower (default off; falls back, with a warning, if compiling fails)."
    ),
    device: Optional[str] = typer.Option(None, help="auto (default), cpu, cuda or cuda:N."),
    precision: Optional[str] = typer.Option(
        None, help="Model forward pass while collecting: auto (default: bfloat16 autocast on CUDA, float32 on CPU), float32, bfloat16, float16."
    ),
    workers: Optional[int] = typer.Option(None, help="Data loader worker processes (default: cores - 1, at most 4; at most 8 on a GPU)."),
    checkpoint_seconds: Optional[float] = typer.Option(None, help="Seconds between resume checkpoints (default 30)."),
    shard: Optional[str] = typer.Option(
        None, help="i/n: collect only shard i of n of the data into a partial Lens (job arrays); combine with `semlens merge`."
    ),
    overwrite: bool = typer.Option(
        False, help="Delete an existing Lens at --out and rebuild it (only a Lens semlens built: a folder with other files is refused, nothing deleted)."
    ),
    as_json: AsJson = False,
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Build a Lens: collect top-k concept examples per unit, embed them, store them.

    Under `torchrun --nproc_per_node N -m semlens.cli run ...` the N processes share the work."""
    from ..pipeline.builder import BuildConfig, LensBuilder
    from ..pipeline.parallel import end_rank_process

    options = dict(
        model=model,
        layers=layer or None,
        data=data,
        foundation=foundation[0] if foundation else None,
        extra_foundations=(foundation or [])[1:] or None,
        k=k,
        pool=pool,
        crop=crop,
        crop_threshold=crop_threshold,
        crop_rule=crop_rule,
        crop_share=crop_share,
        crop_quantile=crop_quantile,
        crop_view=crop_view,
        lrp_rule=lrp_rule,
        crp_focus=crp_focus,
        heatmaps_from=heatmaps_from,
        class_relevance=class_relevance,
        relevance_data=relevance_data,
        relevance_examples=relevance_examples,
        batch_size=batch_size,
        embed_batch_size=embed_batch_size,
        embed_precision=embed_precision,
        embed_channels_last=embed_channels_last,
        embed_compile=embed_compile,
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


def report_summary(summary: Any, as_json: bool) -> None:
    if as_json:
        emit_json(summary.to_dict())
        return
    rows = [(layer.name, layer.units, layer.inactive_units, layer.tied_units, layer.output) for layer in summary.layers]
    console.print(table(f"Lens at {summary.path}", ("layer", "units", "inactive", "tied", "output"), rows))
    console.print(
        f"{summary.samples} samples"
        + (f" ({summary.failed} could not be read (broken, or under {MIN_SIDE} px a side) and were skipped: listed in {summary.path}/failures.json); " if summary.failed else "; ")
        + f"{summary.example_slots} concept examples from {summary.distinct_crops} distinct crops; "
        + ", ".join(f"{stage} {seconds:.1f}s" for stage, seconds in summary.seconds.items()),
        markup=False,
    )
    for fallback in summary.fallbacks:
        errors.print(f"[yellow]warning:[/] {escape(fallback)}")
    for layer in summary.layers:
        if layer.inactive_units:
            errors.print(
                f"[yellow]warning:[/] layer {layer.name}: {layer.inactive_units} of {layer.units} units never fired or were "
                "constant on this data (their top-k scores are all equal or none is positive); their concept examples "
                "are arbitrary and marked inactive"
            )
        if layer.tied_units:
            errors.print(
                f"[yellow]warning:[/] layer {layer.name}: {layer.tied_units} of {layer.units} units have the same concept "
                "examples as another unit (marked tied); like inactive units they are left out of search, labels, the map, "
                "measures, audits and graphs"
            )


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
