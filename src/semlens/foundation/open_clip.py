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
from typing import Sequence

import torch

from .._util.devices import inference_dtype
from .._util.errors import SpecError, one_line
from .._util.fingerprint import hash_module_weights
from .._util.imports import import_optional
from .base import FoundationModel, StackedTransform

#: open_clip's model-name schemas; with them the weights come from the named repository or directory
SCHEMAS = ("hf-hub", "local-dir")
#: how many architectures an unknown-architecture error lists
SHOWN_ARCHS = 12


class OpenCLIPFoundationModel(FoundationModel):
    """An open_clip image-text model.

    Parameters
    ----------
    arch:
        An open_clip architecture such as ``ViT-B-32`` (see ``open_clip.list_models()``), or the
        schema ``hf-hub`` / ``local-dir``.
    pretrained:
        A pretrained tag for ``arch`` (see ``open_clip.list_pretrained_tags_by_model(arch)``), a local
        weights file, ``none`` for random weights; after a schema, the repository or directory.
    device:
        ``None``/``"auto"`` for CUDA when present, else a torch device string.
    """

    batch_size = 64

    def __init__(
        self, arch: str, pretrained: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__(device, dtype)
        open_clip = import_optional("open_clip", "open_clip", "open_clip foundation models")
        if arch in SCHEMAS:
            model_name, weights = f"{arch}:{pretrained}", None
        else:
            _check_arch(open_clip, arch)
            weights = None if pretrained.lower() == "none" else _check_weights(open_clip, arch, pretrained)
            model_name = arch
        try:
            # Random weights must stay random: do not fetch base weights for an HF text tower.
            model, _, self.transform = open_clip.create_model_and_transforms(
                model_name, pretrained=weights, pretrained_text=weights is not None
            )
            self.tokenizer = open_clip.get_tokenizer(model_name)
        except (RuntimeError, OSError, ValueError) as error:
            raise SpecError(
                f"cannot load open_clip:{arch}:{pretrained}: {one_line(error)}. A pretrained tag or hub repository "
                "needs the network on first use; a weights file must match the architecture"
            ) from error
        self.id = f"open_clip:{arch}:{pretrained}@{hash_module_weights(model)}"
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
        return self.model.encode_text(self.tokenizer(list(texts)).to(self.device))


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
