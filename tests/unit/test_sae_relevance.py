"""LRP through a sparse autoencoder on a tiny CNN: conservation (features + error = relevance at the layer),
layers below untouched, a planted feature that gets exactly its channel's relevance, CRP conditioned on
features, and class relevance, audit and attribution graph of a Lens built with an SAE layer."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import TinyCNN

from semlens import BuildConfig, build_lens
from semlens.model.sae import SparseAutoencoder
from semlens.relevance.graph import conditional_relevance
from semlens.relevance.lrp import RelevanceModel, _bias_free_copy, _one_hot_logit, _per_unit, unit_relevance
from semlens.relevance.sae import unit_tensors

LAYER, LOWER, CHANNELS = "features.4", "features.1", 6  # the second conv's ReLU and the first's


def random_sae(architecture: str, d_sae: int = 10, seed: int = 0) -> SparseAutoencoder:
    generator = torch.Generator().manual_seed(seed)
    weight, decoder = torch.randn(CHANNELS, d_sae, generator=generator), torch.randn(d_sae, CHANNELS, generator=generator)
    bias, decoder_bias = 0.1 * torch.randn(d_sae, generator=generator), 0.1 * torch.randn(CHANNELS, generator=generator)
    k = 3 if architecture == "topk" else None
    return SparseAutoencoder(weight, bias, decoder_bias, None, decoder, "random", architecture, k)


def planted_sae(feature: int = 3, channel: int = 2, d_sae: int = 8) -> SparseAutoencoder:
    """Feature ``feature`` reads and writes exactly ``channel``; every other feature reads and writes other channels."""
    generator = torch.Generator().manual_seed(1)
    weight, decoder = torch.rand(CHANNELS, d_sae, generator=generator), torch.rand(d_sae, CHANNELS, generator=generator)
    weight[channel], decoder[:, channel] = 0.0, 0.0
    weight[:, feature], decoder[feature] = 0.0, 0.0
    weight[channel, feature], decoder[feature, channel] = 1.0, 1.0
    return SparseAutoencoder(weight, torch.zeros(d_sae), None, None, decoder, "planted", "standard")


@pytest.fixture(scope="module")
def model_and_inputs():
    torch.manual_seed(0)
    return TinyCNN().eval(), torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])


@pytest.mark.parametrize("architecture", ["standard", "topk"])
def test_relevance_is_conserved_through_the_sae_and_layers_below_are_untouched(model_and_inputs, architecture):
    model, inputs, targets = model_and_inputs
    sae = random_sae(architecture)
    with RelevanceModel(model, inputs).attributing() as modified:
        logits, plain = unit_relevance(modified, inputs, targets, [LAYER, LOWER])
        inputs_grad = inputs.clone().requires_grad_(True)
        with unit_tensors(modified, [LAYER, LOWER], None, {LAYER: sae}) as reader, torch.enable_grad():
            outputs = modified(inputs_grad)
        grads = torch.autograd.grad(outputs, [reader.units[LAYER], reader.units[LOWER]], _one_hot_logit(outputs, targets))
    features, lower = _per_unit(grads[0]), _per_unit(grads[1])
    torch.testing.assert_close(outputs.detach(), logits)  # the forward pass is unchanged
    assert features.shape == (4, sae.d_sae)
    (error,) = reader.errors[LAYER]
    torch.testing.assert_close(features.sum(dim=1) + error, plain[LAYER].sum(dim=1), rtol=1e-4, atol=1e-5)
    assert error.abs().max() > 1e-3 and features.abs().max() > 1e-3  # both shares are real
    torch.testing.assert_close(lower, plain[LOWER], rtol=1e-4, atol=1e-5)


def test_a_planted_feature_gets_the_relevance_its_channel_gets_without_the_sae(model_and_inputs):
    model, inputs, targets = model_and_inputs
    with RelevanceModel(model, inputs).attributing() as modified:
        _, plain = unit_relevance(modified, inputs, targets, [LAYER])
        channel = int(plain[LAYER].abs().sum(dim=0).argmax())
        _, through = unit_relevance(modified, inputs, targets, [LAYER], None, {LAYER: planted_sae(3, channel)})
    assert plain[LAYER][:, channel].abs().min() > 1e-3
    torch.testing.assert_close(through[LAYER][:, 3], plain[LAYER][:, channel], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(through[LAYER][:, 3], plain[LAYER][:, (channel + 1) % CHANNELS])


def test_crp_conditioned_on_features_sends_down_only_their_shares(model_and_inputs):
    model, inputs, targets = model_and_inputs
    bias_free = _bias_free_copy(model)  # so that the lower layer conserves what reaches it
    sae = random_sae("standard", seed=2)
    saes = {LAYER: sae}
    keep = torch.zeros(sae.d_sae, dtype=torch.bool)
    keep[[1, 4, 6]] = True
    with RelevanceModel(bias_free, inputs).attributing() as modified:
        _, plain = unit_relevance(modified, inputs, targets, [LAYER], None, saes)
        kept = conditional_relevance(modified, inputs, targets, LAYER, LOWER, keep, saes)
        rest = conditional_relevance(modified, inputs, targets, LAYER, LOWER, ~keep, saes)
        every = conditional_relevance(modified, inputs, targets, LAYER, LOWER, torch.ones_like(keep), saes)
        none = conditional_relevance(modified, inputs, targets, LAYER, LOWER, torch.zeros_like(keep), saes)
    torch.testing.assert_close(kept.sum(dim=1), plain[LAYER][:, keep].sum(dim=1), rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(kept + rest, every, rtol=1e-4, atol=1e-6)
    assert none.abs().max() == 0


def write_saelens(folder, sae: SparseAutoencoder, architecture: str, k: int | None = None) -> str:
    folder.mkdir()
    config = {"d_in": CHANNELS, "d_sae": sae.d_sae, "architecture": architecture, "apply_b_dec_to_input": True, "normalize_activations": "none"}
    (folder / "cfg.json").write_text(json.dumps(config | ({"k": k} if k else {})))
    tensors = {"W_enc": sae.weight, "b_enc": sae.bias, "W_dec": sae.decoder, "b_dec": torch.zeros(CHANNELS)}
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(folder / "sae_weights.safetensors"))
    return str(folder)


def test_a_lens_with_an_sae_layer_has_class_relevance_audits_and_graphs(tmp_path, colour_folder, tiny_clip_dir):
    sae = planted_sae()
    folder = write_saelens(tmp_path / "planted", sae, "topk", k=4)
    config = BuildConfig(
        model="py:tiny_models:tiny_cnn", layers=["features.1", f"{LAYER}:sae={folder}"], data=f"folder:{colour_folder}",
        foundation=f"hf:{tiny_clip_dir}", k=3, workers=0,
    )  # fmt: skip
    lens = build_lens(config, tmp_path / "sae.lens", progress=False)
    assert lens.manifest["layers"][LAYER]["sae"] == {
        "architecture": "topk", "d_in": CHANNELS, "d_sae": 8, "k": 4, "decoder": True, "hook_name": None, "format": "saelens"
    }  # fmt: skip
    relevance = lens.class_relevance(LAYER)
    assert relevance is not None and relevance["mean_share"].shape == (8, 3)
    assert relevance["max_share"][3].nan_to_num(0).abs().max() > 0  # the planted feature carries relevance
    lens.label()
    audit = lens.audit("red", ["red"], ["stripes"], cut=0.0, layers=[LAYER])
    assert audit.units and all(unit.unit.startswith(f"{LAYER}/") for unit in audit.units)
    graph = lens.attribution_graph("red", ["features.1", LAYER], cut=0.0)
    assert {node.layer for node in graph.nodes} == {"features.1", LAYER}
    assert graph.edges
