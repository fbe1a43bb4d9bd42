"""LRP/CRP on zennit: conservation on each model family, honest refusals, and hand-computed answers.

Conservation is the property that makes a heatmap trustworthy: with biases and batch-norm shifts at
zero nothing may absorb relevance, so the input relevance must sum to the explained logit. The CRP
and unit-relevance answers are computed here in plain torch from the rule definitions (zennit's
``ZPlus``, ``Flat``, ``Epsilon`` and ``Pass`` in ``zennit/rules.py``), independent of zennit's hooks.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Callable

import pytest
import residual_models
from tiny_models import Normalising
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18, vgg11_bn
from torchvision.models.resnet import Bottleneck, ResNet

from semlens import BuildConfig, build_lens
from semlens.analysis.explain import relevance_shares
from semlens.model.units import hooks, resolve_module
from semlens.pipeline.class_relevance import ClassRelevance
from semlens.relevance.attention import HeldAttention
from semlens.relevance.canonizers import UnsupportedModelError, canonizers_for, traced_batch_norm_pairs
from semlens.relevance.lrp import (
    RelevanceModel,
    crp_heatmaps,
    function_tolerance,
    leaves_without_rule,
    modules_on_the_input_path,
    unit_relevance,
)
from semlens.relevance.residual import FxResidualCanonizer, gated_product, trace_residuals
from semlens.store.files import LensStore

#: RelevanceModel's default epsilon; zennit's ZPlus and Flat default to the same stabilizer
EPSILON = 1e-6


def stabilize(z: torch.Tensor) -> torch.Tensor:
    """zennit's stabilizer: add epsilon with the sign of each entry (zero counts as positive)."""
    return z + EPSILON * torch.where(z >= 0, 1.0, -1.0)


def one_hot_logit(targets: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Initial relevance: each row's target logit, every other output zero."""
    return lambda outputs: outputs * F.one_hot(targets, outputs.shape[1]).to(outputs.dtype)


# -- conservation per model family -------------------------------------------------------------


def without_shifts(model: nn.Module, seed: int = 0) -> nn.Module:
    """Biases and batch-norm shifts at zero (they absorb relevance by design); batch norms get random
    scales and running variances so that merging them into the convolutions is really exercised."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(getattr(module, "bias", None), torch.Tensor):
                module.bias.zero_()
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.zero_()
                module.weight.copy_(0.5 + 1.5 * torch.rand(module.weight.shape, generator=generator))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(module.running_var.shape, generator=generator))
    return model.eval()


def plain_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, 5),
    )  # fmt: skip


def smooth_net() -> nn.Module:
    """A conv net with smooth activations (SiLU, GELU, Hardswish, ELU), whose outputs go below zero."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.GELU(), nn.Conv2d(16, 16, 3, padding=1), nn.Hardswish(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 12), nn.ELU(), nn.Linear(12, 5),
    )  # fmt: skip


def small_vgg() -> nn.Module:
    """vgg11_bn with one small linear head (its adaptive pool takes 32x32 inputs)."""
    model = vgg11_bn()
    model.classifier = nn.Linear(512 * 7 * 7, 10)
    return model


def efficientnet_lite0() -> nn.Module:
    """Random EfficientNet-Lite0. PyTorch's default init shrinks activations through 50 layers to
    logits of ~1e-6, where epsilon swamps everything; He init keeps them of order one. Its batch-norm
    eps of 1e-3 is made negligible, so that the test is about the canonizers and rules, not about eps."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0", num_classes=10, image_size=64)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 1e-9
    return model


def mobilenet_v2() -> nn.Module:
    """torchvision's MobileNetV2: no dedicated canonizer, torch.fx rewrites its 10 skip connections. He init,
    negligible batch-norm eps, as for EfficientNet-Lite."""
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2(num_classes=10)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 1e-9
    return model


def tiny_vit(fused: bool = True) -> nn.Module:
    """A two-block timm ViT on 32 px (8 px patches), its class token and position embedding at zero: they are
    constants the model adds, which absorb relevance as biases do (the check zeroes them too)."""
    import timm

    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=3, depth=2, img_size=32, patch_size=8, embed_dim=48, num_heads=3
    )
    with torch.no_grad():
        model.cls_token.zero_()
        model.pos_embed.zero_()
    for block in model.blocks:
        block.attn.fused_attn = fused
    return model


def tiny_torchvision_convnext() -> nn.Module:
    """torchvision's ConvNeXt, two small stages: its ``Permute`` modules (only rearrange: no rule needed) and
    ``StochasticDepth`` (the identity in eval mode). Layer scales at 1, not 1e-6, so that logits are not tiny."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], stochastic_depth_prob=0.1, layer_scale=1.0, num_classes=3)


def tiny_torchvision_vit() -> nn.Module:
    """torchvision's ViT, two blocks on 32 px: ``nn.MultiheadAttention`` inside. Its head starts at zero
    (logits all zero): drawn at random here. The class token, position embedding and attention's input
    projection biases at zero: constants the model adds (``without_shifts`` zeroes layers' ``bias`` only)."""
    from torchvision.models import VisionTransformer

    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=3)
    nn.init.normal_(model.heads.head.weight)
    with torch.no_grad():
        model.class_token.zero_(), model.encoder.pos_embedding.zero_()
        for layer in model.encoder.layers:
            layer.self_attention.in_proj_bias.zero_()
    return model


def tiny_convnext() -> nn.Module:
    """timm's ConvNeXt-Atto on 32 px: LayerNorm2d, timm's GELU, layer scales, depthwise convolutions."""
    import timm

    return timm.create_model("convnext_atto", pretrained=False, num_classes=3)


FAMILIES: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "plain-conv": (plain_net, 16),
    "smooth-activations": (smooth_net, 16),
    "vgg11_bn": (small_vgg, 32),
    "resnet18-basicblock": (lambda: resnet18(num_classes=10), 32),
    "resnet-bottleneck": (lambda: ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10), 32),
    "efficientnet-lite0": (efficientnet_lite0, 64),
    "mobilenet_v2-fx": (mobilenet_v2, 32),
    "custom-residual-fx": (residual_models.ResidualCNN, 16),
    "scaled-residual-sum-fx": (residual_models.HalvedSumCNN, 16),
    "squeeze-excitation-gates": (residual_models.SqueezeExciteCNN, 16),
    "softmax-over-paths-gates": (residual_models.SplitPathsCNN, 16),
    "inverted-residuals-signed": (residual_models.MobileCNN, 16),
    "pre-activation-batch-norms": (residual_models.DenseCNN, 16),
    "vit-held-attention": (tiny_vit, 32),
    "convnext-layer-norm": (tiny_convnext, 32),
    "torchvision-convnext-permutes": (tiny_torchvision_convnext, 32),
    "torchvision-vit-multihead-attention": (tiny_torchvision_vit, 32),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_input_relevance_sums_to_the_explained_logit(family: str) -> None:
    build, size = FAMILIES[family]
    torch.manual_seed(0)
    model = without_shifts(build())
    inputs = torch.rand(2, 3, size, size)
    relevance = RelevanceModel(model, inputs)
    report = relevance.check()
    assert report.supported, report.reason
    with torch.no_grad():
        logits = model(inputs)
    targets = logits.argmax(dim=1)
    explained = logits[torch.arange(2), targets]
    assert explained.abs().min() > 1e-3  # far above epsilon: a vanishing logit makes any ratio meaningless
    ratio = relevance.input_relevance(inputs, one_hot_logit(targets)).flatten(1).sum(dim=1) / explained
    torch.testing.assert_close(ratio, torch.ones(2), atol=0.02, rtol=0)


# -- models LRP cannot explain here --------------------------------------------------------------


def test_attention_written_out_gets_the_same_relevance_as_fused_attention() -> None:
    torch.manual_seed(0)
    fused = tiny_vit().eval()
    written = tiny_vit(fused=False).eval()
    written.load_state_dict(fused.state_dict())
    inputs = torch.rand(2, 3, 32, 32)
    initial = one_hot_logit(fused(inputs).argmax(dim=1))
    relevance = [RelevanceModel(model, inputs).input_relevance(inputs, initial) for model in (fused, written)]
    torch.testing.assert_close(relevance[1], relevance[0], rtol=1e-3, atol=1e-6)
    assert RelevanceModel(written, inputs).check().supported


def test_held_attention_computes_attention_and_gives_the_values_their_epsilon_share() -> None:
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 3, 5, 4, generator=generator) for _ in range(3))
    mask = torch.rand(5, 5, generator=generator) > 0.3
    mask.fill_diagonal_(True)
    value.requires_grad_(True)
    for options in ({"attn_mask": mask}, {"is_causal": True}, {"scale": 0.7}):
        with HeldAttention():
            output = F.scaled_dot_product_attention(query, key, value, **options)
        torch.testing.assert_close(output, F.scaled_dot_product_attention(query, key, value, **options))
        scores = query @ key.transpose(-2, -1) * options.get("scale", 0.5)
        allowed = mask if "attn_mask" in options else torch.ones(5, 5, dtype=torch.bool).tril() if "is_causal" in options else None
        weights = (scores if allowed is None else scores.masked_fill(~allowed, float("-inf"))).softmax(dim=-1)
        relevance = torch.randn(output.shape, generator=generator)
        (shares,) = torch.autograd.grad(output, value, relevance)
        expected = value.detach() * (weights.transpose(-2, -1) @ (relevance / stabilize(weights @ value.detach())))
        torch.testing.assert_close(shares, expected)
        torch.testing.assert_close(shares.sum(dim=(-2, -1)), relevance.sum(dim=(-2, -1)), rtol=0, atol=1e-3)  # ε aside


