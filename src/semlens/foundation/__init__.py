"""Foundation models: one protocol, a registry of backends selected by spec strings.

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

import torch

from .._util.errors import SpecError
from .._util.imports import call_factory, import_object
from .._util.specs import SpecForm, SpecRegistry, in_memory_spec, register_in_memory
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
    from .hf import HFFoundationModel

    return HFFoundationModel(rest, device=device, dtype=dtype)


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
    from .open_clip import OpenCLIPFoundationModel

    return OpenCLIPFoundationModel(arch, pretrained, device=device, dtype=dtype)


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


def load_foundation_model(
    spec: str | FoundationModel, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> FoundationModel:
    """Build the foundation model a spec names (see the module docstring for the forms), in ``dtype``
    (default: :func:`~semlens._util.devices.inference_dtype` of the device); a FoundationModel object is
    returned as it is, on its own device and in its own dtype (a Lens records it as ``memory:CLASS``)."""
    if isinstance(spec, FoundationModel):
        return spec
    return FOUNDATION_MODELS.resolve(spec, device=device, dtype=dtype)


def foundation_spec(foundation: str | FoundationModel) -> str:
    """What a Lens records as the spec of ``foundation``: a spec as it is, an object as ``memory:CLASS``."""
    return foundation if isinstance(foundation, str) else in_memory_spec(foundation)


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
    "foundation_spec",
    "shared_foundation_model",
    "list_foundation_models",
    "FOUNDATION_MODELS",
]
