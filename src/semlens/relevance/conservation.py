"""Where a model loses (or creates) relevance: the module to name when the conservation check fails.

Between modules, zennit's modified gradient *is* the relevance, so one backward pass gives, for every
module, the relevance arriving at its output and the relevance it hands back at its inputs (each input
is cloned on entry, so that what other consumers of the same tensor take is not counted). On a
bias-free model the two must agree; the innermost module where they do not, first in forward order,
is the one that breaks conservation (its parents break it too, only because they contain it).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..model.units import hooks


@dataclass
class Leak:
    """The module where relevance is not conserved ("" is the model's own forward)."""

    name: str
    kind: str
    ratio: float | None  # relevance at its inputs / relevance at its output (None for the model itself)
    untraced: str | None = None  # why torch.fx could not trace the module (so its sums were not rewritten)

    def __str__(self) -> str:
        where = (
            f"at {self.name} ({self.kind}): input/output {self.ratio:.2f}"
            if self.name
            else f"in the model's own forward ({self.kind})"
        )
        why = (
            f" (torch.fx could not trace it, so its sums were not rewritten: {self.untraced})" if self.untraced else ""
        )
        return f"relevance not conserved {where}{why}"


@dataclass
class _Flow:
    order: int
    inputs: list[torch.Tensor] = field(default_factory=list)
    outputs: list[torch.Tensor] = field(default_factory=list)


def find_leak(
    model: nn.Module,
    attributing: Callable[[], AbstractContextManager[nn.Module]],
    inputs: torch.Tensor,
    initial: Callable[[torch.Tensor], torch.Tensor],
    tolerance: float,
    untraced: dict[str, str],
) -> Leak:
    """The innermost module, first in forward order, whose input and output relevance differ by more
    than ``tolerance`` times the explained total; the model itself when every module conserves.

    ``attributing`` prepares ``model`` for LRP (``RelevanceModel.attributing``); the hooks on inputs are
    registered before it, so that its rules see the cloned inputs, and those on outputs after it, so that
    they see the outputs its rules hand on (``rules.py`` replaces a layer's output). ``untraced`` gives, per module
    name, why torch.fx could not trace it: the likely cause when that module is the one named.
    """
    flows: dict[str, _Flow] = {}

    def enter(name: str):
        def hook(_module, args):
            flow = flows.setdefault(name, _Flow(len(flows)))
            cloned = tuple(arg.clone() if _tracked(arg) else arg for arg in args)
            flow.inputs += [arg for arg in cloned if _tracked(arg)]
            return cloned

        return hook

    def leave(name: str):
        def hook(_module, _args, output):
            outputs = output if isinstance(output, (tuple, list)) else (output,)
            flows[name].outputs += [tensor for tensor in outputs if _tracked(tensor)]

        return hook

    named = [(name, module) for name, module in model.named_modules() if name]
    inputs = inputs.detach().clone().requires_grad_(True)
    with hooks([module.register_forward_pre_hook(enter(name)) for name, module in named]), attributing() as modified:
        with hooks([module.register_forward_hook(leave(name)) for name, module in named]), torch.enable_grad():
            outputs = modified(inputs)
        start = initial(outputs)
        counted = {name: (list(flow.inputs), list(flow.outputs)) for name, flow in flows.items()}  # a rule may call a module again while it runs
        tensors = [tensor for ins, outs in counted.values() for tensor in ins + outs]
        grads = iter(torch.autograd.grad(outputs, tensors, grad_outputs=start, allow_unused=True))
    explained = abs(float(start.detach().sum()))
    leaks: dict[str, float] = {}
    for name, (ins, outs) in counted.items():
        below = sum(_total(next(grads)) for _ in ins)
        above = sum(_total(next(grads)) for _ in outs)
        if abs(below - above) > tolerance * explained:
            leaks[name] = below / above if above else float("inf")
    innermost = [name for name in leaks if not any(other.startswith(f"{name}.") for other in leaks)]
    if not innermost:
        return Leak("", type(model).__name__, None, untraced.get(""))
    name = min(innermost, key=lambda leak: flows[leak].order)
    return Leak(name, type(model.get_submodule(name)).__name__, leaks[name], untraced.get(name))


def _tracked(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.requires_grad


def _total(grad: torch.Tensor | None) -> float:
    return 0.0 if grad is None else float(grad.detach().sum())