class TokenAttention(nn.Module):
    """Tokens embedded, one attention block with its residual sum, averaged, a linear head; attention by
    ``nn.MultiheadAttention`` or, ``layers=True``, by its own query, key and value layers and
    ``F.scaled_dot_product_attention`` (the way timm writes it), the same weights either way."""

    def __init__(self, layers: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.head, self.layers = nn.Linear(4, 8), nn.Linear(8, 3), layers
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.query, self.key, self.value = (nn.Linear(8, 8) for _ in range(3))
        with torch.no_grad():
            for part, layer in enumerate((self.query, self.key, self.value)):
                layer.weight.copy_(self.attn.in_proj_weight[8 * part : 8 * (part + 1)])
                layer.bias.copy_(self.attn.in_proj_bias[8 * part : 8 * (part + 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        if self.layers:
            split = lambda t: t.reshape(t.shape[0], t.shape[1], 2, 4).transpose(1, 2)  # noqa: E731
            attended = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)))
            attended = self.attn.out_proj(attended.transpose(1, 2).reshape(x.shape))
        else:
            attended, _ = self.attn(x, x, x, need_weights=False)
        return self.head((attended + x).mean(dim=1))


def test_torchs_multihead_attention_gets_the_relevance_of_the_same_attention_written_with_layers() -> None:
    tokens = torch.rand(2, 5, 4)
    torch_made, layered = TokenAttention(layers=False).eval(), TokenAttention(layers=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(torch_made(tokens), layered(tokens))
        targets = torch_made(tokens).argmax(dim=1)
    heatmaps = [RelevanceModel(model, tokens).input_relevance(tokens, one_hot_logit(targets)) for model in (torch_made, layered)]
    torch.testing.assert_close(heatmaps[0], heatmaps[1], rtol=1e-4, atol=1e-6)
    assert RelevanceModel(without_shifts(TokenAttention(layers=False)), tokens).check().supported


class EinsumTokenAttention(TokenAttention):
    """``TokenAttention``'s layers with attention written with ``torch.einsum`` (torchvision's MaxViT), the values
    first or the weights; ``traceable=False``: control flow on a value that torch.fx cannot trace."""

    def __init__(self, values_first: bool, traceable: bool) -> None:
        super().__init__(layers=True)
        self.values_first, self.traceable = values_first, traceable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.traceable and x.amin() < 0:
            raise ValueError("inputs must be non-negative")
        x = self.embed(x)
        split = lambda t: t.reshape(t.shape[0], t.shape[1], 2, 4).transpose(1, 2)  # noqa: E731
        query, key, value = split(self.query(x)), split(self.key(x)), split(self.value(x))
        weights = (torch.einsum("bhid,bhjd->bhij", query, key) * 0.5).softmax(dim=-1)
        if self.values_first:
            attended = torch.einsum("bhjd,bhij->bhid", value, weights)
        else:
            attended = torch.einsum("bhij,bhjd->bhid", weights, value)
        attended = self.attn.out_proj(attended.transpose(1, 2).reshape(x.shape))
        return self.head((attended + x).mean(dim=1))


@pytest.mark.parametrize("values_first", [False, True])
@pytest.mark.parametrize("traceable", [True, False])
def test_attention_written_with_einsum_gets_the_relevance_of_fused_attention(values_first: bool, traceable: bool) -> None:
    """The softmax's weights in an einsum with the values are held, in either order, traced or not."""
    tokens = torch.rand(2, 5, 4)
    fused, written = TokenAttention(layers=True).eval(), EinsumTokenAttention(values_first, traceable).eval()
    with torch.no_grad():
        torch.testing.assert_close(written(tokens), fused(tokens))
        targets = fused(tokens).argmax(dim=1)
    heatmaps = [RelevanceModel(model, tokens).input_relevance(tokens, one_hot_logit(targets)) for model in (fused, written)]
    torch.testing.assert_close(heatmaps[1], heatmaps[0], rtol=1e-4, atol=1e-6)
    assert RelevanceModel(without_shifts(EinsumTokenAttention(values_first, traceable)), tokens).check().supported


def test_multihead_attention_with_a_key_bias_is_refused_by_name() -> None:
    model = TokenAttention(layers=False)
    model.attn = nn.MultiheadAttention(8, 2, batch_first=True, add_bias_kv=True)
    report = RelevanceModel(model.eval(), torch.rand(2, 5, 4)).check()
    assert report.reason == "no LRP rule here for attn (MultiheadAttention): add_bias_kv or add_zero_attn"


@pytest.mark.parametrize("groups", [0, 2], ids=["layer-norm", "group-norm"])
def test_a_norms_relevance_is_the_epsilon_rule_with_its_scale_held(groups: int) -> None:
    """Known answer: ``(x - mean) / sigma * w + b`` with sigma held, over all six channels (a layer norm) or within
    each of two groups of three (a group norm)."""
    torch.manual_seed(0)
    norm = nn.GroupNorm(groups, 6) if groups else nn.LayerNorm(6)
    model = nn.Sequential(nn.Linear(5, 6, bias=False), norm, nn.Linear(6, 3, bias=False)).eval()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.2, 0.2)
    inputs = torch.rand(2, 5)
    relevance = RelevanceModel(model, inputs).input_relevance(inputs, one_hot_logit(torch.tensor([0, 2])))
    hidden = model[0](inputs)
    normed = model[1](hidden)
    logits = model[2](normed)
    top = torch.zeros_like(logits)
    top[0, 0], top[1, 2] = logits[0, 0], logits[1, 2]
    r_normed = normed * ((top / stabilize(logits)) @ model[2].weight)  # epsilon rule of the head
    grouped = hidden.reshape(2, max(groups, 1), -1)
    sigma = (grouped.var(dim=2, unbiased=False, keepdim=True) + model[1].eps).sqrt()
    ratio = (r_normed / stabilize(normed) * model[1].weight).reshape(grouped.shape) / sigma  # sigma held
    r_hidden = grouped * (ratio - ratio.mean(dim=2, keepdim=True))
    r_inputs = r_hidden.sum(dim=(1, 2)).reshape(2, 1).expand(-1, 5) / 5  # Flat: the first layer shares it out evenly
    torch.testing.assert_close(relevance, r_inputs, rtol=1e-4, atol=1e-6)


def test_timm_group_norms_with_their_activation_inside_conserve_relevance() -> None:
    """timm's ``GroupNormAct`` (the norm, then its activation, in one module: BiT's ResNetV2) and ``GroupNorm1``
    (PoolFormer's) get the group norm's rule; a subclass of torch's with a forward of its own is refused."""
    from timm.layers import GroupNorm1, GroupNormAct

    class OwnGroupNorm(nn.GroupNorm):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2

    def model(norm: nn.Module) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3), norm, nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()

    inputs = torch.rand(2, 3, 12, 12)
    for norm in (GroupNormAct(8, 4), GroupNorm1(8), nn.GroupNorm(4, 8)):
        report = RelevanceModel(model(norm), inputs).check()
        assert report.supported, report.reason
    report = RelevanceModel(model(OwnGroupNorm(4, 8)), inputs).check()
    assert not report.supported and report.reason == "no LRP rule here for OwnGroupNorm"


@pytest.mark.parametrize("kind, before", [("StdConv2d", nn.ReLU()), ("ScaledStdConv2d", nn.ReLU()), ("ScaledStdConv2dSame", nn.ReLU()), ("StdConv2d", nn.Identity())])
def test_a_weight_standardised_convolution_explains_as_the_plain_convolution_with_its_standardised_weight(kind: str, before: nn.Module) -> None:
    """timm's weight-standardised convolutions (BiT, NFNets) convolve with their weight normalised per output
    channel: the rules must clamp that weight, not standardise the clamped one. The heatmap equals that of
    the same model with a plain convolution holding the standardised weight (z⁺ after a ReLU, the signed rule
    without); the parameter and the forward are the module's own again afterwards."""
    import timm.layers

    torch.manual_seed(0)
    standardised = getattr(timm.layers, kind)(8, 8, 3, stride=2 if kind.endswith("Same") else 1, padding="same" if kind.endswith("Same") else None)
    with torch.no_grad():
        standardised.weight.normal_(0.1, 1.0)
        if hasattr(standardised, "gain"):
            standardised.gain.uniform_(0.5, 2.0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), before, standardised, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    raw = standardised.weight.detach().clone()
    mean, variance = raw.mean(dim=(1, 2, 3), keepdim=True), raw.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
    weight = (raw - mean) / (variance + standardised.eps).sqrt()
    if hasattr(standardised, "gain"):
        weight = weight * standardised.gain * standardised.scale
    inputs = torch.rand(2, 3, 15, 15, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = nn.Conv2d(8, 8, 3, stride=standardised.stride, bias=standardised.bias is not None)
        plain.weight.copy_(weight)
        if plain.bias is not None:
            plain.bias.copy_(standardised.bias)
        twin = nn.Sequential(*model[:2], nn.ZeroPad2d(1), plain, *model[3:]).eval()  # 13 px: "same" pads 1 a side too
        torch.testing.assert_close(twin(inputs), model(inputs), rtol=1e-4, atol=1e-5)
        targets = model(inputs).argmax(dim=1)

    lrp = RelevanceModel(model, inputs)
    assert lrp.check().supported, lrp.check().reason
    expected = RelevanceModel(twin, inputs).input_relevance(inputs, one_hot_logit(targets))
    torch.testing.assert_close(lrp.input_relevance(inputs, one_hot_logit(targets)), expected, rtol=1e-4, atol=1e-7)
    assert torch.equal(standardised.weight, raw) and "forward" not in vars(standardised)


def test_a_layer_that_runs_without_the_input_is_a_constant_the_check_zeroes() -> None:
    """XCiT adds a position encoding that a convolution computes from the grid, its size read off the
    features: the sum shares relevance with it, which it absorbs as a bias does, so the check's bias-free
    copy zeroes that layer's parameters as it zeroes biases (refused without: 0.00 at the layer). A layer
    whose weight a functional call takes (never run as a module) keeps its weight."""

    class Grid(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.projection = nn.Conv2d(2, 8, 1)

        def forward(self, batch: int, height: int, width: int) -> torch.Tensor:
            rows = torch.arange(height, dtype=torch.float32)[:, None].repeat(1, width)
            columns = torch.arange(width, dtype=torch.float32)[None].repeat(height, 1)
            return self.projection(torch.stack([rows, columns])[None]).repeat(batch, 1, 1, 1)

    class Encoded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.position = Grid()
            self.mix = nn.Linear(8, 8, bias=False)
            self.head = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 3, bias=False))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.features(x)
            batch, _, height, width = x.shape
            tokens = (x + self.position(batch, height, width)).flatten(2).transpose(1, 2)
            return self.head(F.linear(tokens, self.mix.weight).mean(dim=1))

    torch.manual_seed(0)
    lrp = RelevanceModel(Encoded().eval(), torch.rand(2, 3, 8, 8))
    assert lrp._constant_layers == {"position.projection"}
    report = lrp.check()
    assert report.supported, report.reason


def test_conservation_compares_a_pass_with_the_logits_it_explains() -> None:
    """The check's ratio is the input relevance over the logits of the same pass. A bias-free copy can amplify
    float rounding block by block (torchvision's EfficientNetV2-S: its canonized logits 40 % off the copy's
    own, every layer conserving); here a pass-through that doubles its output in a relevance pass of the
    bias-free copy alone (a scaling passes relevance whole) stands in for that drift: against the copy's own
    logits the ratio would be 2.00."""

    class Identity(nn.Module):  # by its name, a pass-through without a rule of its own
        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.ones(1))  # zero in the bias-free copy

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2.0 if torch.is_grad_enabled() and not self.bias.any() else x

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), Identity(), nn.Linear(6, 3)).eval()
    report = RelevanceModel(model, torch.rand(2, 4)).check()
    assert report.supported and report.reason == "relevance conserved (input sums / output: 1.000, 1.000)", report.reason


