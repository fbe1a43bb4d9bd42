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
    """CLIP, SigLIP, SigLIP 2 or DINOv2 loaded with ``transformers``.

    Parameters
    ----------
    name_or_path:
        A hub id such as ``openai/clip-vit-base-patch32`` or a local ``save_pretrained`` directory
        that also holds the image processor (and, for image-text models, the tokenizer).
    device:
        ``None``/``"auto"`` for CUDA when present, else a torch device string.
    """

    batch_size = 32

    def __init__(
        self, name_or_path: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__(device, dtype)
        from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

        silence_transformers_progress()

        source = hub_source(name_or_path)
        config = load_pretrained(AutoConfig.from_pretrained, source, name_or_path, "its config")
        self.model_type: str = config.model_type
        if self.model_type not in SUPPORTED_TYPES:
            raise SpecError(
                f"hf:{name_or_path} is a {self.model_type!r} model; semlens supports the model types "
                f"{', '.join(SUPPORTED_TYPES)} (CLIP, SigLIP and SigLIP 2 embed images and texts, DINOv2 "
                "images only)"
            )
        # Loaded in float32 so that the fingerprint does not depend on the device it then runs on.
        model = load_pretrained(AutoModel.from_pretrained, source, name_or_path, "its weights", dtype=torch.float32)
        # A local directory is named by its last component, so a Lens keeps its id when the model and
        # the Lens move to another machine; the weights hash tells different weights apart.
        label = Path(source).name if Path(source).is_dir() else name_or_path
        self.id = f"hf:{label}@{hash_module_weights(model)}"
        self.model = model.to(self.device, self.dtype).eval()
        self.image_processor = load_pretrained(AutoImageProcessor.from_pretrained, source, name_or_path, "its image processor")
        self.supports_text = self.model_type in IMAGE_TEXT_TYPES
        if self.supports_text:
            self.tokenizer = load_pretrained(AutoTokenizer.from_pretrained, source, name_or_path, "its tokenizer")
            self.max_text_tokens: int = config.text_config.max_position_embeddings
        self.dim = _embedding_dim(config, name_or_path)

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
