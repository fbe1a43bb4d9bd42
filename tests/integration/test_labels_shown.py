"""The labels users see: on the default concept world's bundled models, most valid units show their best
concept, and every face shows the same labels (before, a raw alignment threshold of 0.025 left all but 10 of
the demo's 134 units unlabelled, though their best candidates were right for 87 % of units with a truth)."""

from __future__ import annotations

import pytest
from rich.console import Console

from semlens.lens.labels import shown_by
from semlens.world import demo
from semlens.world.render import WorldConfig


@pytest.fixture(scope="module")
def world_lens(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    build = {"crop": "activation", "workers": 0}  # relevance crops are tested elsewhere; the labels' gate does not depend on them
    original = demo.PROBE_IMAGES, demo.K
    demo.PROBE_IMAGES, demo.K = 240, 8
    try:
        return demo.build_world_lens(out / "world.lens", "zoo:world-cnn", None, None, False, Console(quiet=True), build)
    finally:
        demo.PROBE_IMAGES, demo.K = original


def test_most_valid_units_show_a_concept_with_a_confidence(world_lens) -> None:
    coverage = world_lens.labels.coverage()
    assert coverage["all"]["coverage"] >= 0.8, coverage
    assert coverage["all"]["median_confidence"] >= 1.0
    head = world_lens.labels.shown("head")  # a layer of six units is judged against every unit of the Lens
    classes = WorldConfig.load(None).classes
    assert sum(label == name for label, name in zip(head, classes)) >= 4, head


def test_every_face_shows_the_stored_labels(world_lens) -> None:
    layer = "features.14"
    shown = world_lens.labels.shown(layer)
    units = [f"{layer}/{name}" for name in world_lens.units(layer)]
    assert [world_lens.labels.label_of(unit) for unit in units] == shown
    hits = world_lens.search("watermark", top=5)
    assert all(hit.label == world_lens.labels.label_of(hit.unit) for hit in hits) and any(hit.label for hit in hits)
    labels, valid = world_lens.labels.of(layer), world_lens.arrays.valid(layer).tolist()
    expected = [bool(ok) and float(z) >= labels.min_confidence for ok, z in zip(valid, labels.confidence[:, 0])]
    tied, by = world_lens.arrays.tied(layer).tolist(), shown_by(world_lens)[layer].tolist()
    expected = [expected[by[row]] if tied[row] else shows for row, shows in enumerate(expected)]  # a tied unit: its crops' unit's
    assert any(tied) and [label is not None for label in shown] == expected
    assert all(shown[row] == shown[by[row]] for row in range(len(shown)) if tied[row])


def test_a_lens_of_the_world_s_foundation_model_is_labelled_with_the_world_s_concepts_unless_told(world_lens) -> None:
    """The default vocabulary is the foundation model's own where it names one: with the built-in words the world's
    model labelled rings "mane" and "guitar", confidently. Told, the built-in vocabulary still labels."""
    from semlens import Lens

    lens = Lens.open(world_lens.path)  # labels held in this process only
    assert lens.embedding.default_vocabulary.name == "world"
    assert lens.label(save=False).vocabulary.name == "world" and lens.labels.vocabulary_or(None).name == "world"
    assert lens.label("builtin", save=False).vocabulary.name == "builtin"
    assert lens.labels.vocabulary_or(None).name == "builtin"  # the stored (held) labels' vocabulary comes first
