"""Foundation models: one protocol, a registry of backends selected by spec strings, or the model objects a
notebook holds (:func:`from_open_clip`, :func:`from_transformers`, or the same as a tuple wherever a foundation
model is given).

=====================================  ==================================================================
``conse``                              offline default: ImageNet classifier + bundled sentence encoder
``hf:NAME_OR_PATH``                    CLIP, SigLIP (image-text) or DINOv2 (image only) via transformers
``open_clip:ARCH:PRETRAINED_OR_PATH``  any open_clip model (optional extra ``semlens[open_clip]``)
``world[:CONFIG]``                     the concept world's image-text model (trained once, cached)
``py:package.module:factory``          your own: a callable returning a :class:`FoundationModel`
=====================================  ==================================================================
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any, Callable

import torch

from .._util.errors import SemlensError, SpecError
from .._util.imports import call_factory, import_object
from .._util.specs import SpecForm, SpecRegistry, described, in_memory_spec, register_in_memory
from .base import FoundationModel, StackedTransform

FOUNDATION_MODELS: SpecRegistry[FoundationModel] = SpecRegistry("foundation model")


@FOUNDATION_MODELS.register("conse", "conse", "offline: ImageNet EfficientNet-Lite2 classes embedded by MiniLM")
def _conse(rest: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> FoundationModel:
    if rest:
        raise SpecError(f"'conse' takes no arguments, got 'conse:{rest}'")
    from .conse import ConSE

    return ConSE(device=device, dtype=dtype)


@FOUNDATION_MODELS.register("hf", "hf:NAME_OR_PATH", "CLIP, SigLIP or DINOv2 via transformers; hub name or local dir")
def _hf(rest: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> FoundationModel:
    if not rest:
        raise SpecError("hf: needs a model, e.g. hf:openai/clip-vit-base-patch32 or hf:/path/to/saved/model")
    from .hf import load_hf

    return load_hf(rest, device=device, dtype=dtype)


@FOUNDATION_MODELS.register(
    "open_clip", "open_clip:ARCH:PRETRAINED_OR_PATH", "open_clip model; PRETRAINED a tag, a weights file or 'none'"
)
def _open_clip(rest: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> FoundationModel:
    arch, _, pretrained = rest.partition(":")
    if not arch or not pretrained:
        raise SpecError(
            f"open_clip spec needs an architecture and weights, e.g. open_clip:ViT-B-32:laion2b_s34b_b79k, "
            f"open_clip:ViT-B-32:/path/open_clip_model.safetensors or open_clip:ViT-B-32:none; got {rest!r}"
        )
    from .open_clip import load_open_clip

    return load_open_clip(arch, pretrained, device=device, dtype=dtype)


@FOUNDATION_MODELS.register("py", "py:package.module:factory", "your own FoundationModel factory")
def _python(rest: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> FoundationModel:
    """``factory(device=...)``; ``dtype=`` too when one is asked for, which the factory must then take."""
    factory = import_object(rest, "foundation model")
    options = {"device": device}
    if dtype is not None:
        parameters = inspect.signature(factory).parameters.values()
        if not any(p.name == "dtype" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            raise SpecError(
                f"py:{rest} takes no dtype argument, so it cannot embed in {str(dtype).removeprefix('torch.')}; "
                "give the factory a dtype parameter (passed on to FoundationModel.__init__) or use embed_precision=auto"
            )
        options["dtype"] = dtype
    model = call_factory(factory, rest, "foundation model", **options)
    if not isinstance(model, FoundationModel):
        raise SpecError(f"py:{rest} returned {type(model).__name__}, not a semlens.foundation.FoundationModel")
    return model


register_in_memory(FOUNDATION_MODELS, "Lens.open(LENS, foundation=MODEL), or --foundation SPEC on the command line")


def from_open_clip(
    model: torch.nn.Module,
    preprocess: Callable,
    tokenizer: Callable,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> FoundationModel:
    """The open_clip model a notebook holds (``model, _, preprocess = open_clip.create_model_and_transforms(...)``,
    ``tokenizer = open_clip.get_tokenizer(...)``) as a FoundationModel, put in eval mode; it runs where it is and in
    its dtype unless ``device``/``dtype`` are given (then it is moved). Its id ``open_clip:CLASS@WEIGHTS``."""
    from .open_clip import OpenCLIPFoundationModel

    device, dtype = _placement(model, device, dtype)
    return OpenCLIPFoundationModel(model, preprocess, tokenizer, f"open_clip:{type(model).__name__}", device, dtype)


def from_transformers(
    model: torch.nn.Module,
    processor: Any,
    tokenizer: Any = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> FoundationModel:
    """A transformers CLIP, SigLIP (2) or DINOv2 model a notebook holds, with its processor (``AutoProcessor``:
    image processor and tokenizer) or its image processor (image-only models; or with ``tokenizer``), as a
    FoundationModel, put in eval mode; it runs where it is and in its dtype unless ``device``/``dtype`` are given.
    Its id ``hf:NAME@WEIGHTS``, NAME the hub id or directory it was loaded from (as the ``hf:`` spec names it)."""
    from .hf import HFFoundationModel, model_label

    image_processor = getattr(processor, "image_processor", processor)
    tokenizer = tokenizer or getattr(processor, "tokenizer", None)
    label = model_label(getattr(model.config, "name_or_path", "")) or model.config.model_type
    device, dtype = _placement(model, device, dtype)
    return HFFoundationModel(model, image_processor, tokenizer, label, device, dtype)


def _placement(model: torch.nn.Module, device: str | torch.device | None, dtype: torch.dtype | None) -> tuple[Any, torch.dtype | None]:
    """Where and in what a user's model runs: as asked, else where it is and in the dtype of its weights."""
    weights = next((tensor for tensor in model.parameters() if tensor.is_floating_point()), None)
    if weights is None:
        return device, dtype
    return device or weights.device, dtype or weights.dtype


