"""The concept world: small rendered images made of known concepts, with a pixel mask for each.

An image shows one object (a shape, in a colour, with a surface pattern) on a background, and maybe
artefacts (a watermark text, a ruler bar, a coloured patch, a frame). Which concepts appear is drawn
from a TOML config whose planted correlations (e.g. a watermark on most "star" images) create the
shortcuts an audit should find. Everything is seeded per image, so any sample can be rendered again
on its own, and the masks give the ground truth of what every pixel shows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .._util.errors import SemlensError
from .._util.tomlfiles import parse_toml, read_toml
from ..data.base import ImageData
from ..model.preprocess import Preprocessing

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
COLORS = {
    "red": (215, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 215), "yellow": (235, 210, 40),
    "purple": (140, 50, 180), "orange": (240, 130, 30), "white": (235, 235, 235), "black": (25, 25, 25),
}  # fmt: skip
PATTERNS = ("plain", "stripes", "dots", "checks")
BACKGROUNDS = ("grass", "sky", "sand", "water", "gray")
ARTIFACTS = ("watermark", "ruler", "patch", "frame")
FAMILIES = {"shape": SHAPES, "color": tuple(COLORS), "pattern": PATTERNS, "background": BACKGROUNDS, "artifact": ARTIFACTS}
CONFIG_FAMILIES = {"shapes": "shape", "colors": "color", "patterns": "pattern", "backgrounds": "background", "artifacts": "artifact"}
TOP_KEYS = ("seed", "size", "classes", "concepts", "artifact_rate", "correlations")
CLASS_KEYS = ("by", "names")
CORRELATION_KEYS = ("concept", "class", "probability", "default")
SPLITS = {"train": 0, "probe": 1, "test": 2, "concepts": 3, "scenes": 4}
NEUTRAL = (128, 128, 128)


@dataclass(frozen=True)
class Correlation:
    concept: str
    class_name: str
    probability: float
    default: float | None = None


@dataclass
class WorldConfig:
    """What the world contains and which correlations are planted (see ``assets/world.toml``)."""

    seed: int = 0
    size: int = 64
    class_family: str = "shape"
    classes: tuple[str, ...] = SHAPES
    concepts: dict[str, tuple[str, ...]] = field(default_factory=lambda: {family: values for family, values in FAMILIES.items()})
    artifact_rate: float = 0.0
    correlations: tuple[Correlation, ...] = ()
    source: str = "default"

    @classmethod
    def load(cls, source: str | Path | None = None) -> WorldConfig:
        """The default world (``None`` or ``"default"``) or a TOML file; invalid configs fail clearly."""
        if source in (None, "", "default"):
            text = resources.files("semlens.assets").joinpath("world.toml").read_text(encoding="utf-8")
            return cls.from_dict(parse_toml(text, "the default world config"), "default")
        return cls.from_dict(read_toml(source, "world config"), str(source))

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str) -> WorldConfig:
        """A world from a config's parsed TOML: every key, type and name checked, and correlations that would
        contradict each other refused, each with a message naming the key and what is valid."""
        check = _ConfigCheck(source)
        check.keys(values, "the config", TOP_KEYS)
        concepts = dict(FAMILIES)
        for key, members in check.table(values.get("concepts", {}), "concepts").items():
            if key not in CONFIG_FAMILIES:
                raise check.fail(f"unknown concept family {key!r}; valid: {', '.join(CONFIG_FAMILIES)}")
            family = CONFIG_FAMILIES[key]
            members = check.names(members, f"concepts.{key}")
            unknown = [member for member in members if member not in FAMILIES[family]]
            if unknown or not members:
                raise check.fail(f"{key} must be a non-empty list from {', '.join(FAMILIES[family])}; got {members}")
            concepts[family] = tuple(members)
        classes = check.table(values.get("classes", {}), "classes")
        check.keys(classes, "[classes]", CLASS_KEYS)
        family = classes.get("by", "shape")
        if family not in FAMILIES or family == "artifact":
            raise check.fail(f"classes.by must be one of shape, color, pattern, background; got {family!r}")
        names = tuple(check.names(classes.get("names", list(concepts[family])), "classes.names"))
        if len(names) < 2 or any(name not in concepts[family] for name in names):
            raise check.fail(f"classes.names must be two or more of the world's {family}s ({', '.join(concepts[family])}); got {list(names)}")
        size = check.number(values.get("size", 64), "size", whole=True)
        if not 32 <= size <= 256:
            raise check.fail(f"size must be between 32 and 256 pixels; got {size}")
        correlations = [check.correlation(entry, position, concepts, family, names) for position, entry in enumerate(check.entries(values), 1)]
        check.consistent(correlations)
        rate = check.number(values.get("artifact_rate", 0.0), "artifact_rate")
        if not 0 <= rate <= 1:
            raise check.fail(f"artifact_rate must lie in [0, 1]; got {rate}")
        seed = check.number(values.get("seed", 0), "seed", whole=True)
        return cls(seed, size, family, names, concepts, float(rate), tuple(correlations), source)

    def fingerprint(self) -> str:
        text = json.dumps({k: v for k, v in self.__dict__.items() if k != "source"}, sort_keys=True, default=lambda o: o.__dict__)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def concept_names(self) -> list[str]:
        """Every concept of the world, family by family (shapes, colours, patterns, backgrounds, artefacts)."""
        return [name for family in FAMILIES for name in self.concepts[family]]


def concept_family(name: str) -> str | None:
    return next((family for family, members in FAMILIES.items() if name in members), None)


class _ConfigCheck:
    """The checks of one world config (``source``), each failing with a message that names the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, message: str) -> SemlensError:
        return SemlensError(f"world config {self.source}: {message}")

    def keys(self, values: dict[str, Any], where: str, valid: tuple[str, ...]) -> None:
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise self.fail(f"unknown keys in {where}: {', '.join(unknown)}; valid: {', '.join(valid)}")

    def table(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(f"{key} must be a table ([{key}]); got {value!r}")
        return value

    def number(self, value: Any, key: str, whole: bool = False) -> Any:
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
            raise self.fail(f"{key} must be {'a whole number' if whole else 'a number'}; got {value!r}")
        return value

    def names(self, value: Any, key: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.fail(f"{key} must be a list of names; got {value!r}")
        repeated = sorted({item for item in value if value.count(item) > 1})
        if repeated:
            raise self.fail(f"{key} lists {', '.join(repeated)} more than once")
        return value

    def entries(self, values: dict[str, Any]) -> list[dict[str, Any]]:
        entries = values.get("correlations", [])
        if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
            raise self.fail(f"correlations must be tables, each under its own [[correlations]] header; got {entries!r}")
        return entries

    def correlation(self, entry: dict[str, Any], position: int, concepts: dict[str, tuple[str, ...]], family: str, names: tuple[str, ...]) -> Correlation:
        where = f"correlation {position}"
        self.keys(entry, where, CORRELATION_KEYS)
        missing = [key for key in ("concept", "class", "probability") if key not in entry]
        if missing:
            raise self.fail(f"{where} lacks {', '.join(missing)}")
        values = [self.number(entry[key], f"{where}: {key}") for key in ("probability", "default") if key in entry]
        if any(not 0 <= value <= 1 for value in values):
            raise self.fail(f"correlation probabilities must lie in [0, 1]; got {values}")
        correlation = Correlation(entry["concept"], entry["class"], float(values[0]), float(values[1]) if len(values) > 1 else None)
        owner = concept_family(correlation.concept) if isinstance(correlation.concept, str) else None
        if owner is None or correlation.concept not in concepts[owner]:
            raise self.fail(f"correlation concept {correlation.concept!r} is not in this world")
        if owner == family:
            raise self.fail(f"correlation concept {correlation.concept!r} is of the class family {family}: it would be the class itself")
        if correlation.class_name not in names:
            raise self.fail(f"correlation class {correlation.class_name!r} is not one of the classes {', '.join(names)}")
        return correlation

    def consistent(self, correlations: list[Correlation]) -> None:
        """No two correlations that render could not both honour: a class drawn toward two concepts of one family
        (an image shows one background) or toward one artefact twice, and no two different defaults for the other
        classes of one family or artefact."""
        slots: dict[tuple[str, str], Correlation] = {}
        defaults: dict[str, Correlation] = {}
        for correlation in correlations:
            family = concept_family(correlation.concept)
            drawn = correlation.concept if family == "artifact" else family  # artefacts are drawn one by one
            earlier = slots.setdefault((drawn, correlation.class_name), correlation)
            if earlier is not correlation:
                raise self.fail(
                    f"class {correlation.class_name!r} has two correlations for {drawn} ({earlier.concept!r} and "
                    f"{correlation.concept!r}); give each class at most one per {'artefact' if family == 'artifact' else 'family'}"
                )
            if correlation.default is not None:
                other = defaults.setdefault(drawn, correlation)
                if other is not correlation and (family != "artifact" or other.default != correlation.default):
                    raise self.fail(
                        f"correlations of {other.concept!r} and {correlation.concept!r} both set a default for the other "
                        f"classes' {drawn}" + (" and they differ" if family == "artifact" else "") + "; give one default"
                    )


@dataclass
class WorldSample:
    """A rendered image, its class, the concepts it shows, and one boolean mask per concept shown."""

    image: Image.Image
    label: int
    concepts: dict[str, Any]
    masks: dict[str, np.ndarray]


# ------------------------------------------------------------------------------------------------
# drawing


def _background(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    noise = rng.normal(0, 6, (size, size, 1))
    if name == "grass":
        blades = (np.sin(x * rng.uniform(40, 60) + rng.uniform(0, 6)) > 0.3)[..., None] * np.array([-20, 25, -10])
        pixels = np.array([60, 140, 50]) + blades + noise
    elif name == "sky":
        pixels = np.array([110, 170, 235]) + y[..., None] * np.array([70, 45, 15]) + noise
    elif name == "sand":
        pixels = np.array([220, 195, 140]) + rng.normal(0, 14, (size, size, 1))
    elif name == "water":
        waves = (np.sin(y * rng.uniform(35, 50) + x * 6 + rng.uniform(0, 6)) > 0.6)[..., None] * np.array([50, 60, 50])
        pixels = np.array([40, 110, 180]) + waves + noise
    else:  # gray
        pixels = np.array(NEUTRAL) + noise
    return pixels


def _shape_mask(shape: str, size: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    cx, cy = centre
    r = radius
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        draw.ellipse((cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55), fill=0)
    elif shape == "square":
        s = r * 0.85
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=255)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r * 0.95, cy + r * 0.75), (cx + r * 0.95, cy + r * 0.75)], fill=255)
    elif shape == "star":
        points = []
        for k in range(10):
            angle = -np.pi / 2 + k * np.pi / 5
            length = r if k % 2 == 0 else r * 0.45
            points.append((cx + length * np.cos(angle), cy + length * np.sin(angle)))
        draw.polygon(points, fill=255)
    else:  # cross
        w = r * 0.32
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=255)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=255)
    return np.asarray(image) > 127


