"""Labelling methods through the API, the CLI and the explorer: each method's labels are stored with it, a
Lens reopened knows which method made its labels, and no tool hands out another method's labels in silence."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from semlens import Lens
from semlens._util.errors import SemlensError
from semlens.analysis.alignment import alignment
from semlens.analysis.labelling_methods import DEFAULT_METHOD, METHODS
from semlens.cli import app as cli_app


@pytest.fixture()
def lens_copy(explorer_lenses, tmp_path):
    """A copy of the labelled tiny Lens (relabelling the shared one would change other tests' answers)."""
    return shutil.copytree(explorer_lenses[0], tmp_path / "tiny.lens")


def test_each_method_is_stored_with_its_labels(lens_copy) -> None:
    lens = Lens.open(lens_copy)
    assert lens.labels.method == DEFAULT_METHOD == "responses" and lens.arrays.has_responses
    by_method = {}
    for method in METHODS:
        labelling = lens.label(method=method)
        by_method[method] = labelling
        reopened = Lens.open(lens_copy)
        assert reopened.labels.method == method
        stored = reopened.labels.of("features.3")
        assert torch.equal(stored.concepts, labelling["features.3"].concepts)
        assert torch.equal(stored.labelled, labelling["features.3"].labelled)
        candidate = labelling.to_dict()["features.3"][0]["candidates"][0]
        assert {"concept", "alignment", "score"} <= set(candidate)
    # every method's labelled units pass the same gate: the best candidate's Eq. 4 alignment
    concepts = lens.embedding.probes.concepts(lens.labels.vocabulary.concepts, "label")
    aligned = alignment(lens.arrays.theta("features.3"), concepts, lens.embedding.probes.null("label"))
    for method, labelling in by_method.items():
        labels = labelling["features.3"]
        assert torch.allclose(labels.candidate_alignments, aligned.gather(1, labels.concepts), atol=1e-6), method
    with pytest.raises(SemlensError, match="'contrastive' method, not 'alignment'"):
        Lens.open(lens_copy).labels.dissect("alignment")
    assert sum(Lens.open(lens_copy).labels.dissect("contrastive")["head"].values()) == 3
    with pytest.raises(SemlensError, match="the methods are alignment, centred, responses, clip-dissect, contrastive"):
        lens.label(method="wpmi")


def test_cli_label_and_dissect_with_a_method(lens_copy, tmp_path) -> None:
    runner = CliRunner()
    labelled = runner.invoke(cli_app, ["label", str(lens_copy), "--method", "clip-dissect", "--json"])
    assert labelled.exit_code == 0, labelled.output
    assert {"features.0", "features.3", "head"} == set(json.loads(labelled.output)["layers"])
    counted = runner.invoke(cli_app, ["dissect", str(lens_copy), "--method", "clip-dissect", "--json", "-o", str(tmp_path / "d.png")])
    assert counted.exit_code == 0 and json.loads(counted.output)["method"] == "clip-dissect"
    refused = runner.invoke(cli_app, ["dissect", str(lens_copy), "--method", "alignment", "-o", str(tmp_path / "d.png")])
    assert refused.exit_code != 0 and "semlens label LENS --method alignment" in refused.output


def test_explorer_dissect_labels_by_the_method_asked(lens_copy) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from semlens.web.app import create_app

    client = TestClient(create_app([lens_copy]))
    plain = client.get("/api/lenses/0/dissect").json()
    assert plain["method"] == DEFAULT_METHOD and plain["methods"] == list(METHODS)
    for method in ("contrastive", "clip-dissect"):
        result = client.get("/api/lenses/0/dissect", params={"method": method}).json()
        assert result["method"] == method
        assert {layer: sum(c.values()) for layer, c in result["counts"].items()} == {"features.0": 8, "features.3": 6, "head": 3}
        category, count = next(iter(result["counts"]["features.0"].items()))
        units = client.get("/api/lenses/0/dissect/units", params={"layer": "features.0", "category": category, "method": method})
        assert len(units.json()["units"]) == count
    assert Lens.open(lens_copy).labels.method == DEFAULT_METHOD  # the explorer relabels in memory only
    assert client.get("/api/lenses/0/dissect", params={"method": "nope"}).status_code == 422


def test_clip_dissect_prior_from_cached_probe_images_else_example_sets(lens_copy, tiny_clip_dir, monkeypatch, tmp_path) -> None:
    from semlens.analysis.labelling_methods import PRIOR_SETS
    from semlens.lens.label_prior import example_prior_sets, prior_cache_path, prior_sets, probe_prior_images

    lens = Lens.open(lens_copy)
    images = probe_prior_images(lens)
    assert images.shape == (30, lens.arrays.theta("head").shape[1])  # the colour folder's 30 images, fewer than 512
    path = prior_cache_path(lens.embedding.foundation_id, lens.manifest["identity"]["data"]["fingerprint"], 512, 0)
    assert path.is_file() and not any(lens_copy.rglob("*prior*"))  # in the user cache, not in the Lens
    assert torch.equal(probe_prior_images(Lens.open(lens_copy)), images)
    assert prior_sets(lens).shape == (PRIOR_SETS, lens.examples.k, images.shape[1])

    monkeypatch.setenv("SEMLENS_CACHE", str(tmp_path / "stranger-cache"))  # a stranger: untrusted, no data given
    stranger = Lens.open(lens_copy, foundation=f"hf:{tiny_clip_dir}")
    assert not stranger.trusted
    with pytest.warns(UserWarning, match="example sets"):
        fallback = prior_sets(stranger)
    assert torch.equal(fallback.nan_to_num(9.0), example_prior_sets(stranger).nan_to_num(9.0))


def test_a_lens_without_crop_responses_labels_centred(lens_copy) -> None:
    stored = Lens.open(lens_copy)
    before = stored.audit(stored.classes[0], [stored.classes[0]], ["stripes"], cut=0.0)
    # the audit names each unit's best concept by its responses, among the audit's concepts and the vocabularies (or none)
    from semlens.lens.labels import naming_candidates

    candidates = naming_candidates(stored, [stored.classes[0], "stripes"])
    assert set(stored.labels.vocabulary.concepts) <= set(candidates)
    assert before.units and all(unit.responses_label in [*candidates, None] for unit in before.units)
    manifest = json.loads((lens_copy / "manifest.json").read_text())
    del manifest["stages"]["responses"]  # as a Lens built before the responses stage
    (lens_copy / "manifest.json").write_text(json.dumps(manifest))
    lens = Lens.open(lens_copy)
    assert not lens.arrays.has_responses and lens.labels.default_method == "centred"
    assert lens.label(save=False)["features.3"].method == "centred"
    with pytest.raises(SemlensError, match="no crop responses"):
        lens.label(method="responses", save=False)
    after = lens.audit(lens.classes[0], [lens.classes[0]], ["stripes"], cut=0.0)  # the alignment rule alone judges
    assert [unit.responses_label for unit in after.units] == [None] * len(before.units)


def test_the_built_crop_responses_are_the_units_activations_on_their_crops(explorer_lenses) -> None:
    """The responses stage against the public API: each distinct concept-example crop, resized to the model's
    input and run through the model, gives the same regression as the moments the build stored."""
    from PIL import Image

    from semlens.analysis.responses import ResponseMoments, concept_directions, partial_effects
    from semlens.interventions.effects import unit_scores
    from semlens.model.units import LayerSpec

    lens = Lens.open(explorer_lenses[0], trust=True)
    model = lens.sources.model()
    crops = {}  # (sample, box) -> (example, its embedding): each distinct crop once
    for layer in lens.layers:
        embeddings = lens.arrays.example_embeddings(layer)
        for row, name in enumerate(lens.units(layer)):
            for example in lens.examples.concept_examples(f"{layer}/{name}"):
                crops.setdefault((example.sample, example.box), (example, embeddings[row, example.rank]))
    size = model.preprocessing.input_size
    views = [lens.examples.image(example).resize((size, size), Image.BILINEAR) for example, _ in crops.values()]
    specs = [LayerSpec(**lens.manifest["layers"][layer]["spec"]) for layer in lens.layers]
    moments = ResponseMoments(lens.arrays.theta(lens.layers[0]).shape[1])
    unit = moments.add_embeddings(torch.stack([embedding for _, embedding in crops.values()]))
    for layer, scores in unit_scores(model, views, specs).items():
        moments.add_activations(layer, scores, unit)
    assert lens.manifest["stages"]["responses"]["crops"] == len(crops)
    directions = concept_directions(lens.embedding.probes.concepts(lens.labels.vocabulary.concepts, "label"), lens.embedding.probes.null("label"))
    for layer in lens.layers:
        expected = partial_effects(moments.cross(layer), moments.scatter(), directions)
        torch.testing.assert_close(lens.arrays.partial_effects(layer, directions), expected, atol=2e-3, rtol=2e-3)
