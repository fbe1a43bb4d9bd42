"""Relevance examples end to end on a tiny CNN: the exact top-k samples by relevance share against a
brute-force ranking, their crops shared with the activation examples' and embedded once, the second theta,
and the clear errors of a Lens built without them."""

from __future__ import annotations

import pytest
import torch
from old_lenses import rewrite_as_before_rule_thetas

from semlens import BuildConfig, Lens, build_lens, load_data, load_model
from semlens._util.errors import SemlensError
from semlens.analysis.alignment import alignment
from semlens.analysis.explain import relevance_shares
from semlens.model.loading import class_mapping
from semlens.relevance.lrp import RelevanceModel, unit_relevance
from semlens.store.files import layer_file
from semlens.lens.search import probe as probe_of

LAYERS = ["features.0", "features.3", "head:signed=true"]
K = 5


def config(folder, clip, **overrides) -> BuildConfig:
    settings = dict(
        model="py:tiny_models:tiny_cnn", layers=LAYERS, data=f"folder:{folder}", foundation=f"hf:{clip}",
        k=K, batch_size=7, relevance_batch_size=7, workers=0, relevance_examples=True,
    )  # fmt: skip
    return BuildConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def built(tmp_path_factory, colour_folder, tiny_clip_dir) -> Lens:
    return build_lens(config(colour_folder, tiny_clip_dir), tmp_path_factory.mktemp("rel") / "tiny.lens", progress=False)


def brute_force_shares(folder) -> dict[str, torch.Tensor]:
    """Every sample's relevance share ``[N, C]`` per layer for its labelled class, all samples in one pass."""
    model, data = load_model("py:tiny_models:tiny_cnn"), load_data(f"folder:{folder}")
    pixels = torch.stack([model.preprocessing(data.load(index)) for index in range(len(data))])
    mapping = class_mapping(model, data).labels
    assert mapping is not None  # the colour folder's labels are the tiny CNN's classes by index
    targets = torch.tensor([mapping[data.label(index)] for index in range(len(data))])
    relevance = RelevanceModel(model.module, pixels[:2])
    with relevance.attributing() as modified:
        _, found = unit_relevance(modified, pixels, targets, ["features.0", "features.3", "head"])
    return {layer: relevance_shares(values) for layer, values in found.items()}


def test_relevance_topk_is_the_brute_force_ranking_of_relevance_shares(built: Lens, colour_folder) -> None:
    for layer, shares in brute_force_shares(colour_folder).items():
        stored = built.store.read_tensors(f"layers/{layer}.relevance_topk.safetensors")
        for unit in range(shares.shape[1]):
            ranked = sorted(range(shares.shape[0]), key=lambda sample: (-float(shares[sample, unit]), sample))[:K]
            assert stored["ids"][unit].tolist() == ranked, (layer, unit)
            torch.testing.assert_close(stored["scores"][unit], shares[ranked, unit], atol=1e-5, rtol=1e-4)
    # the head's class units: share 1 on samples of their class (LRP starts from that logit alone), 0 elsewhere
    head = built.examples.scores("head", "relevance")
    assert head.shape == (6, K) and torch.equal(head[:3], head[3:])  # the negative half copies its channel


def test_concept_examples_by_relevance_read_back_what_was_stored(built: Lens) -> None:
    examples = built.examples.concept_examples("features.3/1", by="relevance")
    stored = built.store.read_tensors("layers/features.3.relevance_topk.safetensors")
    assert [example.sample for example in examples] == [s for s in stored["ids"][1].tolist() if s >= 0][: len(examples)]
    assert [example.score for example in examples] == pytest.approx(stored["scores"][1, : len(examples)].tolist())
    assert all(example.source.endswith(".png") and example.label is not None for example in examples)
    assert [e.rank for e in examples] == sorted(e.rank for e in examples)
    activation = built.examples.concept_examples("features.3/1")
    assert [e.score for e in activation] == pytest.approx(built.arrays.scores("features.3")[1, : len(activation)].tolist())


