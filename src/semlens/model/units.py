"""Units: naming layers by module path and turning a layer's output into per-unit scores.

A *unit* is one component of a layer: a conv channel, a linear neuron, a token feature dimension or a
sparse-autoencoder feature. For every sample it gets one score (the spatial or token map pooled by
``mean`` or ``max``) and, where the layer has spatial structure, a small activation map kept for
cropping. A signed layer doubles its units: unit ``i`` collects the most positive samples, unit
``i-`` the most negative ones.
"""

from __future__ import annotations

import difflib
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .._util.errors import LayerError, asked
from .sae import SparseAutoencoder, sae_fingerprint

POOLINGS = ("mean", "max")
SPEC_KEYS = ("pool", "token", "pick", "signed", "sae", "prefix_tokens", "channels_last")


@dataclass(frozen=True)
class LayerSpec:
    """Which module to read and how to turn its output into units.

    Written on the command line as ``NAME[:key=value,...]``, for example ``features.7``,
    ``encoder.layers.5:token=0,signed=true`` or ``blocks.3:sae=sae.safetensors``.

    Parameters
    ----------
    name: module path, as in ``model.named_modules()``.
    pool: ``mean`` (default) or ``max`` over space or tokens.
    token: read this token (e.g. 0 for CLS) of an ``N,L,C`` output instead of pooling tokens.
    pick: tuple index or dict key of the tensor to read when the module returns several
        (default: the first tensor).
    signed: also collect the most negative samples of each unit, as unit ``i-``.
    sae: a sparse autoencoder whose features become the units: a SAELens directory (or its
        ``cfg.json``) or a semlens safetensors file (see ``semlens.model.sae``).
    prefix_tokens: tokens before the patch grid (CLS, registers); guessed when not given.
    channels_last: the output is a map laid out N,H,W,C (a Swin stage, the norm and MLP inside a ConvNeXt
        block): its last dimension holds the units. Without it such an output is refused.
    """

    name: str
    pool: str = "mean"
    token: int | None = None
    pick: str | None = None
    signed: bool = False
    sae: str | None = None
    prefix_tokens: int | None = None
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.pool not in POOLINGS:
            raise LayerError(f"layer {self.name!r}: pool={self.pool!r} is not one of {', '.join(POOLINGS)}")

    @classmethod
    def parse(cls, text: str, default_pool: str = "mean") -> LayerSpec:
        """Parse ``NAME[:key=value,...]``; keys: pool, token, pick, signed, sae, prefix_tokens, channels_last."""
        name, _, options = text.strip().partition(":")
        name = name.strip()
        if not name:
            raise LayerError(f"layer spec {text!r} has no module name; write NAME[:key=value,...]")
        values: dict[str, Any] = {"pool": default_pool}
        for item in filter(None, (part.strip() for part in options.split(","))):
            key, sep, value = item.partition("=")
            if not sep or key not in SPEC_KEYS:
                raise LayerError(
                    f"layer spec {text!r}: bad option {item!r}; write key=value with key one of {', '.join(SPEC_KEYS)}"
                )
            values[key] = _parse_option(text, key, value)
        return cls(name=name, **values)

    def fingerprint_fields(self) -> dict[str, Any]:
        """Everything that changes the units' scores, including the content of every SAE file read."""
        fields = asdict(self)
        if not self.channels_last:  # a key added later: Lenses and caches made before it keep their fingerprints
            del fields["channels_last"]
        if self.sae:
            fields["sae"] = sae_fingerprint(self.sae)
        return fields


def _parse_option(text: str, key: str, value: str) -> Any:
    if key in ("token", "prefix_tokens"):
        try:
            return int(value)
        except ValueError:
            raise LayerError(f"layer spec {text!r}: {key} must be an integer, got {value!r}") from None
    if key in ("signed", "channels_last"):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise LayerError(f"layer spec {text!r}: {key} must be true or false, got {value!r}")
        return value.lower() in ("true", "1", "yes")
    return value


def unit_names(count: int, signed: bool) -> list[str]:
    """Unit names of a layer: ``0..count-1``, then ``0-..count-1-`` for signed layers."""
    names = [str(index) for index in range(count)]
    return names + [f"{index}-" for index in range(count)] if signed else names


# ----------------------------------------------------------------------------------------------
# finding and hooking modules


