"""The ``world`` foundation model: what its captions say, its embeddings, its cache and its spec.

Training runs for a few steps only (``SEMLENS_WORLD_STEPS``) into a temporary cache; what the fully
trained model knows is measured by ``benchmarks/world_foundation.py``.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

import semlens.world.foundation as world_foundation
from semlens._util.errors import SemlensError
from semlens.foundation import load_foundation_model
from semlens.world.captions import HELD_OUT, PREFIXES, caption, concept_phrases, training_phrases, visible_concepts
from semlens.world.foundation import (
    STEPS_VARIABLE,
    WorldFoundation,
    load_world_foundation,
    resolve_steps,
    train_world_foundation,
    training_world,
    weights_path,
)
from semlens.world.render import FAMILIES, WorldConfig, WorldSample, render

STEPS = 3
CONFIG = WorldConfig.load()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A temporary ``SEMLENS_CACHE`` and a short training for every test of this module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEMLENS_CACHE", str(tmp_path_factory.mktemp("cache")))
        patch.setenv(STEPS_VARIABLE, str(STEPS))
        yield


@pytest.fixture(scope="module")
def model(cache: None) -> WorldFoundation:
    return load_world_foundation(progress=False)


def _says(text: str, phrase: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", text, flags=re.IGNORECASE) is not None


def _object_away_from(sample: WorldSample, artifact: str) -> tuple[int, int, int, int] | None:
    """A square box around the object that holds none of the artefact's pixels, if there is one."""
    ys, xs = np.nonzero(sample.masks[sample.concepts["shape"]])
    side = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
    x0, y0 = min(xs.min(), CONFIG.size - side), min(ys.min(), CONFIG.size - side)
    box = (int(x0), int(y0), int(x0 + side), int(y0 + side))
    return None if sample.masks[artifact][box[1] : box[3], box[0] : box[2]].any() else box


def test_a_crop_of_the_object_shows_the_object_not_the_artefact_outside() -> None:
    world = training_world(CONFIG)
    found = None
    for index in range(200):
        sample = render(world, index, "test")
        if "ruler" in sample.concepts["artifacts"] and (box := _object_away_from(sample, "ruler")):
            found = sample, box
            break
    assert found, "no test image with a ruler away from the object among the first 200"
    sample, box = found
    whole = set(visible_concepts(sample))
    assert whole == {sample.concepts[family] for family in ("shape", "color", "pattern", "background")} | set(sample.concepts["artifacts"])
    shown = set(visible_concepts(sample, box))
    assert {sample.concepts["shape"], sample.concepts["color"], sample.concepts["pattern"]} <= shown
    assert "ruler" not in shown
    corner = (0, CONFIG.size - 16, 16, CONFIG.size)  # the ruler is a strip along the bottom edge
    assert "ruler" in visible_concepts(sample, corner)

    rng = np.random.default_rng(0)
    named_ever: set[str] = set()
    for _ in range(60):
        text, named = caption(sorted(shown), rng)
        assert set(named) <= shown and named
        named_ever |= set(named)
        for concept in named:
            assert any(_says(text, phrase) for phrase in concept_phrases(concept)), (text, concept)
        for concept in set(CONFIG.concept_names()) - shown:
            assert not any(_says(text, phrase) for phrase in concept_phrases(concept)), (text, concept)
    assert named_ever == shown


def test_held_out_paraphrases_never_occur_in_training_captions() -> None:
    phrases = [phrase.lower() for phrase in training_phrases()]
    assert not [held for held in HELD_OUT.values() if any(held in phrase for phrase in phrases)]


def test_every_synonym_means_its_concept_to_the_locked_text_tower(model: WorldFoundation) -> None:
    """A synonym that MiniLM reads as another concept would teach the image tower a wrong target."""
    for members in FAMILIES.values():
        names = model.encode_texts(list(members))
        for index, concept in enumerate(members):
            phrases = concept_phrases(concept)
            nearest = (model.encode_texts(phrases) @ names.T).argmax(dim=1)
            assert nearest.tolist() == [index] * len(phrases), (concept, phrases, [members[int(i)] for i in nearest])


def test_the_training_world_shows_every_concept_without_planted_correlations() -> None:
    world = training_world(CONFIG)
    assert world.correlations == () and world.classes == CONFIG.concepts["shape"] and world.artifact_rate > 0
    assert world.fingerprint() != CONFIG.fingerprint() and world.concepts == CONFIG.concepts


