"""The concept world: masks match the rendered pixels, rendering and training are deterministic, and
configs are validated with clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import semlens
from semlens._util.errors import SemlensError
from semlens.data import load_data
from semlens.world.render import (
    COLORS,
    WORLD_MEAN,
    WORLD_STD,
    WorldConfig,
    WorldData,
    artifact_overlay,
    concept_family,
    concept_image,
    concept_scene,
    render,
)  # fmt: skip


@pytest.fixture(scope="module")
def config() -> WorldConfig:
    return WorldConfig.load()


def test_masks_match_the_rendered_pixels(config):
    for index in range(40):
        sample = render(config, index)
        pixels = np.asarray(sample.image).astype(int)
        concepts = sample.concepts
        shape = sample.masks[concepts["shape"]]
        assert shape.any()
        # the object's colour or its pattern shade is drawn exactly where the shape mask is (minus artefacts)
        if concepts["pattern"] == "plain":
            assert (pixels[shape] == COLORS[concepts["color"]]).all()
        assert np.array_equal(sample.masks[concepts["color"]], shape) and np.array_equal(sample.masks[concepts["pattern"]], shape)
        background = sample.masks[concepts["background"]]
        assert not (background & shape).any()
        for artifact in concepts["artifacts"]:
            mask = sample.masks[artifact]
            assert mask.any() and not (mask & shape).any() and not (mask & background).any()
        covered = shape | background
        for artifact in concepts["artifacts"]:
            covered |= sample.masks[artifact]
        assert covered.all()  # every pixel shows some concept


def test_artifact_pixels_have_the_artifact_colour(config):
    custom = WorldConfig.from_dict({"artifact_rate": 1.0}, "all artefacts")
    sample = render(custom, 3)
    pixels = np.asarray(sample.image)
    assert set(sample.concepts["artifacts"]) == {"watermark", "ruler", "patch", "frame"}
    patch = sample.masks["patch"]
    assert (pixels[patch] == (255, 0, 200)).all()
    assert (pixels[sample.masks["frame"]] == (20, 20, 20)).all()
    assert (pixels[sample.masks["watermark"]] == 255).all()


def test_same_seed_same_images_other_seed_other_images(config):
    first = [np.asarray(render(config, i).image) for i in range(5)]
    again = [np.asarray(render(WorldConfig.load(), i).image) for i in range(5)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    other = WorldConfig.from_dict({"seed": 1}, "seed 1")
    assert not np.array_equal(np.asarray(render(other, 0).image), first[0])
    assert not np.array_equal(np.asarray(render(config, 0, "train").image), first[0])  # splits differ


def test_planted_correlations_show_in_the_samples(config):
    samples = [render(config, i) for i in range(600)]
    star = [s for s in samples if s.concepts["shape"] == "star"]
    others = [s for s in samples if s.concepts["shape"] != "star"]
    assert np.mean(["watermark" in s.concepts["artifacts"] for s in star]) > 0.65
    assert np.mean(["watermark" in s.concepts["artifacts"] for s in others]) < 0.12
    circle = [s for s in samples if s.concepts["shape"] == "circle"]
    assert np.mean([s.concepts["background"] == "grass" for s in circle]) > 0.55


def test_concept_images_show_the_concept_alone(config):
    for concept in config.concept_names():
        sample = concept_image(config, concept, 0)
        assert list(sample.masks) == [concept] and sample.masks[concept].any()
    overlay = artifact_overlay(config, "ruler")
    assert overlay.mode == "RGBA" and np.asarray(overlay)[..., 3].any()


def test_concept_scenes_show_the_concept_among_random_others(config):
    """phi's images: the concept is in every scene; every other factor varies and follows no class, and
    no artefact appears but the concept itself."""
    for concept in config.concept_names():
        family = concept_family(concept)
        scenes = [concept_scene(config, concept, index) for index in range(24)]
        for sample in scenes:
            assert sample.masks[concept].any()
            assert sample.concepts["artifacts"] == ([concept] if family == "artifact" else [])
        for other in ("shape", "color", "pattern", "background"):
            if other != family:
                assert len({sample.concepts[other] for sample in scenes}) >= 3, (concept, other)
    stars = [concept_scene(config, "star", index) for index in range(24)]  # the default world plants a watermark on stars
    assert not any(sample.concepts["artifacts"] for sample in stars)
    assert np.array_equal(np.asarray(concept_scene(config, "red", 3).image), np.asarray(concept_scene(config, "red", 3).image))


def test_world_data_spec_and_labels():
    data = load_data("world::30:test")
    assert isinstance(data, WorldData) and len(data) == 30 and data.classes[0] == "circle"
    assert data.label(7) == 1 and data.sample(7).label == 1 and "square" in data.describe(7)
    assert data.fingerprint() != load_data("world::30:probe").fingerprint()
    with pytest.raises(SemlensError, match="COUNT must be an integer"):
        load_data("world::many")
    with pytest.raises(SemlensError, match="split 'dev'"):
        load_data("world::10:dev")


@pytest.mark.parametrize(
    "values,message",
    [
        ({"colour": 1}, "unknown keys in the config: colour"),
        ({"classes": {"by": "color", "name": ["red", "green"]}}, "unknown keys in \\[classes\\]: name; valid: by, names"),
        ({"correlations": [{"concept": "watermark", "class": "star", "probability": 0.5, "defualt": 0.1}]}, "unknown keys in correlation 1: defualt; valid: concept, class, probability, default"),
        ({"correlations": [{"concept": "watermark", "class": "star"}]}, "correlation 1 lacks probability"),
        ({"correlations": [{"concept": "watermark", "class": "star", "probability": "high"}]}, "correlation 1: probability must be a number; got 'high'"),
        ({"correlations": [{"concept": "watermark", "class": "star", "probability": True}]}, "probability must be a number; got True"),
        ({"correlations": {"concept": "watermark"}}, "correlations must be tables, each under its own \\[\\[correlations\\]\\] header"),
        ({"classes": ["red", "green"]}, "classes must be a table"),
        ({"seed": "abc"}, "seed must be a whole number; got 'abc'"),
        ({"size": 64.7}, "size must be a whole number; got 64.7"),
        ({"classes": {"names": ["circle", "star", "star"]}}, "classes.names lists star more than once"),
        ({"concepts": {"artifacts": ["ruler", "ruler"]}}, "concepts.artifacts lists ruler more than once"),
        ({"correlations": [{"concept": "grass", "class": "star", "probability": 0.9}, {"concept": "sand", "class": "star", "probability": 0.9}]},
         "class 'star' has two correlations for background \\('grass' and 'sand'\\)"),
        ({"correlations": [{"concept": "grass", "class": "star", "probability": 0.9, "default": 0.1}, {"concept": "sand", "class": "ring", "probability": 0.9, "default": 0.2}]},
         "both set a default for the other classes' background"),
        ({"correlations": [{"concept": "ruler", "class": "star", "probability": 0.9, "default": 0.1}, {"concept": "ruler", "class": "ring", "probability": 0.9, "default": 0.2}]},
         "both set a default for the other classes' ruler and they differ"),
        ({"classes": {"by": "artifact"}}, "classes.by must be one of"),
        ({"classes": {"names": ["circle", "hexagon"]}}, "classes.names must be two or more"),
        ({"concepts": {"colors": ["red", "teal"]}}, "colors must be a non-empty list"),
        ({"concepts": {"textures": ["x"]}}, "unknown concept family 'textures'"),
        ({"correlations": [{"concept": "glitter", "class": "star", "probability": 0.5}]}, "'glitter' is not in this world"),
        ({"correlations": [{"concept": "watermark", "class": "hexagon", "probability": 0.5}]}, "class 'hexagon'"),
        ({"correlations": [{"concept": "watermark", "class": "star", "probability": 1.5}]}, "must lie in \\[0, 1\\]"),
        ({"correlations": [{"concept": "square", "class": "star", "probability": 0.5}]}, "of the class family shape"),
        ({"size": 8}, "size must be between"),
    ],
)
def test_invalid_configs_get_clear_errors(values, message):
    with pytest.raises(SemlensError, match=message):
        WorldConfig.from_dict(values, "test.toml")


def test_every_correlation_is_honoured_whatever_its_order():
    """A class's own correlation wins over another class's default, for artefacts and for families alike."""
    correlations = [
        {"concept": "watermark", "class": "star", "probability": 0.8, "default": 0.05},
        {"concept": "watermark", "class": "circle", "probability": 0.8, "default": 0.05},
        {"concept": "grass", "class": "circle", "probability": 0.9, "default": 0.1},
        {"concept": "sand", "class": "square", "probability": 0.9},
    ]
    for order in (correlations, correlations[::-1]):
        config = WorldConfig.from_dict({"classes": {"names": ["circle", "square", "triangle", "star"]}, "correlations": order}, "test.toml")
        shown = {name: [render(config, index, "train").concepts for index in range(400) if config.classes[index % 4] == name] for name in config.classes}
        rate = lambda name, test: sum(map(test, shown[name])) / len(shown[name])  # noqa: E731
        watermark = lambda concepts: "watermark" in concepts["artifacts"]  # noqa: E731
        assert rate("star", watermark) > 0.7 and rate("circle", watermark) > 0.7 and rate("triangle", watermark) < 0.15
        assert rate("square", lambda concepts: concepts["background"] == "sand") > 0.8
        assert rate("circle", lambda concepts: concepts["background"] == "grass") > 0.8
        assert rate("triangle", lambda concepts: concepts["background"] == "grass") < 0.25


def test_world_cnn_training_is_deterministic(monkeypatch, tmp_path):
    from semlens.world import classifier as module

    monkeypatch.setitem(module.TRAINING, "images", 120)
    monkeypatch.setitem(module.TRAINING, "epochs", 1)
    monkeypatch.setenv("SEMLENS_CACHE", str(tmp_path))
    config = WorldConfig.load()
    first = module.train_world_model(config, progress=False).state_dict()
    second = module.train_world_model(config, progress=False).state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)
    cached, _ = module.world_model(config, progress=False)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 1
    reloaded, _ = module.world_model(config, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(cached.state_dict().values(), reloaded.state_dict().values()))


def test_the_default_worlds_models_ship_with_semlens():
    """The demo's first run loads them instead of training for minutes. A change to a training recipe
    changes their names: retrain (run the demo once) and copy the new files from the cache to the assets."""
    from semlens.world import classifier as module
    from semlens.world import foundation

    config = WorldConfig.load()
    paths = [module.weights_path(config), module.weights_path(module.without_artifact_correlations(config))]
    paths.append(foundation.weights_path(config, foundation.DEFAULT_STEPS))
    assets = Path(semlens.__file__).parent / "assets" / "trained"
    assert all(path.is_relative_to(assets) and path.is_file() for path in paths), paths


def test_random_worlds_are_deterministic_valid_and_reach_every_axis():
    from semlens.world.random_world import CLASS_FAMILIES, describe, random_worlds

    worlds = random_worlds(40, controls=10, seed=3)
    assert [w.toml for w in worlds] == [w.toml for w in random_worlds(40, controls=10, seed=3)]
    assert [w.toml for w in worlds] != [w.toml for w in random_worlds(40, controls=10, seed=4)]
    assert len({w.name for w in worlds}) == 40
    described = [describe(world.config()) for world in worlds]  # every drawn config passes validation
    assert {d["class_family"] for d in described} == set(CLASS_FAMILIES)
    assert {d["artifact"] for d in described} == {"watermark", "ruler", "patch", "frame"}
    assert sum(d["control"] for d in described) == 10
    assert all(4 <= len(d["classes"]) <= 6 for d in described)
    assert any(len(world.config().correlations) == 2 for world in worlds)  # a second planted concept
    planted = [d["probability"] for d in described if not d["control"]]
    assert min(planted) >= 0.5 and max(planted) <= 0.9
    assert sum(d["control"] for d in map(describe, (w.config() for w in random_worlds(2, seed=0)))) == 1
    with pytest.raises(SemlensError, match="controls"):
        random_worlds(3, controls=4)


def _artifact_rates(config: WorldConfig, artifact: str, images: int = 600) -> np.ndarray:
    shown = np.zeros(len(config.classes))
    for index in range(images):
        sample = render(config, index, "train")
        shown[sample.label] += artifact in sample.concepts["artifacts"]
    return shown / (images / len(config.classes))


def test_a_control_worlds_artifact_tells_nothing_about_the_class_and_a_planted_one_does():
    from semlens.world.random_world import describe, random_world

    rng = np.random.default_rng(0)
    control, planted = random_world(rng, control=True), random_world(rng, control=False)
    for world, is_control in ((control, True), (planted, False)):
        config = world.config()
        facts = describe(config)
        assert facts["control"] is is_control
        rates = _artifact_rates(config, facts["artifact"])
        target = config.classes.index(facts["artifact_class"])
        others = np.delete(rates, target)
        if is_control:  # one probability for all classes: rates within sampling noise of each other
            assert rates.max() - rates.min() < 0.15 and 0.05 < rates.mean() < 0.4, rates
        else:
            assert rates[target] > others.max() + 0.3 and others.max() < 0.15, rates


def test_response_auc_and_response_truth_single_out_the_concept_a_unit_answers():
    from semlens.world.truth import RESPONSE_AUC, response_auc, response_truth

    responses = torch.zeros(2, 3, 4)  # unit 0 fires on concept 1's images only; unit 1 on nothing
    responses[0, 1] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    auc = response_auc(responses)
    torch.testing.assert_close(auc[0], torch.tensor([0.25, 1.0, 0.25], dtype=auc.dtype))  # ties count half
    torch.testing.assert_close(auc[1], torch.full((3,), 0.5, dtype=auc.dtype))
    assert response_truth(auc, ["a", "b", "c"]) == ["b", None] and RESPONSE_AUC > 0.5


class _PatchDetector(torch.nn.Module):
    """One unit that fires where a pixel is as magenta as the patch artefact (normalised r - g > 3.5)."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 1), torch.nn.ReLU())
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor([1.0, -1.0, 0.0]).view(1, 3, 1, 1))
            self.features[0].bias.fill_(-3.5)

    def forward(self, x):
        return self.features(x)


