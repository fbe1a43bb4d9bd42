"""Which LRP rule for convolutions whose inputs or outputs carry both signs? Measured, not assumed.

εz⁺♭ gives every convolution but the first the z⁺ rule, made for ReLU networks: there relevance only
reaches a convolution at outputs a ReLU let through, which hold a positive contribution. Networks with
SiLU / Hardswish activations and linear bottlenecks (MobileNetV2/V3, EfficientNet) hand relevance to
negative outputs too, where z⁺ may find no positive contribution to give it to, and lose it. This
benchmark trains two small models on the concept world (the world's CNN, ReLU; and an inverted-residual
network with SiLU, depthwise convolutions, a squeeze-and-excitation gate and linear bottlenecks) and
scores each rule for their convolutions on held-out images the model classifies right:

- conservation: input relevance / explained logit on a bias-free copy (what ``RelevanceModel.check``
  asks: 1 is best; 0.95 is its bar), and on the model (where biases absorb some);
- localisation: the share of the positive input relevance inside the class's concept (its object; the
  background for a world whose classes are backgrounds) (relevance mass
  accuracy, Arras et al. 2022), and the pointing game (the top pixel inside it); the concept's area
  share is chance.

A third model, a small DenseNet, has batch norms that read concatenations (pre-activation), which cannot
be merged into a layer: for them ``norm:pass`` (relevance passes unchanged: zennit's map for batch norms)
against ``norm:epsilon`` (the ε-rule of the affine map: semlens' ``LeanBatchNorm``).

Rules: ``semlens`` (the composite's: z⁺ where it fits, else ``signed``), ``z+`` (zennit's ZPlus, α1β0
on both input signs: semlens before), ``signed`` (z⁺ at a positive
output, its mirror z⁻ at a negative one: the generalised γ rule's limit), ``gamma`` (zennit's generalised
γ rule, γ 0.25), ``epsilon``.

    PYTHONPATH=src:tests/support python benchmarks/lrp_rules.py [--images 200] [--world default] [--models cnn mobile dense]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn
from zennit.rules import Epsilon, Gamma, Pass, ZPlus
from zennit.types import BatchNorm, Convolution

from safetensors.torch import load_file, save_file

from semlens._util.cache import trained_path
from semlens._util.fingerprint import hash_json
from semlens.relevance.lrp import RelevanceModel, _bias_free_copy, _one_hot_logit
from semlens.relevance.rules import SignedZPlus
from semlens.world.classifier import TRAINING, WorldCNN, train_world_model
from semlens.world.render import WorldConfig, render, world_preprocessing


class InvertedResidual(nn.Module):
    """MobileNetV2/V3's block: expand, depthwise, squeeze-and-excitation gate, linear projection, residual."""

    def __init__(self, inputs: int, outputs: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        hidden = inputs * expand
        self.expand = nn.Sequential(nn.Conv2d(inputs, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.SiLU())
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.SiLU()
        )
        self.excite = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(hidden, hidden // 4, 1), nn.ReLU(), nn.Conv2d(hidden // 4, hidden, 1), nn.Sigmoid()
        )
        self.project = nn.Sequential(nn.Conv2d(hidden, outputs, 1, bias=False), nn.BatchNorm2d(outputs))
        self.residual = stride == 1 and inputs == outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.depthwise(self.expand(x))
        out = self.project(hidden * self.excite(hidden))
        return x + out if self.residual else out


class MobileWorldNet(nn.Module):
    """A small MobileNet: SiLU stem, six inverted residual blocks (three downsampling), SiLU head."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        stages = [(16, 16, 1), (16, 24, 2), (24, 24, 1), (24, 40, 2), (40, 40, 1), (40, 64, 2)]
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.SiLU()),
            *(InvertedResidual(i, o, s) for i, o, s in stages),
            nn.Sequential(nn.Conv2d(64, 128, 1, bias=False), nn.BatchNorm2d(128), nn.SiLU()),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


class DenseLayer(nn.Module):
    """DenseNet's layer: batch norm, ReLU, 3x3 convolution, its output concatenated to its input. The batch
    norm reads a concatenation, not a convolution's output: it cannot be merged (a pre-activation network)."""

    def __init__(self, inputs: int, growth: int = 12) -> None:
        super().__init__()
        self.norm, self.relu, self.conv = nn.BatchNorm2d(inputs), nn.ReLU(), nn.Conv2d(inputs, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.relu(self.norm(x)))], dim=1)


