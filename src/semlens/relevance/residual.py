"""Residual sums in any model, found with torch.fx and turned into zennit ``Sum`` modules.

Gradient-based LRP sends the full relevance of ``a + b`` to both summands, doubling it at every skip
connection; zennit's ``Sum`` (Norm rule) splits it in proportion to ``a`` and ``b`` instead. Each module
with children is traced on its own, its children kept as calls (``is_leaf_module`` is always true), so
the rewrite replaces only that module's ``forward`` for the duration of ``composite.context``: every
module keeps its qualified name, type and hooks. (Tracing the whole model would inline the blocks into
one GraphModule whose block-level modules are empty shells: a hook on ``layer1.0`` would never fire.)
Concatenations conserve relevance under gradients and are left alone, and so are additions of a
constant or parameter (biases). A gate, a tensor scaled by a sigmoid of another (squeeze-and-excitation
in EfficientNet, MobileNetV3, RegNetY, SE-ResNet), becomes ``gated_product``: the relevance goes to the
scaled tensor whole, none to the gate's branch (LRP's signal-take-all rule for gates, Arras et al.
2017), which conserves it. Other products of two computed tensors and other non-linear tensor functions
have no rule here, so a module that computes one is refused by name.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from zennit.canonizers import AttributeCanonizer
from zennit.layer import Sum

#: names of additions (operator.add, torch.add, Tensor.add, ``+=`` as operator.iadd, Tensor.add_)
ADDS = {"add", "iadd", "add_"}
#: in-place additions: later uses of the first summand see the sum
IN_PLACE_ADDS = {"iadd", "add_"}
#: products and quotients: no LRP rule when both operands are computed from the input
PRODUCTS = {"mul", "imul", "mul_", "truediv", "itruediv", "div", "div_", "matmul", "bmm"}
#: tensor functions that are neither linear nor a rectifier (F.relu and pooling pass relevance as LRP's rules do)
NON_LINEAR = {
    "sigmoid", "tanh", "exp", "log", "sqrt", "rsqrt", "pow", "softmax", "log_softmax", "gelu", "silu", "mish",
    "elu", "selu", "softplus", "hardswish", "hardsigmoid", "layer_norm", "group_norm", "normalize",
}  # fmt: skip
#: calls whose result depends on an input's shape, not its values
SHAPE_CALLS = {"size", "dim", "numel", "getattr"}
#: functions and module classes (torch's and timm's) whose output, between 0 and 1, can gate another tensor
GATE_FUNCTIONS = {"sigmoid", "hardsigmoid"}
GATE_MODULES = {"Sigmoid", "Hardsigmoid", "HardSigmoid"}
#: calls that rearrange a tensor's values without changing them: a gate stays a gate through them
RESHAPES = {"view", "reshape", "expand", "expand_as", "unsqueeze", "squeeze", "flatten", "contiguous"}


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


def summands(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a`` and ``b`` stacked on a new leading axis for ``residual_sum()`` (broadcast first, as ``a + b``
    would): two contiguous blocks, which torch stacks and sums several times faster than on a last axis."""
    return torch.stack(torch.broadcast_tensors(a, b))


def residual_sum() -> Sum:
    """The ``Sum`` of ``summands``: over their leading axis."""
    return Sum(dim=0)


class _EveryModuleALeaf(fx.Tracer):
    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return True


@dataclass
class Rewrite:
    """One module's forward with its residual additions replaced by ``Sum`` modules (set as attributes)."""

    forward: Callable[..., torch.Tensor]
    sums: dict[str, Sum] = field(default_factory=dict)


@dataclass
class TraceResult:
    rewrites: dict[nn.Module, Rewrite] = field(default_factory=dict)
    untraced: dict[str, str] = field(default_factory=dict)  # module name: why torch.fx could not trace it
    unsupported: list[str] = field(default_factory=list)  # "name (Type): op" for each op without a rule
    gates: list[nn.Module] = field(default_factory=list)  # sigmoid modules that gate a product (they get no relevance)


def trace_residuals(model: nn.Module, handled: Callable[[nn.Module], bool]) -> TraceResult:
    """Trace every module with children (except torch.nn containers and the blocks that another canonizer
    ``handled``) and rewrite its residual additions."""
    result = TraceResult()
    for name, module in model.named_modules():
        kind = type(module)
        if not list(module.children()) or kind.__module__.startswith("torch.nn") or handled(module):
            continue
        try:
            root = copy.copy(module)  # the tracer stores tensor constants on its root: never on the user's module
            graph = _EveryModuleALeaf().trace(root)
        except Exception as error:  # noqa: BLE001 (any failure to trace leaves the module as it is)
            result.untraced[name] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            continue
        where = f"{name or 'the model'} ({kind.__name__})"
        computed = _computed_nodes(graph)
        gated = _gated_products(graph, computed, root)
        result.unsupported += [f"{where}: {problem}" for problem in _unsupported_ops(graph, computed, gated)]
        result.gates += [root.get_submodule(gate.target) for _, gate, _ in gated.values() if gate is not None and gate.op == "call_module"]
        sums = _replace_adds(graph, computed)
        _replace_gated_products(graph, gated)
        if sums or gated:
            attributes = {
                node.target: sums[node.target] if node.target in sums else _attribute(root, node.target)
                for node in graph.nodes
                if node.op in ("call_module", "get_attr")
            }
            traced = fx.GraphModule(attributes, graph)
            result.rewrites[module] = Rewrite(traced.forward, sums)
    return result


