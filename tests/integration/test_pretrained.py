"""Real architectures: the bundled ImageNet EfficientNet-Lite0 on natural photos, and the optional
``torchvision:`` / ``timm:`` model specs on random weights (no download is possible here)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from semlens import LayerSpec, Lens, list_layers, load_model
from semlens._util.errors import SpecError
from semlens.cli import app
from semlens.data.photos import write_photo_folder
from semlens.model.imagenet import find_imagenet_class
from semlens.pipeline.collect import collect_topk, iterate_batches


@pytest.mark.slow
def test_efficientnet_lite0_with_conse_finds_the_cat(tmp_path) -> None:
    photos = write_photo_folder(tmp_path / "photos", per_photo=15)
    assert len(list(photos.rglob("*.jpg"))) >= 200
    out = tmp_path / "effnet.lens"
    result = CliRunner().invoke(
        app,
        [
            "run", "--model", "zoo:efficientnet-lite0", "--layer", "_blocks.15", "--layer", "_fc",
            "--data", f"folder:{photos}", "--foundation", "conse", "-k", "10", "--out", str(out), "--json", "--no-class-relevance",
            "--crop", "activation",  # 13,200 CRP pairs at 224 px would take most of CI on 2 cores
        ],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert {layer["name"]: layer["units"] for layer in summary["layers"]} == {"_blocks.15": 320, "_fc": 1000}
    lens = Lens.open(out)
    tabby = find_imagenet_class("tabby cat")
    sources = [example.source for example in lens.examples.concept_examples(f"_fc/{tabby}")]
    assert "cat/cat-000.jpg" in sources  # the whole cat photo
    assert all(source.startswith("cat/") for source in sources[:5])
    # searching the Lens for "cat" finds units whose examples are cat photos, an output unit of a cat class among
    # the first ten (near ties with _blocks.15 units whose share boxes hold cats)
    search = CliRunner().invoke(app, ["search", str(out), "cat", "--top", "10", "--json"])
    assert search.exit_code == 0, search.output
    hits = json.loads(search.stdout)
    assert all(sum(source.startswith("cat/") for source in hit["examples"]) >= 2 for hit in hits[:5])
    cat_classes = {f"_fc/{find_imagenet_class(name)}" for name in ("tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat")}
    assert cat_classes & {hit["unit"] for hit in hits}


@pytest.mark.parametrize(
    "spec,layer,units",
    [("torchvision:resnet18:none", "layer4.1", 512), ("timm:resnet18:none", "layer4.1", 512), ("timm:vit_tiny_patch16_224:none", "blocks.11", 192)],
)
def test_optional_model_specs_load_and_collect(spec, layer, units) -> None:
    model = load_model(spec)
    assert model.preprocessing.input_size == 224
    infos = {info.name: info for info in list_layers(model.module, model.example_input())}
    assert infos[layer].units == units
    data = torch.randn(6, 3, 224, 224)
    topk = collect_topk(model.module, [LayerSpec.parse(layer)], iterate_batches(data, 3), k=2)[layer]
    assert topk.scores.shape == (units, 2)
    if spec.startswith("timm:vit"):
        assert topk.maps.shape[2:] == (14, 14)  # CLS token dropped, 14x14 patch grid kept for cropping


def test_a_transformers_classifier_loads_from_its_folder_and_gets_relevance_crops(tmp_path) -> None:
    """``hf:FOLDER``: a ViT classifier saved with save_pretrained (safetensors); its processor's size, mean and
    std and its labels are read; its logits are what semlens explains, relevance conserved; a folder holding
    only a pickled checkpoint is refused (loading one could run code)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from semlens.relevance.lrp import RelevanceModel

    torch.manual_seed(0)
    labels = {0: "red", 1: "green", 2: "blue"}
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        num_labels=3, id2label=labels, label2id={name: index for index, name in labels.items()},
    )  # fmt: skip
    classifier = ViTForImageClassification(config).eval()
    classifier.save_pretrained(tmp_path / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.25] * 3).save_pretrained(tmp_path / "vit")
    model = load_model(f"hf:{tmp_path / 'vit'}")
    assert model.classes == ["red", "green", "blue"]
    assert (model.preprocessing.input_size, model.preprocessing.mean, model.preprocessing.std) == (32, (0.5,) * 3, (0.25,) * 3)
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.module(pixels), classifier(pixel_values=pixels).logits)
    blocks = [info.name for info in list_layers(model.module, model.example_input()) if info.name.startswith("classifier.vit.")]
    assert len(blocks) > 10  # named under classifier.: the model's own names follow
    assert RelevanceModel(model.module, pixels).check().supported
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (pickled / name).write_bytes((tmp_path / "vit" / name).read_bytes())
    torch.save(classifier.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(SpecError, match="cannot load its weights"):
        load_model(f"hf:{pickled}")


def test_random_weights_are_the_same_every_time_and_leave_the_global_generator_alone() -> None:
    state = torch.random.get_rng_state()
    first, second = load_model("timm:resnet18:none"), load_model("torchvision:resnet18:none")
    assert load_model("timm:resnet18:none").fingerprint == first.fingerprint  # a build resumes, a Lens finds its model
    assert load_model("torchvision:resnet18:none").fingerprint == second.fingerprint
    assert torch.equal(torch.random.get_rng_state(), state)
    assert first.classes == second.classes and len(second.classes) == 1000  # ImageNet's architecture names its outputs


@pytest.mark.parametrize("spec, offline", [("torchvision:resnet18", "torchvision:resnet18:none"), ("timm:resnet18", "timm:resnet18:none")])
def test_published_weights_without_the_network_say_what_works_offline(spec, offline, monkeypatch) -> None:
    import urllib.request

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)  # this machine has none anyway; any other too, for the test
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SpecError, match=f"cannot fetch the weights of {spec}.*offline, give a weights file.*{offline}"):
        load_model(spec)


@pytest.mark.parametrize("library, valid", [("torchvision", "DEFAULT, none, a weights enum name or an existing file"), ("timm", "pretrained, none or an existing file")])
def test_a_weights_file_that_is_missing_or_does_not_fit_is_named(library, valid, tmp_path) -> None:
    with pytest.raises(SpecError, match=f"weights file '{tmp_path}/nope.safetensors' not found; WEIGHTS is {valid}"):
        load_model(f"{library}:resnet18:{tmp_path}/nope.safetensors")
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.zeros(3, 3)}, str(tmp_path / "other.safetensors"))  # another model's weights
    with pytest.raises(SpecError, match="the weights in .*other.safetensors do not fit the model"):
        load_model(f"{library}:resnet18:{tmp_path}/other.safetensors")
