"""``semlens demo``: the whole build offline, on the bundled EfficientNet-Lite0 and bundled photos."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from .build import BuildConfig, LensBuilder
from .data.photos import write_photo_folder
from .imagenet import find_imagenet_class
from .lens import Lens

DEMO_LAYERS = ["_blocks.15", "_fc"]  # the last conv block and the classifier output
# photo folder -> the ImageNet class whose output unit should pick it
DEMO_CLASSES = {"cat": "tabby", "rocket": "missile", "coffee": "espresso", "motorcycle": "moped"}


def run_demo(out: Path, k: int = 10, progress: bool = True, console: Console | None = None) -> Lens:
    """Write the photo folder (once), build or reuse the Lens, print what the class units picked."""
    console = console or Console()
    photos = out / "photos"
    if not photos.is_dir():
        write_photo_folder(photos)
    # class relevance over 240 photos takes about a minute on 2 CPU cores: the demo leaves it out
    config = BuildConfig(
        model="zoo:efficientnet-lite0", layers=DEMO_LAYERS, data=f"folder:{photos}", foundation="conse", k=k, class_relevance=False
    )
    builder = LensBuilder(config, out / "lens", progress=progress)
    from .cli import print_summary

    print_summary(builder.run())
    lens = Lens.open(out / "lens")
    table = Table(title="output units of ImageNet classes: their top concept examples")
    for column in ("unit", "class", "top examples (source photo, score)", "hits"):
        table.add_column(column)
    for folder, class_name in DEMO_CLASSES.items():
        unit = f"_fc/{find_imagenet_class(class_name)}"
        examples = lens.concept_examples(unit)
        shown = ", ".join(f"{example.source.split('/')[0]} {example.score:.1f}" for example in examples[:4])
        hits = sum(example.source.startswith(folder + "/") for example in examples)
        table.add_row(unit, class_name, shown, f"{hits}/{len(examples)} from {folder}/")
    console.print(table)
    console.print(f"Lens written to {lens.path}; open it in Python with semlens.Lens.open({str(lens.path)!r})")
    return lens