def test_a_global_response_norm_holds_its_response_as_a_layer_norm_holds_its_scale() -> None:
    """timm's ``GlobalResponseNorm`` (ConvNeXt V2), ``x + b + w * x * n`` with ``n`` each channel's spatial L2 norm
    over the channels' mean: with ``n`` held, the same values and the gradient ``1 + w * n`` (known answer), so
    the ε-rule through it conserves relevance (refused before: no rule)."""
    from timm.layers.grn import GlobalResponseNorm

    from semlens.relevance.rules import held_scale_norm

    torch.manual_seed(0)
    norm = GlobalResponseNorm(6, channels_last=False)
    with torch.no_grad():
        norm.weight.uniform_(-0.5, 1.0)
        norm.bias.uniform_(-0.1, 0.1)
    x = torch.rand(2, 6, 5, 5, requires_grad=True)
    held = held_scale_norm(norm, x)
    torch.testing.assert_close(held, norm(x))
    (gradient,) = torch.autograd.grad(held.sum(), x)
    norms = x.detach().norm(dim=(2, 3), keepdim=True)
    expected = (1 + norm.weight.view(1, -1, 1, 1) * norms / (norms.mean(dim=1, keepdim=True) + norm.eps)).expand_as(x)
    torch.testing.assert_close(gradient, expected)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), norm, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).eval()
    report = RelevanceModel(model, torch.rand(2, 3, 7, 7)).check()
    assert report.supported, report.reason


def test_a_layer_norm_of_another_kind_is_refused_by_name() -> None:
    class OwnNorm(nn.LayerNorm):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2

    model = nn.Sequential(nn.Linear(4, 6), OwnNorm(6), nn.Linear(6, 2))
    report = RelevanceModel(model, torch.rand(1, 4)).check()
    assert not report.supported and report.reason == "no LRP rule here for OwnNorm"


def test_a_layer_norm_that_keeps_its_parents_forward_gets_its_rule() -> None:
    """timm's ``LayerNormNoBias``: torch's forward, no bias; known by whose forward runs, not by its name."""

    class NoBiasNorm(nn.LayerNorm):
        def __init__(self, channels: int) -> None:
            super().__init__(channels)
            self.bias = None

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6, bias=False), NoBiasNorm(6), nn.Linear(6, 2, bias=False))
    report = RelevanceModel(model.eval(), torch.rand(2, 4)).check()
    assert report.supported, report.reason


def test_a_square_in_a_forward_is_refused_by_name() -> None:
    """``torch.square`` (timm's ``SquaredReLU`` written by hand) is not linear: the gradient doubles relevance."""

    class Squared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.relu = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.square(self.relu(x))

    model = nn.Sequential(nn.Linear(4, 6), Squared(), nn.Linear(6, 2))
    report = RelevanceModel(model.eval(), torch.rand(2, 4)).check()
    assert not report.supported and "non-linear tensor function `square`" in report.reason


def test_an_activation_without_a_rule_is_refused_by_name() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Mish(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    report = RelevanceModel(model, torch.rand(1, 3, 8, 8)).check()
    assert not report.supported and report.reason == "no LRP rule here for Mish"


# -- residual models no dedicated canonizer knows: torch.fx ---------------------------------------


def relevance_ratio(model: nn.Module, inputs: torch.Tensor, canonizers: list) -> torch.Tensor:
    """Input relevance sums / explained target logit under EpsilonPlusFlat with exactly these canonizers."""
    from zennit.composites import EpsilonPlusFlat

    with torch.no_grad():
        logits = model(inputs)
    targets = logits.argmax(dim=1)
    grad_inputs = inputs.clone().requires_grad_(True)
    with EpsilonPlusFlat(epsilon=EPSILON, canonizers=canonizers).context(model) as modified:
        outputs = modified(grad_inputs)
        (relevance,) = torch.autograd.grad(outputs, grad_inputs, grad_outputs=one_hot_logit(targets)(outputs))
    return relevance.flatten(1).sum(dim=1) / logits[torch.arange(len(inputs)), targets]


def test_fx_rewrites_each_residual_sum_once_and_leaves_concatenations_and_offsets() -> None:
    model = residual_models.ResidualCNN().eval()
    traced = trace_residuals(model, lambda module: False)
    rewritten = {type(module).__name__: list(rewrite.sums) for module, rewrite in traced.rewrites.items()}
    # one Sum each for `+ x`, `+=` and torch.add; not the `+ self.offset` after it, nothing in the cat block
    assert rewritten == {name: ["canonizer_sum_0"] for name in ("PlusBlock", "InPlaceBlock", "TorchAddBlock")}
    assert traced.untraced == {} and traced.unsupported == []


def test_blocks_are_rewritten_when_the_model_itself_cannot_be_traced() -> None:
    model = without_shifts(residual_models.UntraceableRootCNN())
    traced = trace_residuals(model, lambda module: False)
    assert list(traced.untraced) == [""] and traced.untraced[""].startswith("TraceError")
    assert len(traced.rewrites) == 3
    report = RelevanceModel(model, torch.rand(2, 3, 16, 16)).check()
    assert report.supported, report.reason


def test_blocks_with_their_own_canonizer_are_not_rewritten_again() -> None:
    model = resnet18(num_classes=10).eval()
    canonizers = canonizers_for(model, torch.rand(1, 3, 32, 32))
    (fx_canonizer,) = [canonizer for canonizer in canonizers if isinstance(canonizer, FxResidualCanonizer)]
    assert fx_canonizer.traced.rewrites == {}  # the ResNet canonizer owns every BasicBlock's sum


def test_custom_residual_model_conserves_relevance_after_the_fx_rewrite_and_not_before() -> None:
    model = without_shifts(residual_models.ResidualCNN())
    inputs = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    relevance = RelevanceModel(model, inputs)
    report = relevance.check()
    assert report.supported, report.reason
    canonizers = canonizers_for(model, inputs)
    with torch.no_grad():
        assert model(inputs).amax(dim=1).min() > 1e-1
    torch.testing.assert_close(relevance_ratio(model, inputs, canonizers), torch.ones(2), atol=0.02, rtol=0)
    # without the rewrite each of the three skip connections hands its full relevance to both summands: 2^3
    old = relevance_ratio(model, inputs, [c for c in canonizers if not isinstance(c, FxResidualCanonizer)])
    torch.testing.assert_close(old, torch.full((2,), 8.0), atol=0.1, rtol=0)


def test_heatmaps_of_the_traced_model_equal_those_of_the_same_model_written_with_sum() -> None:
    traced = residual_models.ResidualCNN().eval()
    by_hand = residual_models.HandSumResidualCNN().eval()
    by_hand.load_state_dict(traced.state_dict())
    inputs = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    channels, signs = torch.tensor([1, 4]), torch.tensor([1.0, -1.0])
    for layer in ("blocks.0", "blocks.1.branch.conv2", "blocks.2", "blocks.3"):
        with RelevanceModel(by_hand, inputs).attributing() as modified:
            expected = crp_heatmaps(modified, inputs, layer, channels, signs)
        with RelevanceModel(traced, inputs).attributing() as modified:
            actual = crp_heatmaps(modified, inputs, layer, channels, signs)
        assert expected.abs().amax() > 1e-2
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    targets = torch.tensor([0, 2])
    expected = RelevanceModel(by_hand, inputs).input_relevance(inputs, one_hot_logit(targets))
    torch.testing.assert_close(RelevanceModel(traced, inputs).input_relevance(inputs, one_hot_logit(targets)), expected)


def test_hooks_on_blocks_and_their_layers_fire_in_the_rewritten_model() -> None:
    model = residual_models.ResidualCNN().eval()
    inputs = torch.rand(2, 3, 16, 16)
    layers = ["blocks.0", "blocks.1", "blocks.2.branch.conv2", "blocks.2"]

    def outputs_at(net: nn.Module) -> dict[str, torch.Tensor]:
        seen: dict[str, torch.Tensor] = {}
        handles = [
            resolve_module(net, name).register_forward_hook(
                lambda _m, _i, out, name=name: seen.setdefault(name, out.detach())
            )
            for name in layers
        ]
        with torch.no_grad():
            net(inputs)
        for handle in handles:
            handle.remove()
        return seen

    expected = outputs_at(model)
    with RelevanceModel(model, inputs).attributing() as modified:
        assert type(modified.blocks[0].forward.__self__).__name__ == "GraphModule"  # the rewrite is in place here
        actual = outputs_at(modified)
    assert list(actual) == layers
    for name in layers:
        torch.testing.assert_close(actual[name], expected[name])


def test_the_users_model_is_left_as_it_was() -> None:
    model = residual_models.ResidualCNN().eval()
    inputs = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        before = model(inputs)
    structure = [(name, type(module)) for name, module in model.named_modules()]
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    relevance = RelevanceModel(model, inputs)
    assert relevance.check().supported
    with relevance.attributing() as modified:
        crp_heatmaps(modified, inputs, "blocks.2", torch.tensor([0, 1]), torch.ones(2))
    relevance.input_relevance(inputs, lambda outputs: outputs)
    assert type(model) is residual_models.ResidualCNN
    assert [(name, type(module)) for name, module in model.named_modules()] == structure
    for module in model.modules():
        assert "forward" not in vars(module)
        for attribute in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            assert not getattr(module, attribute), (module, attribute)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, weights[name], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), before, rtol=0, atol=0)


def test_a_product_of_two_computed_tensors_is_refused_naming_the_block_and_its_product() -> None:
    report = RelevanceModel(residual_models.ProductCNN().eval(), torch.rand(2, 3, 16, 16)).check()
    assert not report.supported
    assert "blocks.1 (ProductBlock): elementwise product `mul` of two computed tensors (x, other)" in report.reason
    assert "blocks.0" not in report.reason


def test_a_gate_hands_the_signal_all_the_relevance_and_its_branch_none() -> None:
    signal = torch.rand(2, 3, 4, 4, requires_grad=True)
    gate = torch.rand(2, 3, 1, 1, requires_grad=True)
    product = gated_product(signal, gate)
    torch.testing.assert_close(product, signal * gate, rtol=0, atol=0)  # what the model computes
    relevance = torch.randn(2, 3, 4, 4)
    product.backward(relevance)
    torch.testing.assert_close(signal.grad, relevance, rtol=0, atol=0)
    assert gate.grad is None


