"""Tiny random transformers foundation models saved offline with ``save_pretrained``.

Each is saved with its image processor and a tokenizer made from a small letter vocabulary, so the
real ``from_pretrained`` loading code runs in the tests without any download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import transformers

LETTERS = "abcdefghijklmnopqrstuvwxyz"
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
MAX_TOKENS = 16
PROJECTION_DIM = 24  # differs from the hidden size, so the CLIP test sees the projected space


GEMMA_IDS = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}


def _gemma_vocab() -> dict[str, int]:
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for piece in LETTERS + "▁":
        vocab[piece] = len(vocab)
    return vocab


def _save_clip(directory: Path) -> None:
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in LETTERS:
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    tokenizer = transformers.CLIPTokenizer(vocab=vocab, merges=[])
    text = transformers.CLIPTextConfig(
        vocab_size=len(vocab), max_position_embeddings=MAX_TOKENS, bos_token_id=0, eos_token_id=1, pad_token_id=1, **TINY
    )
    vision = transformers.CLIPVisionConfig(image_size=32, patch_size=8, **TINY)
    config = transformers.CLIPConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=PROJECTION_DIM
    )
    transformers.CLIPModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(directory)


def _save_siglip(directory: Path) -> None:
    vocab = _gemma_vocab()
    # The original SigLIP tokenizer needs sentencepiece; SigLIP 2's fixed-resolution models use Gemma's.
    tokenizer = transformers.GemmaTokenizer(vocab=vocab, merges=[])
    text = transformers.SiglipTextConfig(
        vocab_size=len(vocab), max_position_embeddings=MAX_TOKENS, **GEMMA_IDS, **TINY
    )
    vision = transformers.SiglipVisionConfig(image_size=32, patch_size=8, **TINY)
    config = transformers.SiglipConfig(text_config=text.to_dict(), vision_config=vision.to_dict())
    transformers.SiglipModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    transformers.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)


def _save_siglip2(directory: Path) -> None:
    vocab = _gemma_vocab()
    tokenizer = transformers.Siglip2Tokenizer(vocab=vocab, merges=[])
    text = transformers.Siglip2TextConfig(
        vocab_size=len(vocab), max_position_embeddings=MAX_TOKENS, **GEMMA_IDS, **TINY
    )
    vision = transformers.Siglip2VisionConfig(num_patches=16, patch_size=8, **TINY)
    config = transformers.Siglip2Config(text_config=text.to_dict(), vision_config=vision.to_dict())
    transformers.Siglip2Model(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    transformers.Siglip2ImageProcessor(patch_size=8, max_num_patches=16).save_pretrained(directory)


def _bit_processor() -> object:
    return transformers.BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def _save_dinov2(directory: Path) -> None:
    transformers.Dinov2Model(transformers.Dinov2Config(image_size=32, patch_size=8, mlp_ratio=2, **TINY)).save_pretrained(
        directory
    )
    _bit_processor().save_pretrained(directory)


def _save_dinov2_with_registers(directory: Path) -> None:
    config = transformers.Dinov2WithRegistersConfig(
        image_size=32, patch_size=8, mlp_ratio=2, num_register_tokens=2, **TINY
    )
    transformers.Dinov2WithRegistersModel(config).save_pretrained(directory)
    _bit_processor().save_pretrained(directory)


SAVERS: dict[str, Callable[[Path], None]] = {
    "clip": _save_clip,
    "siglip": _save_siglip,
    "siglip2": _save_siglip2,
    "dinov2": _save_dinov2,
    "dinov2_with_registers": _save_dinov2_with_registers,
}
