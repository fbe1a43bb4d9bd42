"""The lean rules (``semlens/relevance/rules.py``) give zennit's ``EpsilonPlusFlat`` relevance.

Each model is explained twice, once with semlens' composite and once with zennit's (with the same
canonizers, but zennit's own for ResNet blocks, and ZPlus or ``SignedZPlus`` as plain zennit hooks for
convolutions: ``TwinConvolutionRule``), and the heatmaps must agree to float rounding: on a ReLU CNN (every convolution after the first
sees non-negative inputs, so LeanZPlus takes its one-branch path), on models where convolutions see
negative inputs (the signed rule's path: a convolution after a
batch norm without ReLU, and the custom residual CNN whose concatenation feeds a convolution a residual
branch's raw output), on ResNets (basic blocks and bottlenecks) and on EfficientNet-Lite0 (convolutions
with their own padding forward, depthwise convolutions). Then each rule alone, on each of its paths.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import residual_models
import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.resnet import Bottleneck, ResNet
from zennit.composites import EpsilonPlusFlat
from zennit.layer import Sum
from zennit.rules import ClampMod, Epsilon, Flat, Gamma, Norm, ZPlus
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer
from zennit.types import Convolution

from semlens.model.units import resolve_module
from semlens.relevance.canonizers import ResNetResidualCanonizer
from semlens.relevance.lrp import RelevanceModel, crp_heatmaps
from semlens.relevance.rules import LeanBatchNorm, LeanFlat, LeanGamma, LeanNorm, LeanZPlus, SignedZPlus

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


def efficientnet_lite0() -> nn.Module:
    """Random EfficientNet-Lite0 (static "same" padding, depthwise convolutions, ReLU6, MBConv sums), He
    initialised so that its activations neither vanish nor explode."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0", num_classes=10, image_size=64)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model.eval()


#: model, input side, CRP layers (a layer after ReLU and a convolution itself), a ZPlus layer with negative inputs
MODELS = {
    "relu-cnn": (relu_cnn, 16, ["relu3", "conv2"], None),
    "bn-without-relu": (negative_input_cnn, 16, ["relu3", "relu2"], "conv2"),
    "residual-cnn": (residual_models.ResidualCNN, 16, ["blocks.3.mix", "blocks.2"], "blocks.3.mix"),
    "resnet18": (lambda: resnet18(num_classes=10), 64, ["layer4.1.conv2", "layer2"], None),
    "resnet-bottleneck": (lambda: ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10), 32, ["layer3"], None),
    "efficientnet-lite0": (efficientnet_lite0, 64, ["_blocks.10"], None),
}


