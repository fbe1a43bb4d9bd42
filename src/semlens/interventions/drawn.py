"""Concepts semlens can draw: generic artefacts (a watermark, a frame, a logo, a ruler, a colour cast) that a search
for their name pastes into the Lens's probe images, so that units are ranked by the model's own response to them
where the foundation model may not see the concept in a unit's examples at all (an offline ImageNet space has no
concept of a border or of text over a photo: docs/explanation/ask.md).

A model learns one watermark, one frame colour, one logo; so each concept is drawn in variants (a colour each; texts,
sizes and places within a variant), and a unit is scored by the variant that raises it most
(``effects.variant_aucs``). A query names a drawn concept only where every word of it is the concept's
name, a synonym, a colour or a filler word ("a red frame", "copyright text", "orange tint"); "bicycle frame" is left
to the foundation model."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .effects import Artifact, class_probability, pasted_in_turn

if TYPE_CHECKING:
    from ..model.loading import LoadedModel

#: the palette variants are drawn in (a query's colour word keeps that colour alone)
COLOURS = {
    "white": (245, 245, 245), "black": (15, 15, 15), "grey": (128, 128, 128), "red": (215, 30, 30),
    "orange": (245, 130, 20), "yellow": (245, 215, 30), "green": (40, 170, 60), "cyan": (0, 200, 230),
    "blue": (30, 80, 220), "purple": (140, 50, 180), "pink": (240, 60, 190), "brown": (120, 75, 35),
}  # fmt: skip
COLOUR_WORDS = {**{name: name for name in COLOURS}, "gray": "grey", "magenta": "pink", "violet": "purple", "gold": "yellow"}
#: every concept's names (a query's words, singular), the first its own
SYNONYMS = {
    "watermark": ("watermark", "text", "copyright", "copyright notice", "caption", "lettering", "writing"),
    "frame": ("frame", "border", "picture frame", "photo frame", "image border"),
    "logo": ("logo", "emblem", "badge", "sticker", "icon", "patch", "trademark", "symbol"),
    "ruler": ("ruler", "scale bar", "measuring tape", "tape measure"),
    "colour cast": ("colour cast", "color cast", "tint", "colour tint", "color tint", "colour filter", "color filter"),
}
FILLER = ("a", "an", "the", "of", "with", "on", "in", "over", "added", "overlaid", "coloured", "colored")
#: images a variant is pasted into: the probe backgrounds take its placements in turn
PLACEMENTS = 8
#: the colours each concept is drawn in where the query names none (text watermarks are light, dark or grey)
DEFAULT_COLOURS = {
    "watermark": ("white", "black", "grey"),
    "frame": tuple(COLOURS),
    "logo": tuple(COLOURS),
    "ruler": ("yellow", "white", "black", "grey"),
    "colour cast": ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "brown"),
}
#: a drawing's control (``control``) cuts it into tiles of 1/16 of the view's side, shuffled with this seed, or blurs it
#: by 1/8 of the side
SCATTER_TILES = 16
SCATTER_SEED = 61
BLUR_SHARE = 8
#: texts a watermark is drawn with (none of them a judge's own, "© stock" in benchmarks/planted_photos.py and "SAMPLE"
#: in world.render, though "stock image" shares a word with the first)
WATERMARK_TEXTS = ("© photo", "PREVIEW", "DRAFT", "proof", "www.photos.com", "COPY", "© 2021", "stock image")


@dataclass(frozen=True)
class DrawnConcept:
    """A concept semlens draws: its ``name`` and ``variants`` (a colour each: the placements pasted in turn)."""

    name: str
    variants: dict[str, tuple[Artifact, ...]]

    def describe(self) -> str:
        """In words, for a search's ranking: e.g. "frames semlens drew (12 colours; ...)", "frames semlens drew (red)"."""
        if len(self.variants) == 1:
            return f"{self.name}s semlens drew ({next(iter(self.variants))})"
        return f"{self.name}s semlens drew ({len(self.variants)} colours; each unit scored by the colour that raises it most)"


def strongest_variant(model: LoadedModel, views: Sequence[Image.Image], class_index: int, concept: DrawnConcept) -> tuple[str, dict[str, float]]:
    """The variant (colour) of ``concept`` whose placements, pasted into ``views`` in turn, raise the class's mean
    probability most, and that probability for every variant: an audit tests the drawing the class answers to, as a
    model that relies on a frame relies on the one colour it learnt."""
    probabilities = {colour: class_probability(model, pasted_in_turn(placements, views), class_index) for colour, placements in concept.variants.items()}
    return max(probabilities, key=probabilities.__getitem__), probabilities


