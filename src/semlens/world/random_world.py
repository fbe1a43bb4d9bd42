"""Random concept worlds, for judging semlens over many worlds instead of the two written by hand.

A world classifies by one concept family (shape, colour, pattern or background: 4 to 6 of its
concepts as classes) and plants one of its artefacts on one class with a random probability
(``PLANTED``), the other classes keeping the artefact at ``DEFAULT``; sometimes a second concept of
another family is planted on a class too. A *control* world draws the same way but gives its artefact
one probability for every class: the artefact is in the images, yet tells nothing about the class, so
an audit that flags it there is wrong. Every world keeps the default world's concept lists, so one
foundation model (the default world's) knows the concepts of them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from .._util.errors import SemlensError
from .._util.tomlfiles import parse_toml
from .render import CONFIG_FAMILIES, WorldConfig, concept_family

CLASS_FAMILIES = ("shape", "color", "pattern", "background")
CLASS_COUNT = (4, 6)  # classes per world, at most the family's size
PLANTED = (0.5, 0.9)  # P(artefact | its class), uniform in this range
DEFAULT = 0.05  # P(artefact | any other class)
SECOND_CONCEPT = 0.5  # how often a second (non-artefact) concept is planted on a class


@dataclass(frozen=True)
class RandomWorld:
    """A drawn world: a short name that says what was planted, and its config as TOML text."""

    name: str
    toml: str

    def config(self) -> WorldConfig:
        return WorldConfig.from_dict(parse_toml(self.toml, f"random world {self.name}"), self.name)


def _default_concepts() -> dict[str, tuple[str, ...]]:
    text = resources.files("semlens.assets").joinpath("world.toml").read_text(encoding="utf-8")
    return WorldConfig.from_dict(parse_toml(text, "the default world config"), "default").concepts


def _pick(options: tuple[str, ...] | list[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def _correlation(concept: str, class_name: str, probability: float, default: float | None) -> str:
    lines = ["[[correlations]]", f'concept = "{concept}"', f'class = "{class_name}"', f"probability = {probability:.3f}"]
    return "\n".join(lines + ([f"default = {default:.3f}"] if default is not None else []))


def random_world(rng: np.random.Generator, control: bool = False, seed: int = 0) -> RandomWorld:
    """Draw one world from ``rng`` (the same generator state draws the same world). A control world's
    artefact has the same probability for every class: the mean rate of a planted world with the
    drawn strength, (p + (K - 1) * DEFAULT) / K, so both kinds show the artefact about as often."""
    concepts = _default_concepts()
    family = _pick(CLASS_FAMILIES, rng)
    members = concepts[family]
    count = int(rng.integers(CLASS_COUNT[0], min(CLASS_COUNT[1], len(members)) + 1))
    classes = [members[int(index)] for index in sorted(rng.choice(len(members), count, replace=False))]
    artifact = _pick(concepts["artifact"], rng)
    target = _pick(classes, rng)
    strength = float(rng.uniform(*PLANTED))
    planted: list[str] = []
    if control:
        rate = (strength + (count - 1) * DEFAULT) / count
        planted.append(_correlation(artifact, target, rate, rate))
    else:
        planted.append(_correlation(artifact, target, strength, DEFAULT))
    second = ""
    if rng.random() < SECOND_CONCEPT:
        other = _pick([name for name in CLASS_FAMILIES if name != family], rng)
        concept, owner = _pick(concepts[other], rng), _pick(classes, rng)
        planted.append(_correlation(concept, owner, float(rng.uniform(*PLANTED)), None))
        second = f"+{concept}-on-{owner}"
    name = f"{family}-{'control-' + artifact if control else artifact + '-on-' + target}{second}"
    lists = "\n".join(f"{key} = {_toml_list(concepts[family_])}" for key, family_ in CONFIG_FAMILIES.items())
    header = f"# {name}: drawn by semlens.world.random_world\nseed = {seed}\nsize = 64\n\n"
    body = f'[classes]\nby = "{family}"\nnames = {_toml_list(classes)}\n\n[concepts]\n{lists}\n\n'
    return RandomWorld(name, header + body + "\n\n".join(planted) + "\n")


def _toml_list(values: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(f'"{value}"' for value in values) + "]"


def random_worlds(count: int, controls: int | None = None, seed: int = 0) -> list[RandomWorld]:
    """``count`` worlds drawn from ``seed``, ``controls`` of them control worlds (default: one when
    ``count >= 2``, none for a single world), at random positions; names are made unique."""
    if count < 1:
        raise SemlensError(f"random worlds: count must be at least 1; got {count}")
    controls = (1 if count >= 2 else 0) if controls is None else controls
    if not 0 <= controls <= count:
        raise SemlensError(f"random worlds: controls must lie in [0, {count}] (the worlds drawn); got {controls}")
    rng = np.random.default_rng(seed)
    is_control = np.zeros(count, dtype=bool)
    is_control[rng.choice(count, controls, replace=False)] = True
    worlds = [random_world(rng, bool(control)) for control in is_control]
    return [RandomWorld(f"r{seed}.{index}-{world.name}", world.toml) for index, world in enumerate(worlds)]


def planted_artifact(config: WorldConfig) -> tuple[str, str, bool]:
    """(artefact, class, control) of a world's first artefact correlation; control when the artefact
    has the same probability for its class as for every other class. A world without one whose
    ``artifact_rate`` puts every artefact on every class alike is a control of its first artefact and class."""
    for correlation in config.correlations:
        if concept_family(correlation.concept) == "artifact":
            control = correlation.default is not None and float(correlation.default) == correlation.probability
            return correlation.concept, correlation.class_name, control
    if config.artifact_rate > 0:
        return config.concepts["artifact"][0], config.classes[0], True
    raise SemlensError(
        f"world {config.source} plants no artefact: give a [[correlations]] entry of an artefact and a class "
        "(probability = default for a control), or an artifact_rate above 0 (a control)"
    )


def describe(config: WorldConfig) -> dict[str, Any]:
    """What a world plants, for benchmark records."""
    artifact, target, control = planted_artifact(config)
    strength = next(c.probability for c in config.correlations if c.concept == artifact)
    return {"class_family": config.class_family, "classes": list(config.classes), "artifact": artifact, "artifact_class": target,
            "probability": strength, "control": control}  # fmt: skip
