"""Captions of the concept world: the sentences the world's foundation model learns from.

Captions name the concepts a view shows well (whole image or random crop), with varied phrasing,
synonyms, order and subsets; the phrases in ``HELD_OUT`` never occur in training, to test free text.
The phrasings are the world's own, as alt texts would be: none is one of semlens's prompt templates
(``analysis.alignment.TEMPLATES``, checked in the tests), so a model trained on them is not fitted to
the prompts semlens probes with.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .._util.errors import SemlensError
from .render import WorldSample, concept_family

VIEW_RULES = {
    "crop_sides": (0.25, 0.75),  # crop side as a share of the image side
    "mask_share": 0.3,  # a concept is visible in a crop when this share of its mask lies inside,
    "area_share": 0.15,  # or it covers this share of the crop
    "shape_share": 0.6,  # but a shape needs most of its mask inside: a piece of a star is no star
    "min_pixels": 4,
}

# The text tower is locked, so every synonym must mean its concept to MiniLM too: each one here is
# closer to its concept's name than to any other name of its family (checked in the tests). Phrases
# that MiniLM misreads ("box" nearer "ring", "annulus" nearer "circle", "plus sign", "scarlet",
# "no pattern") taught the image tower contradictory targets and are left out.
SHAPE_NOUNS = {
    "circle": ("circle", "circular shape", "round circle", "circular disc"),
    "square": ("square", "square shape", "square block", "four-sided square"),
    "triangle": ("triangle", "triangular shape", "three-sided triangle"),
    "star": ("star", "star shape", "pointed star", "five-pointed star"),
    "cross": ("cross", "cross shape", "plus-shaped cross"),
    "ring": ("ring", "ring shape", "hollow ring"),
}
COLOR_WORDS = {
    "red": ("red",), "green": ("green",), "blue": ("blue",), "yellow": ("yellow",),
    "purple": ("purple",), "orange": ("orange",), "white": ("white",), "black": ("black",),
}  # fmt: skip
PATTERN_WORDS = {  # (adjectives, nouns)
    "plain": (("plain",), ("plain colour", "a plain surface")),
    "stripes": (("striped",), ("stripes", "diagonal stripes")),
    "dots": (("dotted",), ("dots", "spots")),
    "checks": (("checkered", "checked"), ("checks", "a checkerboard pattern")),
}
BACKGROUND_WORDS = {  # (preposition, nouns)
    "grass": ("on", ("grass", "a lawn", "a grassy field")),
    "sky": ("against", ("sky", "the sky", "a clear sky")),
    "sand": ("on", ("sand", "a sandy beach", "beach sand")),
    "water": ("on", ("water", "a lake", "a water surface")),
    "gray": ("on", ("gray", "a gray background", "a grey backdrop")),
}
ARTIFACT_NOUNS = {
    "watermark": ("watermark", "a watermark", "a watermark text"),
    "ruler": ("ruler", "a ruler", "a ruler with ticks"),
    "patch": ("patch", "a pink patch", "a magenta patch", "a coloured patch"),
    "frame": ("frame", "a frame", "a dark frame"),
}
GENERIC_NOUNS = ("object", "shape", "thing")
PREFIXES = ("{}", "a picture of {}", "a photo of {}", "a rendering of {}", "a small drawing of {}", "this shows {}", "{}, in a rendered scene")
#: paraphrases kept out of every training caption, to measure how free-text queries generalise
HELD_OUT = {
    "watermark": "copyright notice", "ruler": "measuring scale", "patch": "sticker", "frame": "picture frame",
    "water": "ocean", "grass": "meadow", "sand": "desert", "ring": "donut", "cross": "plus symbol",
    "red": "crimson", "dots": "polka dots", "checks": "chessboard pattern",
}  # fmt: skip


def concept_phrases(concept: str) -> tuple[str, ...]:
    """Every word or phrase by which a training caption names a concept."""
    family = concept_family(concept)
    if family == "shape":
        return SHAPE_NOUNS[concept]
    if family == "color":
        return COLOR_WORDS[concept]
    if family == "pattern":
        return PATTERN_WORDS[concept][0] + PATTERN_WORDS[concept][1]
    if family == "background":
        return BACKGROUND_WORDS[concept][1]
    return ARTIFACT_NOUNS[concept]


def training_phrases() -> list[str]:
    """Every word or phrase a training caption can contain (to check that ``HELD_OUT`` stays out)."""
    concepts = [*SHAPE_NOUNS, *COLOR_WORDS, *PATTERN_WORDS, *BACKGROUND_WORDS, *ARTIFACT_NOUNS]
    prepositions = [preposition for preposition, _ in BACKGROUND_WORDS.values()]
    return [*GENERIC_NOUNS, *PREFIXES, *prepositions, *(phrase for concept in concepts for phrase in concept_phrases(concept))]


def _pick(options: Sequence[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def _article(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeio' else 'a'} {phrase}"


def _name(concept: str, rng: np.random.Generator) -> str:
    """A standalone phrase naming one concept (list-style captions)."""
    family = concept_family(concept)
    if family == "shape":
        noun = _pick(SHAPE_NOUNS[concept], rng)
        return _article(noun) if rng.random() < 0.5 else noun
    if family == "color":
        return _pick(COLOR_WORDS[concept], rng)
    if family == "pattern":
        adjectives, nouns = PATTERN_WORDS[concept]
        return _pick(nouns, rng) if rng.random() < 0.6 else f"{_pick(adjectives, rng)} pattern"
    if family == "background":
        noun = _pick(BACKGROUND_WORDS[concept][1], rng)
        return f"{noun} background" if rng.random() < 0.2 and not noun.endswith(("background", "backdrop")) else noun
    return _pick(ARTIFACT_NOUNS[concept], rng)


def _sentence(kept: dict[str, str], artifacts: list[str], rng: np.random.Generator) -> str:
    """A phrase such as "a red striped star on grass with a ruler" from the kept concepts."""
    marks = " and ".join(_pick(ARTIFACT_NOUNS[name][1:], rng) for name in artifacts)
    subject = ""
    if {"shape", "color", "pattern"} & set(kept):
        words = [_pick(COLOR_WORDS[kept["color"]], rng)] if "color" in kept else []
        tail = ""
        if "pattern" in kept:
            adjectives, nouns = PATTERN_WORDS[kept["pattern"]]
            if rng.random() < 0.5:
                words.append(_pick(adjectives, rng))
            else:
                tail = f" with {_pick(nouns, rng)}"
        rng.shuffle(words)
        noun = _pick(SHAPE_NOUNS[kept["shape"]], rng) if "shape" in kept else _pick(GENERIC_NOUNS, rng)
        subject = _article(" ".join([*words, noun])) + tail
        if "background" in kept:
            preposition, nouns = BACKGROUND_WORDS[kept["background"]]
            subject += f" {preposition} {_pick(nouns, rng)}"
    elif "background" in kept:
        subject = _pick(BACKGROUND_WORDS[kept["background"]][1], rng)
    if not subject:
        return marks
    if not marks:
        return subject
    if rng.random() < 0.3:
        return f"{marks}, {subject}"
    return f"{subject} {'and' if ' with ' in subject else 'with'} {marks}"  # never "with spots with a ruler"


def caption(concepts: Sequence[str], rng: np.random.Generator) -> tuple[str, list[str]]:
    """A random caption of a view and the concepts it names: a random non-empty subset of ``concepts``
    (the view's visible concepts), as a sentence or a shuffled list, in one of several templates."""
    if not concepts:
        raise SemlensError("a caption needs at least one visible concept")
    chosen = rng.choice(len(concepts), int(rng.integers(1, len(concepts) + 1)), replace=False)
    named = [concepts[index] for index in sorted(chosen)]
    if rng.random() < 0.35:
        parts = [_name(concept, rng) for concept in named]
        rng.shuffle(parts)
        body = ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]
    else:
        kept = {concept_family(name): name for name in named if concept_family(name) != "artifact"}
        body = _sentence(kept, [name for name in named if concept_family(name) == "artifact"], rng)
    return _pick(PREFIXES, rng).format(body), named