def test_dissection_names_the_concept_a_unit_detects_and_chance_pairing_does_not():
    from semlens.world.render import world_preprocessing
    from semlens.world.truth import IOU_THRESHOLD, dissect_layer

    # the patch on about 1 image in 5 covers under 0.5 % of the pixels: the unit's top quantile is its firing
    config = WorldConfig.from_dict({"concepts": {"artifacts": ["patch"]}, "artifact_rate": 0.2}, "patch world")
    data = WorldData(config, 60, "probe")
    truth = dissect_layer(_PatchDetector(), world_preprocessing(config), "features.1", data)
    null = dissect_layer(_PatchDetector(), world_preprocessing(config), "features.1", data, null=True)
    assert truth.concepts[int(truth.iou[0].argmax())] == "patch" and float(truth.iou[0].max()) > 0.9
    assert float(null.iou[0].max()) < IOU_THRESHOLD


class _PatchVoter(torch.nn.Module):
    """Two classes: the first one's logit is 20 times the patch detector's strongest response."""

    def __init__(self):
        super().__init__()
        self.detector = _PatchDetector()

    def forward(self, x):
        evidence = 20 * self.detector(x).amax(dim=(2, 3))
        return torch.cat([evidence, torch.zeros_like(evidence)], dim=1)


def test_reliance_is_the_class_probability_an_inserted_artefact_adds():
    from semlens.model.loading import LoadedModel
    from semlens.world.render import world_preprocessing
    from semlens.world.truth import artifact_reliance

    config = WorldConfig.from_dict({"classes": {"names": ["circle", "square"]}, "concepts": {"artifacts": ["patch", "frame"]}}, "two")
    model = LoadedModel(_PatchVoter().eval(), "test", world_preprocessing(config), ["circle", "square"])
    reliance = artifact_reliance(model, config, 40)
    # no image carries a patch (artifact_rate 0): both classes at 1/2, then "circle" at 1 once it is pasted
    for where in ("own", "others"):
        np.testing.assert_allclose(reliance["patch"][where], [0.5, -0.5], atol=1e-3)
        np.testing.assert_allclose(reliance["frame"][where], [0.0, 0.0], atol=1e-6)  # a dark frame is no magenta


