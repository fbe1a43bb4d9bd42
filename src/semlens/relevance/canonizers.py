"""Canonizers: rewrite a model (temporarily) into a form whose LRP rules conserve relevance.

- batch norms are merged into the convolution or linear layer that feeds them, found by tracing one
  forward pass (so it works for any architecture where a batch norm directly follows its layer); one
  that follows none (pre-activation networks) stays, with the ε-rule of its affine map
  (``rules.LeanBatchNorm``);
- residual additions become zennit ``Sum`` modules, which split relevance in proportion to the
  summands: torchvision ResNet blocks (zennit's canonizers' rewrite), EfficientNet-Lite MBConv blocks,
  and every other module whose own forward torch.fx can trace (``residual.py``). The summands are
  stacked on a leading axis (``summands``), where zennit's canonizers stack them on a last one: the same
  sums, several times faster.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from zennit.canonizers import AttributeCanonizer, Canonizer, NamedMergeBatchNorm

from ..model.units import hooks
from .attention import MultiheadAttentionCanonizer
from .residual import FxResidualCanonizer, residual_sum, summands, trace_residuals
from .rules import held_scale_known

LINEAR = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


#: torch calls that read a tensor's shape, not its values: not counted as readers
SHAPE_QUERIES = {"dim", "size", "numel", "__get__", "shape", "ndim", "ndimension"}


class _Uses(TorchFunctionMode):
    """Counts, per tensor (by id), the torch calls that read it, shape queries aside."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[int, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") not in SHAPE_QUERIES:
            for tensor in {id(value): value for value in tensors_in((args, kwargs or {}))}.values():
                self.counts[id(tensor)] = self.counts.get(id(tensor), 0) + 1
        return func(*args, **(kwargs or {}))


