"""Foundation models as a notebook holds them from their own library: an open_clip model with its preprocess and
tokenizer, a transformers CLIP with its processor (DINOv2 with its image processor). A Lens built from one records
its weights' fingerprint, takes it back on Lens.open and refuses other weights, as it does the other objects."""

from __future__ import annotations

import pytest
import torch
from tiny_models import TINY_PREPROCESSING, TinyCNN, colour_images

from semlens import Lens, SemlensError, build_lens, load_foundation_model
from semlens._util.errors import StaleLensError
from semlens.foundation import from_open_clip, from_transformers

transformers = pytest.importorskip("transformers")

LAYERS = ["features.3"]
SETTINGS = dict(preprocessing=TINY_PREPROCESSING, layers=LAYERS, k=3, progress=False, workers=0)


def tiny_open_clip(seed: int) -> tuple:
    """What ``open_clip.create_model_and_transforms`` and ``get_tokenizer`` give, for a tiny seeded ViT CLIP."""
    open_clip = pytest.importorskip("open_clip")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = open_clip.CLIP(
            embed_dim=16,
            vision_cfg=open_clip.model.CLIPVisionCfg(image_size=32, patch_size=8, width=32, layers=1, head_width=16),
            text_cfg=open_clip.model.CLIPTextCfg(context_length=16, width=32, heads=2, layers=1),
        )
    return model, open_clip.image_transform(32, is_train=False), open_clip.tokenizer.SimpleTokenizer(context_length=16)


def tiny_transformers_clip(directory) -> tuple:
    """What ``CLIPModel.from_pretrained`` and ``AutoProcessor.from_pretrained`` give."""
    return transformers.CLIPModel.from_pretrained(directory), transformers.AutoProcessor.from_pretrained(directory)


@pytest.fixture(scope="module")
def images():
    return [image for image, _ in colour_images(12)]


@pytest.mark.parametrize("library", ["open_clip", "transformers"])
def test_a_lens_built_from_a_library_model_takes_it_back_and_refuses_other_weights(library, tiny_clip_dir, images, tmp_path) -> None:
    if library == "open_clip":
        held, other = tiny_open_clip(0), tiny_open_clip(1)
    else:
        held = tiny_transformers_clip(tiny_clip_dir)
        other = (transformers.CLIPModel(held[0].config), held[1])  # the same architecture, fresh random weights
    out = tmp_path / "held.lens"
    lens = build_lens(model=TinyCNN(), data=images, foundation=held, out=out, **SETTINGS)
    recorded = lens.manifest["foundation"]
    assert recorded["spec"] == ("memory:OpenCLIPFoundationModel" if library == "open_clip" else "memory:HFFoundationModel")
    assert recorded["id"] == load_foundation_model(held).id and "@" in recorded["id"]
    assert len(lens.search("red", top=2)) == 2  # the returned Lens holds the model

    again = Lens.open(out, foundation=held)  # the objects as the notebook holds them, given back
    assert [hit.unit for hit in again.search("red", top=2)] == [hit.unit for hit in lens.search("red", top=2)]
    with pytest.raises(SemlensError, match="which is not the one this Lens was embedded with"):
        Lens.open(out, foundation=other).search("red")
    with pytest.raises(StaleLensError, match="foundation_id"):
        build_lens(model=TinyCNN(), data=images, foundation=other, out=out, **SETTINGS)


def test_a_transformers_model_from_a_folder_has_the_id_its_hf_spec_gives(tiny_clip_dir) -> None:
    """Loaded with from_pretrained or named by the spec, the same weights make the same foundation model: one code path."""
    held = from_transformers(*tiny_transformers_clip(tiny_clip_dir))
    spec = load_foundation_model(f"hf:{tiny_clip_dir}", device="cpu")
    assert held.id == spec.id and held.dim == spec.dim
    texts = ["red", "a blue square"]
    torch.testing.assert_close(held.encode_texts(texts), spec.encode_texts(texts))
    images = [image for image, _ in colour_images(3)]
    torch.testing.assert_close(held.encode_images(images), spec.encode_images(images))


def test_an_image_only_transformers_model_embeds_images_and_no_text() -> None:
    config = transformers.Dinov2Config(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    processor = transformers.BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    dino = from_transformers(transformers.Dinov2Model(config), processor)
    assert not dino.supports_text and dino.id.startswith("hf:dinov2@")
    assert dino.encode_images([image for image, _ in colour_images(2)]).shape == (2, 32)


def test_an_open_clip_model_is_used_where_and_in_the_dtype_it_is_held() -> None:
    model, preprocess, tokenizer = tiny_open_clip(0)
    model = model.to(torch.bfloat16)
    held = from_open_clip(model, preprocess, tokenizer)
    assert held.dtype == torch.bfloat16 and held.device.type == "cpu" and held.id.startswith("open_clip:CLIP@")
    assert held.encode_texts(["red"]).dtype == torch.float32  # unit rows, as every foundation model gives


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (lambda clip: (clip[0], clip[1].image_processor), "give its tokenizer with its image processor"),
        (lambda clip: clip[0], r"foundation=a CLIPModel is not a foundation model semlens can use: .*\(model, processor\)"),
        (lambda clip: (TinyCNN(), clip[1]), r"foundation=\(TinyCNN, CLIPProcessor\) is not a foundation model"),
    ],
)
def test_a_library_model_without_what_it_needs_is_refused_in_one_line(given, message, tiny_clip_dir, images) -> None:
    with pytest.raises(SemlensError, match=message) as caught:
        build_lens(model=TinyCNN(), data=images, foundation=given(tiny_transformers_clip(tiny_clip_dir)), out="never.lens", **SETTINGS)
    assert "\n" not in str(caught.value)


def test_an_extra_foundation_model_given_as_an_object_makes_a_space_of_its_own(tiny_clip_dir, images, tmp_path) -> None:
    held = tiny_transformers_clip(tiny_clip_dir)
    extra = tiny_open_clip(0)
    out = tmp_path / "two.lens"
    lens = build_lens(model=TinyCNN(), data=images, foundation=held, extra_foundations=[extra], out=out, **SETTINGS)
    extra_id = load_foundation_model(extra).id
    (space,) = [space for space in lens.embedding.spaces if not space.default]
    assert space.spec == "memory:OpenCLIPFoundationModel" and space.foundation_id == extra_id and space.complete
    assert space.name == extra_id.replace(":", "-").replace("@", "-")  # named by its id: two objects of a class, two spaces
    assert len(lens.in_space(space.name).search("red", top=2)) == 2  # the returned Lens holds it

    with pytest.raises(SemlensError, match=r"space open_clip-CLIP-.* passed in memory.*extra_foundations=\[MODEL\]"):
        Lens.open(out, foundation=held).in_space(space.name).search("red")
    again = Lens.open(out, foundation=held, extra_foundations=[extra])
    assert len(again.in_space(space.name).search("red", top=2)) == 2
    with pytest.raises(SemlensError, match="passed in memory"):  # other weights are not its model
        Lens.open(out, foundation=held, extra_foundations=[tiny_open_clip(1)]).in_space(space.name).search("red")
    with pytest.raises(SemlensError, match="given twice"):
        build_lens(model=TinyCNN(), data=images, foundation=held, extra_foundations=[extra, from_open_clip(*extra)], out=out, **SETTINGS)