def test_faithfulness_phi_of_labelled_units_only():
    import torch

    from semlens.world.truth import faithfulness

    responses = torch.tensor([[0.0, 2.0, 4.0], [1.0, 1.0, 3.0], [5.0, 0.0, 0.0]])  # units x concepts
    # unit 0 labelled with concept 1 (halfway), unit 1 with its best concept (1.0), unit 2 unlabelled
    assert faithfulness(responses, [1, 2, None]) == [0.5, 1.0]
    assert faithfulness(responses, [None, None, None]) == []


def test_where_truths_part_counts_labels_against_the_concept_whose_scenes_raise_each_unit_most():
    """Unit 0: truth patch, its scenes raise it most, labelled patch (agree, hit). Unit 1: truth patch, triangle
    scenes raise it most, labelled triangle (the truths part; the label follows the scenes). Unit 2: no truth. Unit 3:
    truth red, triangle scenes most, labelled red (part; follows the truth)."""
    from semlens.world.truth import where_truths_part

    concepts = ["patch", "triangle", "red"]
    scenes = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.5, 0.2], [0.0, 0.0, 3.0], [0.1, 0.9, 0.5]])
    counts = where_truths_part(scenes, ["patch", "triangle", "red", "red"], ["patch", "patch", None, "red"], concepts)
    assert counts == {"agree": 1, "agree_hits": 1, "part_scene_hits": 1}
    assert where_truths_part(scenes, ["triangle"] * 4, ["patch", "patch", None, "red"], concepts) == {"agree": 1, "agree_hits": 0, "part_scene_hits": 2}