def tensors_in(value: object) -> list[torch.Tensor]:
    """The tensors in a call's arguments, nested in tuples, lists and dicts."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [tensor for item in value for tensor in tensors_in(item)]
    if isinstance(value, dict):
        return [tensor for item in value.values() for tensor in tensors_in(item)]
    return []


def traced_batch_norm_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[list[str], str]]:
    """(linear layer names, batch norm name) for every batch norm whose input is a linear layer's output and
    read by that batch norm alone: merging changes the layer's output, which another reader (a dense block's
    concatenation) must not see. The other batch norms (a pre-activation network's, which read a sum or a
    concatenation: DenseNet, ResNetV2) stay, with the ε-rule of their affine map (``rules.LeanBatchNorm``)."""
    producers: dict[int, tuple[str, torch.Tensor]] = {}  # holding the tensor keeps its id from being reused
    pairs: list[tuple[list[str], str]] = []
    sources: dict[str, int] = {}  # batch norm name: the id of the output it reads

    uses = _Uses()

    def remember(name: str):
        def hook(_module, _inputs, output):
            producers[id(output)] = (name, output)
            uses.counts[id(output)] = 0  # from here on: an id freed earlier may have been counted before

        return hook

    def match(name: str):
        def hook(_module, inputs):
            entry = producers.get(id(inputs[0]))
            source = entry[0] if entry is not None and entry[1] is inputs[0] else None
            if source is not None and all(pair[1] != name for pair in pairs):
                pairs.append(([source], name))
                sources[name] = id(inputs[0])

        return hook

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, LINEAR):
            handles.append(module.register_forward_hook(remember(name)))
        elif isinstance(module, BATCH_NORMS):
            handles.append(module.register_forward_pre_hook(match(name)))
    with hooks(handles), torch.no_grad(), uses:
        model(example)
    return [pair for pair in pairs if uses.counts.get(sources[pair[1]], 0) == 1]


class UnsupportedModelError(Exception):
    """The model holds something LRP cannot explain faithfully here (the pipeline falls back)."""


class MBConvResidualCanonizer(AttributeCanonizer):
    """EfficientNet(-Lite) MBConv blocks: the skip connection becomes a relevance-splitting ``Sum``."""

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @staticmethod
    def applies(module: nn.Module) -> bool:
        return type(module).__name__ == "MBConvBlock" and hasattr(module, "_project_conv")

    @classmethod
    def _attribute_map(cls, name: str, module: nn.Module):
        if cls.applies(module):
            return {"forward": cls.forward.__get__(module), "canonizer_sum": residual_sum()}
        return None

    @staticmethod
    def forward(self, inputs, drop_connect_rate=None):  # noqa: ARG004 (eval mode: no drop connect)
        x = inputs
        if self._block_args.expand_ratio != 1:
            x = self._swish(self._bn0(self._expand_conv(inputs)))
        x = self._swish(self._bn1(self._depthwise_conv(x)))
        if self.has_se:
            raise UnsupportedModelError("squeeze-and-excitation gates (EfficientNet, not -Lite) have no LRP rule here")
        x = self._bn2(self._project_conv(x))
        args = self._block_args
        if self.id_skip and args.stride == 1 and args.input_filters == args.output_filters:
            x = self.canonizer_sum(summands(x, inputs))
        return x


class ResNetResidualCanonizer(AttributeCanonizer):
    """torchvision ResNet blocks (``BasicBlock``, ``Bottleneck``): zennit's ``ResNetBasicBlockCanonizer`` and
    ``ResNetBottleneckCanonizer`` (the skip connection becomes a ``Sum``, the block's modules called in the
    same order), on ``summands``."""

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name: str, module: nn.Module):
        from torchvision.models.resnet import BasicBlock, Bottleneck

        if isinstance(module, (BasicBlock, Bottleneck)):
            return {"forward": cls.forward.__get__(module), "canonizer_sum": residual_sum()}
        return None

    @staticmethod
    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        if hasattr(self, "conv3"):  # Bottleneck
            out = self.bn3(self.conv3(self.relu(self.bn2(self.conv2(out)))))
        else:
            out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.canonizer_sum(summands(identity, out)))


class ExactMergeBatchNorm(NamedMergeBatchNorm):
    """zennit's merge leaves the batch norm as (x - 0) / sqrt(1 + eps): set its variance to 1 - eps so that
    the merged model computes exactly what the original does."""

    @staticmethod
    def merge_batch_norm(modules, batch_norm):
        NamedMergeBatchNorm.merge_batch_norm(modules, batch_norm)
        batch_norm.running_var.data = torch.full_like(batch_norm.running_var.data, 1.0 - batch_norm.eps)


def canonizers_for(
    model: nn.Module, example: torch.Tensor, on_path: dict[nn.Module, set[str] | None] | None = None, ruled: tuple[type, ...] = ()
) -> list[Canonizer]:
    """The canonizers a model needs: batch-norm merging, the residual rewrites of known blocks, torch.fx's
    rewrite of the residual sums in every other module on the input's path (``on_path``, where known: those
    modules and the arguments that carry the input, ``lrp.modules_on_the_input_path``) and without a rule of
    its own as a whole (``ruled``: a library's activations), refusing ops without a rule, and torch's
    multi-head attention computed from layers (``attention.MultiheadAttentionCanonizer``)."""
    canonizers: list[Canonizer] = []
    kinds = {type(module).__name__ for module in model.modules()}
    torchvision_blocks = {
        type(module).__name__ for module in model.modules() if type(module).__module__.startswith("torchvision.models.resnet")
    }
    handled: tuple[type, ...] = ()  # blocks whose residual sums those canonizers rewrite: torch.fx leaves them alone
    if torchvision_blocks & {"BasicBlock", "Bottleneck"}:
        from torchvision.models.resnet import BasicBlock, Bottleneck

        canonizers.append(ResNetResidualCanonizer())
        handled += (BasicBlock, Bottleneck)
    if "MBConvBlock" in kinds:
        canonizers.append(MBConvResidualCanonizer())
    # a norm with its activation inside (timm's GroupNormAct) has its rule as a whole, and a module off the input's
    # path computes a constant (a size-dependent position encoding): torch.fx leaves them alone too
    traced = trace_residuals(
        model,
        lambda block: isinstance(block, handled + ruled) or MBConvResidualCanonizer.applies(block) or held_scale_known(block) or (on_path is not None and block not in on_path),
        lambda block: None if on_path is None else on_path.get(block),
    )  # fmt: skip
    unsupported = traced.unsupported + MultiheadAttentionCanonizer.unsupported(model)
    if unsupported:
        raise UnsupportedModelError(f"no LRP rule here for {'; '.join(unsupported)}")
    canonizers.append(FxResidualCanonizer(traced))
    if any(isinstance(module, nn.MultiheadAttention) for module in model.modules()):
        canonizers.append(MultiheadAttentionCanonizer())
    pairs = traced_batch_norm_pairs(model, example)
    if pairs:
        canonizers.append(ExactMergeBatchNorm(pairs))
    return canonizers
