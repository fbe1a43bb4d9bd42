"""LRP and CRP with zennit: the composite εz⁺♭ (EpsilonPlusFlat, with the lean rules of ``rules.py``) plus
the canonizers a model needs.

Relevance travels backwards as zennit's modified gradient: the "gradient" that reaches a layer's
output is that layer's relevance. Concept Relevance Propagation conditions the backward pass on units
by masking that relevance at a layer. A model is supported when every module with parameters or a
non-linearity has a rule here *and* relevance is conserved on a probe input; otherwise semlens says
why and the pipeline keeps activation-map crops: never a wrong heatmap.
"""

from __future__ import annotations

import copy
import inspect
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Callable, Collection, Iterator

import torch
from torch import nn
from zennit.types import AvgPool

from .._util.devices import strict_float32
from .._util.errors import SemlensError
from ..model.sae import SparseAutoencoder
from ..model.units import hooks, resolve_module, select_output
from .attention import HeldAttention
from .canonizers import UnsupportedModelError, canonizers_for, tensors_in
from .choices import CRP_FOCUS, LRP_RULES
from .conservation import find_leak
from .derived_weights import DerivedWeights
from .residual import HOLDING_MODULES, FxResidualCanonizer, UntracedOps, fixed_affine, makes_gate, rearranges_only
from .rules import LeanEpsilonPlusFlat, Speculation, held_scale_known
from .sae import decoded_share, unit_tensors

#: leaf modules with an LRP rule (or that pass relevance unchanged and exactly)
SUPPORTED_LEAVES = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU,
    # elementwise activations: relevance passes them unchanged (the identity rule, zennit's Pass for its
    # Activation types; Sigmoid and Hardsigmoid only where they gate a product: residual.gated_product)
    nn.GELU, nn.SiLU, nn.Hardswish, nn.ELU, nn.SELU, nn.CELU, nn.PReLU, nn.Hardtanh, nn.Tanh, nn.Softplus,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout2d, nn.Flatten, nn.Identity, nn.ZeroPad2d,
    nn.Upsample,  # a linear map without bias (nearest: copies): the average pools' rule (HRNet's, FPNs', U-Nets')
    nn.Unfold,  # patches copied out of the map (TNT, VOLO): the gradient hands each copy's relevance back to its pixel
    nn.Fold,  # overlapping patches summed into a map (VOLO): the average pools' rule, each summand its share
    nn.Sequential,  # a leaf Sequential is an empty one: the identity (GhostNet's shortcuts)
    nn.ModuleList, nn.ModuleDict,  # empty ones, never called
    nn.LayerNorm, nn.GroupNorm,  # their scale held constant (rules.HeldScaleNorm), where held_scale_known knows the kind
)  # fmt: skip
#: parameter-free pass-through modules that libraries define themselves (e.g. EfficientNet-Lite's Identity)
SUPPORTED_NAMES = {"Identity", "Sum"}
#: timm's, torchvision's and transformers' own elementwise modules, which relevance passes unchanged as it
#: passes torch's activations: their activation classes, timm's layer scales (a product with a constant,
#: where the ε-rule is the identity), DropPath and torchvision's StochasticDepth (the identity in eval mode);
#: and timm's average pools, which get the average pools' rule
#: libraries' normalisations ``(x - mean) / std`` as modules (torchvision's transform put inside a model): they pass
#: relevance, as the modules of fixed arithmetic do (``residual.fixed_affine``), and ``normalising_module`` finds them
NORMALISATIONS = {"torchvision.": {"Normalize"}}
LIBRARY_PASSES = {
    "timm.": {"GELU", "GELUTanh", "QuickGELU", "Swish", "HardSwish", "Tanh", "PReLU", "LayerScale", "LayerScale2d", "Scale", "StarReLU", "SquaredReLU", "DropPath"},
    "torchvision.": {"StochasticDepth", *NORMALISATIONS["torchvision."]},
    "transformers.": {
        "GELUActivation", "GELUTanh", "PytorchGELUTanh", "NewGELUActivation", "FastGELUActivation", "QuickGELUActivation",
        "AccurateGELUActivation", "SiLUActivation", "MishActivation", "LinearActivation", "*DropPath", "*LayerScale",
    },
}  # fmt: skip
LIBRARY_AVERAGES = {"timm.": {"FastAdaptiveAvgPool", "BlurPool2d"}}  # BlurPool: a fixed, positive blur filter (TResNet)
#: a target of ``relevance_maps`` that stands for the class the model predicts on that sample
PREDICTED = -1
#: libraries' elementwise affine maps ``scale * x + shift`` with learnt scale and shift (timm's ``Affine``, ResMLP's
#: norm; ``LearnableAffineBlock``, HGNetV2's): the ε-rule, which leaves the shift its share as a bias's
LIBRARY_AFFINES = {"timm.": {"Affine", "LearnableAffineBlock"}}
#: libraries' norms whose scale, computed from the input, is held as layer norms' is (``rules.held_scale_norm``):
#: timm's global response norm (ConvNeXt V2)
LIBRARY_HELD_NORMS = {"timm.": {"GlobalResponseNorm"}}
#: names of the parameters that transformers add or concatenate to their tokens (class, register and
#: distillation tokens, position embeddings): the conservation check sets them to zero, as it does biases
ADDED_CONSTANTS = ("token", "pos_embed", "position_embedding")
CONSERVATION_TOLERANCE = 0.05
#: largest change of the outputs by the canonizers, relative to the largest output (float error of merged batch norms)
FUNCTION_TOLERANCE = 1e-4
#: or this many times the model's own float32 rounding, where that is larger (``function_tolerance``): on an H100
#: torchvision's calibrated Inception v3 differs from itself on the CPU by 3.0e-4 (its largest logit 2.97), and the
#: canonized model from the model by 3.5e-4; a canonizer that computes something else moves outputs by their size
ROUNDING_HEADROOM = 10.0