def test_gated_blocks_are_rewritten_and_their_gate_branches_get_no_relevance() -> None:
    model = without_shifts(residual_models.SqueezeExciteCNN())
    inputs = torch.rand(2, 3, 16, 16)
    traced = trace_residuals(model, lambda _: False)
    assert not traced.unsupported
    assert [type(gate).__name__ for gate in traced.gates] == ["Sigmoid", "Hardsigmoid"]  # the third gate is torch.sigmoid
    relevance = RelevanceModel(model, inputs)
    reached = []
    handle = model.blocks[0].reduce.register_full_backward_hook(
        lambda _module, _grad_input, grad_output: reached.extend(float(g.abs().sum()) for g in grad_output if g is not None)
    )
    with handle, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch notes that the hook sees output gradients only
        relevance.input_relevance(inputs, one_hot_logit(model(inputs).argmax(dim=1)))
    assert reached == [0.0]  # the relevance that reaches the gate's branch


def test_softmaxes_over_paths_gate_them_from_modules_of_their_own_and_their_branches_get_no_relevance() -> None:
    """SKNet's attention branch (a module with children, traced on its own) and ResNeSt's ``RadixSoftmax`` (a
    leaf, reached through a view, a transpose and reshapes) compute softmaxes that gate their caller's paths."""
    model = without_shifts(residual_models.SplitPathsCNN())
    inputs = torch.rand(2, 3, 16, 16)
    traced = trace_residuals(model, lambda _: False)
    assert not traced.unsupported
    assert [type(gate).__name__ for gate in traced.gates] == ["PathSoftmax", "RadixSoftmax"]
    reached = []
    record = lambda _module, _grad_input, grad_output: reached.extend(float(g.abs().sum()) for g in grad_output if g is not None)
    handles = [model.blocks[0].attn.reduce.register_full_backward_hook(record), model.blocks[1].fc1.register_full_backward_hook(record)]
    with hooks(handles), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch notes that the hook sees output gradients only
        RelevanceModel(model, inputs).input_relevance(inputs, one_hot_logit(model(inputs).argmax(dim=1)))
    assert reached == [0.0, 0.0]  # the relevance that reaches the gates' branches


class WindowPartition(nn.Module):
    """MaxViT's window partition as torchvision writes it: reshapes and a permute, the window size an argument."""

    def forward(self, x: torch.Tensor, p: int) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p, c)


class Squaring(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1) ** 2


