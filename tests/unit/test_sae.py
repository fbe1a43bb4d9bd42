"""Sparse autoencoders: the three architectures on hand-computed examples, SAELens directories (and the
settings semlens refuses), LRP through an SAE (conservation, a planted feature) and pruning in SAE space."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from semlens._util.errors import LayerError
from semlens.model.sae import SparseAutoencoder, has_decoder, sae_fingerprint
from semlens.model.units import LayerSpec

D_IN, D_SAE = 4, 6


def saelens_weights(architecture: str, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        "W_enc": torch.randn(D_IN, D_SAE, generator=generator),
        "W_dec": torch.randn(D_SAE, D_IN, generator=generator),
        "b_enc": torch.randn(D_SAE, generator=generator),
        "b_dec": torch.randn(D_IN, generator=generator),
    }
    if architecture == "jumprelu":
        tensors["threshold"] = torch.rand(D_SAE, generator=generator)
    return tensors


def write_saelens(folder, tensors: dict[str, torch.Tensor], **config) -> str:
    """A SAELens-style directory: cfg.json and sae_weights.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    base = {"d_in": D_IN, "d_sae": D_SAE, "apply_b_dec_to_input": True, "normalize_activations": "none", "hook_name": "blocks.1.hook_resid_post"}
    (folder / "cfg.json").write_text(json.dumps({**base, **config}))
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(folder / "sae_weights.safetensors"))
    return str(folder)


# -- architectures --------------------------------------------------------------------------------


def identity_sae(architecture: str, **options) -> SparseAutoencoder:
    """An SAE whose pre-activations are the input itself (W_enc = I, no biases)."""
    eye = torch.eye(5)
    return SparseAutoencoder(eye, torch.zeros(5), None, options.pop("threshold", None), eye, "", architecture, **options)


def test_topk_keeps_the_k_largest_pre_activations_per_position_through_relu():
    x = torch.tensor([[3.0, -1.0, 5.0, 2.0, 0.5], [-4.0, -3.0, -2.0, 1.0, -1.0]])
    codes = identity_sae("topk", k=2).encode(x)
    # row 0: the two largest are 5 and 3; row 1: 1 and -1, and ReLU turns -1 into 0
    assert codes.tolist() == [[3.0, 0.0, 5.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0]]


def test_jumprelu_keeps_pre_activations_above_the_threshold_and_relu_the_threshold():
    x = torch.tensor([[0.25, 0.75, 1.5, -0.25, 0.125]])
    threshold = torch.tensor([0.5, 0.5, 2.0, -1.0, -1.0])  # a negative threshold acts as 0 (SAELens: threshold.relu())
    codes = identity_sae("jumprelu", threshold=threshold).encode(x)
    assert codes.tolist() == [[0.0, 0.75, 0.0, 0.0, 0.125]]


def test_standard_is_relu():
    x = torch.tensor([[0.25, -0.75, 1.5, -0.25, 0.0]])
    assert identity_sae("standard").encode(x).tolist() == [[0.25, 0.0, 1.5, 0.0, 0.0]]


# -- SAELens directories --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "architecture,config",
    [
        ("standard", {"architecture": "standard", "activation_fn_str": "relu"}),
        ("jumprelu", {"architecture": "jumprelu", "activation_fn_str": "relu"}),
        ("topk", {"architecture": "topk", "k": 2}),  # SAELens 6
        ("topk", {"architecture": "standard", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 2}}),  # older
    ],
)
def test_saelens_directory_round_trip(tmp_path, architecture, config):
    tensors = saelens_weights(architecture)
    folder = write_saelens(tmp_path / "sae", tensors, **config)
    x = torch.randn(7, D_IN)
    pre = (x - tensors["b_dec"]) @ tensors["W_enc"] + tensors["b_enc"]
    if architecture == "standard":
        expected = F.relu(pre)
    elif architecture == "jumprelu":
        expected = torch.where(pre > tensors["threshold"], pre, torch.zeros_like(pre))
    else:
        top = pre.topk(2, dim=1).indices
        expected = torch.zeros_like(pre).scatter(1, top, pre.gather(1, top).relu())
    for path in (folder, f"{folder}/cfg.json"):
        sae = SparseAutoencoder.load(path, D_IN)
        assert (sae.architecture, sae.d_sae, sae.k) == (architecture, D_SAE, 2 if architecture == "topk" else None)
        assert sae.hook_name == "blocks.1.hook_resid_post"
        torch.testing.assert_close(sae.encode(x), expected)
        torch.testing.assert_close(sae.decode(sae.encode(x)), expected @ tensors["W_dec"] + tensors["b_dec"])
    assert (expected > 0).sum(dim=1).max() <= (2 if architecture == "topk" else D_SAE)
    assert has_decoder(folder)


def test_saelens_topk_rescaled_by_decoder_norm_is_folded_exactly(tmp_path):
    tensors = saelens_weights("topk", 3)
    folder = write_saelens(tmp_path / "sae", tensors, architecture="topk", k=3, rescale_acts_by_decoder_norm=True)
    sae = SparseAutoencoder.load(folder, D_IN)
    x = torch.randn(5, D_IN)
    norms = tensors["W_dec"].norm(dim=1)
    pre = ((x - tensors["b_dec"]) @ tensors["W_enc"] + tensors["b_enc"]) * norms
    top = pre.topk(3, dim=1).indices
    acts = torch.zeros_like(pre).scatter(1, top, pre.gather(1, top).relu())
    torch.testing.assert_close(sae.encode(x), acts)
    torch.testing.assert_close(sae.decode(sae.encode(x)), (acts / norms) @ tensors["W_dec"] + tensors["b_dec"])