def test_faithfulness_of_true_units_takes_their_top1_labelled_or_not():
    from semlens.world.truth import faithfulness_of_true_units

    responses = torch.tensor([[0.0, 2.0, 4.0], [1.0, 1.0, 3.0], [5.0, 0.0, 0.0], [0.0, 1.0, 2.0]])  # units x concepts
    concepts = ["red", "star", "patch"]
    # unit 0: top-1 "star" (halfway); unit 1: "patch" (its best); unit 2: no true concept, left out;
    # unit 3: "dog", a word the world never shows: 0
    phis = faithfulness_of_true_units(responses, ["star", "patch", "red", "dog"], ["patch", "patch", None, "star"], concepts)
    assert sorted(phis) == [0.0, 0.5, 1.0]
    assert faithfulness_of_true_units(responses, ["star"] * 4, [None] * 4, concepts) == []


def test_each_concept_has_its_own_chance_threshold():
    from semlens.world.truth import IOU_THRESHOLD, concept_thresholds, dissected_concepts

    # chance IoU per (unit, concept): a large concept ("star") reaches 0.055 by chance, a thin one 0.02
    null = torch.tensor([[0.055, 0.02], [0.03, 0.01]])
    thresholds = concept_thresholds(null.max(dim=0).values)
    assert thresholds.tolist() == pytest.approx([0.055, IOU_THRESHOLD])
    # unit 0: star 0.05 (chance) and watermark 0.045 (above its chance): the watermark, though lower;
    # unit 1: star above chance wins; unit 2: nothing above chance
    iou = torch.tensor([[0.05, 0.045], [0.06, 0.045], [0.05, 0.03]])
    assert dissected_concepts(iou, thresholds) == [1, 0, None]
    # unit 1 with the star not allowed: the watermark
    allowed = torch.tensor([[True, True], [False, True], [True, True]])
    assert dissected_concepts(iou, thresholds, allowed) == [1, 1, None]


