"""zennit's εz⁺♭ composite (``EpsilonPlusFlat``) with rules that give the same relevance for less work,
and the signed z⁺ rule where z⁺ does not fit (inputs with negative entries).

zennit computes a layer's relevance in a hook that runs *after* autograd has computed the layer's
own input gradient, which the hook then throws away (a convolution's vector-Jacobian product, a
ReLU's mask). Here every rule's layer returns its output through an autograd function whose
backward *is* the rule, so that gradient is never computed. Each rule then does less than zennit's
where the result is provably the same: ``ZPlus`` skips its negative branch when the layer's input
has no negative entry (every layer after a ReLU: that branch's input is zero, and so is its share)
and computes only the output channels that carry relevance (below a CRP layer, the masked units);
``Flat`` runs on one channel; ``Norm`` skips zennit's copy of its input. The relevance is zennit's up
to float rounding and the sign of zeros (``tests/unit/test_relevance_rules.py``), except at a
convolution whose input has negative entries, or where z⁺ would lose relevance, which gets
``SignedZPlus`` (z⁺ loses relevance there: ``benchmarks/lrp_rules.py`` measures it), computed directly
for torch's convolutions. A build may give every convolution the generalised γ rule instead (``LeanGamma``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import reduce

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd
from zennit.canonizers import Canonizer
from zennit.composites import SpecialFirstLayerMapComposite
from zennit.core import BasicHook, Hook
from zennit.layer import Sum
from zennit.rules import ClampMod, Epsilon, Flat, Gamma, Norm, Pass
from zennit.types import Activation, AvgPool, BatchNorm, Convolution
from zennit.types import Linear as AnyLinear

from .layers import Reduction


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

    def post_forward(
        self, module: nn.Module, input: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> torch.Tensor | None:
        inputs = self.stored_tensors.pop("pending", None)
        return None if inputs is None else _Rule.apply(self, module, output, *inputs)

    def forward(self, module: nn.Module, input: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        """Nothing to store: ``_Rule`` keeps the inputs."""


class LeanPass(_Direct, Pass):
    """zennit's ``Pass`` (relevance passes unchanged) without the discarded gradient."""

    reads_inputs = False


class LeanNorm(_Direct, Norm):
    """zennit's ``Norm`` (a residual sum, an average pool) without the discarded gradient, without zennit's
    copy of the input, with a faster stabilizer, and for a residual ``Sum`` without autograd: its output
    recomputed as additions (torch's sum over a last dimension of two is several times slower than adding
    the two halves) and each summand's share of the relevance by hand, in a block of its own."""

    def __init__(self, stabilizer: float = 1e-6) -> None:
        super().__init__(stabilizer=stabilizer)
        self.stabilizer = stabilizer

    def copy(self) -> LeanNorm:
        return LeanNorm(self.stabilizer)

    def backward(self, module: nn.Module, grad_input: tuple, grad_output: tuple) -> tuple[torch.Tensor | None, ...]:
        input = self.stored_tensors["input"][0].detach()
        if isinstance(module, Sum):  # its gradient repeats the relevance ratio along the summed dimension
            summands = input.unbind(module.dim)
            ratio = grad_output[0] / stabilize(reduce(torch.add, summands), self.stabilizer)
            relevance = ratio.new_empty((len(summands), *ratio.shape))
            for summand, share in zip(summands, relevance):
                torch.mul(summand, ratio, out=share)
            return (relevance.movedim(0, module.dim),)  # each summand's share contiguous, for the layers below
        input.requires_grad_()
        with torch.enable_grad():
            output = module.forward(input)
        ratio = grad_output[0] / stabilize(output, self.stabilizer)
        (gradient,) = torch.autograd.grad(output, input, grad_outputs=ratio, create_graph=ratio.requires_grad)
        return (input * gradient,)


def stabilize(output: torch.Tensor, epsilon: float) -> torch.Tensor:
    """zennit's stabilizer, bit for bit (``output`` plus ε with the sign of each entry, zero counted
    positive), in three fast operations instead of its six."""
    return torch.add(output, output.detach().sign().add_(0.5).sign_(), alpha=epsilon)


