"""Known answers for corrections of a model's reliance on an artefact (``semlens.interventions.correction``):
the projection removes exactly the concept's direction, a planted shortcut is removed by projection and
by fine-tuning, a saved correction re-applies identically, and bad input is refused clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from semlens import LoadedModel, Preprocessing
from semlens._util.errors import SemlensError
from semlens.interventions.correction import (
    ACCURACY_TOLERANCE,
    ConceptProjection,
    TunedParameters,
    Tuning,
    check_sides,
    choose_projection,
    concept_direction,
    counterfactual_set,
    finetune,
    held_out_split,
    tunable_modules,
)
from semlens.interventions.effects import Artifact, insertion_effect, predict
from semlens.lens.correction import Correction, load_correction
from semlens.model.loading import load_model
from semlens.store.trust import spec_risk


def unit(vector: torch.Tensor) -> torch.Tensor:
    return vector / vector.norm()


@pytest.mark.parametrize(
    "shape, last", [((5, 6, 3, 4), False), ((5, 3, 4, 6), True), ((5, 7, 6), False), ((5, 6), False)]
)  # conv maps N,C,H,W; maps read channels last N,H,W,C; tokens N,L,C; vectors N,C
def test_projection_moves_the_component_along_v_to_the_clean_mean_and_keeps_the_rest(shape, last):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator)
    v, z = unit(torch.randn(6, generator=generator)), torch.randn(6, generator=generator)
    projected = ConceptProjection("layer", v, z, channels_last=last).project(x)
    assert projected.shape == x.shape
    channels_last = (lambda t: t.movedim(1, -1)) if len(shape) == 4 and not last else (lambda t: t)
    before, after = channels_last(x), channels_last(projected)
    # along v: every position's component is the clean mean's
    assert torch.allclose(after @ v, torch.full(after.shape[:-1], float(z @ v)), atol=1e-5)
    # orthogonal to v: nothing changed
    orthogonal = torch.eye(6) - torch.outer(v, v)
    assert torch.allclose(after @ orthogonal, before @ orthogonal, atol=1e-5)


def test_direction_estimators_find_a_planted_direction():
    generator = torch.Generator().manual_seed(1)
    without = torch.randn(200, 8, generator=generator)
    with_concept = torch.randn(200, 8, generator=generator) + 2.0 * torch.eye(8)[3]
    assert concept_direction(with_concept, without, "mean")[3] > 0.97
    assert concept_direction(with_concept, without, "logistic")[3] > 0.9
    with pytest.raises(SemlensError, match="valid: mean, logistic"):
        concept_direction(with_concept, without, "svm")
    with pytest.raises(SemlensError, match="does not change"):
        concept_direction(without, without, "mean")


# -- a planted shortcut: red says class 0, a green corner patch (the artefact) pushes to class 0 too --

PREPROCESSING = Preprocessing(input_size=8, resize=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
PATCH = Artifact(image=Image.fromarray(np.array([[[0, 255, 0, 255]] * 4] * 4, dtype=np.uint8), "RGBA"))


class Shortcut(nn.Module):
    """Channel 0 = redness, channel 1 = greenness (the artefact); class 0's logit = 10 (red - 0.47) + 16 green."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 2, 1, bias=False), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])[:, :, None, None])
            self.head.weight.copy_(torch.tensor([[10.0, 16.0], [0.0, 0.0]]))
            self.head.bias.copy_(torch.tensor([-3.5, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


def shortcut_world(count: int, seed: int) -> tuple[list[Image.Image], torch.Tensor]:
    """Images of one red level each (none in the artefact's 4x4 corner); class 0 when red > 0.5."""
    rng = np.random.default_rng(seed)
    reds = rng.uniform(0.1, 0.9, count)
    views = []
    for red in reds:
        pixels = np.zeros((8, 8, 3), dtype=np.uint8)
        pixels[..., 0] = round(255 * red)
        pixels[:4, :4] = 0
        views.append(Image.fromarray(pixels))
    return views, torch.from_numpy((reds <= 0.5).astype(np.int64))


@pytest.fixture()
def shortcut():
    return LoadedModel(Shortcut().eval(), "test:shortcut", PREPROCESSING, ["red", "other"])


def test_projection_removes_a_planted_shortcut_exactly(shortcut):
    views, targets = shortcut_world(60, 0)
    others = [view for view, target in zip(views, targets.tolist()) if target != 0]
    before = insertion_effect(shortcut, views, targets, 0, PATCH)
    assert before["change"]["class_probability"] > 0.2 and before["change"]["predicted_as_class"] > 0.1
    fix, trials = choose_projection(shortcut, ["features.1"], views, targets, 0, PATCH, (others, [PATCH.apply(v) for v in others]))
    assert torch.allclose(fix.direction, torch.tensor([0.0, 1.0]), atol=1e-6)  # the green channel alone
    with fix.applied(shortcut):
        after = insertion_effect(shortcut, views, targets, 0, PATCH)
        assert abs(after["change"]["class_probability"]) < 1e-6
        assert after["clean"] == before["clean"]  # clean activations have no green: nothing changes for them
    assert trials["features.1"]["accuracy_drop"] == 0
    assert torch.equal(predict(shortcut, views), predict(shortcut, views))  # the hook is gone after the block


def test_finetuning_the_head_breaks_a_planted_shortcut(shortcut):
    views, targets = shortcut_world(80, 1)
    before = insertion_effect(shortcut, views, targets, 0, PATCH)
    original = shortcut.module.head.weight.detach().clone()
    fix = finetune(shortcut, *counterfactual_set(views, targets, PATCH, 0), Tuning(last=1, epochs=8, learning_rate=0.5), progress=False)
    assert torch.equal(shortcut.module.head.weight, original)  # the model is left as it was
    assert set(fix.parameters) == {"head.weight", "head.bias"}
    with fix.applied(shortcut):
        after = insertion_effect(shortcut, views, targets, 0, PATCH)
        weight = shortcut.module.head.weight
        assert weight[0, 1] - weight[1, 1] < (original[0, 1] - original[1, 1]) / 2  # the green evidence is down-weighted
    assert torch.equal(shortcut.module.head.weight, original)
    assert abs(after["change"]["class_probability"]) < before["change"]["class_probability"] / 2
    assert after["clean"]["accuracy"] >= before["clean"]["accuracy"] - 0.02


def test_a_saved_correction_reapplies_identically(shortcut, tmp_path):
    views, _ = shortcut_world(20, 2)
    inserted = [PATCH.apply(view) for view in views]
    projection = ConceptProjection.learn(shortcut, "features.1", views, inserted)
    tuned = TunedParameters({"head.bias": torch.tensor([-9.0, 1.0])})
    for method, fix in (("project", projection), ("finetune", tuned)):
        made = Correction("red", method, shortcut.fingerprint, fix, {"estimator": "mean"})
        loaded = load_correction(made.save(tmp_path / f"{method}.safetensors"))
        assert (loaded.class_name, loaded.method, loaded.settings) == ("red", method, {"estimator": "mean"})
        assert getattr(loaded.fix, "channels_last", False) is False
        with made.applied(shortcut):
            expected = predict(shortcut, inserted)
        with loaded.applied(shortcut):
            assert torch.equal(predict(shortcut, inserted), expected)
    assert not torch.equal(expected, predict(shortcut, inserted))
    last = Correction("red", "project", shortcut.fingerprint, ConceptProjection("mlp.1", unit(torch.ones(6)), torch.zeros(6), True), {})
    assert load_correction(last.save(tmp_path / "last.safetensors")).fix.channels_last is True


def test_bad_corrections_are_refused_clearly(shortcut, tmp_path):
    views, _ = shortcut_world(10, 3)
    with pytest.raises(SemlensError, match="no layer 'feature.9'"):
        ConceptProjection.learn(shortcut, "feature.9", views, [PATCH.apply(view) for view in views])
    with pytest.raises(SemlensError, match=r"one shape \[C\]; got \(2,\) and \(3,\)"):
        ConceptProjection("features.1", torch.tensor([1.0, 0.0]), torch.zeros(3))
    with pytest.raises(SemlensError, match="unit norm"):
        ConceptProjection("features.1", torch.tensor([1.0, 1.0]), torch.zeros(2))
    with pytest.raises(SemlensError, match="2 channels, but the projection was learnt on 3"):
        with ConceptProjection("features.1", torch.tensor([1.0, 0, 0]), torch.zeros(3)).applied(shortcut):
            predict(shortcut, views)
    with pytest.raises(SemlensError, match="no parameter 'head.scale'"):
        with TunedParameters({"head.scale": torch.ones(2)}).applied(shortcut):
            pass
    with pytest.raises(SemlensError, match="the model has 2"):
        tunable_modules(shortcut.module, 3)
    with pytest.raises(SemlensError, match="made for the model with weights"):
        with Correction("red", "finetune", "another", TunedParameters({})).applied(shortcut):
            pass
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(SemlensError, match="cannot read the correction"):
        load_correction(tmp_path / "bad.safetensors")
    size = views[0].width
    with pytest.raises(SemlensError, match=f"corner {size},0 lies outside the model's {size}x{size} input view; give a position from 0,0 to {size - 1},{size - 1}"):
        Artifact(PATCH.image, PATCH.mask, (size, 0)).apply(views[0])
    with pytest.raises(SemlensError, match="each channel from 0 to 255; got 300,0,0"):
        Artifact.from_files(tint=(300, 0, 0))
    for bad in ({"epochs": 0}, {"learning_rate": -1.0}):
        with pytest.raises(SemlensError, match="at least one epoch, a positive batch size and a learning rate above 0"):
            Tuning(**bad)


def test_the_held_out_split_keeps_half_of_every_class_on_each_side_even_where_labels_cycle():
    targets = torch.arange(60) % 6  # world data: the label cycles with the sample index
    assert set(targets[0::2].tolist()) == {0, 2, 4}  # what even and odd samples gave: three classes a side
    names = ["circle", "square", "triangle", "star", "cross", "ring"]
    learn, test = held_out_split(targets, names, seed=0)
    assert sorted(learn + test) == list(range(60))
    for side in (learn, test):
        assert torch.bincount(targets[side], minlength=6).tolist() == [5] * 6
    assert held_out_split(targets, names, seed=0) == (learn, test)  # seeded: reproducible
    assert held_out_split(targets, names, seed=1) != (learn, test)
    assert learn != list(range(0, 60, 2))  # shuffled, not in order
    with pytest.raises(SemlensError, match="class 'c' has a single labelled image; .* each class needs at least 2"):
        held_out_split(torch.tensor([0, 0, 1, 1, 2]), ["a", "b", "c"])


def test_learning_and_test_images_of_different_classes_are_refused():
    check_sides(torch.tensor([0, 1, 1]), torch.tensor([1, 0]), ["a", "b"])
    with pytest.raises(SemlensError, match="class 'b' is among the learning images but not the test images"):
        check_sides(torch.tensor([0, 1]), torch.tensor([0, 0]), ["a", "b"])
    with pytest.raises(SemlensError, match="classes 'a', '2' are among the test images but not the learning images"):
        check_sides(torch.tensor([1]), torch.tensor([0, 1, 2]), ["a", "b"])


def measured(accuracy: float) -> dict:
    return {"samples": 10, "clean": {"accuracy": accuracy}, "change": {"class_probability": 0.0}}


def test_a_correction_that_costs_clean_accuracy_beyond_the_tolerance_fails_and_is_never_written(shortcut, tmp_path):
    fix = TunedParameters({"head.bias": torch.tensor([-9.0, 1.0])})
    broken = Correction("red", "finetune", shortcut.fingerprint, fix, before=measured(0.987), after=measured(0.0))
    assert broken.failed == "clean accuracy fell from 0.987 to 0.000, more than the tolerance of 0.02"
    summary = broken.to_dict()
    assert (summary["ok"], summary["failed"], summary["tolerance"]) == (False, broken.failed, ACCURACY_TOLERANCE)
    with pytest.raises(SemlensError, match=r"this correction failed \(clean accuracy fell from 0.987 to 0.000.*\); it is not saved"):
        broken.save(tmp_path / "broken.safetensors")
    with pytest.raises(SemlensError, match="it is not exported"):
        broken.export_weights(shortcut, tmp_path / "weights.safetensors")
    assert not list(tmp_path.iterdir())
    kept = Correction("red", "finetune", shortcut.fingerprint, fix, before=measured(0.9), after=measured(0.885))
    assert kept.failed is None and kept.to_dict()["ok"] is True
    assert "FAILED: clean accuracy fell from 0.987 to 0.000" in repr(broken) and "tensor" not in repr(broken)  # a notebook's one line
    assert repr(kept).startswith("Correction(finetune of 'red': artefact effect ") and repr(kept).endswith("clean accuracy 0.900 -> 0.885; ok)")
    allowed = Correction("red", "finetune", shortcut.fingerprint, fix, before=measured(0.987), after=measured(0.0), tolerance=1.0)
    assert allowed.failed is None and allowed.save(tmp_path / "allowed.safetensors").is_file()


TINY = "py:tiny_models:tiny_cnn"  # features: conv 0, relu 1, pool 2, conv 3 (6 channels, with bias), relu 4; head 6 -> 3


@pytest.mark.parametrize(
    ("method", "fix", "exports"),
    [
        ("finetune", TunedParameters({"head.weight": torch.linspace(-1, 1, 18).reshape(3, 6), "head.bias": torch.tensor([0.5, -0.5, 0.0])}), True),
        ("project", ConceptProjection("features.3", unit(torch.arange(1.0, 7.0)), torch.linspace(0, 1, 6)), True),  # a conv: folded
        ("project", ConceptProjection("features.4", unit(torch.arange(1.0, 7.0)), torch.linspace(0, 1, 6)), False),  # a ReLU: hooked
    ],
)
def test_a_corrected_model_is_a_model_spec_and_exports_weights_the_plain_architecture_loads(tmp_path, method, fix, exports):
    from safetensors.torch import load_file
    from tiny_models import TinyCNN

    base = load_model(TINY)
    pixels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    correction = Correction("red", method, base.fingerprint, fix, spec=base.spec)
    saved = correction.save(tmp_path / "fix.safetensors")
    with torch.no_grad(), correction.applied(base):
        expected = base.module(pixels)
    with pytest.raises(SemlensError, match=f"names its model as '{TINY}', which imports and runs Python code; name the model yourself"):
        load_model(f"corrected:{saved}")  # a correction file may come from someone else: a py: model it names is not followed
    corrected = load_model(f"corrected:{saved}:{TINY}")
    assert corrected.spec == f"corrected:{saved}:{TINY}" and corrected.classes == base.classes
    assert corrected.fingerprint not in (base.fingerprint, load_model(TINY).fingerprint)  # another model, as a Lens records it
    with torch.no_grad():
        assert torch.allclose(corrected.module(pixels), expected, atol=1e-5)
        assert not torch.allclose(base.module(pixels), expected, atol=1e-3)
    assert spec_risk(f"corrected:{saved}") == "reads a correction file on this machine"  # an untrusted Lens never follows it
    weights = tmp_path / "weights.safetensors"
    if not exports:
        with pytest.raises(SemlensError, match="cannot be folded into the model's weights \\(it is a ReLU, not a linear map of the channels\\)"):
            correction.export_weights(base, weights)
        return
    correction.export_weights(base, weights)
    plain = TinyCNN().eval()
    plain.load_state_dict(load_file(str(weights)))  # strict: exactly the architecture's weights, no semlens needed
    with torch.no_grad():
        assert torch.allclose(plain(pixels), expected, atol=1e-5)


def test_a_corrected_model_spec_names_its_model_where_the_file_does_not(tmp_path):
    base = load_model(TINY)
    older = Correction("red", "finetune", base.fingerprint, TunedParameters({"head.bias": torch.zeros(3)}))  # no spec: an earlier file
    saved = older.save(tmp_path / "older.safetensors")
    with pytest.raises(SemlensError, match=f"does not record the spec of its model .*; name it: corrected:{saved}:MODEL_SPEC"):
        load_model(f"corrected:{saved}")
    assert torch.equal(load_model(f"corrected:{saved}:{TINY}").module.head.bias, torch.zeros(3))
    other = Correction("red", "finetune", "another", TunedParameters({"head.bias": torch.zeros(3)}), spec=TINY)
    with pytest.raises(SemlensError, match="made for the model with weights another"):
        load_model(f"corrected:{other.save(tmp_path / 'other.safetensors')}:{TINY}")