def explain(relevance: RelevanceModel, inputs: torch.Tensor, layer: str) -> torch.Tensor:
    """CRP heatmaps of unit ``i % units`` on input ``i``: positive and negative copies alike."""
    channels = torch.arange(len(inputs)) % 4
    signs = torch.tensor([1.0, -1.0]).repeat(len(inputs) // 2)
    with relevance.attributing() as modified:
        return crp_heatmaps(modified, inputs, layer, channels, signs)


class TwinConvolutionRule(SignedZPlus):
    """LeanZPlus's rule from zennit's own hook and the plain ``SignedZPlus``: ZPlus on a non-negative input
    where no output that carries relevance lacks a positive part, SignedZPlus elsewhere."""

    def backward(self, module, grad_input, grad_output):
        inputs = self.stored_tensors["input"][0]
        if bool(inputs.min() >= 0):
            with torch.no_grad(), ClampMod(min=0.0)(module) as positive:
                lost = bool(((positive.forward(inputs) == 0) & (grad_output[0] != 0)).any())
            if not lost:
                zplus = ZPlus(stabilizer=self.stabilizer)
                zplus.stored_tensors["input"] = self.stored_tensors["input"]
                return zplus.backward(module, grad_input, grad_output)
        return super().backward(module, grad_input, grad_output)


def zennit_twin(relevance: RelevanceModel) -> RelevanceModel:
    """The same model under zennit's own ``EpsilonPlusFlat``, with the same canonizers except zennit's own
    for ResNet blocks (which stack the summands on a last axis), and ``TwinConvolutionRule`` for convolutions."""
    twin = RelevanceModel(relevance.model, relevance.example, relevance.epsilon)
    canonizers = []
    for canonizer in relevance.composite.canonizers:
        resnet = isinstance(canonizer, ResNetResidualCanonizer)
        canonizers += [ResNetBasicBlockCanonizer(), ResNetBottleneckCanonizer()] if resnet else [canonizer]
    signed = [(Convolution, TwinConvolutionRule(stabilizer=relevance.epsilon))]
    twin.composite = EpsilonPlusFlat(epsilon=relevance.epsilon, canonizers=canonizers, layer_map=signed)
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


class SamePaddedConv(nn.Conv2d):
    """A convolution with its own forward (EfficientNet's static "same" padding): the rules must run it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(nn.functional.pad(x, (2, 1, 2, 1)))


def rule_relevance(rule, module: nn.Module, inputs: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """A rule's relevance at the inputs of ``module`` for the relevance ``grad`` at its output."""
    rule.stored_tensors["input"] = (inputs,)
    return rule.backward(module, (inputs,), (grad,))[0].detach()


def sparse(grad: torch.Tensor, channels: list[int]) -> torch.Tensor:
    """``grad`` on ``channels`` only (as below a CRP layer), zero elsewhere."""
    kept = torch.zeros_like(grad)
    kept[:, channels] = grad[:, channels]
    return kept


@pytest.mark.parametrize("inputs", ["non-negative", "mixed", "non-negative, an output without positive part"])
@pytest.mark.parametrize("relevance", ["dense", "two channels", "none"])
@pytest.mark.parametrize("layer", ["conv", "grouped conv", "same-padded conv"])
def test_lean_zplus_on_each_path(inputs: str, relevance: str, layer: str) -> None:
    """LeanZPlus is zennit's ZPlus on a non-negative input, and SignedZPlus (zennit's four-branch hook) on an
    input with negative entries or where an output that carries relevance holds no positive contribution (z⁺
    would lose it): computed directly for torch's convolutions, by the hook for a subclass with its own forward."""
    torch.manual_seed(0)
    conv = {
        "conv": lambda: nn.Conv2d(4, 6, 3, padding=1),
        "grouped conv": lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2),
        "same-padded conv": lambda: SamePaddedConv(4, 6, 4),
    }[layer]()
    x = torch.randn(2, 4, 8, 8) if inputs == "mixed" else torch.rand(2, 4, 8, 8)
    if "without" in inputs:
        with torch.no_grad():
            conv.weight[1] = -conv.weight[1].abs()  # channel 1: negative weights on a non-negative input
            conv.bias[1] = -0.1
    grad = {"dense": lambda g: g, "two channels": lambda g: sparse(g, [1, 4]), "none": torch.zeros_like}[relevance](
        torch.rand(2, 6, 8, 8)
    )
    lean = rule_relevance(LeanZPlus(), conv, x, grad)
    if relevance == "none":
        assert torch.equal(lean, torch.zeros_like(lean))
        return
    expected = ZPlus() if inputs == "non-negative" else SignedZPlus()
    assert gap(lean, rule_relevance(expected, conv, x, grad)) < TOLERANCE
    if inputs != "non-negative":  # the two rules differ there: the comparison above tells them apart
        assert gap(rule_relevance(ZPlus(), conv, x, grad), rule_relevance(SignedZPlus(), conv, x, grad)) > 0.01