class _LinearMapRule(torch.autograd.Function):
    """``function(input)``, linear in ``input``, whose backward is the ε-rule: ``x * Jᵀ (R / (z + ε))``, each
    entry of the input its share of the outputs it enters; ``Jᵀ`` from autograd on the map computed again."""

    @staticmethod
    def forward(ctx, input: torch.Tensor, function: Callable[[torch.Tensor], torch.Tensor], epsilon: float) -> torch.Tensor:
        output = function(input)
        ctx.save_for_backward(input, output)
        ctx.function, ctx.epsilon = function, epsilon
        return output

    @staticmethod
    def backward(ctx, relevance: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        input, output = ctx.saved_tensors
        with torch.enable_grad():
            again = input.detach().requires_grad_()
            (shares,) = torch.autograd.grad(ctx.function(again), again, relevance / stabilize(output, ctx.epsilon))
        return input * shares, None, None


def linear_map_rule(function: Callable[[torch.Tensor], torch.Tensor], input: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``function(input)`` with the ε-rule in its backward (``_LinearMapRule``): for a map called as a function, not
    a module zennit's rules could hook (an average pool, ``F.fold``, attention's einsum with its weights held)."""
    return _LinearMapRule.apply(input, function, epsilon)


class LeanEpsilon(_Direct, Epsilon):
    """zennit's ``Epsilon`` without the discarded gradient."""


class LeanBatchNorm(_Direct, Epsilon):
    """A batch norm merged into the layer before it (the identity since: ``canonizers.ExactMergeBatchNorm``)
    passes relevance unchanged; one that stays (pre-activation networks: DenseNet, ResNetV2) is an affine map
    per channel and gets the ε-rule, which leaves its shift the shift's share. Passing it unchanged instead
    (zennit's map) pointed worse on a small DenseNet trained on the world (``benchmarks/lrp_rules.py``).
    The affine map is computed from the norm's statistics, not by its ``forward``: a library's batch norm
    with its activation inside (timm's ``BatchNormAct2d``, unmerged after a concatenation in MixNet) would
    otherwise divide by the activation's output; the activation passes relevance unchanged, as every
    elementwise activation here does."""

    #: whether the module is the identity (merged); set when the rule is registered on it
    merged = False

    def __init__(self, epsilon: float = 1e-6) -> None:
        super().__init__(epsilon=epsilon)
        self.epsilon = epsilon

    def copy(self) -> LeanBatchNorm:
        return LeanBatchNorm(self.epsilon)

    def register(self, module: nn.Module):
        self.merged = _identity_norm(module)
        self.reads_inputs = not self.merged
        return super().register(module)

    def backward(self, module: nn.Module, grad_input: tuple, grad_output: tuple) -> tuple[torch.Tensor | None, ...]:
        if self.merged:
            return grad_output
        if module.running_mean is None or module.running_var is None:  # batch statistics: zennit's rule on its forward
            return super().backward(module, grad_input, grad_output)
        input = self.stored_tensors["input"][0].detach()
        weight, bias = (None if p is None else p.detach() for p in (module.weight, module.bias))
        output = F.batch_norm(input, module.running_mean, module.running_var, weight, bias, False, 0.0, module.eps)
        scale = (module.running_var + module.eps).rsqrt() * (1 if weight is None else weight)
        return (input * scale.view((1, -1) + (1,) * (input.dim() - 2)) * (grad_output[0] / stabilize(output, self.epsilon)),)


def _identity_norm(module: nn.Module) -> bool:
    """Whether a batch norm computes its input unchanged: as a merge leaves it (scale 1, shift 0, mean 0,
    variance 1 - eps, so that (x - 0) / sqrt(var + eps) is x)."""
    stats = module.running_mean is not None and module.running_var is not None
    with torch.no_grad():
        return bool(
            stats
            and torch.all(module.running_mean == 0)
            and torch.all(module.running_var == 1.0 - module.eps)
            and (module.weight is None or torch.all(module.weight == 1))
            and (module.bias is None or torch.all(module.bias == 0))
        )


class LeanFlat(_Direct, Flat):
    """zennit's ``Flat`` without the discarded gradient, and on one channel for a convolution.

    Flat is the gradient of the layer with all weights one and no bias, on an input of ones, at
    ``R / stabilize(z)``, where ``z``, the same for every output channel, is the number of inputs in the
    receptive field (a whole number: ``C_in`` times a one-channel convolution of ones, exact). So every
    input channel gets the same relevance, that one-channel convolution's gradient at
    ``sum over output channels of R / stabilize(z)``.
    """

    def __init__(self, stabilizer: float = 1e-6) -> None:
        super().__init__(stabilizer=stabilizer)
        self.stabilizer = stabilizer

    def copy(self) -> LeanFlat:
        return LeanFlat(self.stabilizer)

    def backward(self, module: nn.Module, grad_input: tuple, grad_output: tuple) -> tuple[torch.Tensor | None, ...]:
        input = self.stored_tensors["input"][0]
        if not _plain_convolution(module):
            return super().backward(module, grad_input, grad_output)
        like = {"dtype": input.dtype, "device": input.device}
        ones = torch.ones((len(input), 1, *input.shape[2:]), **like, requires_grad=True)
        with torch.enable_grad():
            count = module._conv_forward(ones, torch.ones((1, 1, *module.kernel_size), **like), None)
        total = grad_output[0].sum(dim=1, keepdim=True) / (count * input.shape[1] + self.stabilizer)
        (relevance,) = torch.autograd.grad(
            count, ones, grad_outputs=total, create_graph=grad_output[0].requires_grad
        )
        return (relevance.expand_as(input),)


class SignedZPlus(BasicHook):
    """z⁺ at a non-negative output, its mirror z⁻ at a negative one (the limit of the generalised γ rule).

    z⁺ gives an output's relevance to its positive contributions (a positive weight on a positive input,
    a negative weight on a negative one). In a ReLU network relevance only reaches outputs a ReLU let
    through, which hold a positive contribution; with SiLU or linear bottlenecks it reaches negative
    outputs too, which may hold none, and z⁺ loses it. Here a negative output gives its relevance to its
    negative contributions instead, which it always holds (the bias counted as one), so relevance is
    conserved whatever the signs."""

    def __init__(self, stabilizer: float = 1e-6) -> None:
        self.stabilizer = stabilizer
        positive, negative = ClampMod(min=0.0), ClampMod(max=0.0)
        positive_weights = ClampMod(min=0.0, zero_params=["bias"])
        negative_weights = ClampMod(max=0.0, zero_params=["bias"])
        super().__init__(
            input_modifiers=[lambda x: x.clamp(min=0), lambda x: x.clamp(max=0)] * 2,
            param_modifiers=[positive, negative_weights, negative, positive_weights],
            output_modifiers=[lambda output: output] * 4,
            gradient_mapper=self._shares,
            reducer=lambda inputs, gradients: sum(x * g for x, g in zip(inputs, gradients)),
        )

    def copy(self) -> SignedZPlus:
        return type(self)(self.stabilizer)

    def _shares(self, grad: torch.Tensor, outputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The branches' relevance ratios: the positive part is the first two branches' sum, the negative
        part the last two's (``_split``)."""
        up, down = self._split(grad, outputs[0] + outputs[1], outputs[2] + outputs[3])
        return [up, up, down, down]

    def _split(self, grad: torch.Tensor, rising: torch.Tensor, falling: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each output's relevance over its positive part ``rising`` (z⁺) where the output (the two parts'
        sum) is non-negative, else over its negative part ``falling`` (z⁻): the two parts' ratios."""
        positive = rising + falling >= 0
        up = torch.where(positive, grad, 0) / stabilize(rising, self.stabilizer)
        down = torch.where(positive, 0, grad) / stabilize(falling, self.stabilizer)
        return up, down


class Speculation:
    """Relevance passes that do not wait on the GPU. ``LeanZPlus`` reads on the host whether a convolution's input
    has negative entries, which output channels carry relevance and whether z⁺ would lose some: four reads a
    convolution, over 200 a ResNet-50 pass, each of which waits for the GPU, which then idles while Python catches
    up (``benchmarks/crops.py --profile``). While a pass guesses, each convolution takes the branch it took in its
    last exact pass, over all output channels (the others carry zeros), and records on the device whether the exact
    rule could have taken another; ``failed`` reads those records once, at the pass's end, and the caller computes a
    pass with a failed guess again, exactly (``lrp.crp_heatmaps``). A convolution whose guess failed is not guessed
    again. The heatmaps equal the exact rule's to float rounding (the channels the exact rule leaves out add zeros).
    A convolution called twice in one forward has one rule: its second call may guess from its first, and a pass
    where the two take different branches is computed again, exactly."""

    def __init__(self) -> None:
        self.active = False
        self._records: list[tuple[LeanZPlus, torch.Tensor]] = []

    @contextmanager
    def guessing(self, on: bool) -> Iterator[None]:
        """A pass inside the block guesses where ``on`` (a GPU's passes: on a CPU the host reads cost nothing to wait
        for); passes outside it never do."""
        self.active, self._records = on, []
        try:
            yield
        finally:
            self.active = False

    def record(self, rule: LeanZPlus, wrong: torch.Tensor) -> None:
        """Note, on the device, whether ``rule``'s guess may be wrong in this pass."""
        self._records.append((rule, wrong))

    def failed(self) -> bool:
        """Whether a guess of the pass that just ran may be wrong (one read of the GPU); such rules stop guessing."""
        if not self._records:
            return False
        device = self._records[0][1].device  # a model across GPUs: the records gathered on one, read at once
        wrong = torch.stack([flag.reshape(()).to(device) for _, flag in self._records]).cpu().tolist()
        for (rule, _), flag in zip(self._records, wrong):
            if flag:
                rule.guess = "exact"
        self._records = []
        return any(wrong)


class LeanZPlus(_Direct, SignedZPlus):
    """The signed z⁺ rule without the discarded gradient, and, for a layer whose input is non-negative (every
    convolution of a ReLU network but the first), as zennit's ``ZPlus`` on one branch and, for a
    convolution, only over the output channels that carry relevance; the whole signed rule for a layer whose
    input has negative entries (SiLU, Hardswish, linear bottlenecks), or where z⁺ would lose relevance: an
    output that carries some but holds no positive contribution to take it. For torch's own convolutions
    the signed rule is computed directly (``_signed``), also over the channels that carry relevance only.

    With a non-negative input, ``z = W⁺x + b⁺ ≥ 0``, so zennit's stabilizer (ε with the sign of each
    entry, zero counted positive) is ``z + ε``. An output channel without relevance anywhere in the
    batch adds exact zeros to the inputs' relevance: right below a CRP layer, where each pair keeps one
    unit, the convolution is computed for the pairs' units alone, a few channels of hundreds.
    """

    def __init__(self, stabilizer: float = 1e-6, speculation: Speculation | None = None) -> None:
        super().__init__(stabilizer)
        self.positive = ClampMod(min=0.0)
        self.speculation = speculation  # shared by the composite's convolutions
        self.guess: str | None = None  # the branch of the last exact pass: "zplus", "signed", or "exact" (never guess)

    def copy(self) -> LeanZPlus:
        return type(self)(self.stabilizer, self.speculation)

    def backward(self, module: nn.Module, grad_input: tuple, grad_output: tuple) -> tuple[torch.Tensor | None, ...]:
        input = self.stored_tensors["input"][0]
        if self.speculation is not None and self.speculation.active and self.guess in ("zplus", "signed"):
            return self._guessed(module, grad_input, grad_output[0], input)
        if bool(input.min() < 0):
            self._learn("signed")
            return self._signed(module, grad_input, grad_output[0])
        input, grad = input.detach().requires_grad_(), grad_output[0]
        with self.positive(module) as positive, torch.enable_grad():
            channels = _active_channels(module, grad)
            if channels is None:
                output = positive.forward(input)
            else:
                bias = None if positive.bias is None else positive.bias[channels]
                output, grad = module._conv_forward(input, positive.weight[channels], bias), grad[:, channels]
        if self._loses_relevance(module, input.detach(), output.detach(), grad, channels):
            self._learn("exact")  # z⁺ or signed by what the outputs hold: read on the host every pass
            return self._signed(module, grad_input, grad_output[0])
        self._learn("zplus")
        return self._zplus(input, output, grad)

    def _learn(self, branch: str) -> None:
        """Keep the branch an exact pass took as the next passes' guess; a convolution that took two is not guessed."""
        self.guess = branch if self.guess in (None, branch) else "exact"

    def _zplus(self, input: torch.Tensor, output: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor]:
        """z⁺'s relevance of ``input`` (requiring grad) from ``output`` = W⁺x + b⁺ computed of it."""
        (gradient,) = torch.autograd.grad(
            output, input, grad_outputs=grad / (output + self.stabilizer), create_graph=grad.requires_grad
        )
        return (input * gradient,)

    def _guessed(self, module: nn.Module, grad_input: tuple, grad: torch.Tensor, input: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """The branch of the last exact pass, over every channel, with no read on the host; ``speculation`` records
        whether the exact rule could have taken another (``Speculation``)."""
        assert self.speculation is not None
        if self.guess == "signed":  # taken for a negative input: another branch only where none is negative
            self.speculation.record(self, ~(input.min() < 0))  # the exact test's negation, NaN included
            return self._signed(module, grad_input, grad, every_channel=True)
        input = input.detach().requires_grad_()
        with self.positive(module) as positive, torch.enable_grad():
            output = positive.forward(input)
        lost = torch.logical_and(output == 0, grad != 0).any()  # where _loses_relevance would look further
        self.speculation.record(self, torch.logical_or(input.min() < 0, lost))
        return self._zplus(input, output, grad)

    def _signed(
        self, module: nn.Module, grad_input: tuple, grad: torch.Tensor, every_channel: bool = False
    ) -> tuple[torch.Tensor | None, ...]:
        """The signed rule. For torch's own convolutions (any groups) computed directly: the input's two signed
        parts through the clamped weights, four convolutions and one backward, where zennit's hook clamps the
        input four times and the layer's parameters once per branch (``benchmarks/crops.py --model mobilenet``
        measures the difference); for one group, over the output channels that carry relevance only. Any
        other convolution (a subclass with its own forward) takes zennit's hook (``SignedZPlus``)."""
        if not (isinstance(module, _ConvNd) and type(module).forward in TORCH_CONVOLUTIONS):
            return super().backward(module, grad_input, (grad,))
        weight, bias, channels = module.weight, module.bias, None if every_channel else _active_channels(module, grad)
        if channels is not None:
            weight, bias, grad = weight[channels], None if bias is None else bias[channels], grad[:, channels]
        up, down = weight.clamp(min=0), weight.clamp(max=0)
        up_bias, down_bias = (None, None) if bias is None else (bias.clamp(min=0), bias.clamp(max=0))
        input = self.stored_tensors["input"][0].detach()
        positive, negative = input.clamp(min=0).requires_grad_(), input.clamp(max=0).requires_grad_()
        with torch.enable_grad():
            rising = module._conv_forward(positive, up, up_bias) + module._conv_forward(negative, down, None)
            falling = module._conv_forward(positive, down, down_bias) + module._conv_forward(negative, up, None)
        ratios = self._split(grad, rising.detach(), falling.detach())
        gradients = torch.autograd.grad((rising, falling), (positive, negative), grad_outputs=ratios, create_graph=grad.requires_grad)
        return (positive * gradients[0] + negative * gradients[1],)

    def _loses_relevance(
        self, module: nn.Module, input: torch.Tensor, positive: torch.Tensor, grad: torch.Tensor, channels: torch.Tensor | None
    ) -> bool:
        """Whether an output that carries relevance has no positive part (``positive``: W⁺x + b⁺) but a
        negative input contribution, whose share z⁺ would drop (the signed rule hands it to them). An
        output that the bias alone makes negative has none: its relevance is the bias's under both rules."""
        lost = torch.logical_and(positive == 0, grad != 0)
        if not bool(lost.any()):
            return False
        with torch.no_grad(), ClampMod(max=0.0, zero_params=["bias"])(module) as negative:
            below = negative.forward(input) if channels is None else module._conv_forward(input, negative.weight[channels], None)
        return bool(torch.logical_and(lost, below < 0).any())


class LeanGamma(_Direct, Gamma):
    """zennit's generalised γ rule (positive contributions weigh ``1 + γ``, on both input signs) without the
    discarded gradient: every convolution's rule under ``lrp_rule = "gamma"``."""


class HeldScaleNorm(_Direct, Epsilon):
    """A layer or group norm with its scale held constant (CP-LRP, Ali et al. 2022): ``(x - mean(x)) / σ * w + b``
    with σ a constant is linear in ``x``, and the ε-rule through it conserves relevance (the bias absorbs its
    share, as every bias does). The kinds ``held_scale_known`` names and a library's named in
    ``lrp.LIBRARY_HELD_NORMS`` (timm's global response norm, its response held: ``held_scale_norm``); an
    activation inside the module (timm's ``GroupNormAct``) passes relevance as activations do."""

    def __init__(self, epsilon: float = 1e-6) -> None:
        super().__init__(epsilon=epsilon)
        self.epsilon = epsilon

    def copy(self) -> HeldScaleNorm:
        return HeldScaleNorm(self.epsilon)

    def backward(self, module: nn.Module, grad_input: tuple, grad_output: tuple) -> tuple[torch.Tensor | None, ...]:
        input = self.stored_tensors["input"][0].detach().requires_grad_()
        with torch.enable_grad():
            output = held_scale_norm(module, input)
        ratio = grad_output[0] / stabilize(output, self.epsilon)
        (gradient,) = torch.autograd.grad(output, input, grad_outputs=ratio, create_graph=ratio.requires_grad)
        return (input * gradient,)


def held_scale_norm(module: nn.Module, input: torch.Tensor) -> torch.Tensor:
    """What a layer or group norm computes from ``input``, its scale 1/σ held (detached): linear in ``input``; for
    timm's global response norm (ConvNeXt V2), ``x + shift + w * x * n``, the response ``n`` held."""
    if type(module).__name__ == "GlobalResponseNorm":  # n: each channel's spatial L2 norm over the channels' mean
        norms = input.detach().norm(p=2, dim=module.spatial_dim, keepdim=True)
        response = norms / (norms.mean(dim=module.channel_dim, keepdim=True) + module.eps)
        return input + torch.addcmul(module.bias.view(module.wb_shape), module.weight.view(module.wb_shape), input * response)
    if isinstance(module, nn.GroupNorm):  # statistics per sample and group of channels, the affine map per channel
        grouped = input.reshape(input.shape[0], module.num_groups, -1)
        centred = grouped - grouped.mean(dim=-1, keepdim=True)
        output = (centred * (centred.detach().pow(2).mean(dim=-1, keepdim=True) + module.eps).rsqrt()).reshape(input.shape)
        shape = [1, input.shape[1]] + [1] * (input.dim() - 2)
    else:
        dims = layer_norm_dims(module)
        centred = input - input.mean(dim=dims, keepdim=True)
        output = centred * (centred.detach().pow(2).mean(dim=dims, keepdim=True) + module.eps).rsqrt()
        shape = [1] * input.dim()
        for dim, size in zip(dims, module.normalized_shape):
            shape[dim] = size
    if module.weight is None:
        return output
    return output * module.weight.reshape(shape) + (0 if module.bias is None else module.bias.reshape(shape))


#: timm's group norms: torch's ``F.group_norm`` (with one group in ``GroupNorm1``), an activation after it in the
#: ``Act`` kinds
TIMM_GROUP_NORMS = {"GroupNorm", "GroupNorm1", "GroupNorm1NoBias", "GroupNormAct", "GroupNorm1Act"}


def held_scale_known(module: nn.Module) -> bool:
    """Whether ``HeldScaleNorm`` knows what the norm computes: a layer norm ``layer_norm_dims`` knows, torch's
    ``GroupNorm`` or one of timm's (``TIMM_GROUP_NORMS``); a subclass with another forward is not assumed to."""
    if isinstance(module, nn.LayerNorm):
        return layer_norm_dims(module) is not None
    kind = type(module)
    return kind is nn.GroupNorm or (isinstance(module, nn.GroupNorm) and kind.__module__.startswith("timm.") and kind.__name__ in TIMM_GROUP_NORMS)


def layer_norm_dims(module: nn.Module) -> tuple[int, ...] | None:
    """The dimensions a layer norm normalises over: torch's ``LayerNorm`` (and timm's, the same function) its
    last ones, timm's ``LayerNorm2d`` and a ``data_format="channels_first"`` one (transformers' ConvNeXt's) the
    channels; a subclass that keeps its parent's forward (timm's ``LayerNorm2dNoBias``) as its parent; None
    for another kind (no rule here)."""
    if not isinstance(module, nn.LayerNorm):
        return None
    forward = next(kind for kind in type(module).__mro__ if "forward" in vars(kind)).__name__  # whose forward runs
    data_format = getattr(module, "data_format", None)
    if (forward == "LayerNorm2d" or data_format == "channels_first") and len(module.normalized_shape) == 1:
        return (1,)
    if data_format == "channels_last" or forward == "LayerNorm":
        return tuple(range(-len(module.normalized_shape), 0))
    return None


def _active_channels(module: nn.Module, grad: torch.Tensor) -> torch.Tensor | None:
    """The output channels of a convolution with relevance anywhere in ``grad``, where they are at most
    half of them; ``None`` otherwise (or for a convolution other than a plain one)."""
    if not _plain_convolution(module):
        return None
    spatial = tuple(range(2, grad.dim()))
    if 2 * int(torch.any(grad[0], dim=tuple(d - 1 for d in spatial)).sum()) > grad.shape[1]:
        return None  # the first row alone has relevance in most channels: no need to read the others
    active = torch.any(grad, dim=(0, *spatial))
    active[0] |= ~active.any()  # a convolution needs one channel; one without relevance adds zeros
    channels = active.nonzero().flatten()
    return channels if 2 * len(channels) <= len(active) else None


#: the forwards of torch's own convolutions, which are ``_conv_forward`` with the layer's weight and bias
TORCH_CONVOLUTIONS = (nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward)


def _plain_convolution(module: nn.Module) -> bool:
    """Whether ``module`` is torch's ``Conv1d``/``2d``/``3d`` forward (``_conv_forward``) with one group:
    a subclass with its own forward (EfficientNet's static "same" padding) computes something else."""
    return isinstance(module, _ConvNd) and type(module).forward in TORCH_CONVOLUTIONS and module.groups == 1


class LeanEpsilonPlusFlat(SpecialFirstLayerMapComposite):
    """zennit's ``EpsilonPlusFlat`` (Flat for the first linear layer, ZPlus for the other convolutions,
    Epsilon for the other linear layers, zennit's base map for the rest) with the lean rules above, the
    signed rule where z⁺ does not fit (``LeanZPlus``), the ε-rule for batch norms that stay unmerged
    (``LeanBatchNorm``) and a library's elementwise affine maps (``affines``), and layer and group norms with
    their scale held (``HeldScaleNorm``). With ``gamma``,
    the convolutions take the generalised γ rule with that γ instead (``LeanGamma``)."""

    def __init__(
        self,
        epsilon: float = 1e-6,
        stabilizer: float = 1e-6,
        canonizers: list[Canonizer] | None = None,
        passes: tuple[type, ...] = (),
        averages: tuple[type, ...] = (),
        affines: tuple[type, ...] = (),
        held_norms: tuple[type, ...] = (),
        gamma: float | None = None,
    ) -> None:
        self.speculation = Speculation()  # the z⁺ rule's passes without reads on the host, on a GPU
        convolutions = LeanZPlus(stabilizer, self.speculation) if gamma is None else LeanGamma(gamma=gamma, stabilizer=stabilizer)
        layer_map = [
            (nn.MultiheadAttention, None),  # zennit counts it an activation; its layers get the rules (attention.py)
            (Activation, LeanPass()),
            *([(passes, LeanPass())] if passes else []),  # a library's own elementwise modules (lrp.LIBRARY_PASSES)
            (Sum, LeanNorm(stabilizer=stabilizer)),
            (AvgPool, LeanNorm(stabilizer=stabilizer)),
            (Reduction, LeanNorm(stabilizer=stabilizer)),  # a sum or mean over dimensions in a forward (residual.py)
            (nn.Upsample, LeanNorm(stabilizer=stabilizer)),  # each input gets its share of the outputs it feeds
            *([(averages, LeanNorm(stabilizer=stabilizer))] if averages else []),  # its own average pools
            (nn.Fold, LeanNorm(stabilizer=stabilizer)),  # overlapping patches summed: each summand its share
            *([(affines, LeanEpsilon(epsilon=epsilon))] if affines else []),  # its own elementwise affine maps (lrp.LIBRARY_AFFINES)
            (BatchNorm, LeanBatchNorm(epsilon=epsilon)),
            ((nn.LayerNorm, nn.GroupNorm, *held_norms), HeldScaleNorm(epsilon=epsilon)),  # a library's too (lrp.LIBRARY_HELD_NORMS)
            (Convolution, convolutions),
            (nn.Linear, LeanEpsilon(epsilon=epsilon)),
        ]
        first_map = [(AnyLinear, LeanFlat(stabilizer=stabilizer))]
        super().__init__(layer_map=layer_map, first_map=first_map, canonizers=canonizers)