def test_each_distinct_crop_is_embedded_once_and_shared_with_activation_examples(built: Lens) -> None:
    crops = built.store.read_tensors("crops.safetensors")
    extra = built.store.read_tensors("relevance_crops.safetensors")
    first = torch.cat([crops["samples"][:, None], crops["boxes"]], dim=1)
    new = torch.cat([extra["samples"][:, None], extra["boxes"]], dim=1)
    assert not (first[:, None] == new[None]).all(dim=-1).any()  # no new crop was embedded before
    record = built.manifest["stages"]["examples"]
    assert record["shared_crops"] > 0 and record["distinct_crops"] == new.shape[0]
    assert set(record["parts"]) == {"heatmaps", "boxes", "embedding"} and record["parts"]["heatmaps"] > 0  # where its time went
    for layer in built.layers:
        ids = built.examples.samples(layer, "relevance")
        index = built.examples._relevance_file(layer, "relevance_embed")["crop_index"][:, : ids.shape[1]]  # the first rule's boxes
        boxes = built.examples.boxes(layer, "relevance")
        rows = torch.cat([first, new])[index.clamp_min(0)]
        kept = index >= 0
        assert torch.equal(rows[kept][:, 0], ids[kept]) and torch.equal(rows[kept][:, 1:], boxes[kept])


def test_relevance_theta_is_the_mean_embedding_of_the_relevance_crops(built: Lens) -> None:
    foundation = built.embedding.foundation
    for unit in ("features.0/2", "features.3/4"):
        layer, row = built.units.index(unit)
        images = [built.examples.image(example) for example in built.examples.concept_examples(unit, by="relevance")]
        expected = foundation.encode_images(images).mean(dim=0)
        torch.testing.assert_close(built.examples.theta(layer, "relevance")[row], expected, atol=3e-3, rtol=0)
        embeddings = built.examples.embeddings(layer, "relevance")[row]
        torch.testing.assert_close(embeddings[~embeddings.isnan().any(dim=1)].mean(dim=0), expected, atol=3e-3, rtol=0)


def test_relevance_examples_with_joined_rules_embed_both_boxes(built: Lens, tmp_path, colour_folder, tiny_clip_dir) -> None:
    settings = config(colour_folder, tiny_clip_dir, crop_rule="share+peak", heatmaps_from=str(built.path))
    joined = build_lens(settings, tmp_path / "joined.lens", progress=False)
    layer = "features.3"
    assert torch.equal(joined.examples.samples(layer, "relevance"), built.examples.samples(layer, "relevance"))
    stored = joined.examples._relevance_file(layer, "relevance_embed")
    assert stored["boxes"].shape[1] == 2 * K and torch.equal(stored["boxes"][:, K:], built.examples.boxes(layer, "relevance"))
    assert torch.equal(joined.examples.boxes(layer, "relevance"), stored["boxes"][:, :K])  # the first rule's (share) are shown
    share = joined.examples.embeddings(layer, "relevance")
    assert share.shape[:2] == (6, K)
    torch.testing.assert_close(share.nanmean(dim=1), joined.examples.theta(layer, "relevance"), atol=3e-3, rtol=0)
    torch.testing.assert_close(stored["theta"], joined.examples.theta(layer, "relevance"), atol=3e-3, rtol=0)  # stored: each rule's
    peak = joined.examples.embeddings(layer, "relevance", "peak")
    torch.testing.assert_close(torch.nan_to_num(peak.nanmean(dim=1)), stored["theta.peak"], atol=3e-3, rtol=0)
    valid = built.examples.valid(layer, "relevance")  # the peak boxes' theta is the peak-only Lens's
    torch.testing.assert_close(joined.examples.theta(layer, "relevance", "peak")[valid], built.examples.theta(layer, "relevance")[valid], atol=3e-3, rtol=0)
    assert joined.arrays.search_rule == "share"  # search ranks by the share boxes' theta
    hits = joined.search("red", top=3)
    probe, null = probe_of(joined, "red")
    expected = alignment(joined.arrays.theta(hits[0].layer, "share")[hits[0].index : hits[0].index + 1], probe[None], null)
    assert hits[0].score == pytest.approx(float(expected), abs=1e-5)
    # a joined Lens built before each rule's theta was stored (theta the mean over every box, ties by every
    # box): it reopens with the same theta per rule and the same ties, derived from its crop table
    rewrite_as_before_rule_thetas(joined, layer_file(layer, "relevance_embed"), "theta.peak", tied=True)
    reopened = Lens.open(joined.path)
    assert torch.equal(reopened.examples.valid(layer, "relevance"), joined.examples.valid(layer, "relevance"))
    torch.testing.assert_close(reopened.examples.theta(layer, "relevance", "peak"), joined.examples.theta(layer, "relevance", "peak"), atol=3e-3, rtol=0)