def test_an_output_the_bias_alone_makes_negative_keeps_zplus() -> None:
    """Where every input in an output's field is zero, a negative bias alone makes it: no input contribution
    of either sign, so z⁺ drops only the bias's share, as the signed rule does, and the layer keeps z⁺."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    with torch.no_grad():
        conv.bias.copy_(-conv.bias.abs() - 0.1)
    x = torch.rand(2, 4, 8, 8)
    x[:, :, :4] = 0  # the top half's outputs see no input at all
    grad = torch.rand(2, 6, 8, 8)
    lean = rule_relevance(LeanZPlus(), conv, x, grad)
    assert gap(lean, rule_relevance(ZPlus(), conv, x, grad)) < TOLERANCE


def test_a_batch_norm_that_stays_gets_the_epsilon_rule_and_a_merged_one_passes() -> None:
    """An unmerged batch norm is ``a x + b`` per channel: each input gets ``a x / (a x + b)`` of its output's
    relevance (zennit's ε-rule). A merged one, the identity, hands relevance on unchanged."""
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0), norm.bias.uniform_(-1.0, 1.0), norm.running_mean.uniform_(-0.5, 0.5)
    x, grad = torch.randn(2, 4, 5, 5), torch.rand(2, 4, 5, 5)
    rule = LeanBatchNorm()
    handles = rule.register(norm)
    assert not rule.merged
    with torch.no_grad():
        y = norm(x)
    scale = (norm.weight / (norm.running_var + norm.eps).sqrt()).view(1, -1, 1, 1)
    expected = scale * x * grad / (y + 1e-6 * ((y >= 0).float() * 2 - 1))
    assert gap(rule_relevance(rule, norm, x, grad), expected) < 1e-4
    assert gap(rule_relevance(rule, norm, x, grad), rule_relevance(Epsilon(), norm, x, grad)) < TOLERANCE
    handles.remove()
    identity = nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        identity.running_var.fill_(1.0 - identity.eps)
    merged = LeanBatchNorm()
    merged.register(identity).remove()
    assert merged.merged and torch.equal(rule_relevance(merged, identity, x, grad), grad)


def test_one_branch_alone_would_lose_the_negative_inputs_share() -> None:
    """What LeanZPlus must not do on an input with negatives: the one-branch path (as on the input's
    positive part) differs from the signed rule, so the tests above see it if it were taken."""
    torch.manual_seed(0)
    conv, x, grad = nn.Conv2d(4, 6, 3, padding=1), torch.randn(2, 4, 8, 8), torch.rand(2, 6, 8, 8)
    one_branch = rule_relevance(LeanZPlus(), conv, x.clamp(min=0), grad)
    assert gap(one_branch, rule_relevance(SignedZPlus(), conv, x, grad)) > 0.1


def test_signed_rule_known_answers() -> None:
    """Two inputs of one, weights (2, -1) and (1, -2), no bias: the first output (1) owes its relevance to
    the first input, the positive contribution; the second (-1) to the second input, the negative one,
    where z⁺ hands it to the first input too."""
    conv = nn.Conv2d(2, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[2.0, -1.0], [1.0, -2.0]]).view(2, 2, 1, 1))
    x = torch.ones(1, 2, 1, 1)
    first, second = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1), torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    assert torch.allclose(rule_relevance(SignedZPlus(), conv, x, first).flatten(), torch.tensor([1.0, 0.0]), atol=1e-5)
    assert torch.allclose(rule_relevance(SignedZPlus(), conv, x, second).flatten(), torch.tensor([0.0, 1.0]), atol=1e-5)
    assert torch.allclose(rule_relevance(ZPlus(), conv, x, second).flatten(), torch.tensor([1.0, 0.0]), atol=1e-5)