class _Stop(Exception):
    """Raised by a hook to end the forward pass once the conditioning layer has run."""


@dataclass
class SupportReport:
    supported: bool
    reason: str


#: the models inside ``RelevanceModel.attributing()`` and the RelevanceModel whose rules they run, whose passes
#: ``crp_heatmaps`` drives (guessing on a GPU: ``rules.Speculation``) and releases
ATTRIBUTED: weakref.WeakKeyDictionary[nn.Module, RelevanceModel] = weakref.WeakKeyDictionary()


class RelevanceModel:
    """A model prepared for LRP/CRP; ``check()`` tells whether its heatmaps can be trusted. ``rule`` is the
    convolutions' rule (``LRP_RULES``): z⁺, signed where inputs carry both signs (``rules.LeanZPlus``), or
    the generalised γ rule."""

    def __init__(self, model: nn.Module, example: torch.Tensor, epsilon: float = 1e-6, rule: str = "zplus") -> None:
        if rule not in LRP_RULES:
            raise ValueError(f"unknown LRP rule {rule!r}: use one of {', '.join(LRP_RULES)}")
        self.model = model.eval()
        self.example, self.epsilon, self.rule = example, epsilon, rule
        self._report: SupportReport | None = None
        self._ruled_kinds: tuple[type, ...] = (nn.Linear, AvgPool, nn.Fold)
        self._constant_layers: set[str] = set()  # layers that ran without the input: zeroed by the check (_bias_free_copy)
        try:
            passes, averages, affines, held_norms = (library_kinds(model, names) for names in (LIBRARY_PASSES, LIBRARY_AVERAGES, LIBRARY_AFFINES, LIBRARY_HELD_NORMS))
            self._ruled_kinds = (nn.Linear, AvgPool, nn.Fold, *averages)  # layers whose functional calls UntracedOps leaves to their rule
            called: set[nn.Module] = set()
            on_path = modules_on_the_input_path(model, example, called)
            if on_path is not None:
                self._constant_layers = {name for name, module in model.named_modules() if module in called and module not in on_path and not list(module.children())}
            ruled = passes + averages + affines + held_norms  # library modules with a rule of their own
            without_rule = {name: m for name, m in leaves_without_rule(model, ruled, on_path).items() if not rearranges_only(m)}
            normalising = tuple({type(m) for m in without_rule.values() if fixed_affine(m)})  # (x - mean) / std as a module
            passes, ruled = passes + normalising, ruled + normalising
            without_rule = {name: m for name, m in without_rule.items() if not isinstance(m, normalising)}
            canonizers = canonizers_for(model, example, on_path, ruled)
            # modules that gate a product, weigh values or feed attention's held weights alone: no relevance reaches them
            gates = {id(gate) for canonizer in canonizers if isinstance(canonizer, FxResidualCanonizer) for gate in canonizer.traced.gates}
            unsupported = sorted({type(m).__name__ for m in without_rule.values() if type(m).__name__ not in HOLDING_MODULES and not makes_gate(m) and id(m) not in gates})
            if unsupported:
                inside = "; normalisation inside the model: pass the bare network with the normalisation as its preprocessing " \
                         "(Preprocessing(mean=..., std=...))" if any("normali" in name.lower() for name in unsupported) else ""
                raise UnsupportedModelError(f"no LRP rule here for {', '.join(unsupported)}{inside}")
            ungated = sorted(f"{name} ({type(m).__name__})" for name, m in without_rule.items() if id(m) not in gates)
            if ungated:
                raise UnsupportedModelError(f"no LRP rule here for {', '.join(ungated)}: a sigmoid that does not gate a product, or a softmax that does not weigh values")
            self._derived_weights = DerivedWeights(model)
            self.composite = LeanEpsilonPlusFlat(epsilon=epsilon, canonizers=canonizers, passes=passes, averages=averages, affines=affines, held_norms=held_norms, gamma=LRP_RULES[rule])
        except UnsupportedModelError as error:
            self._report = SupportReport(False, str(error))

    @contextmanager
    def attributing(self) -> Iterator[nn.Module]:
        """The model with zennit's rules and canonizers applied (removed on exit), attention's rule swapped in
        (``HeldAttention``), the sums and attention products torch.fx could not rewrite given their rules
        (``UntracedOps``, while the model's forward runs), convolutions that derive their weight from their
        parameters (weight standardisation) holding that weight (``DerivedWeights``: entered before the
        canonizers, which may merge a batch norm into it, and left after them), in float32 proper (no TF32
        on GPUs: ``strict_float32``)."""
        if self._report is not None and not self._report.supported:
            raise UnsupportedModelError(self._report.reason)
        untraced = UntracedOps(self.epsilon)
        with strict_float32(), HeldAttention(), self._derived_weights, untraced, self.composite.context(self.model) as modified:
            running = [modified.register_forward_pre_hook(untraced.start), modified.register_forward_hook(untraced.stop, always_call=True)]
            for layer in (m for m in modified.modules() if isinstance(m, self._ruled_kinds)):  # their own rule inside them
                running += [layer.register_forward_pre_hook(untraced.enter_ruled), layer.register_forward_hook(untraced.leave_ruled, always_call=True)]
            with hooks(running):
                outer = ATTRIBUTED.get(modified)  # a nested attributing() of the same model gives it back on exit
                ATTRIBUTED[modified] = self
                try:
                    yield modified
                finally:
                    if outer is None:
                        ATTRIBUTED.pop(modified, None)
                    else:
                        ATTRIBUTED[modified] = outer

    def release(self) -> None:
        """Drop the tensors the rules' hooks hold from the last pass: every layer's input (about 80 MB an image
        for a ResNet-50 at 224 px), which the next pass would otherwise hold beside its own until its forward
        replaced them, and which a memory budget would count as the model's (``crp_heatmaps`` releases after each
        pass). After a pass that failed half-way (the GPU ran out of memory), a layer's input kept for a forward
        that never finished would hold that pass's whole graph, and the smaller pass tried next would run out of
        memory too."""
        if self._report is None or self._report.supported:
            for hook in self.composite.hook_refs:
                hook.stored_tensors.clear()

    def check(self) -> SupportReport:
        """Supported when the rules exist and relevance is conserved from the output to the input.

        Biases (and batch-norm shifts) absorb relevance by design, so conservation is checked on a
        bias-free copy of the model: what remains to lose relevance is a missing rule or canonizer
        (an unhandled residual sum, an op LRP does not know), exactly what makes heatmaps wrong. When
        it fails, the reason names the module where relevance is lost, so the user knows what to fix.
        First, the canonized model must compute what the model does: a torch.fx rewrite cannot follow,
        e.g., a block that adds in place to its own input, which its caller then reads.
        """
        if self._report is None:
            try:
                with strict_float32():
                    self._report = self._verify()
            except UnsupportedModelError as error:
                self._report = SupportReport(False, str(error))
        return self._report

    def _verify(self) -> SupportReport:
        """``check``'s two tests: the canonized model's outputs, then conservation on a bias-free copy. The
        canonized model runs as in a relevance pass (gradients on), where ``UntracedOps`` takes its calls: a
        ``+=`` it binds to a new tensor, which a caller that reads the old one would miss, shows there."""
        with torch.no_grad():
            expected = self.model(self.example)
            if not isinstance(expected, torch.Tensor) or expected.dim() != 2:
                raise UnsupportedModelError(
                    f"the model returns {_describe(expected)}, not one [batch, classes] tensor of class scores, where LRP "
                    "starts; wrap it in a module whose forward returns the logits"
                )
            with self.attributing() as modified, torch.enable_grad():
                try:
                    prepared = modified(self.example.detach().clone().requires_grad_(True)).detach()
                except Exception as error:  # a traced block called in a way its trace did not foresee
                    raise UnsupportedModelError(
                        f"the model prepared for LRP fails where the model runs ({type(error).__name__}: {error}): a "
                        "canonizer could not follow its forward (e.g. a block whose optional argument torch.fx fixed when tracing it)"
                    ) from error
                changed = float((prepared - expected).abs().amax())
        if changed > function_tolerance(self.model, self.example, expected):
            raise UnsupportedModelError(
                f"the model prepared for LRP computes other outputs than the model (largest difference "
                f"{changed:.3g}): a canonizer could not follow its forward (e.g. an in-place change of a "
                "block's input)"
            )
        probe = RelevanceModel(_bias_free_copy(self.model, self._constant_layers), self.example, self.epsilon, self.rule)
        with torch.no_grad():
            outputs = probe.model(self.example)
        initial = partial(_one_hot_logit, targets=outputs.argmax(dim=1))
        explained = initial(outputs).sum(dim=1)
        if not bool(explained.abs().amax() > 0):
            return SupportReport(
                False,
                "the explained logits are zero on the check's inputs (with biases at zero), so conservation cannot be "
                "checked: a head initialised to zero (torchvision's ViT with random weights) or a model that has not been trained",
            )
        started: list[torch.Tensor] = []  # the logits the pass itself explains (``_started_from``)
        relevance = probe.input_relevance(self.example, partial(_started_from, initial, started))
        ratio = (relevance.flatten(1).sum(dim=1) / started[0]).tolist()
        if all(abs(value - 1) <= CONSERVATION_TOLERANCE for value in ratio):
            return SupportReport(True, f"relevance conserved (input sums / output: {_fmt(ratio)})")
        (fx,) = [c for c in probe.composite.canonizers if isinstance(c, FxResidualCanonizer)]
        tolerance, untraced = CONSERVATION_TOLERANCE, fx.traced.untraced
        leak = find_leak(probe.model, probe.attributing, self.example, initial, tolerance, untraced)
        return SupportReport(False, f"{leak}; input sums / output: {_fmt(ratio)}")

    def input_relevance(self, inputs: torch.Tensor, initial: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Relevance of the inputs ``[N, C, H, W]`` for the output relevance ``initial(outputs)``."""
        inputs = inputs.detach().clone().requires_grad_(True)
        with self.attributing() as modified, torch.enable_grad():
            outputs = modified(inputs)
            (relevance,) = torch.autograd.grad(outputs, inputs, grad_outputs=initial(outputs))
        return relevance


def crp_heatmaps(
    modified: nn.Module,
    inputs: torch.Tensor,
    layer: str,
    channels: torch.Tensor,
    signs: torch.Tensor,
    pick: str | None = None,
    sae: SparseAutoencoder | None = None,
    channels_last: bool = False,
    focus: str = "unit",
) -> torch.Tensor:
    """CRP heatmaps ``[N, H, W]``: row i explains unit ``channels[i]`` of ``layer`` on ``inputs[i]`` (the units
    on the last dimension of a map N,H,W,C with ``channels_last``).

    ``modified`` is the model inside ``RelevanceModel.attributing()``. The backward pass starts at
    ``layer`` from that unit's own activation (times ``signs[i]``, so the negative copy of a signed
    unit is explained too), every other unit masked out; the forward pass stops at ``layer``. With
    ``sae``, the units are its features and feature j starts from its decoded share ``c_j W_dec[j]`` of
    the layer's output (what LRP through the SAE hands feature j when the layer's relevance is its output).
    ``focus`` (``CRP_FOCUS``): "peak" starts from the position (spatial cell or token) where that unit's
    (signed) activation, or the SAE feature's code, is highest, every other position masked out too.
    """
    if focus not in CRP_FOCUS:
        raise SemlensError(f"crp focus {focus!r} is not one of {', '.join(CRP_FOCUS)}")
    captured: list[torch.Tensor] = []

    def stop(_module, _inputs, output):
        captured.append(select_output(output, pick, layer))
        raise _Stop

    def explain() -> torch.Tensor:
        captured.clear()
        leaf = inputs.detach().clone().requires_grad_(True)
        try:
            with hooks([resolve_module(modified, layer).register_forward_hook(stop)]), torch.enable_grad():
                modified(leaf)
        except _Stop:
            pass
        activation = captured[0].movedim(-1, 1) if channels_last else captured[0]
        (relevance,) = torch.autograd.grad(activation, leaf, grad_outputs=initial_relevance(activation, channels, signs, sae, focus))
        return relevance.sum(dim=1).detach()

    attributed = ATTRIBUTED.get(modified)
    if attributed is None:
        return explain()
    speculation: Speculation | None = getattr(attributed.composite, "speculation", None)  # zennit's own composites: none
    try:
        if speculation is None:
            return explain()
        with speculation.guessing(guesses(inputs)):
            relevance = explain()
        return explain() if speculation.failed() else relevance  # a guess may be wrong: the pass again, exactly
    finally:
        attributed.release()  # the layers' inputs the rules kept: the next pass would hold them beside its own


#: the largest pass, in input values (64 images of 3 x 224 x 224), that guesses its rules' branches: on an H200 a
#: ResNet-50's passes of 32 and 64 pairs at 224 px took 0.84 and 0.87 times the exact passes' time, one of 128 pairs
#: 1.24 times (docs/gpu.md)
GUESSING_VALUES = 64 * 3 * 224 * 224


def guesses(inputs: torch.Tensor) -> bool:
    """Whether a pass on ``inputs`` guesses its rules' branches (``rules.Speculation``): on a GPU, where each read on the
    host waits for it, in passes small enough that the GPU would wait (GUESSING_VALUES); on a CPU those reads cost
    nothing to wait for, and reading which channels carry relevance saves work."""
    return inputs.is_cuda and inputs.numel() <= GUESSING_VALUES


def initial_relevance(
    activation: torch.Tensor, channels: torch.Tensor, signs: torch.Tensor, sae: SparseAutoencoder | None, focus: str
) -> torch.Tensor:
    """The relevance a CRP pass starts from at the layer's ``activation`` (``crp_heatmaps``)."""
    view = (-1,) + (1,) * (activation.dim() - 1)
    rows, tokens = torch.arange(len(channels)), activation.dim() == 3  # tokens N,L,C: units are the last dimension
    if sae is not None:
        share, unit_map = decoded_share(sae, activation, channels)  # an SAE feature's map: its code
        initial = share * signs.to(activation.dtype).view(view)
    else:
        mask = torch.zeros_like(activation)
        if tokens:
            mask[rows, :, channels] = 1.0
        else:
            mask[rows, channels] = 1.0
        initial = activation * mask * signs.to(activation.dtype).view(view)
        unit_map = (activation[rows, :, channels] if tokens else activation[rows, channels]).detach()
    if focus == "peak" and initial.dim() > 2:
        signed = unit_map * signs.to(unit_map.dtype).view((-1,) + (1,) * (unit_map.dim() - 1))
        initial = initial * peak_positions(signed).unsqueeze(2 if tokens else 1).to(initial.dtype)
    return initial


