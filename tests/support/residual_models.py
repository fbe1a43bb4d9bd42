"""Custom residual networks that no dedicated canonizer knows (torch.fx rewrites them), the same networks
written by hand with zennit's ``Sum``, gated blocks (squeeze-and-excitation), and blocks that LRP cannot
explain (a product of two computed tensors, an untraceable sum)."""

from __future__ import annotations

import torch
from tiny_models import TINY_PREPROCESSING
from torch import nn
from zennit.layer import Sum

from semlens import LoadedModel

WIDTH = 6


class Branch(nn.Module):
    """conv, ReLU, conv: the residual branch of every block here."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.relu, self.conv2 = (
            nn.Conv2d(WIDTH, WIDTH, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(WIDTH, WIDTH, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.conv1(x)))


class PlusBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.branch, self.relu = Branch(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.branch(x) + x)


class HalvedSumBlock(PlusBlock):
    """A residual sum scaled by a constant, ``(branch(x) + x) * 0.5``: the scaling's signal is the rewritten sum."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu((self.branch(x) + x) * 0.5)


class InPlaceBlock(PlusBlock):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        out += x
        return self.relu(out)


class TorchAddBlock(PlusBlock):
    """``torch.add`` of two computed tensors, then a learned per-channel offset (bias-like: no residual)."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.full((1, WIDTH, 1, 1), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(torch.add(self.branch(x), x) + self.offset)


class CatBlock(nn.Module):
    """Concatenation, then a 1x1 conv: conserves relevance under gradients as it is."""

    def __init__(self) -> None:
        super().__init__()
        self.branch, self.mix = Branch(), nn.Conv2d(2 * WIDTH, WIDTH, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(torch.cat([self.branch(x), x], dim=1))


class ResidualCNN(nn.Module):
    """A stem, the four blocks above, a linear head; He-initialised so that logits are of order one."""

    blocks_of = (PlusBlock, InPlaceBlock, TorchAddBlock, CatBlock)

    def __init__(self, classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem, self.relu = nn.Conv2d(3, WIDTH, 3, padding=1), nn.ReLU()
        self.blocks = nn.Sequential(*(block() for block in self.blocks_of))
        self.pool, self.head = nn.AdaptiveAvgPool2d(1), nn.Linear(WIDTH, classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.blocks(self.relu(self.stem(x)))).flatten(1))


class SumPlusBlock(PlusBlock):
    """``PlusBlock`` with its sum written as zennit's ``Sum`` by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.sum = Sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.sum(torch.stack([self.branch(x), x], dim=-1)))


class SumTorchAddBlock(TorchAddBlock):
    def __init__(self) -> None:
        super().__init__()
        self.sum = Sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.sum(torch.stack([self.branch(x), x], dim=-1)) + self.offset)


class HandSumResidualCNN(ResidualCNN):
    """``ResidualCNN`` with hand-written ``Sum`` modules (load its state dict: ``Sum`` has no parameters)."""

    blocks_of = (SumPlusBlock, SumPlusBlock, SumTorchAddBlock, CatBlock)


