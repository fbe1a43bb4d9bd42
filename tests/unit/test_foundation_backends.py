"""The transformers and open_clip foundation model backends, on tiny random models built offline.

Each transformers model is saved with ``save_pretrained`` together with its image processor and a
tokenizer made from a small letter vocabulary, so the real ``from_pretrained`` loading code runs.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_foundation import PROJECTION_DIM, SAVERS, TINY

from semlens._util.errors import SpecError, TextNotSupportedError
from semlens.foundation import load_foundation_model
from semlens.foundation.hf import HFFoundationModel, load_hf
from semlens.foundation.open_clip import OpenCLIPFoundationModel, load_open_clip

transformers = pytest.importorskip("transformers")

TEXTS = ["a cat", "a photo of a dog", "a very long caption " * 8]
OPEN_CLIP_ARCH = "ViT-S-32-alt"  # the smallest built-in open_clip architecture


def _images() -> list[Image.Image]:
    """Three random RGB images of different sizes and aspect ratios."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(40, 40), (30, 60), (64, 24)]]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, int], Path]:
    """Save (once per kind and seed) a tiny random model directory; different seeds, different weights."""
    cache: dict[tuple[str, int], Path] = {}

    def save(kind: str, seed: int = 0) -> Path:
        if (kind, seed) not in cache:
            directory = tmp_path_factory.mktemp(f"{kind}-{seed}")
            torch.manual_seed(seed)
            SAVERS[kind](directory)
            cache[kind, seed] = directory
        return cache[kind, seed]

    return save


def _assert_unit_rows(embeddings: torch.Tensor, count: int, dim: int) -> None:
    assert embeddings.shape == (count, dim)
    assert embeddings.dtype == torch.float32
    assert embeddings.device.type == "cpu"
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(count))


@pytest.mark.parametrize(("kind", "dim"), [("clip", PROJECTION_DIM), ("siglip", 32), ("siglip2", 32)])
def test_image_text_models_embed_unit_rows_deterministically(saved, kind: str, dim: int) -> None:
    model = load_foundation_model("hf:" + str(saved(kind)), device="cpu")
    assert isinstance(model, HFFoundationModel)
    assert model.supports_text and model.dim == dim
    images = model.encode_images(_images())
    texts = model.encode_texts(TEXTS)  # the last one is longer than the model's context: truncated
    _assert_unit_rows(images, 3, dim)
    _assert_unit_rows(texts, 3, dim)
    assert torch.equal(model.encode_images(_images()), images)
    assert torch.equal(model.encode_texts(TEXTS), texts)
    model.batch_size = 2  # batching must not change a row
    torch.testing.assert_close(model.encode_images(_images()), images)
    torch.testing.assert_close(model.encode_texts(TEXTS), texts)


def test_clip_embeddings_equal_the_transformers_forward_pass(saved) -> None:
    directory = saved("clip")
    model = load_hf(str(directory), device="cpu")
    reference = transformers.CLIPModel.from_pretrained(directory).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(directory)
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    with torch.no_grad():
        output = reference(
            **tokenizer(TEXTS[:2], padding=True, return_tensors="pt"),
            **processor(images=_images(), return_tensors="pt"),
        )
    torch.testing.assert_close(model.encode_images(_images()), output.image_embeds)
    torch.testing.assert_close(model.encode_texts(TEXTS[:2]), output.text_embeds)


def test_siglip2_embeds_an_image_alike_alone_and_among_other_aspect_ratios(saved) -> None:
    model = load_hf(str(saved("siglip2")), device="cpu")
    images = _images()
    together = model.encode_images(images)
    for index, image in enumerate(images):
        torch.testing.assert_close(model.encode_images([image])[0], together[index])