def test_concept_images_are_test_images_without_the_artefact_and_the_same_with_it():
    from semlens.world.demo import PLACEMENTS, concept_images

    config = WorldConfig.from_dict({"concepts": {"artifacts": ["patch"]}, "artifact_rate": 0.5}, "half patched")
    shown = [index for index in range(40) if "patch" in render(config, index, "test").concepts["artifacts"]]
    assert 0 < len(shown) < 40  # some test images carry the patch already: they are left out
    concept = concept_images(config, "patch", 40)
    kept = [index for index in range(40) if index not in shown]
    assert len(concept.control) == len(kept) and concept.control.classes == list(config.classes)
    assert [concept.control.label(i) for i in range(len(kept))] == [index % len(config.classes) for index in kept]
    views = [concept.control.load(position) for position in range(len(kept))]
    pasted_views, regions = concept._with_concept(None, views), concept.region(views)  # pasted from the images themselves: no model
    assert len(concept.placements) == PLACEMENTS and regions.shape == (len(kept), config.size, config.size)
    for position, index in enumerate(kept[:10]):
        clean = np.asarray(views[position])
        np.testing.assert_array_equal(clean, np.asarray(render(config, index, "test").image))  # the test split, not probe
        pasted = np.asarray(pasted_views[position])
        mask = np.asarray(artifact_overlay(config, "patch", position % PLACEMENTS).getchannel("A")) > 0  # the placements in turn
        assert (pasted[mask] == (255, 0, 200)).all() and (pasted[~mask] == clean[~mask]).all()
        np.testing.assert_array_equal(regions[position].numpy(), mask)
    assert len({tuple(np.argwhere(regions[position].numpy())[0]) for position in range(PLACEMENTS)}) > 1  # placed in several spots
    everywhere = WorldConfig.from_dict({"concepts": {"artifacts": ["patch"]}, "artifact_rate": 1.0}, "all patched")
    with pytest.raises(SemlensError, match="show the patch"):
        concept_images(everywhere, "patch", 10)