class GatedBlock(nn.Module):
    """``x * sigmoid(conv(x))``: a gate, spatial, with torch's sigmoid function."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Conv2d(WIDTH, WIDTH, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.gate(x))


class SqueezeExciteBlock(nn.Module):
    """A residual block with squeeze-and-excitation as timm writes it (pool, reduce, ReLU, expand, a gate
    module, ``x * gate``), the gate module given (``nn.Sigmoid`` or ``nn.Hardsigmoid``), seen through a view."""

    def __init__(self, gate: type[nn.Module] = nn.Sigmoid) -> None:
        super().__init__()
        self.branch, self.relu = Branch(), nn.ReLU()
        self.reduce, self.act, self.expand, self.gate = nn.Conv2d(WIDTH, 2, 1), nn.ReLU(), nn.Conv2d(2, WIDTH, 1), gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        scale = self.expand(self.act(self.reduce(out.mean((2, 3), keepdim=True))))
        return self.relu(self.gate(scale).view(-1, WIDTH, 1, 1) * out + x)


class HardSqueezeExciteBlock(SqueezeExciteBlock):
    def __init__(self) -> None:
        super().__init__(nn.Hardsigmoid)


class InvertedResidualBlock(nn.Module):
    """MobileNetV2/V3's block as hand-written nets have it: expand, SiLU, depthwise, SiLU, a squeeze-and-
    excitation branch written as one ``Sequential`` ending in its sigmoid, a linear projection (no
    activation: its outputs, and the next block's inputs, carry both signs), the residual sum."""

    def __init__(self) -> None:
        super().__init__()
        hidden = 2 * WIDTH
        self.expand = nn.Sequential(nn.Conv2d(WIDTH, hidden, 1), nn.BatchNorm2d(hidden), nn.SiLU())
        self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden), nn.BatchNorm2d(hidden), nn.SiLU())
        self.excite = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(hidden, 3, 1), nn.ReLU(), nn.Conv2d(3, hidden, 1), nn.Sigmoid())
        self.project = nn.Sequential(nn.Conv2d(hidden, WIDTH, 1), nn.BatchNorm2d(WIDTH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.depthwise(self.expand(x))
        return x + self.project(hidden * self.excite(hidden))


class PathSoftmax(nn.Module):
    """SKNet's attention branch as timm writes it, a module of its own: the paths summed and pooled, reduced,
    expanded, and a softmax over the paths per channel."""

    def __init__(self, paths: int = 2) -> None:
        super().__init__()
        self.paths = paths
        self.reduce, self.act, self.select = nn.Conv2d(WIDTH, 3, 1), nn.ReLU(), nn.Conv2d(3, WIDTH * paths, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.select(self.act(self.reduce(x.sum(1).mean((2, 3), keepdim=True))))
        return torch.softmax(scores.view(scores.shape[0], self.paths, WIDTH, 1, 1), dim=1)


class SelectiveKernelBlock(nn.Module):
    """Selective kernels (SKNet): two paths (3x3 and dilated 3x3) stacked, weighed per channel by a softmax
    over the paths that ``PathSoftmax`` computes, summed over the paths, plus the skip connection."""

    def __init__(self) -> None:
        super().__init__()
        self.small = nn.Sequential(nn.Conv2d(WIDTH, WIDTH, 3, padding=1), nn.ReLU())
        self.large = nn.Sequential(nn.Conv2d(WIDTH, WIDTH, 3, padding=2, dilation=2), nn.ReLU())
        self.attn = PathSoftmax()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        paths = torch.stack([self.small(x), self.large(x)], dim=1)
        return torch.sum(paths * self.attn(paths), dim=1) + x


class RadixSoftmax(nn.Module):
    """ResNeSt's softmax over its radix groups: a module without children, written with a view, a transpose
    and a reshape around the softmax."""

    def __init__(self, radix: int) -> None:
        super().__init__()
        self.radix = radix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.size(0)
        x = x.view(batch, 1, self.radix, -1).transpose(1, 2)
        return torch.nn.functional.softmax(x, dim=1).reshape(batch, -1)


class SplitAttentionBlock(nn.Module):
    """Split attention (ResNeSt, radix 2): one convolution makes both groups, their sum is pooled into a
    ``RadixSoftmax`` gate, the groups weighed by it and summed with ``.sum(dim=1)``, plus the skip connection."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.relu = nn.Conv2d(WIDTH, 2 * WIDTH, 3, padding=1), nn.ReLU()
        self.fc1, self.act, self.fc2 = nn.Conv2d(WIDTH, 3, 1), nn.ReLU(), nn.Conv2d(3, 2 * WIDTH, 1)
        self.rsoftmax = RadixSoftmax(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.conv(x))
        batch, channels, height, width = out.shape
        groups = out.reshape((batch, 2, channels // 2, height, width))
        pooled = groups.sum(dim=1).mean((2, 3), keepdim=True)
        attn = self.rsoftmax(self.fc2(self.act(self.fc1(pooled)))).view(batch, -1, 1, 1)
        return (groups * attn.reshape((batch, 2, channels // 2, 1, 1))).sum(dim=1) + x


class UngatedPathSoftmaxBlock(SelectiveKernelBlock):
    """``PathSoftmax``'s output added to the paths instead of weighing them: a softmax that gates nothing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        paths = torch.stack([self.small(x), self.large(x)], dim=1)
        return torch.sum(paths + self.attn(paths), dim=1) + x


class DenseBlock(nn.Module):
    """DenseNet's layer (pre-activation): batch norm, ReLU, conv, concatenated to the input, then a 1x1 conv
    back to ``WIDTH``. Its batch norm reads the block's input, not a convolution's output: it stays unmerged."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.relu, self.conv = nn.BatchNorm2d(WIDTH), nn.ReLU(), nn.Conv2d(WIDTH, WIDTH, 3, padding=1)
        self.mix = nn.Conv2d(2 * WIDTH, WIDTH, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(torch.cat([x, self.conv(self.relu(self.norm(x)))], dim=1))


class ProductBlock(nn.Module):
    """``x * conv(x)``: a product of two computed tensors, neither a gate, which no LRP rule here explains."""

    def __init__(self) -> None:
        super().__init__()
        self.other = nn.Conv2d(WIDTH, WIDTH, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.other(x)


class UntraceableBlock(PlusBlock):
    """A residual sum behind control flow on a tensor's value: torch.fx cannot trace it (the sum gets its rule
    while the forward runs: ``residual.UntracedOps``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() < 0:  # never true after a ReLU
            return x
        return self.relu(self.branch(x) + x)


class UntraceableInPlaceBlock(PlusBlock):
    """``UntraceableBlock`` adding in place (``out += x``, Twins' ``PosConv``): ``UntracedOps`` gives the sum its rule."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() < 0:
            return x
        out = self.branch(x)
        out += x
        return self.relu(out)


class UntraceableScaledAddBlock(PlusBlock):
    """``UntraceableBlock`` adding with ``torch.add(..., alpha=1.0)``: no rule here knows that call, so the gradient
    sends the sum's relevance to both summands whole."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() < 0:
            return x
        return self.relu(torch.add(self.branch(x), x, alpha=1.0))


class InputMutatingBlock(nn.Module):
    """Adds in place to its own input (``x += f(x)``): torch.fx records a new tensor, so the caller,
    which reads ``x`` again, would see the old one in the rewritten model."""

    def __init__(self) -> None:
        super().__init__()
        self.branch = Branch()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x += self.branch(x)
        return x


class OptionalShortcutBlock(PlusBlock):
    """A shortcut that defaults to the input when the caller passes none (timm's DLA blocks): torch.fx traces the
    argument as a tensor, so it is traced again without it."""

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor | None = None) -> torch.Tensor:
        if shortcut is None:
            shortcut = x
        return self.relu(self.branch(x) + shortcut)


class OptionalShortcutCNN(ResidualCNN):
    """Calls its second block without a shortcut and its third with one."""

    blocks_of = (PlusBlock, OptionalShortcutBlock, OptionalShortcutBlock)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.blocks[0](self.relu(self.stem(x)))
        second = self.blocks[1](first)
        return self.head(self.pool(self.blocks[2](second, shortcut=first)).flatten(1))


class ManyOptionalBlock(PlusBlock):
    """More optional arguments than are traced each way (``residual.MAX_OPTIONAL``): traced once, as tensors,
    so the rewrite, called without them, adds None."""

    def forward(self, x: torch.Tensor, a: torch.Tensor | None = None, b=None, c=None, d=None) -> torch.Tensor:
        if a is None:
            a = x
        return self.relu(self.branch(x) + a)


class ManyOptionalCNN(ResidualCNN):
    """Its block called with its optional shortcut and without it: traced with the shortcut (it carries the
    input in one call), the rewrite adds None in the other."""

    blocks_of = (PlusBlock, ManyOptionalBlock)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.blocks[0](self.relu(self.stem(x)))
        hidden = self.blocks[1](self.blocks[1](hidden, hidden))
        return self.head(self.pool(hidden).flatten(1))


class InputMutatingCNN(ResidualCNN):
    blocks_of = (InputMutatingBlock,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.relu(self.stem(x))
        return self.head(self.pool(self.blocks(hidden) + hidden).flatten(1))


class UntraceableRootCNN(ResidualCNN):
    """Control flow on a tensor's value in the model's own forward: its blocks are still traced, one by one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.amin() < 0:
            raise ValueError("inputs must be non-negative")
        return super().forward(x)


class GatedCNN(ResidualCNN):
    blocks_of = (PlusBlock, GatedBlock)


class SqueezeExciteCNN(ResidualCNN):
    blocks_of = (SqueezeExciteBlock, HardSqueezeExciteBlock, GatedBlock)


class MobileCNN(ResidualCNN):
    blocks_of = (InvertedResidualBlock, InvertedResidualBlock, InvertedResidualBlock)


class SplitPathsCNN(ResidualCNN):
    blocks_of = (SelectiveKernelBlock, SplitAttentionBlock, PlusBlock)


class UngatedSoftmaxCNN(ResidualCNN):
    blocks_of = (PlusBlock, UngatedPathSoftmaxBlock)


class DenseCNN(ResidualCNN):
    blocks_of = (DenseBlock, DenseBlock)


class ProductCNN(ResidualCNN):
    blocks_of = (PlusBlock, ProductBlock)


class HalvedSumCNN(ResidualCNN):
    blocks_of = (HalvedSumBlock, PlusBlock)


class UntraceableCNN(ResidualCNN):
    blocks_of = (PlusBlock, UntraceableBlock)


class UntraceableInPlaceCNN(ResidualCNN):
    blocks_of = (PlusBlock, UntraceableInPlaceBlock)


class UntraceableScaledAddCNN(ResidualCNN):
    blocks_of = (PlusBlock, UntraceableScaledAddBlock)


class UntraceableInputMutatingBlock(InputMutatingBlock):
    """``InputMutatingBlock`` that torch.fx cannot trace: ``UntracedOps`` binds its ``x += ...`` to a new tensor, so
    the caller, which reads ``x`` again, sees the old one while LRP runs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() < 0:
            return x
        return super().forward(x)


class UntraceableInputMutatingCNN(InputMutatingCNN):
    blocks_of = (UntraceableInputMutatingBlock,)


class TwoPlusCNN(ResidualCNN):
    """``UntraceableCNN``'s twin that torch.fx traces (load its state dict)."""

    blocks_of = (PlusBlock, PlusBlock)


def residual_cnn() -> LoadedModel:
    return LoadedModel(
        ResidualCNN().eval(), "py:residual_models:residual_cnn", TINY_PREPROCESSING, ["red", "green", "blue"]
    )
