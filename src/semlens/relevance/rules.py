"""zennit's εz⁺♭ composite (``EpsilonPlusFlat``) with rules that give the same relevance for less work.

zennit computes a layer's relevance in a hook that runs *after* autograd has computed the layer's
own input gradient, which the hook then throws away (a convolution's vector-Jacobian product, a
ReLU's mask); and its ``ZPlus`` runs two modified forwards and two vector-Jacobian products per
layer, one for the positive and one for the negative inputs. Here every rule's layer returns its
output through an autograd function whose backward *is* the rule, so the gradient is never computed;
and ``ZPlus`` skips its negative branch when the layer's input has no negative entry (every layer
after a ReLU): that branch's input is zero, and so is its share. The relevance is zennit's, up to
the sign of zeros (``tests/unit/test_relevance_rules.py``).
"""

from __future__ import annotations

import torch
from torch import nn
from zennit.canonizers import Canonizer
from zennit.composites import SpecialFirstLayerMapComposite
from zennit.core import Hook
from zennit.layer import Sum
from zennit.rules import ClampMod, Epsilon, Flat, Norm, Pass, ZPlus
from zennit.types import Activation, AvgPool, BatchNorm, Convolution
from zennit.types import Linear as AnyLinear


class _Rule(torch.autograd.Function):
    """The layer's output, passed on unchanged; its backward is the layer's rule, not its gradient."""

    @staticmethod
    def forward(ctx, hook: Hook, module: nn.Module, output: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        ctx.hook, ctx.module = hook, module
        if hook.reads_inputs:
            ctx.save_for_backward(*inputs)
        return output.detach()  # a new tensor, not a view: later in-place ops on it stay allowed

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        inputs = ctx.saved_tensors
        ctx.hook.stored_tensors["input"] = inputs  # per call, so a module used twice gets each call's inputs
        return (None, None, None, *ctx.hook.backward(ctx.module, inputs, (grad_output,)))


class _Direct:
    """Mixin for a zennit ``Hook``: the layer runs on detached inputs, so autograd records nothing for
    their gradient, and ``_Rule`` links its output back to them through the rule. An in-place layer
    (``ReLU(inplace=True)``) changes its input as in the model itself, where zennit's hook gave it a copy."""

    #: whether the rule's backward reads the layer's inputs (kept until the backward pass only then)
    reads_inputs = True

    def pre_forward(self, module: nn.Module, input: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
        if not input[0].requires_grad:
            return None
        self.stored_tensors["pending"] = input
        return tuple(tensor.detach() for tensor in input)

    def post_forward(self, module: nn.Module, input: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
        inputs = self.stored_tensors.pop("pending", None)
        return None if inputs is None else _Rule.apply(self, module, output, *inputs)

    def forward(self, module: nn.Module, input: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        """Nothing to store: ``_Rule`` keeps the inputs."""


class LeanPass(_Direct, Pass):
    """zennit's ``Pass`` (relevance passes unchanged) without the discarded gradient."""

    reads_inputs = False


class LeanNorm(_Direct, Norm):
    """zennit's ``Norm`` without the discarded gradient."""


class LeanEpsilon(_Direct, Epsilon):
    """zennit's ``Epsilon`` without the discarded gradient."""


class LeanFlat(_Direct, Flat):
    """zennit's ``Flat`` without the discarded gradient."""


class LeanZPlus(_Direct, ZPlus):
    """zennit's ``ZPlus`` without the discarded gradient, and with one branch where the input is non-negative.

    There ``z = W⁺x + b⁺ ≥ 0``, so zennit's stabilizer (ε with the sign of each entry, zero counted
    positive) is ``z + ε``.
    """

    def __init__(self, stabilizer: float = 1e-6, zero_params: list[str] | None = None) -> None:
        super().__init__(stabilizer=stabilizer, zero_params=zero_params)
        self.stabilizer, self.zero_params = stabilizer, zero_params
        self.positive = ClampMod(min=0.0, zero_params=zero_params)

    def copy(self) -> LeanZPlus:
        return LeanZPlus(self.stabilizer, self.zero_params)

    def backward(self, module: nn.Module, grad_input: tuple, grad_output: tuple) -> tuple[torch.Tensor | None, ...]:
        input = self.stored_tensors["input"][0]
        if bool(input.min() < 0):
            return super().backward(module, grad_input, grad_output)
        input = input.detach().requires_grad_()
        with self.positive(module) as positive, torch.enable_grad():
            output = positive.forward(input)
        (gradient,) = torch.autograd.grad(
            output, input, grad_outputs=grad_output[0] / (output + self.stabilizer), create_graph=grad_output[0].requires_grad
        )
        relevance = input * gradient
        return tuple(relevance if original.shape == relevance.shape else None for original in grad_input)


class LeanEpsilonPlusFlat(SpecialFirstLayerMapComposite):
    """zennit's ``EpsilonPlusFlat`` (Flat for the first linear layer, ZPlus for the other convolutions,
    Epsilon for the other linear layers, zennit's base map for the rest) with the lean rules above."""

    def __init__(self, epsilon: float = 1e-6, stabilizer: float = 1e-6, canonizers: list[Canonizer] | None = None) -> None:
        layer_map = [
            (Activation, LeanPass()),
            (Sum, LeanNorm(stabilizer=stabilizer)),
            (AvgPool, LeanNorm(stabilizer=stabilizer)),
            (BatchNorm, LeanPass()),
            (Convolution, LeanZPlus(stabilizer=stabilizer)),
            (nn.Linear, LeanEpsilon(epsilon=epsilon)),
        ]
        super().__init__(layer_map=layer_map, first_map=[(AnyLinear, LeanFlat(stabilizer=stabilizer))], canonizers=canonizers)