def test_saelens_log_threshold_and_b_dec_not_applied_to_the_input(tmp_path):
    tensors = saelens_weights("standard", 4)
    threshold = torch.rand(D_SAE)
    folder = write_saelens(tmp_path / "sae", {**tensors, "log_threshold": threshold.log()}, architecture="jumprelu", apply_b_dec_to_input=False)
    x = torch.randn(6, D_IN)
    pre = x @ tensors["W_enc"] + tensors["b_enc"]
    torch.testing.assert_close(SparseAutoencoder.load(folder, D_IN).encode(x), torch.where(pre > threshold, pre, torch.zeros_like(pre)))


@pytest.mark.parametrize(
    "config,fragments",
    [
        ({"normalize_activations": "expected_average_only_in"}, ["normalize_activations='expected_average_only_in'", "supported: 'none'"]),
        ({"normalize_activations": "layer_norm"}, ["normalize_activations='layer_norm'"]),
        ({"reshape_activations": "hook_z"}, ["reshape_activations='hook_z'"]),
        ({"finetuning_scaling_factor": True}, ["finetuning_scaling_factor=True"]),
        ({"architecture": "gated"}, ["architecture='gated'", "standard, jumprelu, topk"]),
        ({"activation_fn_str": "tanh-relu"}, ["activation_fn_str='tanh-relu'", "standard, jumprelu, topk"]),
        ({"architecture": "topk"}, ["integer k in 1..d_sae", "None"]),
        ({"architecture": "topk", "k": 99}, ["integer k in 1..d_sae", "99"]),
    ],
)
def test_unsupported_saelens_settings_are_refused(tmp_path, config, fragments):
    folder = write_saelens(tmp_path / "sae", saelens_weights("standard"), **config)
    with pytest.raises(LayerError) as error:
        SparseAutoencoder.load(folder, D_IN)
    assert all(fragment in str(error.value) for fragment in fragments), str(error.value)


def test_saelens_weights_that_contradict_the_config_or_the_layer(tmp_path):
    folder = write_saelens(tmp_path / "a", saelens_weights("standard"), d_sae=D_SAE + 1)
    with pytest.raises(LayerError, match="do not match cfg.json's d_in=4, d_sae=7"):
        SparseAutoencoder.load(folder, D_IN)
    folder = write_saelens(tmp_path / "b", saelens_weights("standard"))
    with pytest.raises(LayerError, match="does not fit the layer's 5 channels"):
        SparseAutoencoder.load(folder, 5)
    tensors = saelens_weights("standard")
    del tensors["b_dec"]
    with pytest.raises(LayerError, match="lack b_dec"):
        SparseAutoencoder.load(write_saelens(tmp_path / "c", tensors), D_IN)


def test_fingerprint_covers_the_config_and_the_weights(tmp_path):
    folder = write_saelens(tmp_path / "sae", saelens_weights("topk"), architecture="topk", k=2)
    spec = LayerSpec.parse(f"conv:sae={folder}")
    before = spec.fingerprint_fields()["sae"]
    assert sae_fingerprint(f"{folder}/cfg.json") == before
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps({"d_in": D_IN, "d_sae": D_SAE, "architecture": "topk", "k": 3}))
    after_config = spec.fingerprint_fields()["sae"]
    write_saelens(tmp_path / "sae", saelens_weights("topk", 1), architecture="topk", k=3)
    assert len({before, after_config, spec.fingerprint_fields()["sae"]}) == 3
    (tmp_path / "sae" / "sae_weights.safetensors").unlink()
    with pytest.raises(LayerError, match="sae_weights.safetensors is missing"):
        spec.fingerprint_fields()


# -- pruning in SAE space --------------------------------------------------------------------------


@pytest.mark.parametrize("architecture,config", [("standard", {}), ("jumprelu", {"architecture": "jumprelu"}), ("topk", {"architecture": "topk", "k": 3})])
def test_pruning_in_sae_space_is_x_minus_the_features_decoded_share(tmp_path, architecture, config):
    from semlens.interventions.effects import pruned

    tensors = saelens_weights(architecture, 7)
    folder = write_saelens(tmp_path / "sae", tensors, **config)
    module = nn.Sequential(nn.Conv2d(3, D_IN, 1))
    x = torch.randn(2, 3, 4, 4)
    plain = module(x).detach()
    sae = SparseAutoencoder.load(folder, D_IN)
    channels_last = plain.movedim(1, -1)
    codes = sae.encode(channels_last)
    dropped = int(codes.flatten(0, 2).abs().sum(0).argmax())  # a feature that fires
    with pruned(SimpleNamespace(module=module), {"0": [dropped]}, {"0": folder}):
        after = module(x).detach().movedim(1, -1)
    torch.testing.assert_close(after, channels_last - codes[..., dropped, None] * tensors["W_dec"][dropped])
    # the same as decoding the codes without that feature and adding the SAE's error back
    kept = codes.clone()
    kept[..., dropped] = 0
    torch.testing.assert_close(after, sae.decode(kept) + (channels_last - sae.decode(codes)), rtol=1e-5, atol=1e-5)
