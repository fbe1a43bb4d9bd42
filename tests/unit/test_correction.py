"""Known answers for corrections of a model's reliance on an artefact (``semlens.analysis.correction``):
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
from semlens.analysis.correction import (
    ConceptProjection,
    TunedParameters,
    Tuning,
    choose_projection,
    concept_direction,
    counterfactual_set,
    finetune,
    tunable_modules,
)
from semlens.analysis.interventions import Artifact, insertion_effect, predict
from semlens.lens.correction import Correction, load_correction


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