@pytest.mark.parametrize("kind", ["dinov2", "dinov2_with_registers"])
def test_image_only_models_embed_the_cls_token_and_refuse_texts(saved, kind: str) -> None:
    directory = saved(kind)
    model = load_hf(str(directory), device="cpu")
    assert not model.supports_text and model.dim == TINY["hidden_size"]
    images = model.encode_images(_images())
    _assert_unit_rows(images, 3, model.dim)
    assert torch.equal(model.encode_images(_images()), images)
    reference = transformers.AutoModel.from_pretrained(directory).eval()
    pixels = transformers.AutoImageProcessor.from_pretrained(directory)(images=_images(), return_tensors="pt")
    with torch.no_grad():
        cls = reference(**pixels).last_hidden_state[:, 0]
    torch.testing.assert_close(images, torch.nn.functional.normalize(cls, dim=-1))
    with pytest.raises(TextNotSupportedError, match="images only"):
        model.encode_texts(["a cat"])


def test_ids_name_the_model_and_change_with_its_weights(saved) -> None:
    first = load_hf(str(saved("dinov2", 0)), device="cpu")
    again = load_hf(str(saved("dinov2", 0)), device="cpu")
    other = load_hf(str(saved("dinov2", 1)), device="cpu")
    assert first.id.startswith(f"hf:{saved('dinov2', 0).name}@")  # the folder name: the id survives moving it
    assert first.id == again.id
    assert first.id.split("@")[1] != other.id.split("@")[1]


def test_unsupported_model_type_is_a_spec_error(tmp_path: Path) -> None:
    transformers.ViTConfig(image_size=32, patch_size=8, **TINY).save_pretrained(tmp_path)
    with pytest.raises(SpecError, match="'vit' model.*clip, siglip, siglip2, dinov2"):
        load_hf(str(tmp_path), device="cpu")


def test_missing_or_incomplete_paths_are_spec_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such directory"):
        load_foundation_model("hf:" + str(tmp_path / "missing"))
    with pytest.raises(SpecError, match="cannot load its config"):
        load_foundation_model("hf:" + str(tmp_path))  # a directory without config.json
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(SpecError, match="is a file"):
        load_foundation_model("hf:" + str(tmp_path / "weights.bin"))


def test_a_model_without_its_image_processor_is_a_spec_error(saved, tmp_path: Path) -> None:
    transformers.Dinov2Model.from_pretrained(saved("dinov2")).save_pretrained(tmp_path)
    with pytest.raises(SpecError, match="cannot load its image processor"):
        load_hf(str(tmp_path), device="cpu")


@pytest.fixture(scope="module")
def open_clip_model() -> OpenCLIPFoundationModel:
    pytest.importorskip("open_clip")
    return load_open_clip(OPEN_CLIP_ARCH, "none", device="cpu")


def test_open_clip_embeds_unit_rows(open_clip_model: OpenCLIPFoundationModel) -> None:
    assert open_clip_model.id.startswith(f"open_clip:{OPEN_CLIP_ARCH}:none@")
    assert open_clip_model.dim == 256
    images = open_clip_model.encode_images(_images())
    texts = open_clip_model.encode_texts(TEXTS)
    _assert_unit_rows(images, 3, 256)
    _assert_unit_rows(texts, 3, 256)
    assert torch.equal(open_clip_model.encode_images(_images()), images)
    assert torch.equal(open_clip_model.encode_texts(TEXTS), texts)


def test_open_clip_short_context_gives_the_full_context_embeddings(open_clip_model: OpenCLIPFoundationModel) -> None:
    """Texts run through only the positions up to the batch's last end-of-text token: the causal mask makes
    the pooled features equal to the full 77-position pass."""
    from semlens.foundation.open_clip import _short_context_exact

    assert open_clip_model.short_context
    model = open_clip_model.model
    with torch.no_grad():
        full = torch.nn.functional.normalize(model.encode_text(open_clip_model.tokenizer(TEXTS)).float(), dim=-1)
    assert (open_clip_model.encode_texts(TEXTS) - full).abs().max() < 1e-5
    causal = model.attn_mask
    try:
        model.attn_mask = torch.zeros_like(causal)  # every position sees every other: padding would count
        assert not _short_context_exact(model, open_clip_model.tokenizer)
    finally:
        model.attn_mask = causal