@contextmanager
def hooks(handles: list[torch.utils.hooks.RemovableHandle]) -> Iterator[None]:
    """Keep hooks for the duration of a block; they are removed on exit, errors included."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def resolve_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule at a dotted path, or an error that lists the closest valid names."""
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    names = [candidate for candidate in modules if candidate]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f"closest: {', '.join(close)}" if close else f"for example: {', '.join(names[:8])}"
    raise LayerError(
        f"model has no layer {name!r} ({hint}); "
        + asked(
            f"semlens.list_layers(model, example_batch) lists all {len(names)} layers with their units",
            f"run `semlens layers MODEL` to list all {len(names)} layers",
        )
    )


def channels_last(module: nn.Module, output: torch.Tensor) -> bool:
    """Whether a 4-D output is laid out N,H,W,C (a ConvNeXt or Swin block's MLP and norms), which semlens would
    misread as N,C,H,W: a Linear acts on the last dimension, as does a LayerNorm over it (not LayerNorm2d, whose
    output has its channels first); and on the square inputs semlens feeds, a map whose first two dimensions
    match while the last differs is H,W followed by channels."""
    if output.dim() != 4:
        return False
    last = output.shape[-1]
    if isinstance(module, nn.Linear):
        return last == module.out_features and output.shape[1] != last
    normalized = getattr(module, "normalized_shape", None)
    if isinstance(module, nn.LayerNorm) and tuple(normalized or ()) == (last,) and output.shape[1] != last:
        return True
    return output.shape[1] == output.shape[2] != last


def attention_weights(output: torch.Tensor) -> bool:
    """Whether a 4-D output is a ViT's attention matrix N,heads,queries,keys (timm's ``attn_drop`` where attention
    is not fused): square in its last two dimensions like a conv map, but every row along the last is a softmax,
    non-negative and summing to 1, which no conv map is."""
    if output.dim() != 4 or output.shape[-1] != output.shape[-2] or output.shape[-1] < 2 or not output.is_floating_point():
        return False
    rows = output.detach().float()
    return bool(rows.min() >= 0) and torch.allclose(rows.sum(dim=-1), torch.ones(()), atol=1e-3)


def unreadable_layout(module: nn.Module, output: torch.Tensor) -> str | None:
    """Why a 4-D output is not a conv map N,C,H,W, or None: channels last (``channels_last``), two last
    dimensions that differ on semlens's square inputs, as a ViT's queries and keys per head have
    (N,heads,tokens,dim: a timm Attention's q_norm and k_norm), or attention weights (``attention_weights``):
    the heads would pass for units."""
    if channels_last(module, output):
        return "N,H,W,C"
    if output.dim() == 4 and output.shape[2] != output.shape[3]:
        return "N,?,A,B with A != B on a square input, e.g. attention heads N,heads,tokens,dim"
    if attention_weights(output):
        return "attention weights N,heads,queries,keys: every row sums to 1"
    return None


def refuse_unreadable_layout(spec: LayerSpec, module: nn.Module, output: torch.Tensor) -> None:
    """The error for a layer read as a conv map whose output is not one (``unreadable_layout``), or read
    channels last (``spec.channels_last``) whose output is no 4-D map."""
    name = spec.name
    if spec.channels_last:
        # on semlens's square inputs a map N,C,H,W has its last two dimensions equal; one N,H,W,C its middle two
        if output.dim() != 4 or output.shape[2] == output.shape[3] != output.shape[1]:
            raise LayerError(
                f"layer {name!r} ({type(module).__name__}) outputs {tuple(output.shape)}: channels_last=true reads a map "
                "N,H,W,C, square in its middle two dimensions; drop it for this layer"
            )
        return
    layout = unreadable_layout(module, output)
    if layout == "N,H,W,C":
        raise LayerError(
            f"layer {name!r} ({type(module).__name__}) outputs {tuple(output.shape)} laid out N,H,W,C (channels last); "
            f"semlens reads conv maps as N,C,H,W and would take rows of pixels for units: read it as {name}:channels_last=true, "
            "or the block's output after it permutes back"
        )
    if layout:
        raise LayerError(
            f"layer {name!r} ({type(module).__name__}) outputs {tuple(output.shape)}, not a conv map N,C,H,W on a "
            f"square input ({layout}); semlens would take its second dimension for units: read the block or its "
            "attention's output projection (tokens N,L,C), or a conv layer"
        )