def load_foundation_model(
    spec: str | FoundationModel | tuple, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> FoundationModel:
    """Build the foundation model a spec names (see the module docstring for the forms), in ``dtype``
    (default: :func:`~semlens._util.devices.inference_dtype` of the device); a FoundationModel object is
    returned as it is, on its own device and in its own dtype (a Lens records it as ``memory:CLASS``), and a
    tuple of an open_clip model with its preprocess and tokenizer, or of a transformers model with its processor,
    is wrapped (:func:`from_open_clip`, :func:`from_transformers`)."""
    if isinstance(spec, str):
        return FOUNDATION_MODELS.resolve(spec, device=device, dtype=dtype)
    return foundation_object(spec)


def foundation_object(value: Any, option: str = "foundation") -> FoundationModel:
    """``value``, a foundation model given as an object, as a FoundationModel; anything else refused, naming the forms."""
    if isinstance(value, FoundationModel):
        return value
    parts = value if isinstance(value, tuple) else (value,)
    model = parts[0]
    if isinstance(model, torch.nn.Module) and len(parts) > 1:
        if getattr(getattr(model, "config", None), "model_type", None) is not None and len(parts) <= 3:
            return from_transformers(*parts)
        if hasattr(model, "encode_image") and hasattr(model, "visual") and len(parts) == 3:
            return from_open_clip(*parts)
    shown = f"({', '.join(type(part).__name__ for part in parts)})" if isinstance(value, tuple) else described(value)
    raise SemlensError(
        f"{option}={shown} is not a foundation model "
        "semlens can use: give a spec (e.g. 'hf:openai/clip-vit-base-patch32'), a semlens.FoundationModel, an open_clip "
        "model as (model, preprocess, tokenizer), or a transformers CLIP, SigLIP or DINOv2 model as (model, processor)"
    )


def foundation_spec(foundation: str | FoundationModel) -> str:
    """What a Lens records as the spec of ``foundation``: a spec as it is, an object as ``memory:CLASS``."""
    return foundation if isinstance(foundation, str) else in_memory_spec(foundation)


def foundation_name(foundation: str | FoundationModel) -> str:
    """What tells one foundation model given to a build from another: a spec, or an object's id (its weights)."""
    return foundation if isinstance(foundation, str) else foundation.id


def space_name_of(foundation: str | FoundationModel) -> str:
    """The name of the space an extra foundation model makes by default: its spec's, or an object's id's (two objects
    of one class get spaces of their own)."""
    from ..store.spaces import space_name

    return space_name(foundation_name(foundation))


@lru_cache(maxsize=4)
def shared_foundation_model(spec: str | FoundationModel, device: str | None = None) -> FoundationModel:
    """One loaded foundation model per spec and device for the whole process: Lenses embedded by the same
    model (an explorer serving several, a comparison, the demo) share it instead of reloading its weights."""
    return load_foundation_model(spec, device)


def list_foundation_models() -> list[SpecForm[FoundationModel]]:
    """The registered spec forms, with usage and a one-line summary each."""
    return FOUNDATION_MODELS.forms()


__all__ = [
    "FoundationModel",
    "StackedTransform",
    "load_foundation_model",
    "from_open_clip",
    "from_transformers",
    "foundation_spec",
    "shared_foundation_model",
    "list_foundation_models",
    "FOUNDATION_MODELS",
]