@pytest.mark.parametrize("backend", ["clip", "siglip2", "open_clip"])
def test_worker_side_preprocessing_pickles_without_weights_and_embeds_as_encode_images(
    saved, open_clip_model, backend
) -> None:
    """The build's data-loader workers run ``image_preprocessor`` (pickled to them where processes spawn);
    embedding its batch must give what ``encode_images`` gives."""
    model = open_clip_model if backend == "open_clip" else load_foundation_model(f"hf:{saved(backend)}", device="cpu")
    preprocessor = pickle.loads(pickle.dumps(model.image_preprocessor))
    weights = sum(tensor.numel() * tensor.element_size() for tensor in model.model.state_dict().values())
    assert len(pickle.dumps(model.image_preprocessor)) < weights / 4
    images = [image.convert("RGB") for image in _images()]
    assert torch.equal(model.embed_pixels(preprocessor(images)), model.encode_images(images))


def test_open_clip_loads_a_weights_file_and_a_local_dir(open_clip_model, tmp_path: Path) -> None:
    import open_clip
    from safetensors.torch import save_file

    weights = tmp_path / "open_clip_model.safetensors"
    state = {name: value.contiguous() for name, value in open_clip_model.model.state_dict().items()}
    trained = {name: value * 1.01 if value.is_floating_point() else value for name, value in state.items()}  # not the random ones
    save_file(trained, weights)
    (tmp_path / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": open_clip.get_model_config(OPEN_CLIP_ARCH), "preprocess_cfg": {}})
    )
    from_file = load_foundation_model(f"open_clip:{OPEN_CLIP_ARCH}:{weights}", device="cpu")
    from_dir = load_foundation_model(f"open_clip:local-dir:{tmp_path}", device="cpu")
    assert from_file.id.split("@")[1] == from_dir.id.split("@")[1] != open_clip_model.id.split("@")[1]
    name = next(name for name, value in trained.items() if value.is_floating_point())
    assert torch.equal(from_file.model.state_dict()[name], trained[name])
    torch.testing.assert_close(from_file.encode_images(_images()), from_dir.encode_images(_images()))
    again = load_open_clip(OPEN_CLIP_ARCH, "none", device="cpu")  # random weights: the same in every process
    assert again.id == open_clip_model.id


def test_open_clip_spec_errors_name_the_valid_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("open_clip")
    with pytest.raises(SpecError, match="unknown open_clip architecture 'ViT-Nope'.*ViT-B-32.*list_models"):
        load_foundation_model("open_clip:ViT-Nope:none")
    with pytest.raises(SpecError, match="neither a pretrained tag.*openai"):
        load_foundation_model("open_clip:ViT-B-32:no-such-tag")
    monkeypatch.setitem(sys.modules, "open_clip", None)  # makes `import open_clip` fail
    with pytest.raises(SpecError, match=r"pip install 'semlens\[open_clip\]'"):
        load_foundation_model(f"open_clip:{OPEN_CLIP_ARCH}:none")


def test_open_clips_transformer_towers_run_in_bfloat16_on_a_gpu_and_its_cnns_in_float16(monkeypatch: pytest.MonkeyPatch) -> None:
    """On open_clip's own architectures (random weights): its ResNet keeps float16 with its one attention pool, while
    MobileCLIP-B (a ViT behind a convolutional stem) and MobileCLIP2-S0 (a CNN whose last stages attend) take
    bfloat16, the range their transformer blocks need; names of attention layers are what the rule reads."""
    open_clip = pytest.importorskip("open_clip")
    from semlens._util import devices

    monkeypatch.setattr(devices.torch.cuda, "is_bf16_supported", lambda: True)
    cuda = torch.device("cuda")
    chosen = {arch: devices.inference_dtype(cuda, open_clip.create_model(arch, pretrained=None).visual) for arch in ("RN50", "MobileCLIP-B", "MobileCLIP2-S0")}
    assert chosen == {"RN50": torch.float16, "MobileCLIP-B": torch.bfloat16, "MobileCLIP2-S0": torch.bfloat16}