def test_gamma_rule_known_answer_and_zennits() -> None:
    """``lrp_rule = "gamma"``: one output of inputs (1, 1), weights (2, -1), no bias: z = 1; with γ = 0.25 the
    first input's contribution weighs 2 + 0.5, the second's -1, so they get 2.5 / 1.5 and -1 / 1.5 of the
    relevance. On a convolution with signed inputs, LeanGamma is zennit's Gamma."""
    conv = nn.Conv2d(2, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([2.0, -1.0]).view(1, 2, 1, 1))
    relevance = rule_relevance(LeanGamma(gamma=0.25), conv, torch.ones(1, 2, 1, 1), torch.ones(1, 1, 1, 1))
    assert torch.allclose(relevance.flatten(), torch.tensor([2.5 / 1.5, -1.0 / 1.5]), atol=1e-5)
    torch.manual_seed(0)
    conv, x, grad = nn.Conv2d(4, 6, 3, padding=1), torch.randn(2, 4, 8, 8), torch.rand(2, 6, 8, 8)
    assert gap(rule_relevance(LeanGamma(gamma=0.25), conv, x, grad), rule_relevance(Gamma(gamma=0.25), conv, x, grad)) < TOLERANCE


def test_the_gamma_rule_is_every_convolutions_rule_and_an_unknown_rule_is_refused() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    x = torch.rand(2, 3, 16, 16)
    gamma = RelevanceModel(model, x, rule="gamma")
    after_first = {"first_layer_visited": True}  # the first convolution takes the flat rule either way
    assert gamma.check().supported and isinstance(gamma.composite.mapping(after_first, "2", model[2]), LeanGamma)
    assert isinstance(RelevanceModel(model, x).composite.mapping(after_first, "2", model[2]), LeanZPlus)
    with pytest.raises(ValueError, match="unknown LRP rule 'alpha2beta1': use one of zplus, gamma"):
        RelevanceModel(model, x, rule="alpha2beta1")


def test_signed_rule_conserves_where_zplus_loses() -> None:
    """A bias-free depthwise convolution on signed inputs, relevance at every output: some outputs hold no
    positive contribution, so z⁺ loses their relevance; the signed rule keeps all of it."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    x = torch.randn(4, 8, 6, 6)
    grad = torch.rand(4, 8, 6, 6)
    total = float(grad.sum())
    assert abs(float(rule_relevance(LeanZPlus(), conv, x, grad).sum()) / total - 1) < 1e-4
    assert float(rule_relevance(ZPlus(), conv, x, grad).sum()) / total < 0.999


@pytest.mark.parametrize(
    "layer",
    [
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.Conv2d(3, 8, 5, dilation=2, padding=3, padding_mode="reflect"),
        nn.Conv1d(3, 8, 4, stride=3),
        nn.Conv2d(4, 8, 3, groups=2),  # zennit's own Flat
        SamePaddedConv(3, 8, 4, stride=2),  # zennit's own Flat
        nn.Linear(12, 8),  # zennit's own Flat
    ],
)
def test_lean_flat_is_flat(layer: nn.Module) -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 12) if isinstance(layer, nn.Linear) else torch.rand(2, layer.in_channels, *(16,) * (layer.weight.dim() - 2))
    grad = torch.randn_like(layer(x))
    assert gap(rule_relevance(LeanFlat(), layer, x, grad), rule_relevance(Flat(), layer, x, grad)) < TOLERANCE


@pytest.mark.parametrize("layer", [Sum(), nn.AvgPool2d(2)])
def test_lean_norm_is_norm(layer: nn.Module) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8, 2) if isinstance(layer, Sum) else torch.randn(2, 4, 8, 8)
    x[0, 0, 0] = 0.0  # outputs of exactly zero take +ε
    grad = torch.randn_like(layer(x))
    assert torch.allclose(rule_relevance(LeanNorm(), layer, x, grad), rule_relevance(Norm(), layer, x, grad), rtol=1e-6, atol=0)


def test_lean_stabilizer_is_zennits_bit_for_bit() -> None:
    from zennit.core import stabilize

    from semlens.relevance.rules import stabilize as lean_stabilize

    z = torch.randn(1000)
    z[:3] = torch.tensor([0.0, -0.0, float("nan")])
    for dtype in (torch.float32, torch.float16, torch.float64):
        assert torch.equal(lean_stabilize(z.to(dtype), 1e-6).nan_to_num(7.0), stabilize(z.to(dtype), 1e-6).nan_to_num(7.0))


def test_a_build_with_an_unknown_lrp_rule_is_refused_with_the_valid_ones() -> None:
    from semlens import BuildConfig
    from semlens._util.errors import SemlensError

    with pytest.raises(SemlensError, match="lrp_rule='epsilon' is not one of zplus, gamma"):
        BuildConfig(model="m", layers=["l"], data="d", lrp_rule="epsilon")


def guessing_everywhere(monkeypatch) -> None:
    """Passes guess their rules' branches on the CPU too, as on a GPU (``lrp.guesses``)."""
    from semlens.relevance import lrp

    monkeypatch.setattr(lrp, "guesses", lambda inputs: True)


