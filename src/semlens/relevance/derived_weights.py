"""Convolutions whose forward derives the weight it convolves with from its parameters.

Weight standardisation (timm's ``StdConv2d`` and ``ScaledStdConv2d`` with their "same"-padding variants:
BiT ResNetV2s, NFNets, hybrid ViTs) convolves with a weight normalised per output channel, not with the
``weight`` parameter. The rules clamp and scale ``module.weight`` and call the module's forward with it
(zennit's hooks), so they would standardise the clamped weight: the heatmaps of another layer, and
relevance lost (BiT's was NaN). In eval mode that derived weight is a constant, so such a layer is the
plain convolution with it. ``DerivedWeights``, while relevance is computed, finds every convolution whose
forward passes a weight other than its parameter to the convolution function, holds that weight as the
parameter's value, and runs the module's own forward (its padding) with the convolution taking
``module.weight`` as it then is: the rules' clamped copy where they modify it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.overrides import TorchFunctionMode

from .rules import TORCH_CONVOLUTIONS

#: the functional convolutions a module's forward calls (``F.conv2d`` is ``torch.conv2d``)
CONVOLUTIONS = {torch.conv1d, torch.conv2d, torch.conv3d}


class _ConvolutionCall(TorchFunctionMode):
    """Inside one convolution module's forward: records the weight and bias its convolution function
    receives, or (``module`` given) replaces them with that module's ``weight`` and ``bias``."""

    def __init__(self, module: nn.Module | None = None) -> None:
        super().__init__()
        self.module, self.calls = module, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in CONVOLUTIONS:
            args = list(args)
            if self.module is None:
                self.calls.append((args[1] if len(args) > 1 else kwargs["weight"], args[2] if len(args) > 2 else kwargs.get("bias")))
            else:
                if len(args) > 1:
                    args[1] = self.module.weight
                else:
                    kwargs["weight"] = self.module.weight
                if len(args) > 2:
                    args[2] = self.module.bias
                else:
                    kwargs["bias"] = self.module.bias
        return func(*args, **kwargs)


def derived_weight(module: nn.Module) -> torch.Tensor | None:
    """The weight ``module``'s forward convolves with, where it is not the ``weight`` parameter itself and
    the bias is ``module.bias``; None for torch's convolutions and for subclasses that pass their parameter
    (timm's ``Conv2dSame``). Read from one forward on a zero input as small as the kernel."""
    if not isinstance(module, _ConvNd) or type(module).forward in TORCH_CONVOLUTIONS:
        return None
    side = [(size - 1) * dilation + 1 for size, dilation in zip(module.kernel_size, module.dilation)]
    zeros = torch.zeros(1, module.in_channels, *side, dtype=module.weight.dtype, device=module.weight.device)
    recorder = _ConvolutionCall()
    with torch.no_grad(), recorder:
        module(zeros)
    if len(recorder.calls) != 1:
        return None
    weight, bias = recorder.calls[0]
    if weight is module.weight or bias is not module.bias or weight.shape != module.weight.shape:
        return None
    return weight.detach()


class DerivedWeights:
    """While entered, each convolution of ``model`` that convolves with a weight derived from its
    parameters (``derived_weight``; found once, here) holds that weight as its parameter's value and
    convolves with ``module.weight`` as it is at each call; on exit, its parameter and forward are restored."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = [module for module in model.modules() if derived_weight(module) is not None]
        self.saved: dict[nn.Module, torch.Tensor] = {}

    def __enter__(self) -> DerivedWeights:
        for module in self.modules:
            weight = derived_weight(module)  # from the parameters as they are now
            if weight is not None:
                self.saved[module] = module.weight.data
                module.weight.data = weight
                module.forward = _forward_with_parameters(module)
        return self

    def __exit__(self, *_: object) -> None:
        for module, weight in self.saved.items():
            module.weight.data = weight
            del module.forward
        self.saved = {}


def _forward_with_parameters(module: nn.Module):
    """The module's own forward, its convolution given ``module.weight`` and ``module.bias`` as they are."""
    forward = type(module).forward

    def run(*args, **kwargs):
        with _ConvolutionCall(module):
            return forward(module, *args, **kwargs)

    return run
