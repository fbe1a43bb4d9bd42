"""Residual sums in any model, found with torch.fx and turned into zennit ``Sum`` modules.

Gradient-based LRP sends the full relevance of ``a + b`` to both summands, doubling it at every skip
connection; zennit's ``Sum`` (Norm rule) splits it in proportion to ``a`` and ``b`` instead. Each module
with children is traced on its own, its children kept as calls (``is_leaf_module`` is always true), so
the rewrite replaces only that module's ``forward`` for the duration of ``composite.context``: every
module keeps its qualified name, type and hooks. (Tracing the whole model would inline the blocks into
one GraphModule whose block-level modules are empty shells: a hook on ``layer1.0`` would never fire.)
Concatenations conserve relevance under gradients and are left alone, and so are additions of a
constant or parameter (biases). A gate, a tensor scaled by a sigmoid of another (squeeze-and-excitation
in EfficientNet, MobileNetV3, RegNetY, SE-ResNet) or by a softmax over its paths (selective kernels in
SKNet, split attention in ResNeSt, where a module of their own computes it), and a tensor scaled by a
constant (a layer scale) become ``gated_product``: the relevance goes to the scaled tensor whole, none to
the gate's branch (LRP's signal-take-all rule for gates, Arras et al. 2017), which conserves it. A sum
or mean over dimensions of a computed tensor (summing the weighed paths, averaging tokens) becomes a
``Reduction`` module, which gets the average pools' rule: each summand its share of the result, where
the gradient would hand every summand the whole; a difference ``a - b`` is the sum of ``a`` and ``-b``.
Attention written out (a softmax's weights times values, by ``@`` or ``torch.einsum``) gets the
held-weights rule of ``attention.py``. A forward with optional
arguments is traced once per way of leaving them out, and the rewrite follows each call. Other products
of two computed tensors and other non-linear tensor functions have no rule here, so a module that
computes one is refused by name.
"""

from __future__ import annotations

import copy
import inspect
import itertools
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.overrides import TorchFunctionMode
from zennit.canonizers import AttributeCanonizer
from zennit.layer import Sum

from .attention import held_weights_einsum, held_weights_product
from .layers import Reduction, reduce_over
from .rules import linear_map_rule, stabilize

#: names of additions (operator.add, torch.add, Tensor.add, ``+=`` as operator.iadd, Tensor.add_)
ADDS = {"add", "iadd", "add_"}
#: names of subtractions: ``a - b`` is the sum of ``a`` and ``-b`` (``summands``)
SUBTRACTIONS = {"sub", "isub", "sub_"}
#: in-place additions and subtractions: later uses of the first operand see the result
IN_PLACE_ADDS = {"iadd", "add_", "isub", "sub_"}
#: products and quotients: no LRP rule when both operands are computed from the input
PRODUCTS = {"mul", "imul", "mul_", "truediv", "itruediv", "div", "div_", "matmul", "bmm", "einsum"}
#: tensor functions that are neither linear nor a rectifier (F.relu and pooling pass relevance as LRP's rules do)
NON_LINEAR = {
    "sigmoid", "tanh", "exp", "log", "sqrt", "rsqrt", "pow", "square", "softmax", "log_softmax", "gelu", "silu", "mish",
    "elu", "selu", "softplus", "hardswish", "hardsigmoid", "layer_norm", "group_norm", "normalize",
}  # fmt: skip
#: calls whose result depends on an input's shape, not its values
SHAPE_CALLS = {"size", "dim", "numel", "getattr"}
#: calls whose result takes no gradient: a constant to the rules, and what only they read needs no rule
DETACHES = {"detach"}
#: functions and module classes (torch's and timm's) whose output, between 0 and 1, can gate another tensor
#: (a softmax over paths: SKNet, ResNeSt)
GATE_FUNCTIONS = {"sigmoid", "hardsigmoid", "softmax"}
GATE_MODULES = {"Sigmoid", "Hardsigmoid", "HardSigmoid", "Softmax"}
#: activations whose output gates another computed tensor in a gated linear unit (SwiGLU, GeGLU: EVA-02's and
#: DINOv2-giant's MLPs): the product gets the gates' rule, all relevance to the linear branch
GLU_FUNCTIONS = {"silu", "gelu"}
GLU_MODULES = {"SiLU", "Swish", "GELU", "GELUTanh", "QuickGELU"}
#: calls that rearrange a tensor's values without changing them: a gate stays a gate through them
RESHAPES = {"view", "reshape", "expand", "expand_as", "unsqueeze", "squeeze", "flatten", "contiguous", "transpose", "permute"}
#: calls that move, select or pad a tensor's values without computing new ones: the gradient through them
#: hands each value exactly the relevance of where it went (``rearranges_only``)
REARRANGES = RESHAPES | {"swapaxes", "swapdims", "movedim", "unflatten", "getitem", "narrow", "chunk", "split", "roll", "pad", "cat", "stack"}
#: elementwise arithmetic that, with the other operand fixed, is an affine map (``fixed_affine``); dividing by the
#: signal is not
DIVISIONS = {"truediv", "itruediv", "div", "div_"}
AFFINE_STEPS = ADDS | SUBTRACTIONS | DIVISIONS | {"mul", "imul", "mul_"}
#: reductions over dimensions, which ``Reduction`` takes over (``dim`` given as numbers, no ``dtype``)
REDUCTIONS = {"sum", "mean"}
#: a gate resized to its signal's map keeps gating it (GhostNetV2's DFC attention: an interpolated sigmoid)
GATE_KEEPING, GATE_KEEPING_CALLS = (nn.Upsample,), frozenset({"interpolate"})
#: a softmax whose output weighs values in a matrix product: attention written out (held: attention.py)
WEIGHT_FUNCTIONS, WEIGHT_MODULES = {"softmax"}, {"Softmax"}
#: modules between that softmax and the product whose output is still weights: dropouts, and a linear map
#: across the heads (talking-heads attention, CaiT's ``proj_w``: the mixed weights are a function of the
#: queries and keys alone, held as the softmax's are)
WEIGHT_KEEPING = (nn.Dropout, nn.Linear)
#: modules that may only gate a product or weigh values, where they get no relevance
HOLDING_MODULES = GATE_MODULES | WEIGHT_MODULES