def passes(relevance: RelevanceModel, batches: list[torch.Tensor], layer: str) -> list[torch.Tensor]:
    """CRP heatmaps of each batch, one pass each, in one ``attributing`` (as a build's layer runs its passes)."""
    channels, signs = torch.tensor([0, 1, 2, 3]), torch.tensor([1.0, -1.0, 1.0, -1.0])
    with relevance.attributing() as modified:
        return [crp_heatmaps(modified, batch, layer, channels[: len(batch)], signs[: len(batch)]) for batch in batches]


@pytest.mark.parametrize(
    "name, wrong", [("relu-cnn", 0), ("bn-without-relu", 0), ("residual-cnn", 0), ("resnet18", 0), ("efficientnet-lite0", 1)]
)
def test_passes_that_guess_their_branches_give_the_exact_heatmaps(name: str, wrong: int, monkeypatch) -> None:
    """On a GPU a pass after the first takes each convolution's branch from the last exact pass, with no read on
    the host (``rules.Speculation``). Taken as guessed (their records read, never acted on), every pass after the
    first guessed, and each pass no record doubts equals the exact one; in a ReLU network no guess is doubted, in
    EfficientNet-Lite0 (ReLU6, depthwise and "same"-padded convolutions) one pass's is."""
    from semlens.relevance.rules import Speculation

    build, side, layers, _ = MODELS[name]
    torch.manual_seed(0)
    model, batches = build(), list(torch.randn(3, 4, 3, side, side))
    relevance = RelevanceModel(model, batches[0][:2])
    exact = passes(relevance, batches, layers[0])
    failed, checked = Speculation.failed, []

    def trusted(self: Speculation) -> bool:
        checked.append((bool(self._records), failed(self)))
        return False

    monkeypatch.setattr(Speculation, "failed", trusted)
    guessing_everywhere(monkeypatch)
    guessed = passes(relevance, batches, layers[0])
    assert [guessed for guessed, _ in checked] == [False, True, True] and sum(doubted for _, doubted in checked) == wrong
    for ours, theirs, (_, doubted) in zip(guessed, exact, checked):
        assert doubted or gap(ours, theirs) <= TOLERANCE


def identity_then_convolutions() -> nn.Module:
    """conv2 reads the image itself (conv1 is the identity), so its input's sign is the data's; conv3 reads conv2
    with no ReLU between, so relevance reaches conv2's negative outputs, where z⁺ and the signed rule differ."""
    model = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 3, 1), conv2=nn.Conv2d(3, 8, 3, padding=1), conv3=nn.Conv2d(8, 8, 3, padding=1),
            relu3=nn.ReLU(), gap=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(8, 5),
        )  # fmt: skip
    )
    with torch.no_grad():
        model.conv1.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        model.conv1.bias.zero_()
    return model.eval()


