"""Foundation models from ``open_clip`` (optional extra ``semlens[open_clip]``).

open_clip covers far more image-text models than ``transformers`` does (LAION and DataComp CLIPs,
MobileCLIP, EVA, SigLIP via timm ...). A model is an architecture name plus its weights: a pretrained
tag (downloaded on first use), a local weights file, or ``none`` for random weights. The architecture
may also be ``hf-hub`` or ``local-dir``, in which case the weights part names the hub repository or
directory, as in open_clip's own ``hf-hub:ORG/REPO`` and ``local-dir:PATH`` model names.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Callable, Sequence

import torch
from PIL import Image

from .._util.devices import inference_dtype
from .._util.errors import SpecError, one_line
from .._util.fingerprint import hash_module_weights
from .._util.hub import offline_unless_reachable
from .._util.imports import import_optional
from .._util.seeded import seeded_weights
from .base import FoundationModel, StackedTransform

#: open_clip's model-name schemas; with them the weights come from the named repository or directory
SCHEMAS = ("hf-hub", "local-dir")
#: largest difference allowed between full- and short-context text embeddings (unit rows, float32)
SHORT_CONTEXT_TOLERANCE = 1e-5
#: how many architectures an unknown-architecture error lists
SHOWN_ARCHS = 12


class OpenCLIPFoundationModel(FoundationModel):
    """An open_clip image-text model, as ``open_clip.create_model_and_transforms`` and ``get_tokenizer`` give it
    (:func:`load_open_clip` loads one from a spec; :func:`semlens.foundation.from_open_clip` wraps one a user holds).

    Parameters
    ----------
    model, preprocess, tokenizer:
        The model, its evaluation image transform and its tokenizer.
    name:
        What the id calls the model before its weights' fingerprint (``open_clip:ARCH:PRETRAINED`` for a spec).
    device, dtype:
        Where and in what it runs; the model is moved there (``None``: CUDA when present, the device's dtype).
    """

    batch_size = 64

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        name: str,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(device, dtype)
        self.transform, self.tokenizer = preprocess, tokenizer
        self.id = f"{name}@{hash_module_weights(model)}"
        self.short_context = _short_context_exact(model, self.tokenizer)
        self.dtype = dtype or inference_dtype(self.device, model.visual)
        self.model = model.to(self.device, self.dtype).eval()
        with torch.no_grad():  # architectures store the embedding size in different places: measure it
            self.dim = int(self._embed_texts([""]).shape[-1])

    @property
    def image_tower(self) -> torch.nn.Module:
        return self.model.visual

    @property
    def image_preprocessor(self) -> StackedTransform:
        return StackedTransform(self.transform)

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return _encode_text_short(self.model, tokens) if self.short_context else self.model.encode_text(tokens)


def load_open_clip(
    arch: str, pretrained: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> OpenCLIPFoundationModel:
    """The open_clip model ``arch`` with the weights ``pretrained`` names (see the module docstring), its id
    ``open_clip:ARCH:PRETRAINED@WEIGHTS``."""
    open_clip = import_optional("open_clip", "open_clip", "open_clip foundation models")
    if arch in SCHEMAS:
        model_name, weights = f"{arch}:{pretrained}", None
    else:
        _check_arch(open_clip, arch)
        weights = None if pretrained.lower() == "none" else _check_weights(open_clip, arch, pretrained)
        model_name = arch
    try:
        # Random weights must stay random: do not fetch base weights for an HF text tower.
        fetches = arch == "hf-hub" or (weights is not None and not os.path.isfile(weights))  # a hub repository or a pretrained tag
        with seeded_weights(), offline_unless_reachable(fetches):  # random weights (none) the same in every process: the Lens finds its model again
            model, _, transform = open_clip.create_model_and_transforms(
                model_name, pretrained=weights, pretrained_text=weights is not None
            )
            tokenizer = open_clip.get_tokenizer(model_name)
    except (RuntimeError, OSError, ValueError) as error:
        raise SpecError(
            f"cannot load open_clip:{arch}:{pretrained}: {one_line(error)}. A pretrained tag or hub repository "
            "needs the network on first use; a weights file must match the architecture"
        ) from error
    return OpenCLIPFoundationModel(model, transform, tokenizer, f"open_clip:{arch}:{pretrained}", device, dtype)


#: texts whose embeddings must be the same through the short context as through the full one
CONTEXT_CHECK_TEXTS = ("", "a photo of a dog", "a bright red striped star on a sandy beach, seen from above")


def _pooled_positions(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Per text, the token position the tower pools (the end-of-text token)."""
    if model.text_pool_type == "argmax":
        return tokens.argmax(dim=-1)
    return (tokens == model.text_eos_id).int().argmax(dim=-1)


def _encode_text_short(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``CLIP.encode_text`` over the first L token positions only, L the batch's last pooled position + 1.

    Prompts are a few tokens long and the tower runs all 77 positions; with a causal mask no position
    sees a later one, so the pooled end-of-text position gets the same features from the shorter
    sequence, at a fraction of the cost (checked once per model by :func:`_short_context_exact`)."""
    from open_clip.transformer import text_global_pool

    length = int(_pooled_positions(model, tokens).max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    projection = model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


def _short_context_exact(model: torch.nn.Module, tokenizer) -> bool:
    """Whether :func:`_encode_text_short` gives this model's own text embeddings: a built-in CLIP text
    tower with a causal mask that pools the end-of-text token, and the same embeddings on
    ``CONTEXT_CHECK_TEXTS`` (in the dtype and on the device the model was given in). Otherwise the full context."""
    mask = getattr(model, "attn_mask", None)
    pool = getattr(model, "text_pool_type", None)
    if not all(hasattr(model, name) for name in ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")):
        return False
    if mask is None or pool not in ("argmax", "eos") or (pool == "eos" and getattr(model, "text_eos_id", None) is None):
        return False
    if not torch.equal(torch.isinf(mask), torch.ones_like(mask, dtype=torch.bool).triu(1)):
        return False  # not causal: a position sees later ones, padding included
    try:
        with torch.no_grad():
            tokens = tokenizer(list(CONTEXT_CHECK_TEXTS)).to(model.positional_embedding.device)  # a user's model may be on a GPU
            full = torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1)
            short = torch.nn.functional.normalize(_encode_text_short(model, tokens).float(), dim=-1)
    except (RuntimeError, AttributeError, TypeError, ValueError):
        return False
    return bool((full - short).abs().max() <= SHORT_CONTEXT_TOLERANCE)


def _check_arch(open_clip: ModuleType, arch: str) -> None:
    """Fail with a short list of valid names (open_clip's own error prints all of them)."""
    if open_clip.get_model_config(arch.replace("/", "-")) is None:
        names = open_clip.list_models()
        raise SpecError(
            f"unknown open_clip architecture {arch!r}; {len(names)} are known, e.g. "
            f"{', '.join(names[:SHOWN_ARCHS])}; see all with "
            'python -c "import open_clip; print(open_clip.list_models())", or use hf-hub:ORG/REPO'
        )


def _check_weights(open_clip: ModuleType, arch: str, pretrained: str) -> str:
    """Accept a known tag or an existing file, else name the tags that exist for ``arch``."""
    path = os.path.expanduser(pretrained)
    if os.path.isfile(path):
        return path
    if open_clip.get_pretrained_cfg(arch, pretrained):
        return pretrained
    tags = open_clip.list_pretrained_tags_by_model(arch)
    raise SpecError(
        f"open_clip:{arch}:{pretrained}: {pretrained!r} is neither a pretrained tag of {arch} nor a weights file; "
        f"tags: {', '.join(tags) or 'none published'}; or 'none' for random weights"
    )