class _SignalTakesAll(torch.autograd.Function):
    """``signal * factor`` (or ``/``) whose backward hands the relevance to the signal whole and none to the factor."""

    @staticmethod
    def forward(ctx, signal: torch.Tensor, factor: torch.Tensor | float, divide: bool) -> torch.Tensor:
        ctx.shape = signal.shape
        return signal / factor if divide else signal * factor

    @staticmethod
    def backward(ctx, relevance: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return relevance.sum_to_size(ctx.shape), None, None


def gated_product(signal: torch.Tensor, factor: torch.Tensor | float, divide: bool = False) -> torch.Tensor:
    """``signal * factor`` (``/`` with ``divide``), as the model computes it, with LRP's signal-take-all rule:
    a gate or a constant scales how much of the signal passes, so what passes owes its relevance to the
    signal alone (the ε-rule on an elementwise scaling by a constant is the identity)."""
    return _SignalTakesAll.apply(signal, factor, divide)


class _Negated(torch.autograd.Function):
    """``-x`` whose backward passes the relevance unchanged: the summand ``-b`` of ``a - b`` owns the share the
    sum's rule gives it (LRP's ε-rule on ``y = -x``: ``x * (-1) * R / (-x) = R``; the gradient would flip its sign)."""

    @staticmethod
    def forward(ctx, input: torch.Tensor) -> torch.Tensor:
        return -input

    @staticmethod
    def backward(ctx, relevance: torch.Tensor) -> torch.Tensor:
        return relevance


def summands(a: torch.Tensor, b: torch.Tensor, subtract: bool = False) -> torch.Tensor:
    """``a`` and ``b`` (``-b`` with ``subtract``) stacked on a new leading axis for ``residual_sum()`` (broadcast
    first, as ``a + b`` would): two contiguous blocks, which torch stacks and sums several times faster than on a
    last axis."""
    return torch.stack(torch.broadcast_tensors(a, _Negated.apply(b) if subtract else b))


def residual_sum() -> Sum:
    """The ``Sum`` of ``summands``: over their leading axis."""
    return Sum(dim=0)


class _SharedReduction(torch.autograd.Function):
    """A sum or mean over ``dim`` whose backward hands each summand its share of the relevance, ``x_i / Σ x``
    (the rule ``Reduction`` gets, for the modules torch.fx could not trace)."""

    @staticmethod
    def forward(ctx, input: torch.Tensor, dim: int | tuple[int, ...], keepdim: bool, mean: bool, epsilon: float) -> torch.Tensor:
        ctx.save_for_backward(input)
        ctx.dim, ctx.epsilon = dim, epsilon
        return reduce_over(input, dim, keepdim, mean)

    @staticmethod
    def backward(ctx, relevance: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:
        (input,) = ctx.saved_tensors
        total = input.sum(dim=ctx.dim, keepdim=True)  # the relevance, kept dimensions or not, has its elements in this order
        return input * (relevance.reshape(total.shape) / stabilize(total, ctx.epsilon)), None, None, None, None


class _EpsilonLinear(torch.autograd.Function):
    """``F.linear`` whose backward is the ε-rule ``nn.Linear`` modules get: ``x * W^T (R / (z + ε))``, none of the
    relevance to the weight or bias (a bias absorbs its share, as in the module)."""

    @staticmethod
    def forward(ctx, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, epsilon: float) -> torch.Tensor:
        output = F.linear(input, weight, bias)
        ctx.save_for_backward(input, weight, output)
        ctx.epsilon = epsilon
        return output

    @staticmethod
    def backward(ctx, relevance: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        input, weight, output = ctx.saved_tensors
        return input * ((relevance / stabilize(output, ctx.epsilon)) @ weight), None, None, None


class UntracedOps(TorchFunctionMode):
    """While the model's forward runs (``start`` and ``stop``, hooks on the model), the ops of the modules
    torch.fx could not trace (transformers' blocks, HRNet's fusions) get the rules the rewrite above gives
    traced ones: each ``a + b`` (``a - b``) of two computed tensors (both with a ``grad_fn``) shares its relevance between
    them (a ``_SharedReduction`` of their ``summands``), a computed tensor times or divided by a constant (a layer scale) passes it whole
    (``gated_product``), a sum or mean over dimensions hands each summand its share (``_SharedReduction``), and
    a matrix product whose left operand is a softmax's output (through dropouts, casts and reshapes: attention
    written out), or an einsum of one with computed values, holds those weights (``held_weights_product``,
    ``held_weights_einsum``). ``a += b`` (``-=``; Twins' ``PosConv``) becomes that shared sum as a new tensor, which
    Python binds to ``a``: where another reference to the old ``a`` reads it later (a view of a larger tensor, an
    input its caller reads again), the model prepared for LRP computes other outputs, and the check refuses it.

    A functional ``F.linear`` outside any ``nn.Linear`` module's forward (torchvision's Swin passes its
    ``qkv`` and ``proj`` layers' weights to one) gets the ε-rule those modules get (``_EpsilonLinear``); the
    gradient would hand the input ``W^T R``, not its share. Likewise an average pool called as a function
    (Inception's pooled branches, torchvision's DenseNet and MobileNetV2 heads) or ``F.fold`` (VOLO's overlapping
    patches summed) gets the pooling modules' rule (``rules.linear_map_rule``: each input its share of the sums
    it enters; the gradient would hand every input of a window the same 1/k, lose the padding's share, and
    through ``F.fold`` copy each sum's whole relevance to every summand). ``enter_ruled`` and ``leave_ruled``,
    hooks on the model's linear, pooling and folding modules, tell the two apart: inside such a module, its own
    rule applies."""

    ADDS = {torch.Tensor.__add__, torch.Tensor.__radd__, torch.add, torch.Tensor.add, torch.Tensor.add_}  # ``a += b`` arrives as ``add_``
    SUBTRACTIONS = {torch.Tensor.__sub__, torch.sub, torch.Tensor.sub, torch.Tensor.sub_}
    SCALINGS = {torch.Tensor.__mul__, torch.Tensor.__rmul__, torch.mul, torch.Tensor.mul}
    DIVISIONS = {torch.Tensor.__truediv__, torch.div, torch.Tensor.div}
    REDUCTIONS = {torch.sum: False, torch.Tensor.sum: False, torch.mean: True, torch.Tensor.mean: True}
    SOFTMAXES = {torch.softmax, torch.Tensor.softmax, F.softmax}
    KEEPS_WEIGHTS = {F.dropout, torch.dropout, torch.Tensor.to, torch.Tensor.type_as, torch.Tensor.contiguous, torch.Tensor.transpose}
    PRODUCTS = {torch.matmul, torch.Tensor.__matmul__, torch.Tensor.matmul, torch.bmm}
    EINSUMS = {torch.einsum}
    LINEARS = {F.linear}
    SHARED_SUMS = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.fold}
    HANDLED = ADDS | SUBTRACTIONS | SCALINGS | DIVISIONS | set(REDUCTIONS) | PRODUCTS | EINSUMS | SOFTMAXES | KEEPS_WEIGHTS | LINEARS | SHARED_SUMS

    def __init__(self, epsilon: float = 1e-6) -> None:
        super().__init__()
        self.epsilon, self.running, self.inside_ruled = epsilon, False, 0
        self.weights: dict[int, torch.Tensor] = {}  # softmax outputs of this forward, by id (kept alive: ids stay unique)

    def start(self, *_: object) -> None:
        self.running, self.inside_ruled, self.weights = True, 0, {}

    def stop(self, *_: object) -> None:
        self.running, self.weights = False, {}

    def enter_ruled(self, *_: object) -> None:
        self.inside_ruled += 1

    def leave_ruled(self, *_: object) -> None:
        self.inside_ruled -= 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.running or func not in self.HANDLED:  # every other call untouched, tensors' property access
            return func(*args, **kwargs)  # included (reading a grad_fn inside autograd's own calls deadlocks)
        computed = [isinstance(arg, torch.Tensor) and arg.grad_fn is not None for arg in args]
        if func in self.ADDS | self.SUBTRACTIONS and len(args) == 2 and all(computed) and not kwargs:
            return _SharedReduction.apply(summands(args[0], args[1], func in self.SUBTRACTIONS), 0, False, False, self.epsilon)
        if func in self.SCALINGS | self.DIVISIONS and len(args) == 2 and sum(computed) == 1 and not kwargs:
            if computed[0] or func in self.SCALINGS:
                signal, factor = (args[0], args[1]) if computed[0] else (args[1], args[0])
                return gated_product(signal, factor, divide=func in self.DIVISIONS)
        reduction = _reduction_arguments(args[1:], kwargs) if func in self.REDUCTIONS and args and computed[0] else None
        if reduction is not None:
            return _SharedReduction.apply(args[0], *reduction, self.REDUCTIONS[func], self.epsilon)
        if func in self.PRODUCTS and len(args) == 2 and id(args[0]) in self.weights and computed[1] and not kwargs:
            return held_weights_product(args[0], args[1], self.epsilon)
        if func in self.EINSUMS and len(args) == 3 and isinstance(args[0], str) and not kwargs:
            for weights_first, (weights, values) in ((True, (args[1], args[2])), (False, (args[2], args[1]))):
                if id(weights) in self.weights and isinstance(values, torch.Tensor) and values.grad_fn is not None:
                    return held_weights_einsum(*args, weights_first, self.epsilon)
        if func in self.LINEARS and not self.inside_ruled and computed and computed[0]:
            weight, bias = _linear_arguments(args[1:], kwargs)
            return _EpsilonLinear.apply(args[0], weight, bias, self.epsilon)
        if func in self.SHARED_SUMS and not self.inside_ruled and computed and computed[0]:
            return linear_map_rule(lambda input: func(input, *args[1:], **kwargs), args[0], self.epsilon)
        result = func(*args, **kwargs)
        weighs = func in self.SOFTMAXES or (func in self.KEEPS_WEIGHTS and args and id(args[0]) in self.weights)
        if weighs and args and computed[0] and isinstance(result, torch.Tensor):
            self.weights[id(result)] = result
        return result


def _linear_arguments(rest: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight, bias)`` of an ``F.linear`` call given ``rest`` after its input and ``kwargs``."""
    arguments = dict(zip(("weight", "bias"), rest), **kwargs)
    return arguments["weight"], arguments.get("bias")


def _reduction_arguments(rest: tuple, kwargs: dict) -> tuple[int | tuple[int, ...], bool] | None:
    """``(dim, keepdim)`` of a sum or mean called with ``rest`` after its input and ``kwargs``, where ``dim`` is given
    as numbers and nothing else (no ``dtype``); None otherwise (a full reduction, a ``dim`` computed from shapes)."""
    arguments = dict(zip(("dim", "keepdim"), rest), **kwargs)
    dim, keepdim = arguments.pop("dim", None), arguments.pop("keepdim", False)
    numbers = isinstance(dim, int) or (isinstance(dim, (tuple, list)) and dim and all(isinstance(d, int) for d in dim))
    if not numbers or arguments or not isinstance(keepdim, bool) or len(rest) > 2:
        return None
    return (dim if isinstance(dim, int) else tuple(dim)), keepdim


class _EveryModuleALeaf(fx.Tracer):
    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return True


@dataclass
class Rewrite:
    """One module's forward with its residual additions and reductions replaced by ``Sum`` and ``Reduction``
    modules (set as attributes)."""

    forward: Callable[..., torch.Tensor]
    sums: dict[str, nn.Module] = field(default_factory=dict)


@dataclass
class TraceResult:
    rewrites: dict[nn.Module, Rewrite] = field(default_factory=dict)
    untraced: dict[str, str] = field(default_factory=dict)  # module name: why torch.fx could not trace it
    unsupported: list[str] = field(default_factory=list)  # "name (Type): op" for each op without a rule
    gates: list[nn.Module] = field(default_factory=list)  # sigmoids gating a product, softmaxes weighing values (no relevance)


def trace_residuals(
    model: nn.Module, handled: Callable[[nn.Module], bool], inputs_of: Callable[[nn.Module], Collection[str] | None] = lambda module: None
) -> TraceResult:
    """Trace every module with children (except torch.nn containers and the blocks that another canonizer
    ``handled``) and rewrite its residual additions, gates and attention, counting computed only what depends
    on the arguments ``inputs_of`` names (None: every argument); a forward with optional arguments once per way
    of leaving them out (``_optional_arguments``)."""
    result = TraceResult()
    for name, module in model.named_modules():
        kind = type(module)
        if not list(module.children()) or kind.__module__.startswith("torch.nn") or handled(module):
            continue
        where = f"{name or 'the model'} ({kind.__name__})"
        optional = _optional_arguments(module)
        forwards: dict[frozenset[str], Callable[..., torch.Tensor]] = {}
        sums: dict[str, nn.Module] = {}
        for variant, left_out in enumerate(_subsets(optional)):
            try:
                root = copy.copy(module)  # the tracer stores tensor constants on its root: never on the user's module
                graph = _EveryModuleALeaf().trace(root, concrete_args={argument: None for argument in left_out} or None)
            except Exception as error:  # noqa: BLE001 (any failure to trace leaves the module as it is)
                result.untraced.setdefault(name, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
                continue
            prefix = f"canonizer_sum_{variant}_" if optional else "canonizer_sum_"
            try:
                rewritten = _rewrite(graph, root, where, prefix, result, any(gate is module for gate in result.gates), inputs_of(module))
            except Exception as error:  # noqa: BLE001 (a rewrite that fails leaves the module to UntracedOps, as an untraced one)
                result.untraced.setdefault(name, f"{type(error).__name__} in the rewrite: {str(error).splitlines()[0] if str(error) else ''}")
                continue
            if rewritten is not None:
                forwards[frozenset(left_out)] = rewritten.forward
                sums.update(rewritten.sums)
        if forwards:
            forward = forwards.get(frozenset()) if not optional else _dispatch(module, optional, forwards)
            result.rewrites[module] = Rewrite(forward, sums)
    return result


def _rewrite(
    graph: fx.Graph, root: nn.Module, where: str, prefix: str, result: TraceResult, gates: bool = False, inputs: Collection[str] | None = None
) -> Rewrite | None:
    """One traced forward with its residual sums, reductions, gates, scalings by constants and attention
    written out replaced by their rules (None where it has none); what has no rule, and the gates' and
    softmaxes' modules and those only attention's held weights read (GCViT's ``RelPosBias`` on the scores), go
    to ``result``. ``gates``: the module's output gates a product of its caller (SKNet's
    attention branch), so the sigmoid or softmax that computes it needs no rule."""
    computed = _computed_nodes(graph, inputs)
    gated = _gated_products(graph, computed, root)
    held = _held_products(graph, computed, root)
    weights_only = _weights_only(graph, held)
    own_gate = _output_source(graph, root, GATE_FUNCTIONS, GATE_MODULES) if gates else None
    problems = [f"{where}: {problem}" for problem in _unsupported_ops(graph, computed, gated, held, weights_only, own_gate)]
    result.unsupported += [problem for problem in problems if problem not in result.unsupported]
    sources = [gate for _, gate, _ in gated.values()] + [product.softmax for product in held.values()] + sorted(weights_only, key=str)
    result.gates += [_computing(root.get_submodule(node.target)) for node in sources if node is not None and node.op == "call_module"]
    sums: dict[str, nn.Module] = {**_replace_adds(graph, computed, prefix)}
    sums.update(_replace_reductions(graph, computed, prefix.replace("_sum_", "_reduction_")))
    _replace_gated_products(graph, gated)
    _replace_held_products(graph, held)
    if not (sums or gated or held):
        return None
    attributes = {
        node.target: sums[node.target] if node.target in sums else _attribute(root, node.target)
        for node in graph.nodes
        if node.op in ("call_module", "get_attr")
    }
    return Rewrite(fx.GraphModule(attributes, graph).forward, sums)


#: a forward with more optional arguments than this is traced once, each argument a tensor
MAX_OPTIONAL = 3


def _optional_arguments(module: nn.Module) -> list[str]:
    """The forward's arguments that default to None (a shortcut, a mask): torch.fx traces them as tensors, so
    a forward that tests ``if mask is not None`` is traced once with and once without each."""
    try:
        parameters = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if any(parameter.kind not in kinds for parameter in parameters):  # *args, **kwargs: traced once, as before
        return []
    names = [parameter.name for parameter in parameters if parameter.default is None]
    return names if len(names) <= MAX_OPTIONAL else []


def _subsets(names: list[str]) -> list[tuple[str, ...]]:
    """Every subset of ``names``, the empty one first."""
    return [subset for size in range(len(names) + 1) for subset in itertools.combinations(names, size)]


def _dispatch(
    module: nn.Module, optional: list[str], forwards: dict[frozenset[str], Callable[..., torch.Tensor]]
) -> Callable[..., torch.Tensor]:
    """A forward that calls the rewrite traced for the optional arguments this call leaves out (None), or the
    module's own forward where that way of calling it had nothing to rewrite."""
    signature, own = inspect.signature(module.forward), type(module).forward.__get__(module)

    def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
        given = signature.bind(*args, **kwargs).arguments
        left_out = frozenset(name for name in optional if given.get(name) is None)
        if left_out not in forwards:
            return own(*args, **kwargs)
        return forwards[left_out](**{name: value for name, value in given.items() if name not in left_out})

    return forward


class FxResidualCanonizer(AttributeCanonizer):
    """Sets the rewritten ``forward`` and its ``Sum`` and ``Reduction`` modules on each traced module; zennit
    removes them on exit."""

    def __init__(self, traced: TraceResult) -> None:
        self.traced = traced
        super().__init__(self._attributes)

    def _attributes(self, _name: str, module: nn.Module) -> dict[str, object] | None:
        rewrite = self.traced.rewrites.get(module)
        return None if rewrite is None else {"forward": rewrite.forward, **rewrite.sums}


def _attribute(root: nn.Module, target: str) -> object:
    owner, _, attribute = target.rpartition(".")
    return getattr(root.get_submodule(owner) if owner else root, attribute)


def _op_name(node: fx.Node) -> str | None:
    if node.op == "call_method":
        return node.target
    if node.op == "call_function":
        return getattr(node.target, "__name__", None)
    return None


def _computed_nodes(graph: fx.Graph, inputs: Collection[str] | None = None) -> set[fx.Node]:
    """Nodes whose value depends on the forward's ``inputs`` (its arguments of those names; None: all of them),
    not only on parameters, constants or shapes."""
    computed: set[fx.Node] = set()
    for node in graph.nodes:
        depends = any(isinstance(arg, fx.Node) and arg in computed for arg in _flat_args(node))
        if (node.op == "placeholder" and (inputs is None or node.target in inputs)) or (
            depends and node.op != "get_attr" and _op_name(node) not in SHAPE_CALLS | DETACHES
        ):
            computed.add(node)
    return computed


def _flat_args(node: fx.Node) -> list[object]:
    flat: list[object] = []
    fx.node.map_aggregate((node.args, node.kwargs), flat.append)
    return flat


def _computed_operands(node: fx.Node, computed: set[fx.Node]) -> list[fx.Node]:
    return [arg for arg in node.args if isinstance(arg, fx.Node) and arg in computed]


def _source(
    node: fx.Node, root: nn.Module, functions: set[str], modules: set[str], through: tuple[type, ...] = (), calls: frozenset[str] = frozenset()
) -> fx.Node | None:
    """The call of one of ``functions`` (or its in-place form), or of a module whose class is named in ``modules``,
    whose output ``node`` is, through reshapes, modules of the types ``through`` and ``calls``; None if it is none.
    A gate's sigmoid (``GATE_FUNCTIONS``, ``GATE_MODULES``, through resizing), attention's softmax (``WEIGHT_*``,
    through dropouts)."""
    while True:
        name = _op_name(node)
        module = _computing(root.get_submodule(node.target)) if node.op == "call_module" else None
        if type(module).__name__ in modules or (name is not None and name.rstrip("_") in functions):
            return node
        if module is not None and _computes_with(module, functions, modules):
            return node
        if not node.args or not isinstance(node.args[0], fx.Node) or not (name in RESHAPES | calls or isinstance(module, through)):
            return None
        node = node.args[0]


def _output_source(graph: fx.Graph, root: nn.Module, functions: set[str], modules: set[str]) -> fx.Node | None:
    """The call of one of ``functions`` or ``modules`` that computes the traced forward's output (``_source``)."""
    (output,) = (node for node in graph.nodes if node.op == "output")
    result = output.args[0]
    return _source(result, root, functions, modules) if isinstance(result, fx.Node) else None


def _traced_alone(module: nn.Module) -> tuple[fx.Graph, nn.Module] | None:
    """``module``'s own forward traced (its children kept as calls) on a copy, and that copy; None where torch.fx
    cannot follow it."""
    root = copy.copy(module)  # the tracer stores tensor constants on its root: never on the user's module
    try:
        return _EveryModuleALeaf().trace(root), root
    except Exception:  # noqa: BLE001 (a module torch.fx cannot follow: the callers say what that means)
        return None


def _computes_with(module: nn.Module, functions: set[str], modules: set[str]) -> bool:
    """Whether a module of a library's own (not torch's) computes its output with one of ``functions`` or
    ``modules``, through reshapes: ResNeSt's ``RadixSoftmax``, SKNet's attention branch. False where torch.fx
    cannot trace it (no known gate)."""
    traced = None if type(module).__module__.startswith("torch.nn") else _traced_alone(module)
    return traced is not None and _output_source(*traced, functions, modules) is not None


def makes_gate(module: nn.Module) -> bool:
    """Whether ``module`` is a library's own module whose output is a gate's sigmoid or softmax (or attention's
    softmax): it needs no rule where it gates a product (``TraceResult.gates``)."""
    return _computes_with(module, GATE_FUNCTIONS | WEIGHT_FUNCTIONS, HOLDING_MODULES)


def fixed_affine(module: nn.Module) -> bool:
    """Whether a leaf module without parameters maps its input only through additions, subtractions,
    multiplications and divisions by values fixed in advance (its buffers, constants), reshapes between: an input
    normalisation written as a module, ``(x - mean) / std``. It passes relevance unchanged, so the heatmaps are
    those of the bare network given the normalisation as its preprocessing. False where torch.fx cannot trace it."""
    traced = None if list(module.parameters()) else _own_operations(module)
    if traced is None:
        return False
    operations, computed = traced

    def fixed_step(node: fx.Node) -> bool:
        name, operands = _op_name(node), _computed_operands(node, computed)
        if name in RESHAPES:
            return True
        return name in AFFINE_STEPS and len(operands) == 1 and (name not in DIVISIONS or node.args[0] is operands[0])

    return any(_op_name(node) in AFFINE_STEPS for node in operations) and all(fixed_step(node) for node in operations)


def rearranges_only(module: nn.Module) -> bool:
    """Whether a leaf module without parameters only moves, selects or pads its input's values
    (``REARRANGES``: torchvision's ``Permute``, MaxViT's window partitions): it needs no rule, as the gradient
    through it is exact. False where torch.fx cannot trace it (not known to rearrange only)."""
    traced = None if list(module.parameters()) or list(module.buffers()) else _own_operations(module)
    if traced is None:
        return False
    operations, _ = traced
    return bool(operations) and all(_op_name(node) in REARRANGES for node in operations)


def _own_operations(module: nn.Module) -> tuple[list[fx.Node], set[fx.Node]] | None:
    """The operations of ``module``'s own forward (traced alone) computed from its first argument (the others may
    be sizes), and every node computed from it; None where torch.fx cannot trace it."""
    traced = _traced_alone(module)
    if traced is None:
        return None
    first = next((node.target for node in traced[0].nodes if node.op == "placeholder"), None)
    computed = _computed_nodes(traced[0], [first])
    return [node for node in computed if node.op not in ("placeholder", "output")], computed


def _computing(module: nn.Module) -> nn.Module:
    """The module that computes ``module``'s output: a ``Sequential``'s last, at any depth (a
    squeeze-and-excitation branch written as one, ending in its sigmoid), else ``module`` itself."""
    while isinstance(module, nn.Sequential) and len(module):
        module = module[-1]
    return module


def _gated_products(graph: fx.Graph, computed: set[fx.Node], root: nn.Module) -> dict[fx.Node, tuple[int, fx.Node | None, bool]]:
    """Each product ``a * b`` of two computed tensors exactly one of which is a gate (a sigmoid's output, or in a
    gated linear unit an activation's: ``_source``), and each
    scaling of a computed tensor by a constant (``x * c``, ``c * x``, ``x / c``: a layer scale, attention's
    scale): ``{node: (the signal's position among its arguments, the gate's sigmoid or None, whether it
    divides)}`` (a position, as the rewrite of sums and reductions replaces the signal's node). In-place ones
    are left out."""
    gated = {}
    for node in graph.nodes:
        name = _op_name(node)
        if name not in ("mul", "truediv", "div") or node.kwargs or len(node.args) != 2:
            continue
        operands = _computed_operands(node, computed)
        if len(operands) == 1 and (name == "mul" or node.args[0] is operands[0]):
            gated[node] = (node.args.index(operands[0]), None, name != "mul")
        elif len(operands) == 2 and name == "mul":
            sources = [_source(operand, root, GATE_FUNCTIONS, GATE_MODULES, GATE_KEEPING, GATE_KEEPING_CALLS) for operand in node.args]
            if (sources[0] is None) == (sources[1] is None):  # no sigmoid gate: a gated linear unit's activation?
                sources = [_source(operand, root, GLU_FUNCTIONS, GLU_MODULES) for operand in node.args]
            if (sources[0] is None) != (sources[1] is None):
                gated[node] = (0 if sources[0] is None else 1, sources[0] or sources[1], False)
    return gated


@dataclass(frozen=True)
class HeldProduct:
    """A product of attention written out: the softmax that computes its weights and its weights operand."""

    softmax: fx.Node
    weights: fx.Node


def _held_products(graph: fx.Graph, computed: set[fx.Node], root: nn.Module) -> dict[fx.Node, HeldProduct]:
    """Each ``weights @ values`` (or ``torch.einsum`` of the two, in either order) of attention written out, the
    weights a softmax's (``_source``, through ``WEIGHT_KEEPING`` modules), the values not."""
    held = {}
    for node in graph.nodes:
        name = _op_name(node)
        einsum = name == "einsum" and len(node.args) == 3 and isinstance(node.args[0], str)
        if not (einsum or name == "matmul") or node.kwargs or len(_computed_operands(node, computed)) != 2:
            continue
        operands = node.args[1:] if einsum else node.args
        sources = [_source(operand, root, WEIGHT_FUNCTIONS, WEIGHT_MODULES, WEIGHT_KEEPING) for operand in operands]
        for position in (0, 1) if einsum else (0,):
            if len(operands) == 2 and sources[position] is not None and sources[1 - position] is None:
                held[node] = HeldProduct(sources[position], operands[position])
    return held


def _weights_only(graph: fx.Graph, held: dict[fx.Node, HeldProduct]) -> set[fx.Node]:
    """Nodes whose value reaches nothing but the weights of a held product (the scores, their softmax) or a
    detach: no relevance comes back to them, so they need no rule."""
    only: set[fx.Node] = set()
    for node in reversed(graph.nodes):
        if node.users and all(user in only or (user in held and held[user].weights is node) or _op_name(user) in DETACHES for user in node.users):
            only.add(node)
    return only


def _unsupported_ops(
    graph: fx.Graph,
    computed: set[fx.Node],
    gated: dict[fx.Node, tuple[int, fx.Node | None, bool]],
    held: dict[fx.Node, HeldProduct],
    weights_only: set[fx.Node],
    own_gate: fx.Node | None = None,
) -> list[str]:
    gates = {gate for _, gate, _ in gated.values()} | {own_gate}
    problems = []
    for node in graph.nodes:
        name = _op_name(node)
        operands = _computed_operands(node, computed)
        if node in gated or node in gates or node in weights_only or (node in held and held[node].weights in weights_only):
            continue
        if name in PRODUCTS and len(operands) >= 2:
            shown = ", ".join(operand.name for operand in operands)
            problems.append(f"elementwise product `{name}` of two computed tensors ({shown})")
        elif name is not None and name.rstrip("_") in NON_LINEAR and node.args and node.args[0] in operands:
            problems.append(f"non-linear tensor function `{name}` ({node.args[0].name})")
    return problems


def _replace_gated_products(graph: fx.Graph, gated: dict[fx.Node, tuple[int, fx.Node | None, bool]]) -> None:
    """Replace each gate's or constant's ``signal * factor`` (or ``/``) by ``gated_product`` (the operands as the model has them)."""
    for node, (position, _, divide) in gated.items():
        signal, factor = node.args[position], node.args[1 - position]
        with graph.inserting_after(node):
            product = graph.call_function(gated_product, (signal, factor, divide))
        node.replace_all_uses_with(product)
        graph.erase_node(node)
    graph.lint()


def _replace_held_products(graph: fx.Graph, held: dict[fx.Node, HeldProduct]) -> None:
    """Replace each held ``weights @ values`` by ``held_weights_product``, each held einsum by
    ``held_weights_einsum`` (attention.py)."""
    for node, product in held.items():
        with graph.inserting_after(node):
            if _op_name(node) == "einsum":
                rule = graph.call_function(held_weights_einsum, (*node.args, node.args[1] is product.weights))
            else:
                rule = graph.call_function(held_weights_product, node.args)
        node.replace_all_uses_with(rule)
        graph.erase_node(node)
    graph.lint()


def _replace_adds(graph: fx.Graph, computed: set[fx.Node], prefix: str = "canonizer_sum_") -> dict[str, Sum]:
    """Replace each ``a + b`` (``a - b``) of two computed tensors by ``Sum(summands(a, b))`` (of ``a`` and ``-b``);
    returns the new modules (named ``prefix`` and a number)."""
    sums: dict[str, Sum] = {}
    order = {node: index for index, node in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        plain = len(node.args) == 2 and not node.kwargs  # torch.add(a, b, alpha=2) is not a plain sum
        if _op_name(node) not in ADDS | SUBTRACTIONS or not plain or len(_computed_operands(node, computed)) != 2:
            continue
        target = f"{prefix}{len(sums)}"
        sums[target] = residual_sum()
        with graph.inserting_after(node):
            stacked = graph.call_function(summands, (*node.args, _op_name(node) in SUBTRACTIONS))
            with graph.inserting_after(stacked):
                total = graph.call_module(target, (stacked,))
        computed.update((stacked, total))  # a later addition to the sum is a residual too (a transformer block's second)
        node.replace_all_uses_with(total)
        if _op_name(node) in IN_PLACE_ADDS:  # the mutated summand holds the sum from here on
            summand = node.args[0]
            later = {user for user in summand.users if order.get(user, -1) > order[node]}
            summand.replace_all_uses_with(total, delete_user_cb=later.__contains__)
        graph.erase_node(node)
    graph.lint()
    return sums


def _replace_reductions(graph: fx.Graph, computed: set[fx.Node], prefix: str) -> dict[str, Reduction]:
    """Replace each sum or mean over given dimensions of a computed tensor (``REDUCTIONS``) by a ``Reduction``
    module; returns the new modules (named ``prefix`` and a number). Full reductions (no ``dim``), a ``dim``
    computed from shapes and a ``dtype`` are left as they are."""
    reductions: dict[str, Reduction] = {}
    for node in list(graph.nodes):
        if _op_name(node) not in REDUCTIONS or not node.args or node.args[0] not in computed:
            continue
        reduction = _reduction_arguments(node.args[1:], dict(node.kwargs))
        if reduction is None:
            continue
        target = f"{prefix}{len(reductions)}"
        reductions[target] = Reduction(*reduction, _op_name(node) == "mean")
        with graph.inserting_after(node):
            reduced = graph.call_module(target, (node.args[0],))
        computed.add(reduced)  # a reduction of it is one too
        node.replace_all_uses_with(reduced)
        graph.erase_node(node)
    graph.lint()
    return reductions