class FxResidualCanonizer(AttributeCanonizer):
    """Sets the rewritten ``forward`` and its ``Sum`` modules on each traced module; zennit removes them on exit."""

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


def _computed_nodes(graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose value depends on the forward's inputs (not only on parameters, constants or shapes)."""
    computed: set[fx.Node] = set()
    for node in graph.nodes:
        depends = any(isinstance(arg, fx.Node) and arg in computed for arg in _flat_args(node))
        if node.op == "placeholder" or (depends and node.op != "get_attr" and _op_name(node) not in SHAPE_CALLS):
            computed.add(node)
    return computed


def _flat_args(node: fx.Node) -> list[object]:
    flat: list[object] = []
    fx.node.map_aggregate((node.args, node.kwargs), flat.append)
    return flat


def _computed_operands(node: fx.Node, computed: set[fx.Node]) -> list[fx.Node]:
    return [arg for arg in node.args if isinstance(arg, fx.Node) and arg in computed]


def _gate_source(node: fx.Node, root: nn.Module) -> fx.Node | None:
    """The sigmoid (function or module) whose output ``node`` is, through reshapes; None if it is none."""
    while True:
        name = _op_name(node)
        if node.op == "call_module" and type(root.get_submodule(node.target)).__name__ in GATE_MODULES:
            return node
        if name is not None and name.rstrip("_") in GATE_FUNCTIONS:
            return node
        if name not in RESHAPES or not node.args or not isinstance(node.args[0], fx.Node):
            return None
        node = node.args[0]


def _gated_products(graph: fx.Graph, computed: set[fx.Node], root: nn.Module) -> dict[fx.Node, tuple[fx.Node, fx.Node | None, bool]]:
    """Each product ``a * b`` of two computed tensors exactly one of which is a gate (``_gate_source``), and each
    scaling of a computed tensor by a constant (``x * c``, ``c * x``, ``x / c``: a layer scale, attention's
    scale): ``{node: (signal, the gate's sigmoid or None, whether it divides)}``. In-place ones are left out."""
    gated = {}
    for node in graph.nodes:
        name = _op_name(node)
        if name not in ("mul", "truediv", "div") or node.kwargs or len(node.args) != 2:
            continue
        operands = _computed_operands(node, computed)
        if len(operands) == 1 and (name == "mul" or node.args[0] is operands[0]):
            gated[node] = (operands[0], None, name != "mul")
        elif len(operands) == 2 and name == "mul":
            sources = [_gate_source(operand, root) for operand in node.args]
            if (sources[0] is None) != (sources[1] is None):
                signal = node.args[0] if sources[0] is None else node.args[1]
                gated[node] = (signal, sources[0] or sources[1], False)
    return gated


def _unsupported_ops(
    graph: fx.Graph, computed: set[fx.Node], gated: dict[fx.Node, tuple[fx.Node, fx.Node | None, bool]]
) -> list[str]:
    gates = {gate for _, gate, _ in gated.values()}
    problems = []
    for node in graph.nodes:
        name = _op_name(node)
        operands = _computed_operands(node, computed)
        if node in gated or node in gates:
            continue
        if name in PRODUCTS and len(operands) >= 2:
            shown = ", ".join(operand.name for operand in operands)
            problems.append(f"elementwise product `{name}` of two computed tensors ({shown})")
        elif name is not None and name.rstrip("_") in NON_LINEAR and node.args and node.args[0] in operands:
            problems.append(f"non-linear tensor function `{name}` ({node.args[0].name})")
    return problems


def _replace_gated_products(graph: fx.Graph, gated: dict[fx.Node, tuple[fx.Node, fx.Node | None, bool]]) -> None:
    """Replace each gate's or constant's ``signal * factor`` (or ``/``) by ``gated_product`` (the operands as the model has them)."""
    for node, (signal, _, divide) in gated.items():
        factor = node.args[1] if node.args[0] is signal else node.args[0]
        with graph.inserting_after(node):
            product = graph.call_function(gated_product, (signal, factor, divide))
        node.replace_all_uses_with(product)
        graph.erase_node(node)
    graph.lint()


def _replace_adds(graph: fx.Graph, computed: set[fx.Node]) -> dict[str, Sum]:
    """Replace each ``a + b`` of two computed tensors by ``Sum(summands(a, b))``; returns the new modules."""
    sums: dict[str, Sum] = {}
    order = {node: index for index, node in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        plain = len(node.args) == 2 and not node.kwargs  # torch.add(a, b, alpha=2) is not a plain sum
        if _op_name(node) not in ADDS or not plain or len(_computed_operands(node, computed)) != 2:
            continue
        target = f"canonizer_sum_{len(sums)}"
        sums[target] = residual_sum()
        with graph.inserting_after(node):
            stacked = graph.call_function(summands, node.args)
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