def test_training_is_deterministic() -> None:
    first, second = (train_world_foundation(CONFIG, steps=2, batch_size=16, progress=False) for _ in range(2))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_embeddings_are_unit_rows_of_384(model: WorldFoundation) -> None:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(64, 64), (20, 20), (30, 50)]]
    assert model.preprocess(images).shape == (3, 3, CONFIG.size, CONFIG.size)
    for embeddings, count in ((model.encode_images(images), 3), (model.encode_texts(["a red star", "a ruler"]), 2)):
        assert embeddings.shape == (count, 384) and embeddings.dtype == torch.float32
        torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(count))
    assert model.dim == 384 and model.id.startswith("world:default@")


def test_a_second_load_reuses_the_cached_weights(model: WorldFoundation, monkeypatch: pytest.MonkeyPatch) -> None:
    path = weights_path(CONFIG, STEPS)
    modified = path.stat().st_mtime_ns

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setattr(world_foundation, "train_world_foundation", no_training)
    again = load_world_foundation(progress=False)
    assert again.id == model.id and path.stat().st_mtime_ns == modified
    assert load_foundation_model("world").id == model.id  # the spec, default world, same cache entry
    assert load_foundation_model("world:default").id == model.id


def test_the_cache_key_follows_config_steps_and_batch(cache: None) -> None:
    other = WorldConfig.from_dict({"seed": 1}, "other")
    keys = {weights_path(CONFIG, STEPS), weights_path(CONFIG, STEPS + 1), weights_path(other, STEPS), weights_path(CONFIG, STEPS, 32)}
    assert len(keys) == 4
    # the model depends on the world's concepts, not on its name nor on the shortcuts planted in it
    assert weights_path(replace(CONFIG, source="elsewhere", correlations=()), STEPS) == weights_path(CONFIG, STEPS)


def test_the_step_count_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STEPS_VARIABLE, "7")
    assert resolve_steps() == 7 and resolve_steps(5) == 5
    monkeypatch.delenv(STEPS_VARIABLE)
    assert resolve_steps() == world_foundation.DEFAULT_STEPS
    monkeypatch.setenv(STEPS_VARIABLE, "many")
    with pytest.raises(SemlensError, match=STEPS_VARIABLE):
        resolve_steps()


def test_the_contrastive_loss_is_symmetric_infonce_with_every_true_caption_a_positive() -> None:
    """Two views, two captions: low when each view is nearest its captions, about log 2 at chance, and a
    caption true of both views (the third column) pulls neither view away from the other's caption."""
    positives = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    right = world_foundation._contrastive_loss(torch.tensor([[20.0, 0.0], [0.0, 20.0]]), positives)
    chance = world_foundation._contrastive_loss(torch.zeros(2, 2), positives)
    wrong = world_foundation._contrastive_loss(torch.tensor([[0.0, 20.0], [20.0, 0.0]]), positives)
    assert right < 1e-6 and abs(float(chance) - math.log(2)) < 1e-6 and wrong > 19
    shared = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    logits = torch.tensor([[20.0, 0.0, 20.0], [0.0, 20.0, 20.0]])
    # views to captions: each view's target and softmax are 1/2 on its two true captions (log 2 each);
    # captions to views: the shared caption's target and softmax are 1/2 per view (log 2), the others 0
    expected = (math.log(2) + math.log(2) / 3) / 2
    assert abs(float(world_foundation._contrastive_loss(logits, shared)) - expected) < 1e-6


def test_captions_use_none_of_semlens_prompt_templates() -> None:
    """The world's model must not be fitted to the prompts semlens probes with: no caption prefix is one
    of semlens's templates, and no caption carries their particular wording."""
    from semlens.analysis.alignment import TEMPLATES

    templates = {template for group in TEMPLATES.values() for template in group}
    assert not (set(PREFIXES) - {"{}"}) & templates  # a bare phrase is a caption, not a template
    rng = np.random.default_rng(0)
    concepts = CONFIG.concept_names()
    texts = [caption(list(rng.choice(concepts, 4, replace=False)), rng)[0] for _ in range(3000)]
    for wording in ("-like", "close up", "an image of"):
        assert not [text for text in texts if wording in text], wording


def test_world_training_imports_nothing_of_semlens_analysis() -> None:
    import ast
    import inspect

    from semlens.world import captions as captions_module

    for module in (world_foundation, captions_module):
        tree = ast.parse(inspect.getsource(module))
        imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        assert not [name for name in imported if "analysis" in name], (module.__name__, imported)