def test_an_artefact_unit_must_be_named_by_dissection_and_raised_by_the_pasted_artefact():
    from semlens.interventions.effects import activation_aucs
    from semlens.model.loading import LoadedModel
    from semlens.model.units import LayerSpec
    from semlens.world.demo import concept_images, true_concepts
    from semlens.world.render import world_preprocessing
    from semlens.world.truth import INSERTION_AUC

    config = WorldConfig.from_dict({"concepts": {"artifacts": ["patch", "frame"]}}, "no artefact shown")
    model = LoadedModel(_PatchDetector().eval(), "test", world_preprocessing(config), ["a"])
    spec = [LayerSpec("features.1")]
    # the magenta detector is raised by every pasted patch (AUC 1) and never by the dark frame (0.5: ties)
    patch = activation_aucs(model, *concept_images(config, "patch", 30, "probe").views(model), spec)["features.1"]
    frame = activation_aucs(model, *concept_images(config, "frame", 30, "probe").views(model), spec)["features.1"]
    assert patch.tolist() == [1.0] and frame.tolist() == [0.5]
    # 10/0 detects the patch; 10/1: dissection names the patch, but the patch barely raises it, so its next
    # concept above chance (red) is its truth; 10/2: raised, but red overlaps it more and its scenes raise it
    # more; 10/3: under the patch's chance IoU; 14/0: a colour needs no insertion test; 14/1: dissection
    # names red and the star, the red best, but star scenes raise the unit more than red ones: the star is its truth
    concepts = ["patch", "red", "star"]
    layer = {"concepts": concepts, "iou": [[0.3, 0.0, 0.0], [0.3, 0.2, 0.0], [0.1, 0.3, 0.0], [0.05, 0.0, 0.0]], "chance_iou": [0.06, 0.01, 0.1]}
    patch_most, red_most = [[1.0, 1.0], [0.5, 0.5], [0.0, 0.0]], [[0.5, 0.5], [1.0, 1.0], [0.0, 0.0]]  # [concepts, images]
    scenes = [patch_most, patch_most, red_most, patch_most]  # the scenes' responses [units, concepts, images]
    truths = {
        "features.10": {**layer, "insertion": {"patch": [1.0, INSERTION_AUC - 0.01, 0.9, 1.0]}, "scene_responses": scenes},
        "features.14": {
            "concepts": concepts, "iou": [[0.0, 0.3, 0.0], [0.0, 0.3, 0.2]], "chance_iou": [0.0, 0.0, 0.0],
            "insertion": {"patch": [0.5, 0.5]}, "scene_responses": [red_most, [[0.0, 0.0], [0.5, 0.5], [0.6, 0.6]]],
        },
    }  # fmt: skip
    assert true_concepts(truths) == {
        "features.10/0": "patch", "features.10/1": "red", "features.10/2": "red", "features.14/0": "red", "features.14/1": "star"
    }  # fmt: skip
    assert true_concepts(truths, causal=False) == {
        "features.10/0": "patch", "features.10/1": "patch", "features.10/2": "red", "features.14/0": "red", "features.14/1": "red"
    }  # fmt: skip


