"""LRP through a sparse autoencoder on a tiny CNN: conservation (features + error = relevance at the layer),
layers below untouched, a planted feature that gets exactly its channel's relevance, CRP conditioned on
features, and class relevance, audit and attribution graph of a Lens built with an SAE layer."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import TinyCNN

from semlens import BuildConfig, Lens, build_lens
from semlens.model.sae import SparseAutoencoder
from semlens.relevance.graph import conditional_relevance
from semlens.relevance.lrp import (
    RelevanceModel,
    _bias_free_copy,
    _one_hot_logit,
    _per_unit,
    crp_heatmaps,
    relevance_maps,
    unit_and_error_relevance,
    unit_relevance,
)
from semlens.relevance.rules import stabilize
from semlens.relevance.sae import unit_tensors
from semlens.lens.audits import sae_error_shares

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


@pytest.mark.parametrize("focus", ["unit", "peak"])
def test_crp_of_a_planted_feature_is_the_crp_of_its_channel(model_and_inputs, focus):
    """From the whole map and from its peak alone (where the feature's code is highest: its channel's peak)."""
    model, inputs, _ = model_and_inputs
    channel, feature = 4, 3
    signs = torch.ones(len(inputs))
    with RelevanceModel(model, inputs).attributing() as modified:
        plain = crp_heatmaps(modified, inputs, LAYER, torch.full((len(inputs),), channel), signs, focus=focus)
        features = torch.tensor([feature, feature, 0, feature])
        through = crp_heatmaps(modified, inputs, LAYER, features, signs, None, planted_sae(feature, channel), focus=focus)
        other = crp_heatmaps(modified, inputs, LAYER, torch.full((len(inputs),), (channel + 1) % CHANNELS), signs, focus=focus)
    assert plain.abs().amax() > 0
    torch.testing.assert_close(through[[0, 1, 3]], plain[[0, 1, 3]])
    assert not torch.allclose(through[2], plain[2])  # row 2 explains another feature
    assert not torch.allclose(through[0], other[0])


def test_a_planted_feature_of_a_layer_read_channels_last_gets_its_channels_relevance_and_crp():
    """The SAE reads a channels-last map (N,H,W,C, a Swin stage) along its last dimension: relevance is conserved
    and the planted feature gets its channel's, in relevance and in CRP. (The model's mean over positions is a
    plain gradient, so relevance also reaches positions where the ReLU is zero; the SAE's ε rule hands each
    position ``R x / stabilize(x)``, the known answer compared with.)"""
    from tiny_models import ChannelsLastCNN

    model, inputs = ChannelsLastCNN().eval(), torch.rand(4, 3, 32, 32)
    layer, last = "mlp.1", {"mlp.1"}  # its 6 hidden channels on the last dimension
    feature, signs = 3, torch.ones(len(inputs))
    with RelevanceModel(model, inputs).attributing() as modified:
        targets = modified(inputs).argmax(dim=1)
        _, maps, units, _ = relevance_maps(modified, inputs, targets, [layer], channels_last=last)
        x = units[layer]  # N,C,H,W: the channels-second view
        expected = _per_unit(maps[layer] * x / stabilize(x, 1e-6))
        channel = int(expected.abs().sum(dim=0).argmax())
        _, through, errors = unit_and_error_relevance(modified, inputs, targets, [layer], None, {layer: random_sae("standard")}, last)
        _, planted = unit_relevance(modified, inputs, targets, [layer], None, {layer: planted_sae(feature, channel)}, last)
        channel_maps = crp_heatmaps(modified, inputs, layer, torch.full((4,), channel), signs, channels_last=True)
        feature_maps = crp_heatmaps(modified, inputs, layer, torch.full((4,), feature), signs, None, planted_sae(feature, channel), True)
    assert x.shape == (4, CHANNELS, 16, 16) and through[layer].shape == (4, 10)
    torch.testing.assert_close(through[layer].sum(dim=1) + errors[layer], expected.sum(dim=1), rtol=1e-3, atol=1e-5)
    assert expected[:, channel].abs().min() > 1e-4
    torch.testing.assert_close(planted[layer][:, feature], expected[:, channel], rtol=1e-4, atol=1e-6)
    assert channel_maps.abs().amax() > 0
    torch.testing.assert_close(feature_maps, channel_maps)


def write_saelens(folder, sae: SparseAutoencoder, architecture: str, k: int | None = None) -> str:
    folder.mkdir()
    config = {"d_in": CHANNELS, "d_sae": sae.d_sae, "architecture": architecture, "apply_b_dec_to_input": True, "normalize_activations": "none"}
    (folder / "cfg.json").write_text(json.dumps(config | ({"k": k} if k else {})))
    tensors = {"W_enc": sae.weight, "b_enc": sae.bias, "W_dec": sae.decoder, "b_dec": torch.zeros(CHANNELS)}
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(folder / "sae_weights.safetensors"))
    return str(folder)


@pytest.fixture(scope="module")
def sae_lens(tmp_path_factory, colour_folder, tiny_clip_dir):
    """A Lens of the tiny CNN with its last ReLU read through a planted TopK SAE in SAELens format."""
    root = tmp_path_factory.mktemp("sae-lens")
    folder = write_saelens(root / "planted", planted_sae(), "topk", k=4)
    config = BuildConfig(
        model="py:tiny_models:tiny_cnn", layers=["features.1", f"{LAYER}:sae={folder}"], data=f"folder:{colour_folder}",
        foundation=f"hf:{tiny_clip_dir}", k=3, workers=0,
    )  # fmt: skip
    lens = build_lens(config, root / "sae.lens", progress=False)
    lens.label()
    return lens, folder


def test_a_lens_with_an_sae_layer_has_class_relevance_audits_and_graphs(sae_lens):
    lens, _ = sae_lens
    assert lens.units.sae(LAYER) == {
        "architecture": "topk", "d_in": CHANNELS, "d_sae": 8, "k": 4, "decoder": True, "hook_name": None, "format": "saelens"
    }  # fmt: skip
    assert lens.units.sae("features.1") is None
    assert lens.manifest["layers"][LAYER]["crop"]["mode"] == "relevance"  # CRP from each feature's decoded share
    relevance = lens.arrays.class_relevance(LAYER)
    assert relevance is not None and relevance["mean_share"].shape == (8, 3)
    assert relevance["max_share"][3].nan_to_num(0).abs().max() > 0  # the planted feature carries relevance
    audit = lens.audit("red", ["red"], ["stripes"], cut=0.0, layers=[LAYER])
    assert audit.units and all(unit.unit.startswith(f"{LAYER}/") for unit in audit.units)
    graph = lens.attribution_graph("red", ["features.1", LAYER], cut=0.0)
    assert {node.layer for node in graph.nodes} == {"features.1", LAYER}
    assert graph.edges


def test_cli_shows_the_sae_and_audits_graphs_and_prunes_its_features(sae_lens, tmp_path, colour_folder):
    from typer.testing import CliRunner

    from semlens.cli import app

    lens, folder = sae_lens
    runner = CliRunner(env={"COLUMNS": "200"})
    info = runner.invoke(app, ["info", str(lens.path)])
    assert info.exit_code == 0 and "topk SAE, d_sae 8, k 4" in info.output and "LRP rule zplus" in info.output, info.output
    listed = runner.invoke(app, ["layers", "py:tiny_models:tiny_cnn", "--sae", f"{LAYER}={folder}", "--json"])
    row = next(item for item in json.loads(listed.output) if item["name"] == LAYER)
    assert row["units"] == 8 and row["sae"]["architecture"] == "topk"
    wrong = runner.invoke(app, ["layers", "py:tiny_models:tiny_cnn", "--sae", f"features.1={folder}"])
    assert wrong.exit_code != 0 and "does not fit the layer's 8 channels" in wrong.output
    audit = runner.invoke(app, ["audit", str(lens.path), "-c", "red", "--valid", "red", "--spurious", "stripes", "-l", LAYER, "--json"])
    assert audit.exit_code == 0, audit.output
    graph = runner.invoke(app, ["graph", str(lens.path), "-c", "red", "-l", "features.1", "-l", LAYER, "--cut", "0",
                                "-o", str(tmp_path / "g.html"), "--trust", "--json"])  # fmt: skip
    assert graph.exit_code == 0, graph.output
    assert any(node["layer"] == LAYER for node in json.loads(graph.output)["nodes"])
    pruned = runner.invoke(app, ["prune", str(lens.path), "-u", f"{LAYER}/3", "-d", f"folder:{colour_folder}", "--trust", "--json"])
    assert pruned.exit_code == 0, pruned.output
    assert json.loads(pruned.output)["pruned"] == {LAYER: [3]}


def test_the_sae_is_read_only_for_a_trusted_lens_and_only_while_unchanged(sae_lens, monkeypatch, tmp_path):
    from pathlib import Path

    from semlens._util.errors import SemlensError
    from semlens.store.trust import UntrustedSpecError

    lens, folder = sae_lens
    config = Path(folder) / "cfg.json"
    original = config.read_text()
    try:
        config.write_text(original.replace('"k": 4', '"k": 5'))
        with pytest.raises(SemlensError, match="not the one this Lens was built with"):
            Lens.open(lens.path, trust=True).sources.sae_files([LAYER])
    finally:
        config.write_text(original)
    assert Lens.open(lens.path, trust=True).sources.sae_files([LAYER, "features.1"]) == {LAYER: folder}
    monkeypatch.setenv("SEMLENS_CACHE", str(tmp_path / "stranger-cache"))  # a user who did not build it
    with pytest.raises(UntrustedSpecError, match="trust=True"):
        Lens.open(lens.path).sources.sae_files([LAYER])


def test_explorer_shows_that_a_layer_is_an_sae(sae_lens):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from semlens.web.app import create_app

    lens, _ = sae_lens
    client = TestClient(create_app([lens.path]))
    layers = client.get("/api/lenses/0").json()["layers"]
    assert layers[0]["sae"] is None and layers[1]["sae"]["architecture"] == "topk" and layers[1]["sae"]["k"] == 4
    unit = client.get(f"/api/lenses/0/layers/{LAYER}/units/3").json()
    assert unit["sae"]["d_sae"] == 8
    errors = lens.arrays.class_relevance(LAYER)["error_mean_share"]
    assert unit["classes"] and all(row["sae_error"] == pytest.approx(float(errors[row["index"]])) for row in unit["classes"])
    assert all(row["sae_error"] is None for row in client.get("/api/lenses/0/layers/features.1/units/0").json()["classes"])
    audit = client.post("/api/lenses/0/audit", json={"class": "red", "valid": ["red"], "spurious": ["stripes"], "cut": 0.0})
    assert audit.status_code == 200 and audit.json()["sae_error"] == pytest.approx(sae_error_shares(lens, "red"))
    explained = client.get("/api/lenses/0/explain", params={"sample": 0, "layer": LAYER, "top": 8})
    assert explained.status_code == 200, explained.text
    assert explained.json()["layers"][0]["sae_error"] == pytest.approx(lens.explain(0, layers=[LAYER], top=8).layers[0].sae_error)


def test_class_relevance_keeps_the_sae_error_terms_share_and_the_audit_shows_it(sae_lens, colour_folder):
    from typer.testing import CliRunner

    from semlens.analysis.explain import error_share, relevance_shares
    from semlens.cli import app
    from semlens.model.loading import class_mapping
    from semlens.relevance.lrp import unit_and_error_relevance

    lens, folder = sae_lens
    model, data = lens.sources.model(), lens.sources.probe_data
    mapping = class_mapping(model, data).labels
    inputs = torch.stack([model.preprocessing(data.load(index)) for index in range(len(data))])
    targets = torch.tensor([mapping[data.label(index)] for index in range(len(data))])
    with RelevanceModel(model.module, inputs[:2]).attributing() as modified:
        _, features, errors = unit_and_error_relevance(modified, inputs, targets, [LAYER], None, {LAYER: folder})
        _, plain = unit_relevance(modified, inputs, targets, [LAYER])
    torch.testing.assert_close(features[LAYER].sum(dim=1) + errors[LAYER], plain[LAYER].sum(dim=1), rtol=1e-4, atol=1e-5)  # conserved
    shares, rest = relevance_shares(features[LAYER], errors[LAYER]), error_share(features[LAYER], errors[LAYER])
    torch.testing.assert_close(shares.abs().sum(dim=1) + rest.abs(), torch.ones(len(data)), rtol=0, atol=1e-5)
    stored = lens.arrays.class_relevance(LAYER)
    red = lens.units.class_index("red")
    chosen = targets == red
    assert float(rest[chosen].abs().max()) > 1e-3  # the planted SAE leaves a real error term
    assert float(stored["error_mean_share"][red]) == pytest.approx(float(rest[chosen].mean()), abs=1e-5)
    assert float(stored["error_max_share"][red]) == pytest.approx(float(rest[chosen].max()), abs=1e-5)
    torch.testing.assert_close(stored["mean_share"][:, red], shares[chosen].mean(dim=0), rtol=0, atol=1e-5)
    assert "error_mean_share" not in lens.arrays.class_relevance("features.1")  # not an SAE layer
    audit = lens.audit("red", ["red"], ["stripes"], cut=0.0)
    assert audit.sae_error == {LAYER: pytest.approx(float(rest[chosen].mean()), abs=1e-5)}
    assert audit.to_dict()["sae_error"] == audit.sae_error
    printed = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["audit", str(lens.path), "-c", "red", "--valid", "red", "--spurious", "stripes"])
    assert printed.exit_code == 0 and f"SAE error term (mean share of the class's relevance): {LAYER} {rest[chosen].mean():.1%}" in printed.stdout


def test_an_sae_layer_is_explained_with_shares_that_sum_to_one_with_its_error_term(sae_lens):
    from semlens.analysis.explain import error_share, relevance_shares
    from semlens.relevance.lrp import unit_and_error_relevance

    lens, folder = sae_lens
    result = lens.explain(0, layers=[LAYER], top=8)
    (layer,) = result.layers
    model = lens.sources.model()
    inputs = model.preprocessing(lens.sources.probe_data.load(0))[None]
    with RelevanceModel(model.module, inputs).attributing() as modified:
        _, features, errors = unit_and_error_relevance(modified, inputs, torch.tensor([result.class_index]), [LAYER], None, {LAYER: folder})
    shares, rest = relevance_shares(features[LAYER], errors[LAYER])[0], float(error_share(features[LAYER], errors[LAYER])[0])
    assert layer.sae_error == pytest.approx(rest, abs=1e-5) and abs(rest) > 1e-3
    listed = {unit.unit: unit.share for unit in layer.units + layer.against}
    assert listed == {f"{LAYER}/{index}": pytest.approx(float(shares[index]), abs=1e-5) for index in range(8) if f"{LAYER}/{index}" in listed}
    valid = lens.arrays.valid(LAYER)
    unlisted = [index for index in range(8) if f"{LAYER}/{index}" not in listed]
    assert all(not valid[index] or shares[index] == 0 for index in unlisted)  # every valid feature with a share is listed
    absolute = sum(abs(share) for share in listed.values()) + float(shares[~valid].abs().sum()) + abs(layer.sae_error)
    assert absolute == pytest.approx(1.0, abs=1e-5)  # features (listed or without examples of their own) and the error term
    assert all(unit.share > 0 for unit in layer.units) and all(unit.share < 0 for unit in layer.against)
    assert result.to_dict()["layers"][0]["sae_error"] == layer.sae_error


def test_a_lens_of_an_sae_on_a_layer_read_channels_last_has_relevance_crops_explanations_and_graphs(tmp_path, colour_folder, tiny_clip_dir):
    folder = write_saelens(tmp_path / "planted", planted_sae(), "topk", k=4)
    config = BuildConfig(
        model="py:tiny_models:channels_last_cnn", layers=["conv.0", f"mlp.1:channels_last=true,sae={folder}"],
        data=f"folder:{colour_folder}", foundation=f"hf:{tiny_clip_dir}", k=3, workers=0,
    )  # fmt: skip
    lens = build_lens(config, tmp_path / "nhwc-sae.lens", progress=False)
    assert lens.units("mlp.1") == [str(feature) for feature in range(8)]  # the SAE's 8 features, not 16 rows of pixels
    assert lens.manifest["layers"]["mlp.1"]["crop"]["mode"] == "relevance"
    assert "mlp.1" not in lens.manifest["relevance"].get("left_out", {})
    relevance = lens.arrays.class_relevance("mlp.1")
    assert relevance is not None and relevance["mean_share"].shape == (8, 3)
    trusted = Lens.open(lens.path, trust=True)  # explanations and graphs read the SAE file
    trusted.label()
    (explained,) = trusted.explain(0, layers=["mlp.1"], top=3).layers
    assert explained.sae_error is not None and all(unit.unit.startswith("mlp.1/") for group in explained.groups for unit in group.units)
    graph = trusted.attribution_graph("red", ["conv.0", "mlp.1"], cut=0.0)
    assert {node.layer for node in graph.nodes} == {"conv.0", "mlp.1"} and graph.edges
