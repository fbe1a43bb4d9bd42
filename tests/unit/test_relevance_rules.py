"""The lean rules (``semlens/relevance/rules.py``) give zennit's ``EpsilonPlusFlat`` relevance.

Each model is explained twice with the same canonizers, once with semlens' composite and once with
zennit's, and the heatmaps must agree to float rounding: on a ReLU CNN (every convolution after the
first sees non-negative inputs, so ZPlus takes its one-branch path), on models where convolutions see
negative inputs (the two-branch path: a convolution after a batch norm without ReLU, and the custom
residual CNN whose concatenation feeds a convolution a residual branch's raw output), and on a ResNet-18.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import residual_models
import torch
from torch import nn
from torchvision.models import resnet18
from zennit.composites import EpsilonPlusFlat
from zennit.rules import ZPlus

from semlens.model.units import resolve_module
from semlens.relevance.lrp import RelevanceModel, crp_heatmaps
from semlens.relevance.rules import LeanZPlus

TOLERANCE = 1e-5


def relu_cnn() -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 8, 3, padding=1), relu1=nn.ReLU(),
            conv2=nn.Conv2d(8, 16, 3, padding=1), relu2=nn.ReLU(), pool=nn.MaxPool2d(2),
            conv3=nn.Conv2d(16, 16, 3, padding=1), relu3=nn.ReLU(),
            gap=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(16, 5),
        )  # fmt: skip
    ).eval()


def negative_input_cnn() -> nn.Module:
    """conv2 reads a batch norm's output with no ReLU between: negative inputs (the norm merges into conv1)."""
    model = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 8, 3, padding=1), bn1=nn.BatchNorm2d(8),
            conv2=nn.Conv2d(8, 16, 3, padding=1), relu2=nn.ReLU(),
            conv3=nn.Conv2d(16, 16, 3, padding=1), relu3=nn.ReLU(),
            gap=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(16, 5),
        )  # fmt: skip
    )
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-0.5, 0.5)
        model.bn1.running_var.uniform_(0.5, 2.0)
    return model.eval()


#: model, input side, CRP layers (a layer after ReLU and a convolution itself), a ZPlus layer with negative inputs
MODELS = {
    "relu-cnn": (relu_cnn, 16, ["relu3", "conv2"], None),
    "bn-without-relu": (negative_input_cnn, 16, ["relu3", "relu2"], "conv2"),
    "residual-cnn": (residual_models.ResidualCNN, 16, ["blocks.3.mix", "blocks.2"], "blocks.3.mix"),
    "resnet18": (lambda: resnet18(num_classes=10), 64, ["layer4.1.conv2", "layer2"], None),
}


def explain(relevance: RelevanceModel, inputs: torch.Tensor, layer: str) -> torch.Tensor:
    """CRP heatmaps of unit ``i % units`` on input ``i``: positive and negative copies alike."""
    channels = torch.arange(len(inputs)) % 4
    signs = torch.tensor([1.0, -1.0]).repeat(len(inputs) // 2)
    with relevance.attributing() as modified:
        return crp_heatmaps(modified, inputs, layer, channels, signs)


def zennit_twin(relevance: RelevanceModel) -> RelevanceModel:
    """The same model and canonizers under zennit's own ``EpsilonPlusFlat``."""
    twin = RelevanceModel(relevance.model, relevance.example, relevance.epsilon)
    twin.composite = EpsilonPlusFlat(epsilon=relevance.epsilon, canonizers=relevance.composite.canonizers)
    return twin


def gap(lean: torch.Tensor, reference: torch.Tensor) -> float:
    return float(((lean - reference).abs().max() / reference.abs().max()).detach())


@pytest.mark.parametrize("name", MODELS)
def test_lean_composite_gives_zennits_heatmaps(name: str) -> None:
    build, size, layers, negative = MODELS[name]
    torch.manual_seed(0)
    inputs = torch.rand(4, 3, size, size)
    lean = RelevanceModel(build(), inputs[:2])
    reference = zennit_twin(lean)
    if negative is not None:  # the two-branch path is really taken
        seen: list[torch.Tensor] = []
        with lean.attributing() as modified, torch.no_grad():
            handle = resolve_module(modified, negative).register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
            modified(inputs)
            handle.remove()
        assert float(seen[0].amin()) < -0.1 * float(seen[0].amax())
    for layer in layers:
        heat = explain(lean, inputs, layer)
        assert heat.abs().amax() > 0
        assert gap(heat, explain(reference, inputs, layer)) < TOLERANCE, layer
    logits = lambda outputs: outputs * (outputs == outputs.amax(1, keepdim=True))  # noqa: E731
    assert gap(lean.input_relevance(inputs, logits), reference.input_relevance(inputs, logits)) < TOLERANCE


def test_lean_composite_keeps_the_conservation_check() -> None:
    torch.manual_seed(0)
    report = RelevanceModel(residual_models.ResidualCNN().eval(), torch.rand(2, 3, 16, 16)).check()
    assert report.supported, report.reason


def test_one_branch_is_exact_only_without_negative_inputs() -> None:
    """LeanZPlus alone equals ZPlus on non-negative inputs; on inputs with negatives, the negative
    branch carries relevance that the one-branch path would lose, and LeanZPlus keeps it."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    grad = torch.rand(2, 6, 8, 8)

    def relevance(rule, inputs: torch.Tensor) -> torch.Tensor:
        rule.stored_tensors["input"] = (inputs,)
        return rule.backward(conv, (inputs,), (grad,))[0]

    positive, mixed = torch.rand(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert gap(relevance(LeanZPlus(), positive), relevance(ZPlus(), positive)) < TOLERANCE
    assert gap(relevance(LeanZPlus(), mixed), relevance(ZPlus(), mixed)) < TOLERANCE
    one_branch = relevance(LeanZPlus(), mixed.clamp(min=0))
    assert gap(one_branch, relevance(ZPlus(), mixed)) > 0.1