class DenseWorldNet(nn.Module):
    """A small DenseNet: a stem, three dense blocks of two layers with pooling transitions (batch norm, ReLU,
    1x1 convolution, average pool), a final batch norm and ReLU, global average pool, linear classifier."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, padding=1, bias=False)]
        width = 16
        for block in range(3):
            for _ in range(2):
                layers.append(DenseLayer(width))
                width += 12
            if block < 2:
                layers += [nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, width // 2, 1, bias=False), nn.AvgPool2d(2)]
                width //= 2
        self.features = nn.Sequential(*layers, nn.BatchNorm2d(width), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


RULES = {
    "semlens": None,  # the composite's own (LeanZPlus: z+, the signed rule where z+ does not fit)
    "z+": lambda: ZPlus(),
    "signed": lambda: SignedZPlus(),
    "gamma": lambda: Gamma(gamma=0.25),
    "epsilon": lambda: Epsilon(epsilon=1e-6),
}


#: rules for the batch norms that cannot be merged (DenseWorldNet's): passed through (zennit's map for batch
#: norms) or the ε-rule of an affine layer (``a x / (a x + b)``: the shift takes its share; semlens' rule)
NORM_RULES = {
    "pass": lambda: Pass(),
    "epsilon": None,
}


def with_rule(model: nn.Module, probe: torch.Tensor, rule: str) -> RelevanceModel:
    """``model`` prepared for LRP, its convolutions (but the first, Flat) given ``rule`` of ``RULES``, or its
    batch norms ``rule`` of ``NORM_RULES`` (``norm:`` and its name)."""
    prepared = RelevanceModel(model, probe)
    kind, name = (BatchNorm, rule.removeprefix("norm:")) if rule.startswith("norm:") else (Convolution, rule)
    make = (NORM_RULES if kind is BatchNorm else RULES)[name]
    if make is not None:
        composite = prepared.composite
        composite.layer_map = [(types, make() if types is kind else hook) for types, hook in composite.layer_map]
    return prepared


def conservation(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, rule: str) -> tuple[torch.Tensor, np.ndarray]:
    """Input relevance of each image's class logit under ``rule``, and its sum / that logit."""
    prepared = with_rule(model, pixels[:2], rule)
    with torch.no_grad():
        logits = model(pixels)
    relevance = prepared.input_relevance(pixels, lambda outputs: _one_hot_logit(outputs, labels)).sum(dim=1)
    return relevance, (relevance.flatten(1).sum(dim=1) / logits[torch.arange(len(labels)), labels]).numpy()


def score(model: nn.Module, config: WorldConfig, images: int, rule: str) -> dict[str, float]:
    preprocessing = world_preprocessing(config)
    samples = [render(config, index, "test") for index in range(images)]
    pixels = torch.stack([preprocessing(sample.image) for sample in samples])
    labels = torch.tensor([sample.label for sample in samples])
    with torch.no_grad():
        kept = (model(pixels).argmax(dim=1) == labels).nonzero().flatten().tolist()
    relevance, ratio = conservation(model, pixels[kept], labels[kept], rule)
    _, bias_free = conservation(_bias_free_copy(model), pixels[kept], labels[kept], rule)
    masses, points, areas = [], [], []
    for heat, index in zip(relevance, kept):
        sample = samples[index]
        mask = torch.from_numpy(np.asarray(sample.masks[sample.concepts[config.class_family]], dtype=bool))
        positive = heat.clamp(min=0)
        masses.append(float(positive[mask].sum() / positive.sum().clamp(min=1e-12)))
        points.append(float(mask.flatten()[heat.flatten().argmax()]))
        areas.append(float(mask.float().mean()))
    return {
        "bias_free_median": float(np.median(bias_free)),
        "bias_free_worst": float(np.min(bias_free)),
        "conserved_median": float(np.median(ratio)),
        "mass_in_object": float(np.mean(masses)),
        "pointing": float(np.mean(points)),
        "object_area": float(np.mean(areas)),
        "images": len(kept),
    }


def trained(architecture: type[nn.Module], config: WorldConfig) -> nn.Module:
    """``architecture`` trained on the world as its CNN is (cached: the mobile one takes minutes on 2 cores),
    initialised from the world's seed."""
    torch.manual_seed(config.seed)
    model = architecture(len(config.classes))
    key = hash_json({"world": config.fingerprint(), "training": TRAINING, "architecture": architecture.__name__, "torch": torch.__version__})
    path = trained_path("lrp-rules", key)
    if path.is_file():
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    model = train_world_model(config, progress=False, model=model)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, str(path))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="held-out test images per model (those classified right are scored)")
    parser.add_argument("--world", default="default", help="world config (default: the built-in world)")
    parser.add_argument("--models", nargs="+", choices=("cnn", "mobile", "dense"), default=["cnn", "mobile", "dense"], help="which models to score")
    args = parser.parse_args()
    config = WorldConfig.load(args.world)
    models = {
        "cnn": ("world-cnn (ReLU)", WorldCNN, list(RULES)),
        "mobile": ("mobile (SiLU, linear bottlenecks)", MobileWorldNet, list(RULES)),
        "dense": ("dense (pre-activation batch norms)", DenseWorldNet, [f"norm:{name}" for name in NORM_RULES]),
    }
    for name, architecture, rules in (models[key] for key in args.models):
        started = time.perf_counter()
        model = trained(architecture, config)
        print(f"{name}: trained (or loaded) in {time.perf_counter() - started:.0f} s")
        for rule in rules:
            result = score(model, config, args.images, rule)
            print(
                f"  {rule:<12} bias-free: conserved median {result['bias_free_median']:.3f} (worst {result['bias_free_worst']:.3f});  "
                f"with biases: {result['conserved_median']:.3f};  mass in object {result['mass_in_object']:.3f} (area {result['object_area']:.3f})  "
                f"pointing {result['pointing']:.3f}  ({result['images']} images)",
                flush=True,
            )


if __name__ == "__main__":
    main()
