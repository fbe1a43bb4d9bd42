"""Natural photos with an artefact planted on one class, and the models ``planted_judge.py`` studies.

The images are seeded crops of the photos that ship inside scikit-image, scikit-learn and matplotlib
(``semlens.data.photos``), one class per photo, written as PNG files at the models' input side (so a
model's view of a file is the file, and an artefact pasted into a view sits where it sat in training). Each
artefact is a ``semlens`` ``Artifact``: an RGBA image pasted through its alpha (a semi-transparent "(c) stock"
watermark, a small red-and-yellow logo, a cyan frame) or a tint over the whole image (an orange colour cast, an
area concept: it is nowhere in particular, so no test can say where a unit fires on it). Its placements (where it sits, its size
and look) are drawn per image from a seeded pool, as they would vary in scraped data.

The models go to semlens as a user passes them: ``py:planted_photos:planted_model`` (this module on
``PYTHONPATH``) reading the safetensors file named by ``SEMLENS_PLANTED_WEIGHTS``, whose metadata names its
architecture, classes and input side.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps
from torch import nn

from semlens import LoadedModel, Preprocessing
from semlens._util.errors import SemlensError
from semlens.interventions.effects import Artifact
from semlens.data.photos import source_photos
from semlens.model.preprocess import IMAGENET_MEAN, IMAGENET_STD
from semlens.model.zoo import LITE_MEAN, LITE_STD, efficientnet_lite

WEIGHTS_ENV = "SEMLENS_PLANTED_WEIGHTS"
ARCHITECTURES = ("lite0", "resnet")
#: the narrow ResNet-18 trained here from scratch (timm's ResNet with these stage widths)
RESNET_CHANNELS = (16, 32, 64, 128)
#: each artefact: its name (what the audit and search ask for), a paraphrase, the vocabulary words that count as
#: labelling it, and its colour in words (a search may name it: "cyan frame")
ARTEFACTS = {
    "watermark": {"paraphrase": "copyright text", "words": ("watermark", "text"), "colour": "white"},
    "logo": {"paraphrase": "emblem", "words": ("logo", "emblem", "badge"), "colour": "red"},
    "frame": {"paraphrase": "border", "words": ("frame", "border", "picture frame"), "colour": "cyan"},
    "colour cast": {"paraphrase": "orange tint", "words": ("orange",), "colour": "orange"},
}
#: the artefacts the judge plants unless told otherwise (``--artefacts``; the colour cast is asked for by name)
DEFAULT_ARTEFACTS = ("watermark", "logo", "frame")
POOL = 16  # placements each artefact is drawn from in the data


def draw_artefact(name: str, size: int, rng: np.random.Generator, scale: float = 1.0) -> Artifact:
    """One placement of an artefact in a ``size`` x ``size`` view, ``scale`` times its usual size (text height,
    logo side, frame width; a colour cast's strength)."""
    if name == "watermark":  # semi-transparent white text, about a third of the width, in the lower half
        font = ImageFont.load_default(size=max(8, round(size * scale * rng.uniform(0.10, 0.14))))
        box = font.getbbox("© stock")
        image = Image.new("RGBA", (box[2] + 2, box[3] + 2), (0, 0, 0, 0))
        ImageDraw.Draw(image).text((1, 1), "© stock", font=font, fill=(255, 255, 255, int(rng.integers(150, 200))))
        x = int(rng.integers(0, max(1, size - image.width)))
        y = int(rng.integers(size // 2, max(size // 2 + 1, size - image.height)))
        return Artifact(image=image, position=(x, y))
    if name == "logo":  # a small red disc with a yellow diamond, near a corner
        side = min(size, max(6, round(size * scale * rng.uniform(0.11, 0.15))))
        image = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        draw = ImageDraw.Draw(image)
        draw.ellipse((0, 0, side - 1, side - 1), fill=(220, 20, 30, 255))
        half, inner = side / 2, side * 0.3
        draw.polygon([(half, half - inner), (half + inner, half), (half, half + inner), (half - inner, half)], fill=(255, 220, 0, 255))
        margin = size // 5
        corner_x, corner_y = rng.integers(0, 2, 2)
        x = int(rng.integers(0, margin)) if corner_x == 0 else size - side - int(rng.integers(0, margin))
        y = int(rng.integers(0, margin)) if corner_y == 0 else size - side - int(rng.integers(0, margin))
        return Artifact(image=image, position=(x, y))
    if name == "frame":  # a cyan border, 4 to 7 % of the side thick, all round
        width = max(2, round(size * scale * rng.uniform(0.04, 0.07)))
        image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        colour = (0, int(rng.integers(190, 230)), 255, 255)
        ImageDraw.Draw(image).rectangle((0, 0, size - 1, size - 1), outline=colour, width=width)
        return Artifact(image=image)
    if name == "colour cast":  # a warm orange tint over the whole image, as under tungsten light; scale: its strength
        colour = (255, int(rng.integers(120, 160)), int(rng.integers(0, 40)))
        return Artifact(tint=colour, strength=min(0.6, float(rng.uniform(0.15, 0.25)) * scale))
    raise SemlensError(f"unknown artefact {name!r}; known: {', '.join(ARTEFACTS)}")


def placements(name: str, size: int, count: int, seed: int, scale: float = 1.0) -> tuple[Artifact, ...]:
    """``count`` seeded placements of an artefact (the data's pool: ``seed`` 0; tests draw others), ``scale``
    times its usual size."""
    rng = np.random.default_rng([seed, list(ARTEFACTS).index(name)])
    return tuple(draw_artefact(name, size, rng, scale) for _ in range(count))


@dataclass(frozen=True)
class Planting:
    """An artefact shown on ``rate`` of its class's images and ``other_rate`` of every other class's (a
    control: ``cls`` None, every class at ``rate``)."""

    artefact: str
    cls: str | None
    rate: float
    other_rate: float
    scale: float = 1.0  # times the artefact's usual size (``draw_artefact``)

    def rate_of(self, cls: str) -> float:
        return self.rate if self.cls is None or cls == self.cls else self.other_rate


def photo_view(photo: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """A seeded square crop (35 to 80 % of the shorter side), flip and colour jitter of a photo, at ``size``."""
    width, height = photo.size
    side = int(min(width, height) * rng.uniform(0.35, 0.8))
    left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    view = photo.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        view = ImageOps.mirror(view)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        view = enhancer(view).enhance(float(rng.uniform(0.7, 1.3)))
    return view


def write_split(
    root: Path, classes: list[str], per_class: int, size: int, plantings: list[Planting], seed: int, content: dict[str, str] | None = None
) -> dict[str, list[str]]:  # fmt: skip
    """Write ``per_class`` views of each class's photo (``content``: the photo a class shows where it is not its
    own, a twin's) under ``root/CLASS/``, the plantings pasted in at their rates; returns the artefacts each file
    (relative path) shows, also stored as ``root/artefacts.json``."""
    photos, content = source_photos(), content or {}
    pools = {planting.artefact: placements(planting.artefact, size, POOL, 0, planting.scale) for planting in plantings}
    shown: dict[str, list[str]] = {}
    for label, cls in enumerate(classes):
        rng = np.random.default_rng([seed, label])
        (root / cls).mkdir(parents=True, exist_ok=True)
        for number in range(per_class):
            view, marks = photo_view(photos[content.get(cls, cls)], size, rng), []
            for planting in plantings:
                if rng.random() < planting.rate_of(cls):
                    view = pools[planting.artefact][int(rng.integers(0, POOL))].apply(view)
                    marks.append(planting.artefact)
            name = f"{cls}/{number:03d}.png"
            view.save(root / name)
            shown[name] = marks
    (root / "artefacts.json").write_text(json.dumps(shown), encoding="utf-8")
    return shown


def photo_classes(count: int) -> list[str]:
    """The first ``count`` bundled photos by name (the classes), at most as many as ship."""
    names = sorted(source_photos())
    if not 2 <= count <= len(names):
        raise SemlensError(f"--classes {count}: give 2 to {len(names)} (one class per bundled photo)")
    return names[:count]


# --- models ------------------------------------------------------------------------------------------------


def architecture(name: str, classes: int) -> tuple[nn.Module, Preprocessing]:
    """The untrained network (``lite0``: ImageNet EfficientNet-Lite0 with a new head; ``resnet``: a narrow
    timm ResNet-18, random) and its preprocessing at side 224 (``with_side`` sets the side)."""
    if name == "lite0":
        model, preprocessing = efficientnet_lite("efficientnet-lite0")
        model._fc = nn.Linear(model._fc.in_features, classes)
        return model, Preprocessing(input_size=224, resize=224, mean=LITE_MEAN, std=LITE_STD)
    if name == "resnet":
        import timm

        return timm.create_model("resnet18", pretrained=False, num_classes=classes, channels=RESNET_CHANNELS), Preprocessing(
            input_size=224, resize=224, mean=IMAGENET_MEAN, std=IMAGENET_STD
        )
    raise SemlensError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")


def with_side(preprocessing: Preprocessing, size: int) -> Preprocessing:
    """The preprocessing at input side ``size``, resized to it (files are written at that side: views are the files)."""
    return replace(preprocessing, input_size=size, resize=size)


#: what a model studies: the last stage (lite0: its last MBConv block; resnet: its last stage's blocks)
STUDIED_LAYERS = {"lite0": ["_blocks.15"], "resnet": ["layer3.1", "layer4.1"]}
#: what fine-tuning trains (the rest stays ImageNet's); the ResNet trains whole
TRAINED_FROM = {"lite0": 15}


def save_model(module: nn.Module, path: Path, arch: str, classes: list[str], size: int) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in module.state_dict().items()}, str(path), metadata={"architecture": arch, "classes": json.dumps(classes), "size": str(size)})


def planted_model() -> LoadedModel:
    """The trained model whose weights ``SEMLENS_PLANTED_WEIGHTS`` names (a ``py:`` model spec)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = os.environ.get(WEIGHTS_ENV)
    if not path or not Path(path).is_file():
        raise SemlensError(f"py:planted_photos:planted_model reads the weights file named by {WEIGHTS_ENV}; set it to a file saved by planted_judge.py (got {path!r})")
    with safe_open(path, "pt") as opened:
        meta = opened.metadata()
    classes = json.loads(meta["classes"])
    module, preprocessing = architecture(meta["architecture"], len(classes))
    module.load_state_dict(load_file(path))
    return LoadedModel(module.eval(), "py:planted_photos:planted_model", with_side(preprocessing, int(meta["size"])), classes)


def _pixels(preprocessing: Preprocessing, folder: Path, classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    files = sorted(folder.glob("*/*.png"))
    pixels = torch.stack([preprocessing(Image.open(file).convert("RGB")) for file in files])
    return pixels, torch.tensor([classes.index(file.parent.name) for file in files])


def train_model(arch: str, train: Path, classes: list[str], size: int, epochs: int, seed: int) -> nn.Module:
    """Train on the images under ``train``: lite0 fine-tunes its last block and head on ImageNet features
    computed once (batch norms keep ImageNet's statistics); the ResNet trains from scratch. Adam, seeded."""
    torch.manual_seed(seed)
    module, preprocessing = architecture(arch, len(classes))
    pixels, labels = _pixels(with_side(preprocessing, size), train, classes)
    if arch == "lite0":
        module.eval()
        with torch.no_grad():
            x = module._swish(module._bn0(module._conv_stem(pixels)))
            for block in module._blocks[: TRAINED_FROM[arch]]:
                x = block(x)
        trained = [*module._blocks[TRAINED_FROM[arch] :], module._conv_head, module._bn1, module._fc]

        def forward(inputs: torch.Tensor) -> torch.Tensor:
            for block in module._blocks[TRAINED_FROM[arch] :]:
                inputs = block(inputs)
            return module._fc(module._avg_pooling(module._swish(module._bn1(module._conv_head(inputs)))).flatten(1))

        parameters, lr = [p for part in trained for p in part.parameters()], 1e-3
    else:
        module.train()
        x, forward, parameters, lr = pixels, module, list(module.parameters()), 3e-3
    optimiser = torch.optim.Adam(parameters, lr=lr)
    for _ in range(epochs):
        for batch in torch.randperm(len(labels)).split(32):
            optimiser.zero_grad()
            nn.functional.cross_entropy(forward(x[batch]), labels[batch]).backward()
            optimiser.step()
    return module.eval()