def visible_concepts(sample: WorldSample, box: tuple[int, int, int, int] | None = None) -> list[str]:
    """The concepts a view of a sample shows well: enough of the concept's mask inside the box (x0, y0,
    x1, y1, end exclusive; default the whole image), or enough of the box covered by it; a shape needs
    most of its mask inside. A crop of the object does not show an artefact in a corner, nor a crop of
    the corner the object."""
    height, width = next(iter(sample.masks.values())).shape
    x0, y0, x1, y1 = box or (0, 0, width, height)
    area = (x1 - x0) * (y1 - y0)
    visible = []
    for concept, mask in sample.masks.items():
        inside = int(mask[y0:y1, x0:x1].sum())
        total = int(mask.sum())
        if concept_family(concept) == "shape":
            shown = inside >= VIEW_RULES["shape_share"] * total
        else:
            shown = inside >= VIEW_RULES["mask_share"] * total or inside >= VIEW_RULES["area_share"] * area
        if shown and inside >= VIEW_RULES["min_pixels"]:
            visible.append(concept)
    return visible


def random_box(sample: WorldSample, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random square crop, centred half of the time on a random pixel of a random concept (semlens's
    crops centre on what a unit responds to), otherwise anywhere."""
    height, width = next(iter(sample.masks.values())).shape
    low, high = VIEW_RULES["crop_sides"]
    side = int(rng.integers(round(low * width), round(high * width) + 1))
    masks = [mask for mask in sample.masks.values() if mask.any()]
    if masks and rng.random() < 0.5:
        ys, xs = np.nonzero(masks[int(rng.integers(len(masks)))])
        pick = int(rng.integers(len(xs)))
        cx, cy = int(xs[pick]), int(ys[pick])
    else:
        cx, cy = (int(v) for v in rng.integers(0, width, 2))
    x0 = min(max(cx - side // 2, 0), width - side)
    y0 = min(max(cy - side // 2, 0), height - side)
    return x0, y0, x0 + side, y0 + side