def reused_module_error(name: str) -> LayerError:
    """The refusal of a layer whose module runs more than once in a forward pass: its output is not one map, and the
    build's readers and the interventions' switches would each take another call of it."""
    block = name.rpartition(".")[0]
    instead = f"read the block {block!r}" if block else "read the module that calls it"
    return LayerError(
        f"layer {name!r} runs more than once in a forward pass (a module the model reuses, as torchvision's ResNet "
        f"blocks reuse their ReLU), so its output is not one map: {instead}, or a module that runs once (see `semlens layers MODEL`)"
    )


@dataclass
class LayerInfo:
    """What ``semlens layers`` shows for one module."""

    name: str
    type: str
    shape: str
    units: int | None
    sae: dict[str, Any] | None = None  # the SAE it is read through (its features are the units)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_layers(model: nn.Module, example: torch.Tensor, saes: dict[str, str] | None = None) -> list[LayerInfo]:
    """Run one forward pass on ``example`` and record every module's output shape and unit count; the layers
    in ``saes`` (layer -> SAE path) count their SAE's features, checked to fit the layer."""
    infos: dict[str, LayerInfo] = {}
    repeated: set[str] = set()

    def recorder(name: str, module: nn.Module):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if name in infos:  # a module called twice: not readable (reused_module_error)
                repeated.add(name)
                return
            found = first_tensor(output)
            if found is None:
                infos[name] = LayerInfo(name, type(module).__name__, type(output).__name__, None)
                return
            key, tensor = found
            units = tensor.shape[-1] if tensor.dim() in (2, 3) else tensor.shape[1] if tensor.dim() == 4 else None
            shape = "x".join(str(size) for size in tensor.shape)
            if key is not None:
                shape = f"{type(output).__name__}[{key}]: {shape}"
            layout = unreadable_layout(module, tensor)
            if layout == "N,H,W,C":
                units, shape = tensor.shape[-1], f"{shape} (N,H,W,C: read with channels_last=true)"
            elif layout:
                units, shape = None, f"{shape} ({layout}: not readable)"
            infos[name] = LayerInfo(name, type(module).__name__, shape, units)

        return hook

    handles = [module.register_forward_hook(recorder(name, module)) for name, module in model.named_modules() if name]
    with hooks(handles), torch.no_grad():
        model(example)
    for name, path in (saes or {}).items():
        if name not in infos:
            resolve_module(model, name)  # an unknown name: the error that lists the closest ones
            raise LayerError(f"layer {name!r} did not run in the model's forward pass")
        info = infos[name]
        if info.units is None:
            raise LayerError(f"layer {name!r} outputs {info.shape}: no channels to read through the SAE {path}")
        info.sae = SparseAutoencoder.load(path, info.units).describe()
        info.units = info.sae["d_sae"]
    for name in repeated:
        infos[name].shape += " (runs more than once a forward: not readable)"
        infos[name].units = None
    order = [name for name, _ in model.named_modules() if name in infos]
    return [infos[name] for name in order]


# ----------------------------------------------------------------------------------------------
# from a layer output to unit scores


def select_output(output: Any, pick: str | None, layer: str) -> torch.Tensor:
    """The tensor to read from a module output (a tensor, a tuple or a dict-like output)."""
    if isinstance(output, torch.Tensor):
        return output
    if pick is not None:
        try:
            if isinstance(output, dict) or hasattr(output, "keys"):
                chosen = output[pick] if not pick.isdigit() else list(output.values())[int(pick)]
            else:
                chosen = output[int(pick)]
        except (KeyError, IndexError, ValueError, TypeError):
            raise LayerError(f"layer {layer!r}: pick={pick!r} does not select an output; {_describe(output)}") from None
        if not isinstance(chosen, torch.Tensor):
            raise LayerError(f"layer {layer!r}: pick={pick!r} selects a {type(chosen).__name__}, not a tensor")
        return chosen
    found = first_tensor(output)
    if found is None:
        raise LayerError(f"layer {layer!r} returns {type(output).__name__} with no tensor to read")
    return found[1]


def first_tensor(output: Any) -> tuple[str | None, torch.Tensor] | None:
    """The tensor read by default, with its key or index (None for a plain tensor output)."""
    if isinstance(output, torch.Tensor):
        return None, output
    if hasattr(output, "items"):
        entries = [(str(key), value) for key, value in output.items()]
    elif isinstance(output, (tuple, list)):
        entries = [(str(index), value) for index, value in enumerate(output)]
    else:
        entries = []
    return next(((key, value) for key, value in entries if isinstance(value, torch.Tensor)), None)


def _describe(output: Any) -> str:
    if hasattr(output, "keys"):
        return "valid keys: " + ", ".join(map(str, output.keys()))
    return f"valid indices: 0..{len(output) - 1}"