def test_a_pass_whose_guess_is_wrong_is_computed_again_exactly(monkeypatch) -> None:
    """conv2 takes the signed rule on a negative image, z⁺ on a non-negative one: a pass on the second that guessed
    from the first is computed again, exactly, and conv2 guesses no more. Without the second computation the
    heatmaps would be the signed rule's."""
    torch.manual_seed(0)
    positive = torch.rand(4, 3, 12, 12)
    assert_a_wrong_guess_is_computed_again(RelevanceModel(identity_then_convolutions(), positive[:2]), [-torch.rand(4, 3, 12, 12), positive], monkeypatch)


def assert_a_wrong_guess_is_computed_again(relevance: RelevanceModel, batches: list[torch.Tensor], monkeypatch) -> None:
    """The second of two passes guesses wrong (its record says so) and is computed again, equal to the exact pass;
    taken on trust it would differ."""
    from semlens.relevance.rules import Speculation

    assert relevance.check().supported, relevance.check().reason
    exact = passes(relevance, batches, "relu3")
    guessing_everywhere(monkeypatch)
    failed, checked = Speculation.failed, []
    monkeypatch.setattr(Speculation, "failed", lambda self: checked.append(failed(self)) or checked[-1])
    again = passes(relevance, batches, "relu3")
    assert checked == [False, True]  # the first pass has nothing to guess from; the second guessed wrong
    assert gap(again[1], exact[1]) <= TOLERANCE
    monkeypatch.setattr(Speculation, "failed", lambda self: False)  # a guess taken on trust
    assert gap(passes(relevance, batches, "relu3")[1], exact[1]) > 1e-3


def relu_then_mixing_convolution() -> nn.Module:
    """conv2 (1x1, weights of both signs, no bias) reads a ReLU'd copy of the image: where its first input channel
    is 0, its first output is -x₁, whose z⁺ part (W⁺x) is 0, though relevance reaches it through conv3 (no ReLU
    between)."""
    model = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(2, 2, 1), relu1=nn.ReLU(), conv2=nn.Conv2d(2, 4, 1), conv3=nn.Conv2d(4, 4, 3, padding=1),
            relu3=nn.ReLU(), gap=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(4, 3),
        )  # fmt: skip
    )
    with torch.no_grad():
        model.conv1.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        model.conv1.bias.zero_()
        model.conv2.weight.copy_(torch.tensor([[1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [0.5, -1.0]]).view(4, 2, 1, 1))
        model.conv2.bias.zero_()
    return model.eval()


def test_a_zplus_guess_on_a_pass_where_zplus_would_lose_relevance_is_computed_again(monkeypatch) -> None:
    """conv2 takes z⁺ on a positive image; on one with zeros, z⁺ loses relevance there and the exact rule turns
    signed. The pass that guessed z⁺ is computed again; taken on trust it would differ."""
    torch.manual_seed(0)
    clean = torch.rand(4, 2, 8, 8) * 0.5 + 1.0
    holed = torch.rand(4, 2, 8, 8)
    holed[:, 0, :4] = 0.0  # conv2's first row there: -x₁ < 0, relevance reaches it, W⁺x = 0
    assert_a_wrong_guess_is_computed_again(RelevanceModel(relu_then_mixing_convolution(), clean[:2]), [clean, holed], monkeypatch)


def test_a_pass_leaves_no_layer_input_held_by_the_rules() -> None:
    """The rules keep every layer's input for their backward; after a pass they are released, or the next pass
    would hold them beside its own (on an H200 a ResNet-50's passes peaked at 12 to 13 GiB of an 8 GiB budget,
    whose meter counted them as the model's)."""
    torch.manual_seed(0)
    model, images = resnet18(num_classes=10).eval(), torch.rand(4, 3, 32, 32)
    relevance = RelevanceModel(model, images[:2])
    with relevance.attributing() as modified:
        crp_heatmaps(modified, images, "layer3", torch.arange(4), torch.ones(4))
        held = [value for hook in relevance.composite.hook_refs for value in hook.stored_tensors.values()]
    assert held == []
