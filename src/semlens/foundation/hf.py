"""Foundation models from Hugging Face ``transformers``: CLIP and SigLIP (image-text), DINOv2 (image only).

A model is named by a hub id (downloaded on first use, so it needs the network once) or by a local
directory written with ``save_pretrained`` (works offline). The architecture is read from the saved
config, so one spec form covers every supported family.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, TypeVar

import torch
from PIL import Image

from .._util.errors import SpecError
from .._util.fingerprint import hash_module_weights
from .._util.hub import hub_source, load_pretrained, silence_transformers_progress
from .base import FoundationModel

T = TypeVar("T")

#: model types embedded in a shared image-text space
IMAGE_TEXT_TYPES = ("clip", "siglip", "siglip2")
#: model types embedded without a text tower; the image embedding is the normalised CLS token
IMAGE_ONLY_TYPES = ("dinov2", "dinov2_with_registers")
SUPPORTED_TYPES = IMAGE_TEXT_TYPES + IMAGE_ONLY_TYPES
#: SigLIP models were trained on fixed-length, unmasked token sequences (big_vision, open_clip alike)
SIGLIP_TYPES = ("siglip", "siglip2")


class HFFoundationModel(FoundationModel):
    """CLIP, SigLIP, SigLIP 2 or DINOv2 from ``transformers`` (:func:`load_hf` loads one from a spec;
    :func:`semlens.foundation.from_transformers` wraps one a user holds).

    Parameters
    ----------
    model:
        The model (``CLIPModel``, ``SiglipModel``, ``Dinov2Model``, ... or what ``AutoModel`` gives for them).
    image_processor, tokenizer:
        Its image processor, and for image-text models its tokenizer.
    label:
        What the id calls the model before its weights' fingerprint (``hf:LABEL@WEIGHTS``).
    device, dtype:
        Where and in what it runs; the model is moved there (``None``: CUDA when present, the device's dtype).
    """

    batch_size = 32

    def __init__(
        self,
        model: torch.nn.Module,
        image_processor: Any,
        tokenizer: Any = None,
        label: str = "",
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(device, dtype)
        config = model.config
        self.model_type: str = check_model_type(config.model_type, f"hf:{label}")
        self.supports_text = self.model_type in IMAGE_TEXT_TYPES
        if self.supports_text and tokenizer is None:
            raise SpecError(
                f"hf:{label} is a {self.model_type} model, which embeds texts too: give its tokenizer with its image "
                "processor (AutoProcessor.from_pretrained(NAME) holds both)"
            )
        self.id = f"hf:{label}@{hash_module_weights(model)}"
        self.model = model.to(self.device, self.dtype).eval()
        self.image_processor, self.tokenizer = image_processor, tokenizer
        if self.supports_text:
            self.max_text_tokens: int = config.text_config.max_position_embeddings
        self.dim = _embedding_dim(config, label)

    @property
    def image_tower(self) -> torch.nn.Module:
        return self.model

    @property
    def image_preprocessor(self) -> ProcessorPixels:
        return ProcessorPixels(self.image_processor)

    def _embed_pixels(self, pixels: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.supports_text:
            return _pooled(self.model.get_image_features(**pixels))
        return _pooled(self.model(pixel_values=pixels["pixel_values"]))

    def _embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        if not self.supports_text:
            return super()._embed_texts(texts)
        siglip = self.model_type in SIGLIP_TYPES
        tokens = self.tokenizer(
            list(texts),
            padding="max_length" if siglip else True,
            truncation=True,
            max_length=self.max_text_tokens,
            return_tensors="pt",
        )
        inputs = {"input_ids": tokens["input_ids"].to(self.device)}
        if not siglip and "attention_mask" in tokens:
            inputs["attention_mask"] = tokens["attention_mask"].to(self.device)
        return _pooled(self.model.get_text_features(**inputs))



def load_hf(name_or_path: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> HFFoundationModel:
    """The model a hub id or a local ``save_pretrained`` directory holds, with its image processor (and, for
    image-text models, tokenizer); its id ``hf:NAME@WEIGHTS``, a directory named by its last component."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

    silence_transformers_progress()
    source = hub_source(name_or_path)
    config = load_pretrained(AutoConfig.from_pretrained, source, name_or_path, "its config")
    check_model_type(config.model_type, f"hf:{name_or_path}")  # before the weights load
    # Loaded in float32 so that the fingerprint does not depend on the device it then runs on.
    model = load_pretrained(AutoModel.from_pretrained, source, name_or_path, "its weights", dtype=torch.float32)
    image_processor = load_pretrained(AutoImageProcessor.from_pretrained, source, name_or_path, "its image processor")
    tokenizer = None
    if config.model_type in IMAGE_TEXT_TYPES:
        tokenizer = load_pretrained(AutoTokenizer.from_pretrained, source, name_or_path, "its tokenizer")
    return HFFoundationModel(model, image_processor, tokenizer, model_label(source), device, dtype)


def model_label(name_or_path: str) -> str:
    """What an id calls a model: a hub id as it is, a local directory by its last component, so a Lens keeps its id
    when the model and the Lens move to another machine (the weights hash tells different weights apart)."""
    return Path(name_or_path).name if Path(name_or_path).is_dir() else name_or_path


def check_model_type(model_type: str, what: str) -> str:
    """``model_type`` where semlens embeds with it, else an error naming the supported ones."""
    if model_type not in SUPPORTED_TYPES:
        raise SpecError(
            f"{what} is a {model_type!r} model; semlens supports the model types {', '.join(SUPPORTED_TYPES)} "
            "(CLIP, SigLIP and SigLIP 2 embed images and texts, DINOv2 images only)"
        )
    return model_type


class ProcessorPixels:
    """An image processor's ``pixel_values``, plus SigLIP 2's patch mask and patch grid shapes."""

    NAMES = ("pixel_values", "pixel_attention_mask", "spatial_shapes")

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        batch = self.processor(images=list(images), return_tensors="pt")
        return {name: batch[name] for name in self.NAMES if name in batch}


def _embedding_dim(config: Any, name_or_path: str) -> int:
    """The size of the shared embedding space (CLIP projects; SigLIP heads keep the hidden size)."""
    if config.model_type == "clip":
        return int(config.projection_dim)
    if config.model_type in SIGLIP_TYPES:
        image_dim = int(config.vision_config.hidden_size)
        text_dim = int(getattr(config.text_config, "projection_size", None) or config.text_config.hidden_size)
        if image_dim != text_dim:
            raise SpecError(
                f"hf:{name_or_path} embeds images in {image_dim} and texts in {text_dim} dimensions; "
                "its towers do not share one space"
            )
        return image_dim
    return int(config.hidden_size)


def _pooled(output: Any) -> torch.Tensor:
    """The embedding from a model output (transformers 5 wraps it; earlier versions return a tensor)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output