def _pattern(pattern: str, colour: tuple[int, int, int], size: int, rng: np.random.Generator) -> np.ndarray:
    base = np.ones((size, size, 3)) * np.array(colour)
    if pattern == "plain":
        return base
    y, x = np.mgrid[0:size, 0:size]
    period = int(rng.integers(5, 8))
    if pattern == "stripes":
        marks = ((x + y) // period) % 2 == 0
    elif pattern == "dots":
        marks = ((x % period - period / 2) ** 2 + (y % period - period / 2) ** 2) < (period / 3.2) ** 2
    else:  # checks
        marks = ((x // period) + (y // period)) % 2 == 0
    contrast = np.where(np.array(colour).mean() > 140, 0.35, 2.2)
    return np.where(marks[..., None], np.clip(base * contrast + (0 if contrast < 1 else 30), 0, 255), base)


def _artifact(name: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(RGB layer, mask) of an artefact."""
    layer = Image.new("RGB", (size, size), 0)
    mask = Image.new("L", (size, size), 0)
    draw, draw_mask = ImageDraw.Draw(layer), ImageDraw.Draw(mask)
    draw.fontmode = draw_mask.fontmode = "1"  # no anti-aliasing: the mask is exactly the text's pixels
    if name == "watermark":
        x, y = int(rng.integers(1, size // 3)), int(rng.integers(size // 2, size - 12))
        for target, fill in ((draw, (255, 255, 255)), (draw_mask, 255)):
            target.text((x, y), "SAMPLE", fill=fill)
    elif name == "ruler":
        top = size - max(6, size // 10)
        for target, fill in ((draw, (245, 225, 60)), (draw_mask, 255)):
            target.rectangle((0, top, size - 1, size - 1), fill=fill)
        for tick in range(2, size, 4):
            draw.line((tick, top, tick, top + (4 if tick % 8 == 2 else 2)), fill=(20, 20, 20))
    elif name == "patch":
        side = max(6, size // 8)
        x, y = (int(v) for v in rng.integers(0, size - side, 2))
        for target, fill in ((draw, (255, 0, 200)), (draw_mask, 255)):
            target.rectangle((x, y, x + side - 1, y + side - 1), fill=fill)
    else:  # frame
        width = max(2, size // 24)
        for target, fill in ((draw, (20, 20, 20)), (draw_mask, 255)):
            for inset in range(width):
                target.rectangle((inset, inset, size - 1 - inset, size - 1 - inset), outline=fill)
    return np.asarray(layer, dtype=np.float64), np.asarray(mask) > 127


def _choose(config: WorldConfig, family: str, class_name: str, rng: np.random.Generator) -> str:
    """A concept of ``family`` for an image of ``class_name``: its class's correlation in the family if it has one,
    else the family's default, else any member alike."""
    members = config.concepts[family]
    in_family = [correlation for correlation in config.correlations if concept_family(correlation.concept) == family]
    own = next((correlation for correlation in in_family if correlation.class_name == class_name), None)
    fallback = next((correlation for correlation in in_family if correlation.default is not None), None)
    if own is None and fallback is None:
        return members[int(rng.integers(len(members)))]
    concept, probability = (own.concept, own.probability) if own is not None else (fallback.concept, float(fallback.default))
    others = [member for member in members if member != concept] or [concept]
    return concept if rng.random() < probability else others[int(rng.integers(len(others)))]


def _artifact_probability(config: WorldConfig, artifact: str, class_name: str) -> float:
    """P(``artifact`` | ``class_name``): its correlation with the class, else its default, else ``artifact_rate``."""
    entries = [correlation for correlation in config.correlations if correlation.concept == artifact]
    own = next((correlation.probability for correlation in entries if correlation.class_name == class_name), None)
    default = next((float(correlation.default) for correlation in entries if correlation.default is not None), None)
    return own if own is not None else config.artifact_rate if default is None else default


def render(config: WorldConfig, index: int, split: str = "probe") -> WorldSample:
    """Sample ``index`` of a split: classes cycle through the class list, everything else is drawn."""
    rng = np.random.default_rng([config.seed, SPLITS[split], index])
    size = config.size
    label = index % len(config.classes)
    class_name = config.classes[label]
    chosen = {family: _choose(config, family, class_name, rng) for family in ("shape", "color", "pattern", "background")}
    chosen[config.class_family] = class_name
    artifacts = [name for name in config.concepts["artifact"] if rng.random() < _artifact_probability(config, name, class_name)]
    return _compose(size, chosen, artifacts, rng, label)


def _compose(size: int, chosen: dict[str, str | None], artifacts: list[str], rng: np.random.Generator, label: int) -> WorldSample:
    pixels = _background(chosen["background"], size, rng) if chosen.get("background") else np.ones((size, size, 3)) * NEUTRAL
    masks: dict[str, np.ndarray] = {}
    if chosen.get("shape"):
        radius = rng.uniform(0.2, 0.32) * size
        centre = tuple(rng.uniform(radius + 1, size - radius - 1, 2))
        shape = _shape_mask(chosen["shape"], size, centre, radius)
        surface = _pattern(chosen.get("pattern") or "plain", COLORS[chosen.get("color") or "white"], size, rng)
        pixels = np.where(shape[..., None], surface, pixels)
        masks[chosen["shape"]] = shape
        for family in ("color", "pattern"):
            if chosen.get(family):
                masks[chosen[family]] = shape
    covered = np.zeros((size, size), dtype=bool)
    for name in artifacts:
        layer, mask = _artifact(name, size, rng)
        pixels = np.where(mask[..., None], layer, pixels)
        for earlier in artifacts[: artifacts.index(name)]:
            masks[earlier] &= ~mask  # a later artefact hides an earlier one
        masks[name] = mask
        covered |= mask
    objects = masks.get(chosen["shape"], np.zeros((size, size), dtype=bool)) if chosen.get("shape") else np.zeros((size, size), bool)
    for name in list(masks):
        if name not in artifacts:
            masks[name] = masks[name] & ~covered  # what the artefacts hide is not visible
    if chosen.get("background"):
        masks[chosen["background"]] = ~objects & ~covered
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    concepts = {**{family: chosen.get(family) for family in ("shape", "color", "pattern", "background")}, "artifacts": artifacts}
    return WorldSample(image, label, concepts, masks)


def concept_image(config: WorldConfig, concept: str, index: int) -> WorldSample:
    """A concept alone on a neutral gray scene (for faithfulness tests): a shape in white, a colour on a
    square, a pattern on a white square, a background without object, an artefact on gray."""
    rng = np.random.default_rng([config.seed, SPLITS["concepts"], index, config.concept_names().index(concept)])
    family = concept_family(concept)
    chosen: dict[str, str | None] = {"shape": None, "color": None, "pattern": None, "background": None}
    if family == "shape":
        chosen.update(shape=concept, color="white", pattern="plain")
    elif family in ("color", "pattern"):
        chosen.update(shape="square", color=concept if family == "color" else "white", pattern=concept if family == "pattern" else "plain")
    elif family == "background":
        chosen["background"] = concept
    sample = _compose(config.size, chosen, [concept] if family == "artifact" else [], rng, -1)
    sample.masks = {concept: sample.masks[concept]} if concept in sample.masks else {}
    return sample


def concept_scene(config: WorldConfig, concept: str, index: int) -> WorldSample:
    """A concept in a scene of the world whose other factors are drawn uniformly from the world's concepts,
    with no class correlation and no artefact but the concept itself (for faithfulness tests). The models
    never see a concept alone on gray: a white shape there moves a world's shape units less than a
    background alone does, so averaging over scenes asks what the concept adds in the images they know."""
    rng = np.random.default_rng([config.seed, SPLITS["scenes"], index, config.concept_names().index(concept)])
    chosen: dict[str, str | None] = {
        family: config.concepts[family][int(rng.integers(len(config.concepts[family])))] for family in ("shape", "color", "pattern", "background")
    }
    family = concept_family(concept)
    if family != "artifact":
        chosen[family] = concept
    return _compose(config.size, chosen, [concept] if family == "artifact" else [], rng, -1)


def artifact_overlay(config: WorldConfig, name: str, index: int = 0) -> Image.Image:
    """An artefact as an RGBA image of the world's size (alpha = its mask), to insert into other images."""
    rng = np.random.default_rng([config.seed, SPLITS["concepts"], index, len(config.concept_names())])
    layer, mask = _artifact(name, config.size, rng)
    rgba = np.concatenate([layer, mask[..., None] * 255.0], axis=-1)
    return Image.fromarray(rgba.astype(np.uint8), mode="RGBA")


WORLD_MEAN, WORLD_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def world_preprocessing(config: WorldConfig) -> Preprocessing:
    """The world's models see images at the world's size (no crop), scaled around mid-gray."""
    return Preprocessing(input_size=config.size, resize=config.size, mean=WORLD_MEAN, std=WORLD_STD)


class WorldData(ImageData):
    """``world:[CONFIG][:COUNT][:SPLIT]``: ``COUNT`` images (default 2000) of a split (train, probe, test)."""

    def __init__(self, config: WorldConfig, count: int = 2000, split: str = "probe") -> None:
        if split not in ("train", "probe", "test"):
            raise SemlensError(f"world split {split!r} is not one of train, probe, test")
        if count < 1:
            raise SemlensError(f"world data needs a positive image count; got {count}")
        self.config, self.count, self.split = config, count, split
        self.classes = list(config.classes)
        self.spec = f"world:{config.source}:{count}:{split}"

    def __len__(self) -> int:
        return self.count

    def sample(self, index: int) -> WorldSample:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return render(self.config, index, self.split)

    def load(self, index: int) -> Image.Image:
        return self.sample(index).image

    def label(self, index: int) -> int:
        return index % len(self.config.classes)

    def describe(self, index: int) -> str:
        return f"{self.split}/{index:06d} ({self.config.classes[self.label(index)]})"

    def fingerprint(self) -> str:
        return f"{self.config.fingerprint()}-{self.split}-{self.count}"


def parse_world_spec(rest: str) -> WorldData:
    """``CONFIG[:COUNT[:SPLIT]]``; CONFIG may be empty or ``default``."""
    parts = rest.split(":") if rest else []
    config = WorldConfig.load(parts[0] if parts and parts[0] else None)
    try:
        count = int(parts[1]) if len(parts) > 1 and parts[1] else 2000
    except ValueError:
        raise SemlensError(f"world:{rest}: COUNT must be an integer (world:CONFIG:COUNT:SPLIT)") from None
    return WorldData(config, count, parts[2] if len(parts) > 2 and parts[2] else "probe")