def control(name: str, placements: Sequence[Artifact], size: tuple[int, int]) -> tuple[tuple[Artifact, ...], str] | None:
    """A drawing's control and what it is in words: the same colours without what makes the drawing the concept. A
    class the drawing raises no more than its control answers to the colour (black frames over a class of black
    checks), not to the concept. A frame's, logo's or ruler's pixels are scattered (``scattered``: their colours and
    edges without their shape); a watermark's colour is blurred where it is (``blurred``), as text is a texture of
    strokes that scattered pixels keep (the demo world's "star", which relies on its watermark: log-odds 1.06 by the
    drawn text, 2.33 by its strokes scattered, 0.08 by its colour blurred); a colour cast, whose concept is its
    colour, has none (None)."""
    if name == "colour cast":
        return None
    if name == "watermark":
        return blurred(placements, size), "its colour blurred where it is, without its letters"
    return scattered(placements, size), "its pixels scattered, its colours without its shape"


def scattered(placements: Sequence[Artifact], size: tuple[int, int]) -> tuple[Artifact, ...]:
    """Each placement's pixels in tiles (``SCATTER_TILES`` a side) shuffled over the view: the same colours over the
    same area (less what a tile takes past the edge of a view whose side is no multiple of the tile) without the
    drawing's shape. Seeded."""
    width, height = size
    tile = max(2, min(size) // SCATTER_TILES)
    rows, columns = -(-height // tile), -(-width // tile)
    controls = []
    for index, placement in enumerate(placements):
        canvas = Image.new("RGBA", (columns * tile, rows * tile), (0, 0, 0, 0))
        canvas.paste(placement.overlay(width, height), (0, 0))
        tiles = np.asarray(canvas).reshape(rows, tile, columns, tile, 4).transpose(0, 2, 1, 3, 4).reshape(rows * columns, tile, tile, 4)
        shuffled = tiles[np.random.default_rng([SCATTER_SEED, index]).permutation(len(tiles))]
        pixels = shuffled.reshape(rows, columns, tile, tile, 4).transpose(0, 2, 1, 3, 4).reshape(rows * tile, columns * tile, 4)
        controls.append(Artifact(image=Image.fromarray(np.ascontiguousarray(pixels[:height, :width]))))
    return tuple(controls)


def blurred(placements: Sequence[Artifact], size: tuple[int, int]) -> tuple[Artifact, ...]:
    """Each placement blurred (Gaussian, sigma ``1 / BLUR_SHARE`` of the side; colours weighted by their opacity, so
    faint edges keep the drawing's colour): its colour over about the same place, without its strokes or edges."""
    width, height = size
    sigma = max(1.0, min(size) / BLUR_SHARE)
    controls = []
    for placement in placements:
        pixels = torch.from_numpy(np.asarray(placement.overlay(width, height), dtype=np.float32))
        opacity = pixels[..., 3:] / 255.0
        spread = _blur(torch.cat([pixels[..., :3] * opacity, opacity], dim=-1), sigma)
        colours = spread[..., :3] / spread[..., 3:].clamp(min=1e-6)
        image = torch.cat([colours, spread[..., 3:] * 255.0], dim=-1).round().clamp(0, 255).to(torch.uint8)
        controls.append(Artifact(image=Image.fromarray(image.numpy(), "RGBA")))
    return tuple(controls)


def _blur(pixels: torch.Tensor, sigma: float) -> torch.Tensor:
    """``[H, W, C]`` blurred by a Gaussian of ``sigma`` pixels, separably; outside the view counts as transparent."""
    reach = int(np.ceil(3 * sigma))
    weights = torch.exp(-(torch.arange(-reach, reach + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
    weights = (weights / weights.sum()).view(1, 1, 1, -1)
    planes = pixels.permute(2, 0, 1).unsqueeze(1)  # [C, 1, H, W]
    planes = torch.nn.functional.conv2d(planes, weights, padding=(0, reach))
    planes = torch.nn.functional.conv2d(planes, weights.transpose(2, 3), padding=(reach, 0))
    return planes.squeeze(1).permute(1, 2, 0)


def named_concept(text: str) -> tuple[str, list[str]] | None:
    """(concept, colours) a query names, where every word of it is a drawn concept's name or synonym, a colour or a
    filler word and it names exactly one concept (``SYNONYMS``); else None."""
    words = [_singular(word) for word in re.findall(r"[a-z]+", text.lower())]
    colours = [COLOUR_WORDS[word] for word in words if word in COLOUR_WORDS]
    rest = " ".join(word for word in words if word not in COLOUR_WORDS and word not in FILLER)
    named = [concept for concept, names in SYNONYMS.items() if _only_names(rest, names)]
    return (named[0], list(dict.fromkeys(colours))) if len(named) == 1 else None


def _only_names(words: str, names: tuple[str, ...]) -> bool:
    """Whether ``words`` is one or more of ``names`` and nothing else."""
    alternation = "|".join(sorted(map(re.escape, names), key=len, reverse=True))
    return re.fullmatch(rf"(?:{alternation})(?: (?:{alternation}))*", words) is not None


def drawn_concept(text: str, size: tuple[int, int]) -> DrawnConcept | None:
    """The concept a query names (``named_concept``) drawn for views of ``size`` (width, height), in the query's
    colours or else the concept's own (``DEFAULT_COLOURS``); None where the query names none. Seeded: the same
    drawings every time."""
    found = named_concept(text)
    if found is None:
        return None
    concept, colours = found
    draw = DRAWERS[concept]
    variants = {}
    for colour in colours or DEFAULT_COLOURS[concept]:
        rng = np.random.default_rng([list(SYNONYMS).index(concept), list(COLOURS).index(colour)])
        variants[colour] = tuple(draw(COLOURS[colour], size, index, rng) for index in range(PLACEMENTS))
    return DrawnConcept(concept, variants)


def _singular(word: str) -> str:
    """A word as ``SYNONYMS`` has it ("borders" is "border"; "glass" stays)."""
    return word[:-1] if word.endswith("s") and not word.endswith("ss") and len(word) > 3 else word


def _font(height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=height)
    except (OSError, TypeError):  # Pillow without FreeType: its one bitmap size
        return ImageFont.load_default()


def _watermark(colour: tuple[int, int, int], size: tuple[int, int], index: int, rng: np.random.Generator) -> Artifact:
    """Half-transparent text, 8 to 16 % of the side high, anywhere in the view."""
    width, height = size
    text = WATERMARK_TEXTS[index % len(WATERMARK_TEXTS)]
    font = _font(max(8, round(min(size) * rng.uniform(0.08, 0.16))))
    box = font.getbbox(text)
    image = Image.new("RGBA", (min(width, box[2] + 2), min(height, box[3] + 2)), (0, 0, 0, 0))
    ImageDraw.Draw(image).text((1, 1), text, font=font, fill=(*colour, int(rng.integers(150, 256))))
    return Artifact(image=image, position=(int(rng.integers(0, max(1, width - image.width))), int(rng.integers(0, max(1, height - image.height)))))


def _frame(colour: tuple[int, int, int], size: tuple[int, int], index: int, rng: np.random.Generator) -> Artifact:
    """A border all round, 3 to 10 % of the side wide."""
    thickness = max(2, round(min(size) * (0.03 + 0.07 * index / max(1, PLACEMENTS - 1))))
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    ImageDraw.Draw(image).rectangle((0, 0, size[0] - 1, size[1] - 1), outline=(*colour, 255), width=thickness)
    return Artifact(image=image)


def _logo(colour: tuple[int, int, int], size: tuple[int, int], index: int, rng: np.random.Generator) -> Artifact:
    """A small emblem (a disc, a square, a diamond or a triangle of the colour with a contrasting mark), 10 to 25 %
    of the side, by a corner in half the placements and anywhere in the others."""
    width, height = size
    side = max(6, round(min(size) * rng.uniform(0.10, 0.25)))
    image = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    fill, last, half = (*colour, 255), side - 1, side / 2
    if index % 4 == 0:
        draw.ellipse((0, 0, last, last), fill=fill)
    else:
        corners = [[(0, 0), (last, 0), (last, last), (0, last)], [(half, 0), (last, half), (half, last), (0, half)], [(half, 0), (last, last), (0, last)]]
        draw.polygon(corners[index % 4 - 1], fill=fill)
    mark = (255, 255, 255, 255) if sum(colour) < 450 else (15, 15, 15, 255)
    inner = side * 0.22
    draw.ellipse((half - inner, half - inner, half + inner, half + inner), fill=mark)
    margin = max(1, min(size) // 12)
    if index % 2 == 0:
        x = int(rng.integers(0, margin)) if rng.random() < 0.5 else width - side - int(rng.integers(0, margin))
        y = int(rng.integers(0, margin)) if rng.random() < 0.5 else height - side - int(rng.integers(0, margin))
    else:
        x, y = int(rng.integers(0, max(1, width - side))), int(rng.integers(0, max(1, height - side)))
    return Artifact(image=image, position=(max(0, x), max(0, y)))


def _ruler(colour: tuple[int, int, int], size: tuple[int, int], index: int, rng: np.random.Generator) -> Artifact:
    """A bar with ticks along one edge (bottom, top, left, right in turn), 6 to 12 % of the side thick."""
    width, height = size
    thickness = max(4, round(min(size) * rng.uniform(0.06, 0.12)))
    horizontal = index % 4 < 2
    bar = Image.new("RGBA", (width, thickness) if horizontal else (thickness, height), (*colour, 255))
    draw = ImageDraw.Draw(bar)
    tick = (255, 255, 255, 255) if sum(colour) < 300 else (15, 15, 15, 255)
    step = max(3, min(size) // 20)
    for at in range(step // 2, width if horizontal else height, step):
        length = thickness // 2 if (at // step) % 5 == 0 else thickness // 4
        draw.line((at, 0, at, length) if horizontal else (0, at, length, at), fill=tick)
    position = [(0, height - thickness), (0, 0), (0, 0), (width - thickness, 0)][index % 4]
    return Artifact(image=bar, position=position)


def _cast(colour: tuple[int, int, int], size: tuple[int, int], index: int, rng: np.random.Generator) -> Artifact:
    """A tint over the whole view at strength 0.2 to 0.5."""
    return Artifact(tint=colour, strength=0.2 + 0.3 * index / max(1, PLACEMENTS - 1))


DRAWERS = {"watermark": _watermark, "frame": _frame, "logo": _logo, "ruler": _ruler, "colour cast": _cast}
