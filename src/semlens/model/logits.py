"""A model object as semlens reads one: float32 RGB images in, one ``[batch, classes]`` tensor of class scores out.

Models from a notebook often return more than the logits: a dict (``{"logits": ...}``), a tuple (logits and
features) or a transformers output object (``.logits``). Relevance starts at the logits, and class names and
labels map to their columns, so such a model is read through a view of the same object (same weights,
submodules, layer names and hooks) whose forward returns only its logits. A model that cannot take the
images semlens feeds (one channel, another input size, float64 weights) is refused at load with what to change,
not at its first batch with torch's message.
"""

from __future__ import annotations

import copy
import copyreg
import re
from typing import Any

import torch
from torch import nn

from .._util.errors import SpecError, asked

_DEFAULT_LABEL = re.compile(r"LABEL_\d+")  # transformers' id2label when none was given


def returning_logits(module: nn.Module, input_size: int) -> nn.Module:
    """``module`` itself where its forward on a ``[1, 3, input_size, input_size]`` float32 batch returns one
    tensor; else a view of it returning the logits it holds (``logits_place``). Raises :class:`SpecError` where
    the model does not run on such a batch, or returns nothing to take as logits."""
    parameter = next(module.parameters(), None)
    try:
        with torch.no_grad():
            output = module(example_batch(module, input_size))
    except (RuntimeError, TypeError, ValueError) as error:
        raise SpecError(f"model {type(module).__name__} fails on the float32 RGB batch [1, 3, {input_size}, {input_size}] semlens feeds it "
                        f"({type(error).__name__}: {error}); {_advice(parameter, error)}") from error  # fmt: skip
    if isinstance(output, torch.Tensor):
        return module
    where = logits_place(output, type(module).__name__)  # refuses an output without logits now, not at the first batch
    view = copy.copy(module)  # the same submodules, parameters and hooks: only its class (its forward) differs
    members = {
        "forward": _forward_logits, "logits_place": where, "__module__": type(module).__module__,
        "__copy__": _copy_view, "__deepcopy__": _deepcopy_view, "__reduce_ex__": _reduce_as_original,
    }  # fmt: skip
    view.__class__ = type(type(module).__name__, (type(module),), members)
    return view


def example_batch(module: nn.Module, input_size: int) -> torch.Tensor:
    """One black float32 RGB image ``[1, 3, input_size, input_size]`` on the module's device, to run it once."""
    parameter = next(module.parameters(), None)
    return torch.zeros(1, 3, input_size, input_size, device=parameter.device if parameter is not None else "cpu")


def _advice(parameter: torch.Tensor | None, error: Exception) -> str:
    """What would let the model take semlens's input, from its weights and the error it gave."""
    if parameter is not None and parameter.dtype != torch.float32:
        return f"its weights are {str(parameter.dtype).removeprefix('torch.')}: pass model.float() (a GPU build runs it in bfloat16 where that keeps answers)"
    if "channels" in str(error):
        return "semlens reads images as 3 colour channels: wrap a model made for one channel in a module that averages them first"
    return "give the input size it takes " + asked(
        "with preprocessing= (e.g. semlens.Preprocessing(input_size=32, resize=32), or its torchvision transform)",
        "after its factory in the spec (e.g. py:package.module:factory:32)",
    )


def _forward_logits(self: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The model's own forward, then its logits where ``logits_place`` found them (fixed at load, so that a
    torch.fx trace of it, where tensors are proxies, takes the same item; one named argument, as semlens calls
    a model, so that torch.fx can trace it and the LRP rewrites reach the model's own forward)."""
    output = super(type(self), self).forward(inputs)
    kind, key = self.logits_place
    return output[key] if kind == "item" else getattr(output, key)


def _copy_view(self: nn.Module) -> nn.Module:
    """A copy that stays a view (as ``copy.copy`` makes one, by its ``__dict__``)."""
    twin = object.__new__(type(self))
    twin.__dict__.update(self.__dict__)
    return twin


def _deepcopy_view(self: nn.Module, memo: dict[int, Any]) -> nn.Module:
    """A deep copy that stays a view (LRP's bias-free copy of the model)."""
    twin = object.__new__(type(self))
    memo[id(self)] = twin
    twin.__dict__.update(copy.deepcopy(self.__dict__, memo))
    return twin


def _reduce_as_original(self: nn.Module, protocol: int) -> Any:
    """Pickled (``torch.save``) as the user's own class, loadable without semlens: the view's class exists only in
    this process. Copies keep the view (``_copy_view``, ``_deepcopy_view``)."""
    return copyreg._reconstructor, (type(self).__mro__[1], object, None), dict(self.__dict__)


def logits_place(output: Any, model: str) -> tuple[str, str | int]:
    """Where the class scores are in a model's output: its ``logits`` (key or attribute), or the one
    two-dimensional tensor of a tuple or list (``("item", key or index)`` or ``("attribute", "logits")``)."""
    if isinstance(output, dict) and isinstance(output.get("logits"), torch.Tensor):
        return "item", "logits"
    if not isinstance(output, dict) and isinstance(getattr(output, "logits", None), torch.Tensor):
        return "attribute", "logits"
    if isinstance(output, (tuple, list)):
        matrices = [index for index, item in enumerate(output) if isinstance(item, torch.Tensor) and item.dim() == 2]
        if len(matrices) == 1:
            return "item", matrices[0]
        if matrices:
            shapes = ", ".join(f"[{index}] {tuple(output[index].shape)}" for index in matrices)
            raise SpecError(
                f"model {model} returns a {type(output).__name__} with {len(matrices)} [batch, n] tensors ({shapes}): semlens cannot tell "
                "which are the logits; wrap it in a module whose forward returns them"
            )
    keys = f" (keys {', '.join(map(str, output))})" if isinstance(output, dict) else ""
    raise SpecError(
        f"model {model} returns {type(output).__name__}{keys}, with no logits semlens can find (a 'logits' key or attribute, "
        "or a [batch, classes] tensor in a tuple); wrap it in a module whose forward returns the logits"
    )


def configured_classes(module: nn.Module) -> list[str] | None:
    """Class names a transformers-style model carries (``config.id2label``), unless they are its defaults."""
    labels = getattr(getattr(module, "config", None), "id2label", None)
    if not isinstance(labels, dict) or not labels:
        return None
    names = [str(labels.get(index, labels.get(str(index), ""))) for index in range(len(labels))]
    return None if all(_DEFAULT_LABEL.fullmatch(name) for name in names) or "" in names else names