def peak_positions(values: torch.Tensor) -> torch.Tensor:
    """A 0/1 mask of ``values``' shape (``[N, ...]``, one value per position) keeping each row's highest position,
    the first on ties."""
    flat = values.flatten(1)
    keep = torch.zeros_like(flat)
    keep[torch.arange(len(flat)), flat.argmax(dim=1)] = 1.0
    return keep.view_as(values)


def unit_relevance(
    modified: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    layers: list[str],
    picks: dict[str, str | None] | None = None,
    saes: dict[str, SparseAutoencoder | str] | None = None,
    channels_last: Collection[str] = (),
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Relevance ``[N, C]`` of every unit of ``layers`` for the target logits, and the logits ``[N, K]``.

    ``modified`` is the model inside ``RelevanceModel.attributing()``; the units of the layers in ``saes``
    are their SAE features (``semlens.relevance.sae``), those of the layers in ``channels_last`` the last
    dimension of their maps.
    """
    outputs, relevance, _ = unit_and_error_relevance(modified, inputs, targets, layers, picks, saes, channels_last)
    return outputs, relevance


def unit_and_error_relevance(
    modified: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    layers: list[str],
    picks: dict[str, str | None] | None = None,
    saes: dict[str, SparseAutoencoder | str] | None = None,
    channels_last: Collection[str] = (),
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """As ``unit_relevance``, and for the layers in ``saes`` the relevance ``[N]`` of their SAE's error term
    (what the features do not reconstruct): with it, a layer's relevance is conserved (``semlens.relevance.sae``)."""
    outputs, maps, _, errors = relevance_maps(modified, inputs, targets, layers, picks, saes, channels_last)
    return outputs, {name: _per_unit(relevance) for name, relevance in maps.items()}, errors


def relevance_maps(
    modified: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    layers: list[str],
    picks: dict[str, str | None] | None = None,
    saes: dict[str, SparseAutoencoder | str] | None = None,
    channels_last: Collection[str] = (),
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The logits ``[N, K]`` and, per layer, its relevance for the target logits (``PREDICTED``: the predicted
    class's) and its unit tensor (in the layer's output shape, channels second for the layers in ``channels_last``; SAE features for the layers in
    ``saes``), before relevance is summed per unit: where within a unit it lies; and for the layers in
    ``saes`` their error term's relevance ``[N]``."""
    inputs = inputs.detach().clone().requires_grad_(True)
    with unit_tensors(modified, layers, picks, saes, channels_last) as reader, torch.enable_grad():
        outputs = modified(inputs)
    units = [reader.units[name] for name in layers]
    grads = torch.autograd.grad(outputs, units, grad_outputs=_one_hot_logit(outputs, predicted_where_unlabelled(targets, outputs)))
    errors = {name: found[-1] if found else torch.zeros(len(inputs), device=inputs.device) for name, found in reader.errors.items()}
    maps = {name: grad.detach() for name, grad in zip(layers, grads)}
    return outputs.detach(), maps, {name: unit.detach() for name, unit in zip(layers, units)}, errors


def leaves_without_rule(model: nn.Module, covered: tuple[type, ...], on_path: InputPath | None = None) -> dict[str, nn.Module]:
    """The leaf modules of ``model`` that no rule here covers, by name: not a supported kind (a layer or group
    norm only of a kind ``held_scale_known`` knows), not a library's pass-through by name, not one of the
    ``covered`` classes, and, where ``on_path`` is known (``modules_on_the_input_path``), on the input's path.
    Sigmoids among them are fine where they gate a product (the caller asks the torch.fx rewrite)."""
    return {
        name: module
        for name, module in model.named_modules()
        if not list(module.children())
        and (not isinstance(module, SUPPORTED_LEAVES) or (isinstance(module, (nn.LayerNorm, nn.GroupNorm)) and not held_scale_known(module)))
        and type(module).__name__ not in SUPPORTED_NAMES
        and not isinstance(module, covered)
        and (on_path is None or module in on_path)
    }


#: per module on the input's path, the names of its forward's arguments that carried a tensor computed from the
#: input (None: every argument counts, where they could not be named)
InputPath = dict[nn.Module, "set[str] | None"]


def modules_on_the_input_path(model: nn.Module, example: torch.Tensor, called: set[nn.Module] | None = None) -> InputPath | None:
    """The modules that, in a forward on one ``example``, receive a tensor computed from the input, with the
    arguments that carried it. The other modules compute constants to it (a position table read by index, a
    size-dependent encoding, a head the forward never calls), and so do the other arguments (rotary tables, a
    mask): no relevance passes them, so they need no rule. None where that forward fails (everything counts).
    ``called``, where given, receives every module whose forward ran."""
    found: InputPath = {}

    def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if called is not None:
            called.add(module)
        if any(tensor.requires_grad for tensor in tensors_in((args, kwargs))):
            names, before = _input_arguments(module, args, kwargs), found.get(module, set())
            found[module] = None if names is None or before is None else names | before  # any call's arguments

    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    try:
        with torch.enable_grad(), hooks([module.register_forward_pre_hook(record, with_kwargs=True) for module in model.modules()]):
            for parameter in trainable:  # only the input's history counts
                parameter.requires_grad_(False)
            model(example[:1].detach().requires_grad_())
    except Exception:  # noqa: BLE001 (a forward that fails here fails in the check too, with its own message)
        return None
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)
    return found


def _input_arguments(module: nn.Module, args: tuple, kwargs: dict) -> set[str] | None:
    """The names of ``module.forward``'s arguments in this call that hold a tensor computed from the input; None
    where they cannot be named (no signature, ``*args`` or ``**kwargs``)."""
    try:
        signature = inspect.signature(module.forward)
        bound = signature.bind(*args, **kwargs).arguments
    except (TypeError, ValueError):
        return None
    variable = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    names = {name for name, value in bound.items() if any(tensor.requires_grad for tensor in tensors_in(value))}
    return None if any(signature.parameters[name].kind in variable for name in names) else names


def normalising_module(module: nn.Module, example: torch.Tensor) -> str | None:
    """The name of the first module that ``module``'s forward on ``example`` runs, where that module normalises the
    input (a library's ``NORMALISATIONS``, or fixed arithmetic: ``fixed_affine``); None otherwise, or where the
    forward fails."""
    names = {leaf: name for name, leaf in module.named_modules() if not list(leaf.children())}
    first: list[nn.Module] = []
    with hooks([leaf.register_forward_pre_hook(lambda leaf, _: first.append(leaf)) for leaf in names]), torch.no_grad():
        try:
            module(example)
        except Exception:  # noqa: BLE001 (a forward that fails here fails at the build, with its own message)
            return None
    if not first or not (library_kinds(first[0], NORMALISATIONS) or fixed_affine(first[0])):
        return None
    return names[first[0]]


def library_kinds(model: nn.Module, names: dict[str, set[str]]) -> tuple[type, ...]:
    """The classes of ``model``'s modules that a library defines (its module path starts with a key of
    ``names``) under one of that library's ``names`` (``LIBRARY_PASSES``, ``LIBRARY_AVERAGES``, ``LIBRARY_AFFINES``, ``LIBRARY_HELD_NORMS``); a name
    ``*Suffix`` stands for every class name that ends so (transformers' ``BeitDropPath``, ``Dinov2LayerScale``)."""

    def named(kind: str, kinds: set[str]) -> bool:
        return kind in kinds or any(pattern.startswith("*") and kind.endswith(pattern[1:]) for pattern in kinds)

    return tuple({
        type(m) for m in model.modules()
        for library, kinds in names.items() if type(m).__module__.startswith(library) and named(type(m).__name__, kinds)
    })  # fmt: skip


def function_tolerance(model: nn.Module, example: torch.Tensor, expected: torch.Tensor) -> float:
    """How far the canonized model's outputs may lie from the model's, ``expected``: ``FUNCTION_TOLERANCE`` of the
    largest output (at least 1), or ``ROUNDING_HEADROOM`` times the model's own float32 rounding, its outputs
    against a float64 copy's, where that is larger (a deep net on a GPU; none where it cannot run in float64)."""
    tolerance = FUNCTION_TOLERANCE * max(float(expected.abs().amax()), 1.0)
    if expected.dtype != torch.float32:
        return tolerance
    try:
        with torch.no_grad():
            exact = copy.deepcopy(model).double()(example.double())
        rounding = float((expected.double() - exact).abs().amax())
    except Exception:  # noqa: BLE001 (float32 fixed inside its forward, a device without float64: the bare tolerance)
        return tolerance
    return max(tolerance, ROUNDING_HEADROOM * rounding)


def _bias_free_copy(model: nn.Module, constant_layers: Collection[str] = ()) -> nn.Module:
    """A copy of ``model`` with every bias and batch-norm shift set to zero, the tokens and position
    embeddings a block holds itself (``ADDED_CONSTANTS``, a ViT's class token), and every parameter of the
    ``constant_layers``, layers the forward runs without the input (XCiT's Fourier position encoding, a
    convolution of the grid): constants the model adds or concatenates outside any layer, which absorb
    relevance as biases do. A block's other parameters (a ConvNeXt block's layer scale multiplies) stay."""
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for name, module in clone.named_modules():
            if name in constant_layers:
                for parameter in module.parameters(recurse=False):
                    parameter.zero_()
            for bias in ("bias", "in_proj_bias", "beta"):  # a layer's; multi-head attention's input projection's; an affine's shift
                if isinstance(getattr(module, bias, None), torch.Tensor):
                    getattr(module, bias).zero_()
            if isinstance(getattr(module, "running_mean", None), torch.Tensor):
                module.running_mean.zero_()
            if list(module.children()) and not isinstance(module, SUPPORTED_LEAVES):  # a layer with a child keeps its weights
                for parameter_name, parameter in module.named_parameters(recurse=False):
                    if any(part in parameter_name for part in ADDED_CONSTANTS):
                        parameter.zero_()
    return clone


def _started_from(initial: Callable[[torch.Tensor], torch.Tensor], started: list[torch.Tensor], outputs: torch.Tensor) -> torch.Tensor:
    """``initial(outputs)``, its sum per sample appended to ``started``: conservation compares a pass's input
    relevance with the relevance that pass started from. The bias-free copy's activations can grow without
    its batch norms' shifts until float rounding, amplified block by block, moves the canonized model's
    logits away from the copy's own (torchvision's EfficientNetV2-S: 1e-6 of the output after its first
    block, 40 % after its last), while every layer still conserves; the canonized model's function is
    checked on the model itself."""
    relevance = initial(outputs)
    started.append(relevance.detach().sum(dim=1))
    return relevance


def predicted_where_unlabelled(targets: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """``targets`` with each ``PREDICTED`` entry replaced by the class the logits ``outputs`` predict: the pass that
    explains a sample predicts it too, so unlabelled data needs no forward pass of its own."""
    targets = targets.to(outputs.device)  # callers may give them on the CPU for a model on a GPU
    return torch.where(targets == PREDICTED, outputs.detach().argmax(dim=1), targets)


def _one_hot_logit(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Initial relevance: the target class's logit, every other output zero."""
    mask = torch.zeros_like(outputs)
    mask[torch.arange(outputs.shape[0]), targets] = 1.0
    return outputs * mask


def _per_unit(relevance: torch.Tensor) -> torch.Tensor:
    """Sum a layer's relevance over space or tokens: ``[N, C, ...]`` or ``[N, L, C]`` to ``[N, C]``."""
    if relevance.dim() == 3:
        return relevance.sum(dim=1)
    return relevance.flatten(2).sum(dim=2) if relevance.dim() > 2 else relevance


def _describe(value: object) -> str:
    return f"a tensor of shape {list(value.shape)}" if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{value:.3f}" for value in values[:4])