def test_where_the_classes_are_backgrounds_a_unit_dissection_cannot_name_has_its_background_by_scene_response():
    from semlens.world.demo import area_concepts, true_concepts
    from semlens.world.truth import AREA_AUC

    backgrounds = WorldConfig.from_dict({"classes": {"by": "background", "names": ["grass", "sky", "sand"]}}, "background classes")
    assert area_concepts(backgrounds) == ["grass", "sky", "sand"] and area_concepts(WorldConfig()) == []
    # 0: dissection names red (its grass scenes raise it most, but dissection's name wins); 1: no IoU passes, sky
    # scenes raise it above every grass and sand scene (AUC 1); 2: sky scenes raise it a little more, overlapping
    # the others (AUC under AREA_AUC); 3: answers the red scenes only, no area concept (AUC 0.5 among them)
    concepts = ["red", "grass", "sky", "sand"]
    scenes = [
        [[0.5, 0.5], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]],
        [[0.0, 0.0], [0.1, 0.2], [0.9, 1.0], [0.2, 0.1]],
        [[0.0, 0.0], [0.1, 0.5], [0.2, 0.6], [0.1, 0.5]],
        [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
    ]  # fmt: skip
    iou = [[0.3, 0.0, 0.0, 0.0], [0.0, 0.01, 0.02, 0.01], [0.0] * 4, [0.0] * 4]
    truths = {"features.10": {"concepts": concepts, "iou": iou, "chance_iou": [0.0] * 4, "insertion": {}, "scene_responses": scenes}}
    assert AREA_AUC < 1.0
    assert true_concepts(truths, area=area_concepts(backgrounds)) == {"features.10/0": "red", "features.10/1": "sky"}
    assert true_concepts(truths) == {"features.10/0": "red"}  # a world of located classes: dissection alone


class _RedDetector(torch.nn.Module):
    """A planted unit: how close each pixel is to the world's red (0 beyond 60 levels), mean-pooled."""

    def __init__(self) -> None:
        super().__init__()
        self.detector = torch.nn.Identity()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        levels = (pixels * WORLD_STD[0] + WORLD_MEAN[0]) * 255  # undo world_preprocessing's scaling around mid-gray
        distance = (levels - torch.tensor(COLORS["red"], dtype=torch.float32)[:, None, None]).norm(dim=1, keepdim=True)
        return self.detector(torch.relu(1 - distance / 60))


def test_a_planted_colour_unit_is_most_faithful_to_its_colour_in_scenes_and_alone(config):
    from semlens.model.units import LayerSpec
    from semlens.world.render import world_preprocessing
    from semlens.world.truth import concept_responses, faithfulness

    concepts = config.concept_names()
    for render_images, count in ((concept_image, 4), (concept_scene, 16)):
        responses = concept_responses(_RedDetector(), world_preprocessing(config), [LayerSpec("detector")], config, render_images, count)["detector"]
        assert responses.shape == (1, len(concepts), count)
        mean = responses.mean(dim=2)
        assert concepts[int(mean.argmax())] == "red" and faithfulness(mean, [concepts.index("red")]) == [1.0]
        assert faithfulness(mean, [concepts.index("blue")])[0] < 0.2


def test_the_world_resnet_is_a_second_architecture_with_its_own_weights_layers_and_lrp(monkeypatch, tmp_path):
    """``zoo:world-resnet``: trained as the CNN is, cached under its own key (the CNN's bundled weights keep their
    name), two spatial layers at the CNN's map sizes, and residual sums that LRP conserves."""
    from semlens.model.loading import load_model
    from semlens.relevance.lrp import RelevanceModel
    from semlens.world import classifier as module
    from semlens.world.demo import world_layers

    monkeypatch.setitem(module.TRAINING, "images", 120)
    monkeypatch.setitem(module.TRAINING, "epochs", 1)
    monkeypatch.setenv("SEMLENS_CACHE", str(tmp_path))
    config = WorldConfig.load()
    assert module.weights_path(config, "resnet") != module.weights_path(config)
    assert world_layers("zoo:world-resnet:my.toml") == ["stages.1", "stages.2", "head"]
    assert world_layers("zoo:world-cnn-clean") == ["features.10", "features.14", "head"]
    loaded = load_model("zoo:world-resnet")
    assert isinstance(loaded.module, module.WorldResNet) and loaded.classes == list(config.classes)
    again, _ = module.world_model(config, "resnet", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(loaded.module.state_dict().values(), again.state_dict().values()))
    maps = {}
    for name in ("stages.1", "stages.2"):
        loaded.module.get_submodule(name).register_forward_hook(lambda _, __, output, name=name: maps.__setitem__(name, tuple(output.shape[1:])))
    pixels = torch.randn(2, 3, config.size, config.size)
    loaded.module(pixels)
    assert maps == {"stages.1": (48, 16, 16), "stages.2": (64, 8, 8)}
    assert RelevanceModel(loaded.module, pixels).check().supported