def test_modules_that_only_rearrange_their_input_need_no_rule_and_others_do() -> None:
    from torchvision.ops.misc import Permute

    from semlens.relevance.residual import rearranges_only

    assert rearranges_only(Permute([0, 2, 3, 1])) and rearranges_only(WindowPartition())
    assert not rearranges_only(Squaring())  # computes new values
    assert not rearranges_only(nn.Linear(2, 2)) and not rearranges_only(nn.Sigmoid())  # parameters; a function
    model = nn.Sequential(nn.Conv2d(3, 4, 3), Squaring(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    report = RelevanceModel(model, torch.rand(1, 3, 8, 8)).check()
    assert not report.supported and report.reason == "no LRP rule here for Squaring"


def test_a_fixed_affine_map_is_told_from_other_arithmetic() -> None:
    from semlens.relevance.residual import fixed_affine

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    assert fixed_affine(Normalising(mean, std)) and fixed_affine(Normalising(mean, std, "methods"))
    assert not fixed_affine(Normalising(mean, std, "inverted")) and not fixed_affine(Squaring())
    assert not fixed_affine(WindowPartition()) and not fixed_affine(nn.Conv2d(3, 3, 1))  # no arithmetic; parameters


@pytest.mark.parametrize("normalisation", ["module", "torchvision"])
def test_a_normalisation_inside_the_model_gives_the_heatmaps_of_the_bare_network_on_normalised_inputs(normalisation: str) -> None:
    from torchvision.transforms import Normalize

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    bare = residual_models.ResidualCNN().eval()
    wrapped = nn.Sequential(Normalising(mean, std) if normalisation == "module" else Normalize(mean, std), bare).eval()
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    normalised = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert RelevanceModel(wrapped, pixels).check().supported
    channels, signs = torch.tensor([1, 4]), torch.ones(2)
    with RelevanceModel(bare, normalised).attributing() as modified:
        expected = crp_heatmaps(modified, normalised, "blocks.2", channels, signs)
    with RelevanceModel(wrapped, pixels).attributing() as modified:
        actual = crp_heatmaps(modified, pixels, "1.blocks.2", channels, signs)
    assert expected.abs().amax() > 1e-2
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_a_softmax_over_paths_that_gates_nothing_is_refused_by_name() -> None:
    report = RelevanceModel(residual_models.UngatedSoftmaxCNN().eval(), torch.rand(2, 3, 16, 16)).check()
    assert not report.supported
    assert report.reason == "no LRP rule here for blocks.1.attn (PathSoftmax): non-linear tensor function `softmax` (view)"


class TokenMean(nn.Module):
    """Tokens embedded one by one, averaged over the tokens with ``.mean(dim=1)``, then a linear head (a ViT's
    average pooling): no biases."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.relu, self.head = nn.Linear(4, 5, bias=False), nn.ReLU(), nn.Linear(5, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.embed(x)).mean(dim=1))


def test_a_mean_over_tokens_gives_each_token_its_share_of_the_pooled_relevance() -> None:
    """Known answer: the head's ε-rule gives pooled feature c the relevance p_c w_kc; the mean hands token t
    its share h_tc / sum_t h_tc of it (the average pools' rule), where the gradient would give each 1/T."""
    model, tokens = TokenMean().eval(), torch.rand(2, 7, 4)
    captured: list[torch.Tensor] = []
    with RelevanceModel(model, tokens).attributing() as modified:
        with hooks([model.relu.register_forward_hook(lambda _m, _a, output: captured.append(output))]):
            logits = modified(tokens)
        targets = logits.argmax(dim=1)
        (relevance,) = torch.autograd.grad(logits, captured, one_hot_logit(targets)(logits))
    features = F.relu(tokens @ model.embed.weight.detach().T)
    pooled = features.mean(dim=1)
    pooled_relevance = pooled * model.head.weight.detach()[targets]  # the ε-rule's p_c w_kc (z_k's stabiliser is negligible)
    expected = features / stabilize(features.sum(dim=1, keepdim=True)) * pooled_relevance[:, None]
    torch.testing.assert_close(relevance, expected, rtol=1e-4, atol=1e-6)
    assert float((relevance - pooled_relevance[:, None] / 7).abs().max()) > 1e-3  # what the gradient would give


def test_linear_bottlenecks_lose_relevance_under_zplus_and_keep_it_under_the_signed_rule() -> None:
    """The family above conserves relevance because convolutions whose inputs carry both signs get the
    signed rule: with zennit's z⁺ on every convolution instead, the same model loses some; and its gates,
    a ``Sequential`` ending in a sigmoid, are found."""
    from zennit.rules import ZPlus
    from zennit.types import Convolution

    model = without_shifts(residual_models.MobileCNN())
    inputs = torch.rand(4, 3, 16, 16)
    traced = trace_residuals(model, lambda _: False)
    assert not traced.unsupported and [type(gate).__name__ for gate in traced.gates] == ["Sigmoid"] * 3
    with torch.no_grad():
        logits = model(inputs)
    targets = logits.argmax(dim=1)
    explained = logits[torch.arange(4), targets]
    signed = RelevanceModel(model, inputs[:2])
    ratio = signed.input_relevance(inputs, one_hot_logit(targets)).flatten(1).sum(dim=1) / explained
    torch.testing.assert_close(ratio, torch.ones(4), atol=1e-3, rtol=0)
    zplus = RelevanceModel(model, inputs[:2])
    zplus.composite.layer_map = [(types, ZPlus() if types is Convolution else hook) for types, hook in zplus.composite.layer_map]
    ratio = zplus.input_relevance(inputs, one_hot_logit(targets)).flatten(1).sum(dim=1) / explained
    assert float((ratio - 1).abs().max()) > 0.01


def test_a_batch_norm_is_merged_only_into_a_layer_whose_output_it_alone_reads() -> None:
    """In the dense blocks, the second block's batch norm reads the first block's 1x1 convolution, whose output
    the concatenation reads too: merging would change what the concatenation sees, so it stays a batch norm
    (relevance passes through it); the first reads a ReLU's output (nothing to merge into). A conv-BN pair
    whose conv output only the norm reads is merged."""
    dense = residual_models.DenseCNN().eval()
    assert traced_batch_norm_pairs(dense, torch.rand(2, 3, 16, 16)) == []
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    assert traced_batch_norm_pairs(plain, torch.rand(2, 3, 16, 16)) == [(["0"], "1")]


def test_torchvisions_squeeze_excitation_gates_are_found() -> None:
    from torchvision.models import mobilenet_v3_small

    model = mobilenet_v3_small(num_classes=10).eval()
    traced = trace_residuals(model, lambda _: False)
    assert not traced.unsupported
    hard_sigmoids = [module for module in model.modules() if isinstance(module, nn.Hardsigmoid)]
    assert len(hard_sigmoids) == 9 and {id(gate) for gate in traced.gates} == {id(gate) for gate in hard_sigmoids}


def test_a_channels_last_layer_is_explained_per_channel_of_its_last_dimension() -> None:
    from tiny_models import ChannelsLastCNN

    model = without_shifts(ChannelsLastCNN())
    inputs = torch.rand(3, 3, 32, 32)
    relevance = RelevanceModel(model, inputs)
    assert relevance.check().supported
    hidden = []
    with hooks([model.mlp[1].register_forward_hook(lambda m, i, o: hidden.append(o))]), torch.no_grad():
        logits = model(inputs)
    hidden = hidden[0]  # N,16,16,6
    channels = torch.tensor([0, 3, 5])
    with relevance.attributing() as modified:
        maps = crp_heatmaps(modified, inputs, "mlp.1", channels, torch.ones(3), channels_last=True)
        targets = logits.argmax(dim=1)
        _, units = unit_relevance(modified, inputs, targets, ["mlp.1"], channels_last={"mlp.1"})
    # a unit's heatmap holds its whole activation (no bias absorbs any), summed over the map's positions
    torch.testing.assert_close(maps.flatten(1).sum(dim=1), hidden[torch.arange(3), :, :, channels].sum(dim=(1, 2)), rtol=1e-3, atol=1e-4)
    # the head (epsilon rule, no bias) gives channel c of the mean over positions its term of the target logit
    expected = hidden.mean(dim=(1, 2)) * model.head.weight[targets]
    torch.testing.assert_close(units["mlp.1"], expected, rtol=1e-4, atol=1e-6)


class UpsampledBranch(nn.Module):
    """A feature-pyramid merge: a half-resolution branch upsampled (``mode``) and added to the full-resolution map."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.low = nn.Sequential(nn.Conv2d(6, 6, 3, stride=2, padding=1), nn.ReLU())
        self.up = nn.Upsample(scale_factor=2, mode=mode)
        self.head = nn.Sequential(nn.Conv2d(6, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(x + self.up(self.low(x)))


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_an_upsampling_layer_gets_the_share_of_the_outputs_it_feeds(mode: str) -> None:
    """An upsampling layer is a linear map without bias: each input gets its share of the relevance of the outputs
    it feeds (nearest: the sum of its copies'), and a model that merges an upsampled branch conserves relevance."""
    torch.manual_seed(0)
    model = UpsampledBranch(mode).eval()
    x = torch.rand(2, 3, 16, 16)
    assert RelevanceModel(model, x).check().supported
    up, low = nn.Upsample(scale_factor=2, mode="nearest"), torch.rand(1, 1, 2, 2) + 0.5
    grad = torch.arange(16.0).view(1, 1, 4, 4)
    with RelevanceModel(nn.Sequential(up), low).attributing() as modified:
        inputs = low.clone().requires_grad_(True)
        (relevance,) = torch.autograd.grad(modified(inputs), inputs, grad)
    expected = grad.view(2, 2, 2, 2).permute(0, 2, 1, 3).sum(dim=(2, 3)).view(1, 1, 2, 2)  # each input's 2x2 copies
    torch.testing.assert_close(relevance, expected, rtol=1e-5, atol=1e-5)


def test_a_sigmoid_that_gates_nothing_is_refused_by_name() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sigmoid(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    report = RelevanceModel(model, torch.rand(1, 3, 8, 8)).check()
    assert not report.supported
    assert report.reason == "no LRP rule here for 1 (Sigmoid): a sigmoid that does not gate a product, or a softmax that does not weigh values"


def test_an_untraceable_residual_is_refused_naming_the_block_where_relevance_doubles() -> None:
    """Its skip connection sends the block's output relevance to its input twice over (known answer 2)."""
    report = RelevanceModel(residual_models.UntraceableScaledAddCNN().eval(), torch.rand(2, 3, 16, 16)).check()
    assert not report.supported
    expected = "relevance not conserved at blocks.1 (UntraceableScaledAddBlock): input/output 2.00 (torch.fx could not trace it"
    assert report.reason.startswith(expected), report.reason
    assert "TraceError" in report.reason and "input sums / output: 2.0" in report.reason


@pytest.mark.parametrize("kind", ["UntraceableCNN", "UntraceableInPlaceCNN"])
def test_an_untraceable_residual_sum_gets_the_relevance_the_traced_one_gets(kind: str) -> None:
    """torch.fx cannot trace the block; its ``+`` (or ``+=``) shares relevance while the forward runs
    (``UntracedOps``): the heatmaps equal those of the same weights in a block torch.fx rewrites."""
    untraceable = without_shifts(getattr(residual_models, kind)())
    traced = residual_models.TwoPlusCNN().eval()
    traced.load_state_dict(untraceable.state_dict())
    inputs = torch.rand(2, 3, 16, 16)
    targets = untraceable(inputs).argmax(dim=1)
    report = RelevanceModel(untraceable, inputs).check()
    assert report.supported, report.reason
    heatmaps = [RelevanceModel(model, inputs).input_relevance(inputs, one_hot_logit(targets)) for model in (untraceable, traced)]
    torch.testing.assert_close(heatmaps[0], heatmaps[1], rtol=1e-5, atol=1e-7)


class ScaledTokenMean(TokenMean):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.embed(x)).mean(dim=1) * 0.5)


class UntraceableScaledTokenMean(TokenMean):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.amin() < 0:  # control flow on a value: torch.fx cannot trace it
            raise ValueError("inputs must be non-negative")
        return self.head(self.relu(self.embed(x)).mean(dim=1) * 0.5)


def assert_same_token_relevance(first: nn.Module, second: nn.Module) -> None:
    """The two models (the same weights, written two ways) give the same input relevance on random tokens, for
    the first one's predicted classes, and each conserves it."""
    tokens = torch.rand(2, 7, 4)
    targets = first(tokens).argmax(dim=1)
    heatmaps = [RelevanceModel(model, tokens).input_relevance(tokens, one_hot_logit(targets)) for model in (first, second)]
    torch.testing.assert_close(heatmaps[0], heatmaps[1], rtol=1e-5, atol=1e-7)
    for model in (first, second):
        assert RelevanceModel(model, tokens).check().supported


class TokenDifference(TokenMean):
    """``h - 0.25 * h.flip(-1)``: a difference of two computed tensors (PoolFormer's ``pool(x) - x``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.relu(self.embed(x))
        return self.head((hidden - 0.25 * hidden.flip(-1)).mean(dim=1))


class UntraceableTokenDifference(TokenDifference):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.amin() < 0:  # control flow on a value: torch.fx cannot trace it
            raise ValueError("inputs must be non-negative")
        return super().forward(x)


def test_a_difference_shares_relevance_as_the_sum_of_a_and_minus_b() -> None:
    """``a - b`` is the sum of ``a`` and ``-b``: each gets its share of the relevance, ``a / (a - b)`` and
    ``-b / (a - b)``, traced or not (the gradient would hand ``a`` all of it and ``b`` its negative, and the
    two would cancel); relevance is conserved."""
    assert_same_token_relevance(TokenDifference().eval(), UntraceableTokenDifference().eval())


def test_an_untraceable_mean_and_scaling_get_the_relevance_the_traced_ones_get() -> None:
    """The mean over tokens shares relevance by each token's part (not 1/T each) and the scaling by a constant
    passes it whole, while the forward runs as under the torch.fx rewrite."""
    assert_same_token_relevance(UntraceableScaledTokenMean().eval(), ScaledTokenMean().eval())


class FunctionalHeadTokenMean(TokenMean):
    """The head's weight passed to ``F.linear`` by its parent, as torchvision's Swin does with its attention's layers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.relu(self.embed(x)).mean(dim=1), self.head.weight, bias=self.head.bias)


def test_a_functional_linear_gets_the_rule_its_module_gets() -> None:
    """``F.linear`` called outside its ``nn.Linear`` gets the module's ε-rule while the forward runs (the gradient
    would hand the pooled features ``W^T R``, not their share), and a module's own call is not ruled twice."""
    assert_same_token_relevance(FunctionalHeadTokenMean().eval(), TokenMean().eval())


class AttentionOverTokens(nn.Module):
    """Tokens embedded, one attention block (``attention``: timm's, on 8 channels and 2 heads), averaged, a head."""

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.attention, self.head = nn.Linear(4, 8), attention, nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attention(self.embed(x)).mean(dim=1))


def test_talking_heads_attention_holds_its_mixed_weights() -> None:
    """CaiT's talking heads mix the scores across heads before the softmax (``proj_l``) and the weights after it
    (``proj_w``): the mixed weights are still a function of queries and keys alone, held as the softmax's are.
    With both mixes the identity, the heatmap is plain attention's; with random ones, relevance is conserved
    (refused before: products of two computed tensors)."""
    from timm.models.cait import TalkingHeadAttn
    from timm.models.vision_transformer import Attention

    talking, plain = TalkingHeadAttn(8, num_heads=2), Attention(8, num_heads=2)
    with torch.no_grad():
        for mix in (talking.proj_l, talking.proj_w):
            mix.weight.copy_(torch.eye(2))
            mix.bias.zero_()
    plain.load_state_dict({key: value for key, value in talking.state_dict().items() if key.startswith(("qkv", "proj."))})
    first, second = AttentionOverTokens(talking).eval(), AttentionOverTokens(plain).eval()
    second.load_state_dict(first.state_dict(), strict=False)
    assert_same_token_relevance(first, second)
    torch.manual_seed(1)
    mixed = AttentionOverTokens(TalkingHeadAttn(8, num_heads=2)).eval()
    report = RelevanceModel(mixed, torch.rand(2, 7, 4)).check()
    assert report.supported, report.reason


class ScoreBias(nn.Module):
    """A learnt table added to what it is given, of a kind no rule here knows (GCViT's ``RelPosBias``)."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(7, 1) * 0.1)  # one entry per token

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.table


class BiasedScoresAttention(nn.Module):
    """Attention written out whose scores (``on_scores``) or values get a ``ScoreBias``."""

    def __init__(self, on_scores: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.on_scores, self.qkv, self.bias, self.head = on_scores, nn.Linear(4, 12), ScoreBias(), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = q @ k.transpose(-2, -1)
        weights = (self.bias(scores) if self.on_scores else scores).softmax(dim=-1)
        values = v if self.on_scores else self.bias(v)
        return self.head((weights @ values).mean(dim=1))


def test_a_module_that_only_attentions_held_weights_read_needs_no_rule() -> None:
    """A module of an unknown kind on the scores reaches only the softmax's weights, which are held: no relevance
    passes it, so it needs no rule (GCViT's ``RelPosBias``; refused by name before); on the values it is refused."""
    tokens = torch.rand(2, 7, 4)
    report = RelevanceModel(BiasedScoresAttention(on_scores=True).eval(), tokens).check()
    assert report.supported, report.reason
    report = RelevanceModel(BiasedScoresAttention(on_scores=False).eval(), tokens).check()
    assert not report.supported and report.reason == "no LRP rule here for ScoreBias", report.reason


class PooledBranches(nn.Module):
    """An Inception-like block and head: a branch average-pooled with zero padding, and the global pool, each as
    a module or (``functional``) as ``F.avg_pool2d`` and ``F.adaptive_avg_pool2d`` calls in the forward."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional = functional
        self.stem, self.branch = nn.Conv2d(3, 6, 3), nn.Conv2d(6, 6, 1)
        self.pool, self.average = nn.AvgPool2d(3, stride=1, padding=1), nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        pooled = F.avg_pool2d(x, 3, stride=1, padding=1) if self.functional else self.pool(x)
        x = torch.cat([x, F.relu(self.branch(pooled))], dim=1)
        return self.head((F.adaptive_avg_pool2d(x, (1, 1)) if self.functional else self.average(x)).flatten(1))


def test_a_functional_average_pool_gets_the_rule_its_module_gets() -> None:
    """``F.avg_pool2d`` and ``F.adaptive_avg_pool2d`` in a forward (Inception's branches, torchvision's DenseNet
    head) get the pooling modules' rule: each input its share of the averages it enters. The gradient would
    spread each average's relevance evenly over its window, and lose the padding's share (Inception v3: 0.935)."""
    torch.manual_seed(0)
    modules = PooledBranches(functional=False).eval()
    functional = PooledBranches(functional=True).eval()
    functional.load_state_dict(modules.state_dict())
    inputs = torch.rand(2, 3, 9, 9, generator=torch.Generator().manual_seed(1))
    targets = modules(inputs).argmax(dim=1)
    expected = RelevanceModel(modules, inputs).input_relevance(inputs, one_hot_logit(targets))
    lrp = RelevanceModel(functional, inputs)
    assert lrp.check().supported, lrp.check().reason
    torch.testing.assert_close(lrp.input_relevance(inputs, one_hot_logit(targets)), expected, rtol=1e-4, atol=1e-7)


class ResizedGate(nn.Module):
    """A gate computed on a pooled map and resized to the signal's (GhostNetV2's DFC attention), or (``detached``)
    the same gate as a constant."""

    def __init__(self, detached: bool) -> None:
        super().__init__()
        self.detached = detached
        self.stem, self.gate, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        gate = F.interpolate(torch.sigmoid(self.gate(F.avg_pool2d(x, 2))), size=x.shape[-2:], mode="nearest")
        return self.head((x * (gate.detach() if self.detached else gate)).mean(dim=(2, 3)))


def test_a_resized_gate_still_gates() -> None:
    """A sigmoid's output resized by ``F.interpolate`` still gates its product: all relevance to the signal, as
    with the same gate detached (refused before: a product of two computed tensors)."""
    torch.manual_seed(0)
    gated, detached = ResizedGate(detached=False).eval(), ResizedGate(detached=True).eval()
    detached.load_state_dict(gated.state_dict())
    inputs = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    targets = gated(inputs).argmax(dim=1)
    lrp = RelevanceModel(gated, inputs)
    assert lrp.check().supported, lrp.check().reason
    expected = RelevanceModel(detached, inputs).input_relevance(inputs, one_hot_logit(targets))
    torch.testing.assert_close(lrp.input_relevance(inputs, one_hot_logit(targets)), expected, rtol=1e-5, atol=1e-7)


class Patches(nn.Module):
    """Overlapping 2 x 2 patches cut out of a map and summed back into it (VOLO's outlook attention, TNT), with
    ``nn.Unfold``/``nn.Fold`` or (``functional``) ``F.unfold``/``F.fold``."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional = functional
        self.stem, self.mix = nn.Conv2d(3, 4, 3), nn.Conv1d(16, 16, 1)
        self.unfold, self.fold = nn.Unfold(2), nn.Fold((7, 7), 2)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        patches = F.unfold(x, 2) if self.functional else self.unfold(x)
        patches = F.relu(self.mix(patches))
        x = F.fold(patches, (7, 7), 2) if self.functional else self.fold(patches)
        return self.head(x.mean(dim=(2, 3)))


def test_patches_cut_out_and_summed_back_keep_relevance() -> None:
    """``nn.Unfold`` copies pixels into patches (the gradient hands each copy's relevance back to its pixel);
    ``nn.Fold`` and ``F.fold`` sum overlapping patches (the pooling modules' rule: each summand its share; the
    gradient would copy a sum's whole relevance to each summand). Module and function give one heatmap."""
    torch.manual_seed(0)
    modules, functional = Patches(functional=False).eval(), Patches(functional=True).eval()
    functional.load_state_dict(modules.state_dict())
    inputs = torch.rand(2, 3, 9, 9, generator=torch.Generator().manual_seed(1))
    targets = modules(inputs).argmax(dim=1)
    heatmaps = []
    for model in (modules, functional):
        lrp = RelevanceModel(model, inputs)
        assert lrp.check().supported, lrp.check().reason
        heatmaps.append(lrp.input_relevance(inputs, one_hot_logit(targets)))
    torch.testing.assert_close(heatmaps[0], heatmaps[1], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kind", ["Affine", "LearnableAffineBlock"])
def test_a_libraries_elementwise_affine_map_gets_the_epsilon_rule(kind: str) -> None:
    """timm's ``Affine`` (ResMLP) and ``LearnableAffineBlock`` (HGNetV2), ``scale * x + shift``: the ε-rule, as a
    linear layer with that diagonal weight and that bias gets it (the shift keeps its share)."""
    from timm.models.hgnet import LearnableAffineBlock
    from timm.models.mlp_mixer import Affine

    affine = Affine(6) if kind == "Affine" else LearnableAffineBlock(scale_value=1.5, bias_value=0.2)
    with torch.no_grad():
        scale = affine.alpha.uniform_(0.5, 2.0) if kind == "Affine" else affine.scale
        shift = affine.beta.uniform_(-0.2, 0.3) if kind == "Affine" else affine.bias
        diagonal = nn.Linear(6, 6)
        diagonal.weight.copy_(torch.diag(scale.flatten().expand(6)))
        diagonal.bias.copy_(shift.flatten().expand(6))
    torch.manual_seed(0)
    embed, head = nn.Linear(4, 6), nn.Linear(6, 3)

    class Tokens(nn.Module):
        def __init__(self, middle: nn.Module) -> None:
            super().__init__()
            self.embed, self.relu, self.middle, self.head = embed, nn.ReLU(), middle, head

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.middle(self.relu(self.embed(x))).mean(dim=1))

    tokens = torch.rand(2, 7, 4, generator=torch.Generator().manual_seed(1))
    first, second = Tokens(affine).eval(), Tokens(diagonal).eval()
    torch.testing.assert_close(first(tokens), second(tokens))
    targets = first(tokens).argmax(dim=1)
    lrp = RelevanceModel(first, tokens)
    assert lrp.check().supported, lrp.check().reason
    expected = RelevanceModel(second, tokens).input_relevance(tokens, one_hot_logit(targets))
    torch.testing.assert_close(lrp.input_relevance(tokens, one_hot_logit(targets)), expected, rtol=1e-5, atol=1e-7)


def test_a_blur_pool_gets_the_average_pools_rule() -> None:
    """timm's ``BlurPool2d`` (TResNet's anti-aliased downsampling: reflect padding, a fixed binomial filter per
    channel): each input its share of the blurred values it enters; relevance is conserved."""
    from timm.layers import BlurPool2d

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), BlurPool2d(4, filt_size=3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    inputs = torch.rand(2, 3, 11, 11, generator=torch.Generator().manual_seed(1))
    report = RelevanceModel(model, inputs).check()
    assert report.supported, report.reason


class PositionBias(nn.Module):
    """A table read without input (transformers' ``SwinRelativePositionBias``)."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.zeros(4))

    def forward(self) -> torch.Tensor:
        return self.table


class SizeEncoding(nn.Module):
    """An encoding computed from the input's size alone (timm's ``PositionalEncodingFourier``)."""

    def forward(self, size: int) -> torch.Tensor:
        return torch.arange(size).float().cos()


class Twice(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


class WithConstants(nn.Module):
    """Modules without a rule: two that compute constants to the input, a head the forward never calls, and one on
    the input's path."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.bias, self.encoding, self.unused, self.twice = nn.Linear(4, 4), PositionBias(), SizeEncoding(), nn.Mish(), Twice()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.twice(self.embed(x) + self.bias()) * self.encoding(x.shape[-1])


class GluTokens(TokenMean):
    """A gated linear unit (SwiGLU: ``silu(gate(h)) * value(h)``, EVA-02's MLP); ``held``: the gate detached, a
    constant to the rules."""

    def __init__(self, held: bool) -> None:
        super().__init__()
        self.gate, self.value, self.held = nn.Linear(5, 5, bias=False), nn.Linear(5, 5, bias=False), held

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.relu(self.embed(x))
        gate = F.silu(self.gate(hidden))
        return self.head((gate.detach() if self.held else gate) * self.value(hidden)).mean(dim=1)


def test_a_gated_linear_unit_gives_the_linear_branch_all_relevance() -> None:
    """The activation's output gates the linear branch: the product gets the gates' rule (signal-take-all), the
    heatmap of the same unit with its gate held constant, and relevance is conserved (refused before: a product
    of two computed tensors)."""
    assert_same_token_relevance(GluTokens(held=False).eval(), GluTokens(held=True).eval())


class TableScaled(nn.Module):
    """A block scaling its input's projection by a table its caller passes (EVA's rotary tables, a mask)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4, bias=False)

    def forward(self, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * table


class WithTable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.block, self.head = nn.Linear(4, 4, bias=False), TableScaled(), nn.Linear(4, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(x), torch.arange(4.0).cos() + 2))


def test_an_argument_that_does_not_carry_the_input_is_a_constant() -> None:
    """The block's table argument does not depend on the input: its product with the projection is a scaling by a
    constant (relevance passes whole), not a product of two computed tensors, which has no rule."""
    report = RelevanceModel(WithTable().eval(), torch.rand(2, 4)).check()
    assert report.supported, report.reason


def test_only_modules_on_the_input_path_need_a_rule() -> None:
    """What a module computes from its parameters or the input's size alone is a constant to the input, and a
    module the forward never calls computes nothing: no relevance passes them, so they need no rule."""
    model = WithConstants()
    assert sorted(leaves_without_rule(model, ())) == ["bias", "encoding", "twice", "unused"]
    assert list(leaves_without_rule(model, (), modules_on_the_input_path(model, torch.rand(2, 4)))) == ["twice"]
    assert all(parameter.requires_grad for parameter in model.parameters())  # the probe leaves them as they were


def test_transformers_vit_with_attention_written_out_gets_the_relevance_of_its_fused_attention() -> None:
    """transformers' ViT, which torch.fx cannot trace: its residual sums and, with ``eager`` attention (softmax,
    dropout, ``matmul``), its attention get their rules while the forward runs; the heatmaps equal those of its
    fused attention (``F.scaled_dot_product_attention``, held) and relevance is conserved."""
    from transformers import ViTConfig, ViTForImageClassification

    class Logits(nn.Module):
        def __init__(self, attention: str) -> None:
            super().__init__()
            torch.manual_seed(0)
            config = ViTConfig(
                image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                num_labels=3, attn_implementation=attention,
            )  # fmt: skip
            self.vit = ViTForImageClassification(config)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.vit(pixel_values=x).logits

    models = [Logits(attention).eval() for attention in ("sdpa", "eager")]
    inputs = torch.rand(2, 3, 32, 32)
    targets = models[0](inputs).argmax(dim=1)
    heatmaps = []
    for model in models:
        relevance = RelevanceModel(model, inputs)
        assert relevance.check().supported, relevance.check().reason
        heatmaps.append(relevance.input_relevance(inputs, one_hot_logit(targets)))
    torch.testing.assert_close(heatmaps[0], heatmaps[1], rtol=1e-4, atol=1e-6)



def test_a_block_with_an_optional_argument_is_rewritten_for_calls_with_and_without_it() -> None:
    model = without_shifts(residual_models.OptionalShortcutCNN())
    traced = trace_residuals(model, lambda _: False)
    assert {name for name in traced.rewrites[model.blocks[1]].sums} == {"canonizer_sum_0_0", "canonizer_sum_1_0"}
    report = RelevanceModel(model, torch.rand(2, 3, 16, 16)).check()
    assert report.supported, report.reason


def test_a_rewrite_that_fails_where_the_model_runs_is_refused_not_raised() -> None:
    model = residual_models.ManyOptionalCNN().eval()
    inputs = torch.rand(2, 3, 16, 16)
    model(inputs)  # the model itself runs
    report = RelevanceModel(model, inputs).check()
    assert not report.supported
    assert report.reason.startswith("the model prepared for LRP fails where the model runs (TypeError"), report.reason


@pytest.mark.parametrize("kind", ["InputMutatingCNN", "UntraceableInputMutatingCNN"])
def test_a_rewrite_that_changes_the_models_outputs_is_refused(kind: str) -> None:
    """A block adds in place to its input, which its caller reads again: the rewrite (traced) or ``UntracedOps``
    (untraced) computes a new tensor, so the prepared model computes other outputs; the check refuses it."""
    model = getattr(residual_models, kind)().eval()
    inputs = torch.rand(2, 3, 16, 16)
    relevance = RelevanceModel(model, inputs)
    with torch.no_grad():
        expected = model(inputs)
    with relevance.attributing() as modified:  # as in a relevance pass: gradients on
        assert not torch.allclose(modified(inputs.clone().requires_grad_(True)).detach(), expected, rtol=1e-3)  # what the check must catch
    report = relevance.check()
    assert not report.supported
    assert report.reason.startswith("the model prepared for LRP computes other outputs than the model"), report.reason


def test_the_function_check_allows_ten_times_the_models_own_float32_rounding() -> None:
    """A canonized model rounds differently from the model (merged batch norms; on a GPU, deep nets drift by 1e-4
    of their logits between devices): the check allows 10 times the model's float32 rounding, its outputs
    against a float64 copy's, where that is above 1e-4 of the largest output. Near 1e8 float32 keeps multiples
    of 8, so ``(x + 1e8) - 1e8`` rounds 3 to 0: a rounding of 3, a tolerance of 30."""

    class Coarse(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x + 1e8) - 1e8

    class Float32Inside(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.float() * 2

    inputs = torch.tensor([[1.0, 2.0, 3.0]])
    assert Coarse()(inputs).tolist() == [[0.0, 0.0, 0.0]]
    assert function_tolerance(Coarse(), inputs, Coarse()(inputs)) == 30.0
    assert function_tolerance(Float32Inside(), inputs, Float32Inside()(inputs)) == pytest.approx(6e-4)  # 1e-4 of 6


def test_lrp_runs_in_float32_proper_and_leaves_tf32_as_it_was() -> None:
    """On Ampere and newer GPUs torch runs float32 convolutions in TF32 unless told not to; there the
    check refused a random ResNet-18 (H100: its canonized outputs 3e-4 off). The flags change nothing on
    the CPU, so this reads them where LRP runs: in the check's forward passes and in ``attributing``."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    relevance = RelevanceModel(model.eval(), torch.rand(2, 3, 8, 8))
    flags = lambda: (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    seen: list[tuple[bool, bool]] = []
    model[0].register_forward_hook(lambda *_: seen.append(flags()))
    saved = flags()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        assert relevance.check().supported
        with relevance.attributing() as modified:
            modified(torch.rand(1, 3, 8, 8))
        assert flags() == (True, True)  # the user's setting is back
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    assert len(seen) >= 3 and set(seen) == {(False, False)}


class Doubled(nn.Module):
    """Every module conserves relevance; the model's own forward doubles it (a matrix product of the logits with
    twice the identity): torch.fx cannot trace that forward (control flow on a value), and no rule here takes a
    product with a constant matrix, so it keeps its plain gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.relu, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.amin() < 0:
            raise ValueError("inputs must be non-negative")
        return self.head(self.relu(self.conv(x)).mean(dim=(2, 3))) @ (2 * torch.eye(3))


def test_logits_that_are_all_zero_are_named_as_such() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    nn.init.zeros_(model[3].weight)
    report = RelevanceModel(model, torch.rand(2, 3, 8, 8)).check()
    assert not report.supported and report.reason.startswith("the explained logits are zero on the check's inputs")


def test_a_loss_in_the_models_own_forward_is_named_as_such() -> None:
    torch.manual_seed(0)
    report = RelevanceModel(Doubled().eval(), torch.rand(2, 3, 8, 8)).check()
    assert not report.supported
    assert report.reason.startswith("relevance not conserved in the model's own forward (Doubled)")
    assert report.reason.endswith("input sums / output: 2.000, 2.000")


def test_a_lens_of_a_custom_residual_model_gets_relevance_crops(tmp_path, colour_folder, tiny_clip_dir) -> None:
    config = BuildConfig(
        model="py:residual_models:residual_cnn", layers=["blocks.0", "blocks.3"], data=f"folder:{colour_folder}",
        foundation=f"hf:{tiny_clip_dir}", k=3, batch_size=8, workers=0, crop="auto",
    )  # fmt: skip
    lens = build_lens(config, tmp_path / "residual.lens", progress=False)
    assert lens.manifest["relevance_support"]["supported"], lens.manifest["relevance_support"]
    assert {layer["crop"]["mode"] for layer in lens.manifest["layers"].values()} == {"relevance"}


def batch_norm_net(position: int, eps: float) -> nn.Sequential:
    """conv, ReLU, max pool and a batch norm with non-trivial statistics at ``position`` (1: right
    after the conv, 3: after the pool), then a linear head."""
    layers: list[nn.Module] = [nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    norm = nn.BatchNorm2d(4, eps=eps)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
        norm.running_mean.uniform_(-1.0, 1.0)
        norm.running_var.uniform_(0.5, 2.0)
    layers.insert(position, norm)
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(64, 3)).eval()


def test_batch_norm_after_relu_and_pool_is_refused_or_left_exact() -> None:
    torch.manual_seed(0)
    model = batch_norm_net(position=3, eps=1e-5)
    inputs = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(inputs)
    for _ in range(10):  # the pairing depends on the allocator, so give it several chances to go wrong
        try:
            with torch.no_grad(), RelevanceModel(model, inputs).attributing() as modified:
                torch.testing.assert_close(modified(inputs), expected)
        except UnsupportedModelError:
            pass  # refusing the model is a right answer too


class NormWithActivation(nn.BatchNorm2d):
    """A batch norm with its activation inside, as timm's ``BatchNormAct2d``."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


def test_a_batch_norm_that_stays_gets_the_epsilon_rule_of_its_affine_map_even_with_its_activation_inside() -> None:
    """Known answer: after a ReLU there is nothing to merge it into; its input gets ``a x / (a x + b)`` of the
    relevance at its output, the activation inside passing it unchanged (dividing by the activation's output
    instead, the rule gave MixNet 1.97 times the relevance it received)."""
    torch.manual_seed(0)
    norm = NormWithActivation(4)
    with torch.no_grad():
        norm.running_mean.uniform_(-0.5, 0.5), norm.running_var.uniform_(0.5, 2), norm.weight.uniform_(0.5, 2), norm.bias.uniform_(-0.3, 0.3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), norm, nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    inputs = torch.rand(2, 3, 8, 8)
    seen: dict[str, torch.Tensor] = {}
    with RelevanceModel(model, inputs).attributing() as modified:
        keep = lambda name: lambda _m, _a, output: seen.__setitem__(name, output)
        with hooks([model[1].register_forward_hook(keep("in")), model[2].register_forward_hook(keep("out"))]):
            logits = modified(inputs)
        arriving, handed_on = torch.autograd.grad(logits, [seen["out"], seen["in"]], one_hot_logit(logits.argmax(dim=1))(logits))
    scale = (norm.weight / (norm.running_var + norm.eps).sqrt()).detach().view(1, -1, 1, 1)
    shift = (norm.bias.detach() - norm.running_mean * scale.flatten()).view(1, -1, 1, 1)
    scaled = seen["in"].detach() * scale
    torch.testing.assert_close(handed_on, scaled / stabilize(scaled + shift) * arriving, rtol=1e-5, atol=1e-7)


def test_a_rule_that_runs_its_module_again_during_the_backward_pass_gets_a_report_not_a_crash() -> None:
    """A norm with batch statistics keeps zennit's rule, which runs the module's forward (and its activation's
    hooks) again while relevance flows back: the check names the module where relevance is lost instead of
    running out of recorded tensors."""
    norm = NormWithActivation(4)
    norm.track_running_stats, norm.running_mean, norm.running_var = False, None, None
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), norm, nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    report = RelevanceModel(model, torch.rand(2, 3, 8, 8)).check()
    assert not report.supported and report.reason.startswith("relevance not conserved at 2 (NormWithActivation)")


def test_merging_a_batch_norm_leaves_the_model_function_unchanged() -> None:
    torch.manual_seed(0)
    model = batch_norm_net(position=1, eps=1e-3)
    inputs = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(inputs)
        with RelevanceModel(model, inputs).attributing() as modified:
            torch.testing.assert_close(modified(inputs), expected)


# -- CRP heatmaps: a known answer ---------------------------------------------------------------


def crp_net() -> nn.Sequential:
    """conv2's bias is positive, so each of its outputs has a positive part and z⁺ is its rule (without it, an
    output with only negative contributions would give the layer the signed rule: ``test_relevance_rules.py``)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        OrderedDict(conv1=nn.Conv2d(3, 4, 3, padding=1), relu1=nn.ReLU(), conv2=nn.Conv2d(4, 3, 1), relu2=nn.ReLU())
    ).eval()
    with torch.no_grad():
        net.conv2.bias.abs_()
    return net


def reference_crp(
    net: nn.Sequential, inputs: torch.Tensor, channels: torch.Tensor, signs: torch.Tensor
) -> torch.Tensor:
    """CRP from conv2's output down to the input by the rule definitions: ZPlus at conv2, Pass at the
    ReLU, Flat at the first layer; the sum over input channels is the heatmap ``[N, H, W]``."""
    with torch.no_grad():
        hidden = F.relu(net.conv1(inputs))
        activation = net.conv2(hidden)
        mask = torch.zeros_like(activation)
        mask[torch.arange(len(channels)), channels] = 1.0
        relevance = activation * mask * signs.view(-1, 1, 1, 1)
        # ZPlus: z+ from positive inputs, positive weights and the positive part of the bias; the negative
        # inputs' term (with negative weights) vanishes because the hidden layer is a ReLU output.
        positive = net.conv2.weight.clamp(min=0)
        z_plus = F.conv2d(hidden, positive, net.conv2.bias.clamp(min=0))
        relevance = hidden * F.conv_transpose2d(relevance / stabilize(z_plus), positive)
        # Pass through relu1, then Flat: inputs and weights are ones, the bias is dropped.
        ones = torch.ones_like(net.conv1.weight)
        z_flat = F.conv2d(torch.ones_like(inputs), ones, padding=1)
        relevance = F.conv_transpose2d(relevance / stabilize(z_flat), ones, padding=1)
    return relevance.sum(dim=1)


def heatmaps(net: nn.Module, inputs: torch.Tensor, channels: list[int], signs: list[float]) -> torch.Tensor:
    with RelevanceModel(net, inputs).attributing() as modified:
        maps = crp_heatmaps(modified, inputs, "conv2", torch.tensor(channels), torch.tensor(signs))
    return maps.detach()


def test_crp_heatmaps_match_the_rules_computed_by_hand() -> None:
    net = crp_net()
    inputs = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    for channels, signs in (([0, 2], [1.0, -1.0]), ([1, 1], [1.0, 1.0]), ([2, 0], [-1.0, 1.0])):
        expected = reference_crp(net, inputs, torch.tensor(channels), torch.tensor(signs))
        assert expected.abs().amax() > 1e-2
        torch.testing.assert_close(heatmaps(net, inputs, channels, signs), expected, rtol=1e-4, atol=1e-6)


def test_crp_masks_partition_the_layer_relevance() -> None:
    """One unit per mask: the heatmaps of all channels add up to the unconditioned heatmap of the layer."""
    net = crp_net()
    inputs = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    total = sum(heatmaps(net, inputs, [channel] * 2, [1.0, 1.0]) for channel in range(3))
    truncated = nn.Sequential(net.conv1, net.relu1, net.conv2)  # the layer's whole output as initial relevance
    unconditioned = RelevanceModel(truncated, inputs).input_relevance(inputs, lambda outputs: outputs).sum(dim=1)
    torch.testing.assert_close(total, unconditioned, rtol=1e-4, atol=1e-6)


def test_crp_rows_of_one_batch_equal_separate_calls() -> None:
    net = crp_net()
    first, second = torch.rand(2, 1, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    batch = heatmaps(net, torch.cat([first, first, second]), [0, 2, 1], [1.0, -1.0, 1.0])
    separate = torch.cat(
        [heatmaps(net, first, [0], [1.0]), heatmaps(net, first, [2], [-1.0]), heatmaps(net, second, [1], [1.0])]
    )
    torch.testing.assert_close(batch, separate, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(batch[0], batch[1])


class PatchMLP(nn.Module):
    """Patch embedding, then a per-token linear layer with ``[N, L, C]`` output, as in a transformer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.mix = nn.Conv2d(3, 6, 4, stride=4), nn.Linear(6, 5)
        self.relu, self.head = nn.ReLU(), nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # 8x8 inputs: 4 tokens of 6 features
        return self.head(self.relu(self.mix(tokens)).mean(dim=1))


def test_crp_on_a_token_layer_conditions_on_its_feature_units() -> None:
    """The units of an ``[N, L, C]`` layer are its C features: their heatmaps add up to the layer's."""
    torch.manual_seed(0)
    model = PatchMLP().eval()
    inputs = torch.rand(2, 3, 8, 8)
    relevance = RelevanceModel(model, inputs)
    assert relevance.check().supported
    with relevance.attributing() as modified:
        total = sum(crp_heatmaps(modified, inputs, "mix", torch.full((2,), unit), torch.ones(2)) for unit in range(5))
    captured: list[torch.Tensor] = []  # the mix layer's whole output as initial relevance
    grad_inputs = inputs.clone().requires_grad_(True)
    with relevance.attributing() as modified:
        handle = modified.mix.register_forward_hook(lambda _module, _inputs, output: captured.append(output))
        modified(grad_inputs)
        handle.remove()
        (unconditioned,) = torch.autograd.grad(captured[0], grad_inputs, grad_outputs=captured[0])
    torch.testing.assert_close(total.detach(), unconditioned.sum(dim=1), rtol=1e-4, atol=1e-6)


# -- unit relevance: a known answer -------------------------------------------------------------


def test_unit_relevance_splits_the_target_logit_by_the_epsilon_rule() -> None:
    """At the last linear layer's inputs: R_j = a_j w_tj z_t / (z_t + eps); they sum to z_t minus the bias b_t."""
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict(fc1=nn.Linear(5, 6), relu=nn.ReLU(), fc2=nn.Linear(6, 4))).eval()
    first, second = torch.randn(2, 1, 5)
    inputs = torch.cat([first, first, second])  # one sample twice: only the target differs
    targets = torch.tensor([2, 0, 3])
    with RelevanceModel(net, inputs).attributing() as modified:
        logits, relevance = unit_relevance(modified, inputs, targets, ["relu"])
    with torch.no_grad():
        torch.testing.assert_close(logits, net(inputs))
        hidden = F.relu(net.fc1(inputs))
        explained = logits[torch.arange(3), targets]
        expected = hidden * net.fc2.weight[targets] * (explained / stabilize(explained)).unsqueeze(1)
        torch.testing.assert_close(relevance["relu"], expected)
        absorbed = net.fc2.bias[targets]
        torch.testing.assert_close(relevance["relu"].sum(dim=1), explained - absorbed, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(relevance["relu"][0], relevance["relu"][1])


def test_unit_relevance_of_a_conv_layer_is_per_channel_and_conserved() -> None:
    torch.manual_seed(0)
    model = without_shifts(plain_net())
    inputs = torch.rand(3, 3, 16, 16)
    targets = torch.tensor([0, 3, 4])
    with RelevanceModel(model, inputs).attributing() as modified:
        logits, relevance = unit_relevance(modified, inputs, targets, ["0", "4"])
    for layer, channels in (("0", 8), ("4", 16)):
        assert relevance[layer].shape == (3, channels)
        torch.testing.assert_close(relevance[layer].sum(dim=1), logits[torch.arange(3), targets], rtol=0.02, atol=1e-4)


# -- class relevance statistics -----------------------------------------------------------------


def test_relevance_shares_divide_by_the_summed_absolute_relevance() -> None:
    shares = relevance_shares(torch.tensor([[1.0, -3.0], [0.0, 0.0]]))
    assert shares.tolist() == [[0.25, -0.75], [0.0, 0.0]]


def test_class_relevance_known_answers() -> None:
    stats = ClassRelevance(units=2, classes=4, top=3)
    first = torch.tensor([[0.5, -0.125], [0.25, 0.375], [0.125, 0.125]])
    stats.update(first, torch.tensor([0, 0, 2]), torch.tensor([10, 11, 12]))
    stats.update(torch.tensor([[0.5, 0.0], [0.375, -0.25]]), torch.tensor([0, 2]), torch.tensor([13, 5]))
    state = stats.state()
    nan = float("nan")
    expected_max = torch.tensor([[0.5, nan, 0.375, nan], [0.375, nan, 0.125, nan]])
    torch.testing.assert_close(state["max_share"], expected_max, equal_nan=True)
    expected_mean = torch.tensor([[1.25 / 3, nan, 0.25, nan], [0.25 / 3, nan, -0.0625, nan]])
    torch.testing.assert_close(state["mean_share"], expected_mean, equal_nan=True)
    assert state["count"].tolist() == [3, 0, 2, 0]
    assert state["seen_classes"].tolist() == [0, 2]
    # per seen class and unit, best share first; the tie at 0.5 goes to the lower id; an unfilled slot is -1
    assert state["top_samples"].tolist() == [[[10, 13, 11], [11, 13, 10]], [[5, 12, -1], [12, 5, -1]]]
    inf = float("inf")
    expected_top = [[[0.5, 0.5, 0.25], [0.375, 0.0, -0.125]], [[0.375, 0.125, -inf], [0.125, -0.25, -inf]]]
    assert state["top_shares"].tolist() == expected_top


def test_class_relevance_taken_up_from_a_checkpoint_goes_on_as_one_pass(tmp_path) -> None:
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(6, 5, generator=generator), torch.randint(0, 4, (6,), generator=generator), torch.arange(6) + 6 * b) for b in range(4)]
    whole, first = ClassRelevance(units=5, classes=4, top=3), ClassRelevance(units=5, classes=4, top=3)
    for batch in batches:
        whole.update(*batch)
    for batch in batches[:2]:
        first.update(*batch)
    store = LensStore(tmp_path)  # through the file, as a resumed build reads it
    store.write_tensors("relevance.partial.safetensors", first.checkpoint("stats.0."))
    resumed = ClassRelevance.from_checkpoint(store.read_tensors("relevance.partial.safetensors"), "stats.0.", top=3)
    for batch in batches[2:]:
        resumed.update(*batch)
    for key, value in whole.state().items():
        assert torch.equal(resumed.state()[key].nan_to_num(), value.nan_to_num()), key


class LogitsAndFeatures(nn.Module):
    """A classifier whose forward returns ``(logits, features)``, as detection-style or multi-head models do."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        return self.head(features.mean(dim=(2, 3))), features


def test_a_model_that_returns_more_than_logits_is_unsupported_with_what_to_do() -> None:
    report = RelevanceModel(LogitsAndFeatures().eval(), torch.rand(2, 3, 16, 16)).check()
    assert not report.supported and "returns a tuple, not one [batch, classes] tensor" in report.reason and "wrap it" in report.reason


def test_a_predicted_target_is_the_class_the_logits_predict() -> None:
    from semlens.relevance.lrp import PREDICTED, predicted_where_unlabelled

    outputs = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5], [0.0, 0.0, 4.0]])
    assert predicted_where_unlabelled(torch.tensor([PREDICTED, 2, PREDICTED]), outputs).tolist() == [1, 2, 2]
    elsewhere = torch.zeros(2, 3, device="meta")  # logits on another device than the targets (a GPU's, for explain and graphs)
    assert predicted_where_unlabelled(torch.tensor([PREDICTED, 2]), elsewhere).device == elsewhere.device