def test_analyses_take_either_example_set(built: Lens) -> None:
    measures = built.measures("features.3", examples="relevance").of("features.3")
    assert measures["clarity"].shape == (6,)
    valid = built.examples.valid("features.3", "relevance")
    assert torch.isnan(measures["clarity"][~valid]).all()
    hits = built.search("red", examples="relevance", top=3)
    assert hits and all(built.examples.valid(hit.layer, "relevance")[hit.index] for hit in hits)
    labelled = built.label(examples="relevance")
    assert set(labelled) == set(built.layers)
    assert Lens.open(built.path).labels.vocabulary is None  # labels by relevance examples are returned, never stored
    with pytest.raises(SemlensError, match="activation, relevance"):
        built.examples.concept_examples("features.3/1", by="gradient")


def test_a_lens_built_without_relevance_examples_says_how_to_rebuild(explorer_lenses) -> None:
    lens = Lens.open(explorer_lenses[0])
    assert not lens.examples.has_relevance and "examples" not in lens.manifest["identity"]["relevance"]
    assert lens.examples.concept_examples("head/0")  # the activation examples as before
    for ask in (lambda: lens.examples.concept_examples("head/0", by="relevance"), lambda: lens.measures("head", examples="relevance")):
        with pytest.raises(SemlensError, match="--relevance-examples"):
            ask()


def test_relevance_examples_need_class_relevance_on_the_probe_data(colour_folder, tiny_clip_dir) -> None:
    with pytest.raises(SemlensError, match="class_relevance"):
        config(colour_folder, tiny_clip_dir, class_relevance=False)
    with pytest.raises(SemlensError, match="probe data"):
        config(colour_folder, tiny_clip_dir, relevance_data="folder:/elsewhere")