@dataclass
class UnitReader:
    """Turns one layer's output batch into per-unit scores ``[N, U]`` and maps ``[N, U, h, w]``.

    Maps are kept only for spatial outputs (conv, patch tokens) and shrunk to at most
    ``max_map_side`` per side by max pooling, so cropping needs no second forward pass while the
    memory stays bounded by units x k x max_map_side².
    """

    spec: LayerSpec
    max_map_side: int = 32
    _sae: SparseAutoencoder | None = field(default=None, init=False, repr=False)

    def __call__(self, output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = select_output(output, self.spec.pick, self.spec.name).detach()
        if x.dim() != 3:
            self._refuse_token_keys(x)
        if x.dim() == 4:  # N,H,W,C to the features: as given where the layer is read channels last
            return self._spatial(self._features(x if self.spec.channels_last else x.permute(0, 2, 3, 1)))
        if x.dim() == 3:
            return self._tokens(self._features(x))
        if x.dim() == 2:
            return self._features(x), None
        raise LayerError(
            f"layer {self.spec.name!r} outputs shape {tuple(x.shape)}; semlens reads N,C,H,W (conv), "
            "N,L,C (tokens) or N,C (linear) outputs; pick another layer or output with pick="
        )

    def _refuse_token_keys(self, x: torch.Tensor) -> None:
        """``token=`` and ``prefix_tokens=`` read token outputs; on a conv or linear output they would be ignored,
        and the user would get a Lens of something else than asked for."""
        given = [key for key in ("token", "prefix_tokens") if getattr(self.spec, key) is not None]
        if given:
            kind = "a conv map N,C,H,W" if x.dim() == 4 else "N,C (linear)" if x.dim() == 2 else f"{x.dim()} dimensions"
            raise LayerError(
                f"layer {self.spec.name!r} outputs {tuple(x.shape)}, {kind}: {' and '.join(f'{key}=' for key in given)} "
                "only apply to token outputs N,L,C; drop them, or pick a layer that outputs tokens"
            )

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """Unit activations along the last dimension: SAE-encoded, and negated copies appended when
        signed (before any pooling, so that ``i-`` ranks samples by their most negative activation)."""
        features = self._encode(x)
        return torch.cat([features, -features], dim=-1) if self.spec.signed else features

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.sae is None:
            return x.float()
        if self._sae is None:
            self._sae = SparseAutoencoder.load(self.spec.sae, x.shape[-1])
        return self._sae.encode(x.float())

    def _spatial(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``features`` is N,H,W,U."""
        maps = features.permute(0, 3, 1, 2)
        scores = maps.mean(dim=(2, 3)) if self.spec.pool == "mean" else maps.amax(dim=(2, 3))
        return scores, self._shrink(maps)

    def _tokens(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``features`` is N,L,U."""
        length = features.shape[1]
        if self.spec.token is not None:
            if not -length <= self.spec.token < length:
                raise LayerError(f"layer {self.spec.name!r}: token={self.spec.token} outside its {length} tokens")
            scores = features[:, self.spec.token]
        else:
            scores = features.mean(dim=1) if self.spec.pool == "mean" else features.amax(dim=1)
        prefix = self.spec.prefix_tokens if self.spec.prefix_tokens is not None else guess_prefix_tokens(length)
        if prefix is None:
            return scores, None
        side = math.isqrt(length - prefix)
        if side * side != length - prefix:
            raise LayerError(
                f"layer {self.spec.name!r}: {length} tokens minus prefix_tokens={prefix} is not a square patch grid"
            )
        grid = features[:, prefix:].reshape(features.shape[0], side, side, -1).permute(0, 3, 1, 2)
        return scores, self._shrink(grid)

    def _shrink(self, maps: torch.Tensor) -> torch.Tensor:
        height, width = maps.shape[-2:]
        if max(height, width) <= self.max_map_side:
            return maps.contiguous()
        target = (min(height, self.max_map_side), min(width, self.max_map_side))
        return F.adaptive_max_pool2d(maps, target)


def guess_prefix_tokens(length: int, most: int = 8) -> int | None:
    """Tokens before a square patch grid (at least 3x3): 0 (no CLS), 1 (CLS), up to ``most`` (CLS + registers)."""
    for prefix in range(most + 1):
        side = math.isqrt(max(length - prefix, 0))
        if side > 2 and side * side == length - prefix:
            return prefix
    return None