def test_the_cli_shows_relevance_examples(built: Lens, tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from semlens.cli import app

    result = CliRunner().invoke(app, ["show", str(built.path), "features.3/1", "--by", "relevance", "-o", str(tmp_path / "u.png"), "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)["examples"]
    assert [item["sample"] for item in shown] == [e.sample for e in built.examples.concept_examples("features.3/1", by="relevance")]


def relevance_arrays(lens: Lens) -> dict[str, torch.Tensor]:
    found = {"crops": lens.store.read_tensors("relevance_crops.safetensors")["embeddings"]}
    for layer in lens.layers:
        for kind in ("relevance_topk", "relevance_embed"):
            for key, value in lens.store.read_tensors(f"layers/{layer}.{kind}.safetensors").items():
                found[f"{layer}.{kind}.{key}"] = value
    return found


def test_two_ranks_and_merged_shards_equal_one_process(tmp_path, colour_folder, tiny_clip_dir) -> None:
    import subprocess
    import sys

    from typer.testing import CliRunner

    from semlens.cli import app
    from semlens.pipeline.merge import merge_shards

    args = [
        "--model", "py:tiny_models:tiny_cnn", "--data", f"folder:{colour_folder}", "--foundation", f"hf:{tiny_clip_dir}",
        "-k", "5", "--batch-size", "7", "--embed-batch-size", "4", "--workers", "0", "--no-progress", "--relevance-examples",
        *[part for layer in LAYERS for part in ("--layer", layer)],
    ]  # fmt: skip
    assert CliRunner().invoke(app, ["run", *args, "--out", str(tmp_path / "one.lens")]).exit_code == 0
    reference = relevance_arrays(Lens.open(tmp_path / "one.lens"))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "semlens.cli", "run"]
    finished = subprocess.run([*command, *args, "--out", str(tmp_path / "ranks.lens")], capture_output=True, text=True, timeout=400)
    assert finished.returncode == 0, finished.stderr[-4000:]
    parts = [tmp_path / f"part{index}.lens" for index in range(2)]
    for index, part in enumerate(parts):
        assert CliRunner().invoke(app, ["run", *args, "--out", str(part), "--shard", f"{index}/2"]).exit_code == 0
    merge_shards(parts, tmp_path / "merged.lens", progress=False)
    for other in ("ranks.lens", "merged.lens"):
        found = relevance_arrays(Lens.open(tmp_path / other))
        assert found.keys() == reference.keys()
        for key, value in reference.items():
            assert torch.equal(found[key], value), (other, key)


def test_the_explorer_shows_relevance_examples_beside_activation_ones(built: Lens) -> None:
    pytest.importorskip("fastapi")
    import io

    import numpy as np
    from fastapi.testclient import TestClient
    from PIL import Image

    from semlens.report.figures import firing_picture, heat_overlay
    from semlens.web.app import create_app
    from semlens.web.thumbnails import QUALITY, SIZE

    client, unit = TestClient(create_app([built])), "/api/lenses/0/layers/features.3/units/1"
    page = client.get(unit).json()
    expected = built.examples.concept_examples("features.3/1", by="relevance")
    shown = page["relevance_examples"]
    assert [(e["rank"], e["sample"], tuple(e["box"]), e["source"]) for e in shown] == [(e.rank, e.sample, e.box, e.source) for e in expected]
    assert [e["score"] for e in shown] == pytest.approx([e.score for e in expected])
    assert shown == client.get(f"{unit}/examples", params={"examples": "relevance"}).json()
    assert page["examples"] == client.get(f"{unit}/examples").json() != shown
    assert all(e["thumbnail"].endswith("/examples/%d/thumbnail?examples=relevance" % e["rank"]) for e in shown)
    assert all(e["heatmap"].endswith("/examples/%d/heatmap?examples=relevance" % e["rank"]) for e in shown)

    def pixels(url: str) -> np.ndarray:
        response = client.get(url)
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg", response.text
        return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), dtype=float)

    by_relevance, by_activation = pixels(shown[0]["thumbnail"]), pixels(page["examples"][0]["thumbnail"])
    crop = np.asarray(firing_picture(built, "features.3/1", expected[0], "relevance").convert("RGB").resize((SIZE, SIZE)), dtype=float)
    assert expected[0].sample != built.examples.concept_examples("features.3/1")[0].sample  # a different top sample here
    assert np.abs(by_relevance - crop).mean() < 3 < 20 < np.abs(by_activation - crop).mean()  # JPEG-close to where its own unit fires
    cached = built.in_space(None).embedding.cache.root / "thumbnails" / "features.3"
    assert {"relevance_1_0_fires.jpg", "1_0_fires.jpg"} <= {path.name for path in cached.iterdir()}  # one cache entry per set
    assert pixels(shown[0]["image"]).shape == (32, 32, 3)
    # the relevance examples' overlay is drawn from their stored CRP heatmap, not from the activation crops' maps
    stored = built.store.read_tensors("layers/features.3.relevance_heat.safetensors")["heat"]
    assert torch.equal(built.examples.heatmaps("features.3", "relevance"), stored) and stored[1, 0].clamp_min(0).sum() > 0
    served = client.get(shown[0]["heatmap"])
    assert served.status_code == 200 and served.headers["content-type"] == "image/jpeg"
    view = built.examples.image(expected[0], crop=False).convert("RGB")

    def jpeg(heat: torch.Tensor) -> bytes:
        buffer = io.BytesIO()
        heat_overlay(view, heat.float().numpy(), expected[0].box).save(buffer, format="JPEG", quality=QUALITY)
        return buffer.getvalue()

    assert served.content == jpeg(stored[1, 0]) != jpeg(built.arrays.heatmaps("features.3")[1, 0])
    detail = client.get(f"{unit}/examples/0/thumbnail", params={"examples": "gradient"})
    assert detail.status_code == 422 and "'activation' or 'relevance'" in detail.text
    assert client.get("/api/lenses/0/layers/head/units/0-").json()["relevance_examples"]  # a signed layer's negative half

    # search by the relevance examples' theta: the API's ranking, each hit's thumbnails from that set
    assert client.get("/api/lenses/0").json()["relevance_examples"]
    hits = client.get("/api/lenses/0/search", params={"q": "red", "top": 4, "examples": "relevance"}).json()
    expected_hits = built.search("red", top=4, examples="relevance")
    assert [(hit["unit"], hit["score"]) for hit in hits] == [(hit.unit, pytest.approx(hit.score)) for hit in expected_hits]
    assert [hit["unit"] for hit in hits] != [hit.unit for hit in built.search("red", top=4)]  # not the activation ranking
    assert all(url.endswith("?examples=relevance") for hit in hits for url in hit["thumbnails"])
