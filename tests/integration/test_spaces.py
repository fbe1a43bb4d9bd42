"""Embedding spaces end to end on the tiny models: a second foundation model added to a built Lens embeds the
same crops (its theta is the mean of the crops it embeds), leaves the default space as it was, resumes when
interrupted, refuses stale or clashing spaces, and every analysis, command and explorer page answers in it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from tiny_foundation import SAVERS
from typer.testing import CliRunner

from semlens import BuildConfig, Lens, SemlensError, build_lens
from semlens._util.errors import StaleLensError
from semlens.cli import app
from semlens.foundation import load_foundation_model
from semlens.foundation.base import FoundationModel
from semlens.lens.measures import similarity
from semlens.pipeline.spaces import add_space
from semlens.store.spaces import space_name
from semlens.store.trust import UntrustedSpecError
from semlens.web.app import create_app

runner = CliRunner()


def config(folder: Path, clip: Path, **extra) -> BuildConfig:
    return BuildConfig(
        model="py:tiny_models:tiny_cnn", layers=["features.3", "head"], data=f"folder:{folder}", foundation=f"hf:{clip}",
        k=5, workers=0, class_relevance=False, **extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-siglip")
    SAVERS["siglip"](directory)
    return directory


@pytest.fixture(scope="module")
def built(tmp_path_factory, colour_folder, tiny_clip_dir) -> Path:
    """A Lens of the tiny CNN embedded by the tiny CLIP only."""
    return build_lens(config(colour_folder, tiny_clip_dir), tmp_path_factory.mktemp("spaces") / "one.lens", progress=False).path


@pytest.fixture(scope="module")
def both(tmp_path_factory, colour_folder, tiny_clip_dir, siglip_dir) -> Path:
    """The same Lens built with both foundation models at once (CLIP the default, SigLIP an extra space)."""
    cfg = config(colour_folder, tiny_clip_dir, extra_foundations=[f"hf:{siglip_dir}"])
    return build_lens(cfg, tmp_path_factory.mktemp("spaces") / "both.lens", progress=False).path


@pytest.fixture
def lens(built, tmp_path) -> Lens:
    """A fresh copy of ``built`` per test (tests add spaces to it)."""
    shutil.copytree(built, tmp_path / "copy.lens")
    return Lens.open(tmp_path / "copy.lens")


def test_an_added_space_embeds_the_same_crops_and_leaves_the_default_space_alone(lens, siglip_dir) -> None:
    assert lens.trusted  # built on this machine
    before = {path.name: path.read_bytes() for path in [lens.path / "crops.safetensors", *(lens.path / "layers").iterdir()]}
    space = add_space(lens, f"hf:{siglip_dir}", workers=0, progress=False)
    sig, clip = space_name(f"hf:{siglip_dir}"), lens.embedding.default_name
    assert sig == f"hf-{siglip_dir.name}" and clip == f"hf-{Path(lens.manifest['foundation']['spec'][3:]).name}"
    assert space.name == sig and not space.default and space.complete and space.dim == 32
    after = {path.name: path.read_bytes() for path in [lens.path / "crops.safetensors", *(lens.path / "layers").iterdir()]}
    assert after == before  # the default space's files are untouched
    reopened = Lens.open(lens.path)  # the new files are recorded and checked like the others
    assert reopened.trusted  # the space's spec was the user's own: still trusted, though trust covers every spec
    assert [s.name for s in reopened.embedding.spaces] == [clip, sig] and reopened.embedding.foundation_id.startswith("hf:tiny-clip")
    view = reopened.in_space(sig)
    assert view.embedding.foundation_id == space.foundation_id and reopened.in_space("default") is reopened
    siglip = load_foundation_model(f"hf:{siglip_dir}")
    for unit in ("head/1", "features.3/2"):  # theta is the mean of the unit's crops embedded by the new model
        layer, row = reopened.units.index(unit)
        crops = [reopened.examples.image(example) for example in reopened.examples.concept_examples(unit)]
        assert torch.allclose(view.arrays.theta(layer)[row], siglip.encode_images(crops).mean(dim=0), atol=2e-3)
        assert view.arrays.example_embeddings(layer)[row].shape == (5, 32)
    assert torch.equal(view.arrays.valid("head"), reopened.arrays.valid("head")) and torch.equal(view.arrays.boxes("head"), reopened.arrays.boxes("head"))


def test_adding_later_equals_building_with_both(lens, both, siglip_dir) -> None:
    sig = add_space(lens, f"hf:{siglip_dir}", workers=0, progress=False).name
    built_with_both = Lens.open(both)
    assert [s.name for s in built_with_both.embedding.spaces] == [lens.embedding.default_name, sig]
    for layer in lens.layers:
        assert torch.allclose(lens.in_space(sig).arrays.theta(layer), built_with_both.in_space(sig).arrays.theta(layer), atol=1e-6)
        assert torch.equal(lens.arrays.theta(layer), built_with_both.arrays.theta(layer))  # the default space is the one-model build's


def test_an_interrupted_space_resumes_from_its_chunks(lens, both, siglip_dir, monkeypatch) -> None:
    calls = {"count": 0}
    embed = FoundationModel.embed_pixels

    def failing(self, pixels):
        calls["count"] += 1
        if calls["count"] == 9:  # in the third chunk
            raise KeyboardInterrupt
        return embed(self, pixels)

    monkeypatch.setattr(FoundationModel, "embed_pixels", failing)
    with pytest.raises(KeyboardInterrupt):
        add_space(lens, f"hf:{siglip_dir}", batch_size=1, workers=0, progress=False)  # one crop a call, 4 a chunk
    sig = space_name(f"hf:{siglip_dir}")
    assert not Lens.open(lens.path).embedding.spaces[1].complete
    with pytest.raises(SemlensError, match="unfinished"):
        Lens.open(lens.path).in_space(sig)
    monkeypatch.setattr(FoundationModel, "embed_pixels", embed)
    calls["count"] = 0
    counted = lambda self, pixels: (calls.__setitem__("count", calls["count"] + 1), embed(self, pixels))[1]  # noqa: E731
    monkeypatch.setattr(FoundationModel, "embed_pixels", counted)
    add_space(Lens.open(lens.path), f"hf:{siglip_dir}", batch_size=1, workers=0, progress=False)
    resumed = Lens.open(lens.path)
    total = resumed.manifest["spaces"][sig]["distinct_crops"]
    assert calls["count"] == total - 8  # the crops of the two finished chunks were not embedded again
    assert not (resumed.path / "spaces" / sig / "embed.partial").exists()
    assert torch.allclose(resumed.in_space(sig).arrays.theta("head"), Lens.open(both).in_space(sig).arrays.theta("head"), atol=1e-6)


def test_clashing_stale_and_bad_spaces_are_refused(lens, siglip_dir, tiny_clip_dir) -> None:
    add_space(lens, f"hf:{siglip_dir}", name="second", workers=0, progress=False)
    add_space(lens, f"hf:{siglip_dir}", name="second", workers=0, progress=False)  # done already: nothing to do
    with pytest.raises(SemlensError, match="already this Lens's space 'second'"):
        add_space(lens, f"hf:{siglip_dir}", name="third", workers=0, progress=False)
    with pytest.raises(SemlensError, match="default space"):
        add_space(lens, f"hf:{tiny_clip_dir}", workers=0, progress=False)
    with pytest.raises(SemlensError, match="not valid"):
        add_space(lens, f"hf:{siglip_dir}", name="default", workers=0, progress=False)
    with pytest.raises(StaleLensError, match="other inputs"):
        add_space(lens, f"hf:{siglip_dir}", name="second", precision="bfloat16", workers=0, progress=False)
    add_space(lens, f"hf:{siglip_dir}", name="second", precision="bfloat16", overwrite=True, workers=0, progress=False)
    assert Lens.open(lens.path).manifest["spaces"]["second"]["dtype"] == "bfloat16"
    with pytest.raises(SemlensError, match=rf"the Lens at {lens.path} has no embedding space 'nope'; its spaces: {lens.embedding.default_name} \(or default\), second"):
        lens.in_space("nope").search("red")
    manifest = json.loads((lens.path / "manifest.json").read_text())
    manifest["spaces"]["second"]["crops"] = "0" * 16  # as if the Lens's crops changed since
    (lens.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StaleLensError, match="embed it again"):
        Lens.open(lens.path).in_space("second")


def test_analyses_answer_in_the_space_asked_for(lens, siglip_dir) -> None:
    add_space(lens, f"hf:{siglip_dir}", name="sig", workers=0, progress=False)
    view = lens.in_space("sig")
    hits = view.search("red", top=3)
    assert [round(hit.score, 6) for hit in hits] != [round(hit.score, 6) for hit in lens.search("red", top=3)]
    default_labels = lens.label()
    labels = view.label()
    assert (lens.path / "spaces" / "sig" / "labels.json").is_file() and (lens.path / "labels.json").is_file()
    assert Lens.open(lens.path).in_space("sig").labels.of("head").concepts.tolist() == labels["head"].concepts.tolist()
    assert Lens.open(lens.path).labels.of("head").concepts.tolist() == default_labels["head"].concepts.tolist()
    assert sum(view.labels.dissect()["head"].values()) == len(lens.units("head"))
    assert set(view.measures("head").of("head")) == {"clarity", "polysemanticity", "redundancy", "typical"}
    assert similarity(view, "head/1", "head/1") == pytest.approx(1.0)
    assert view.search_similar(view, "head/1", top=2)[0].unit != "head/1"
    assert view.compare(view).a_to_b[0][0] == pytest.approx(1.0)  # a Lens against itself


def test_compare_spaces_is_one_against_itself_and_less_across_models(lens, siglip_dir) -> None:
    add_space(lens, f"hf:{siglip_dir}", name="sig", workers=0, progress=False)
    same = lens.compare_spaces("sig", "sig", queries=["red", "green", "blue"], top=2).to_dict()
    assert same["labels"]["top1"] == same["labels"]["top_overlap"] == 1.0
    assert same["search"]["top_overlap"] == same["search"]["spearman"] == 1.0
    assert same["structure"]["cka"] == pytest.approx(1.0) and same["structure"]["similarity_correlation"] == pytest.approx(1.0)
    across = lens.compare_spaces(None, "sig", queries=["red", "green", "blue"], top=2)
    assert across.units == sum(int(lens.arrays.valid(layer).sum()) for layer in lens.layers)
    assert across.a == lens.embedding.default_name and across.b == "sig" and len(across.search.per_query) == 3
    assert -1 <= across.search.spearman <= 1 and 0 <= across.structure.cka <= 1 + 1e-6


def test_a_strangers_space_runs_nothing_it_names(lens, siglip_dir, monkeypatch, tmp_path) -> None:
    add_space(lens, f"hf:{siglip_dir}", name="sig", workers=0, progress=False)
    monkeypatch.setenv("SEMLENS_CACHE", str(tmp_path / "stranger-cache"))  # a user who built none of these Lenses
    received = Lens.open(lens.path, foundation=f"hf:{lens.manifest['foundation']['spec'][3:]}")
    with pytest.raises(UntrustedSpecError, match="space sig's foundation model"):
        received.in_space("sig").search("red")
    assert len(Lens.open(lens.path, trust=True).in_space("sig").search("red", top=2)) == 2


def test_commands(built, siglip_dir, tmp_path) -> None:
    path = tmp_path / "cli.lens"
    shutil.copytree(built, path)

    def ask(*args):
        result = runner.invoke(app, [str(arg) for arg in args])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    added = ask("embed", path, "--foundation", f"hf:{siglip_dir}", "--name", "sig", "--workers", "0", "--json")
    assert added["name"] == "sig" and added["dim"] == 32
    assert [space["name"] for space in ask("spaces", path, "--json")] == [Lens.open(path).embedding.default_name, "sig"]
    compared = ask("compare-spaces", path, "default", "default", "-q", "red", "-q", "blue", "--json")
    assert compared["search"]["spearman"] == 1.0 and compared["structure"]["cka"] == pytest.approx(1.0)
    hits = ask("search", path, "red", "--space", "sig", "--top", "2", "--json")
    assert [hit["unit"] for hit in hits] == [hit.unit for hit in Lens.open(path).in_space("sig").search("red", top=2)]
    assert set(ask("label", path, "--space", "sig", "--json")["layers"]) == {"features.3", "head"}
    assert (path / "spaces" / "sig" / "labels.json").is_file()
    table = runner.invoke(app, ["compare-spaces", str(path), Lens.open(path).embedding.default_name, "sig", "-q", "red"])
    assert table.exit_code == 0 and "linear CKA" in table.output
    wrong = runner.invoke(app, ["search", str(path), "red", "--space", "nope"])
    assert wrong.exit_code == 2 and "no embedding space 'nope'" in wrong.output


def test_explorer_api(lens, siglip_dir) -> None:
    add_space(lens, f"hf:{siglip_dir}", name="sig", workers=0, progress=False)
    client = TestClient(create_app([lens]))
    assert client.get("/api/lenses/0").json()["spaces"] == [lens.embedding.default_name, "sig"]
    listed = client.get("/api/lenses/0/spaces").json()
    assert [space["name"] for space in listed] == [lens.embedding.default_name, "sig"] and listed[1]["spec"].startswith("hf:…/") and listed[1]["spec"].count("/") == 1  # no local paths shown
    hits = client.get("/api/lenses/0/search", params={"q": "red", "top": 3, "space": "sig"}).json()
    assert [hit["unit"] for hit in hits] == [hit.unit for hit in lens.in_space("sig").search("red", top=3)]
    compared = client.get("/api/lenses/0/spaces/compare", params={"a": "sig", "b": "sig", "q": ["red", "blue"]}).json()
    assert compared["labels"]["top1"] == 1.0 and compared["search"]["top_overlap"] == 1.0
    assert sum(client.get("/api/lenses/0/dissect", params={"space": "sig"}).json()["counts"]["head"].values()) == len(lens.units("head"))
    refused = client.get("/api/lenses/0/search", params={"q": "red", "space": "nope"})
    assert refused.status_code == 400 and "no embedding space" in refused.json()["detail"]
    assert client.get("/spaces.html").status_code == 200


@pytest.mark.parametrize("view", [dict(crop_view="masked"), dict(crop_rule="peak+share")])
def test_masked_views_and_joined_rules_are_planned_again_as_built(view, tmp_path, colour_folder, tiny_clip_dir, siglip_dir) -> None:
    lens = build_lens(config(colour_folder, tiny_clip_dir, **view), tmp_path / "view.lens", progress=False)
    assert any(layer["crop"]["mode"] != "none" for layer in lens.manifest["layers"].values())  # some views are faded or cut twice
    add_space(lens, f"hf:{siglip_dir}", name="sig", workers=0, progress=False)  # refused if a row differed from the build's
    both = build_lens(config(colour_folder, tiny_clip_dir, **view, extra_foundations=[f"hf:{siglip_dir}"]), tmp_path / "both.lens", progress=False)
    sig = space_name(f"hf:{siglip_dir}")
    for layer in lens.layers:
        assert torch.allclose(lens.in_space("sig").arrays.theta(layer), both.in_space(sig).arrays.theta(layer), atol=1e-6)
        stored = lens.store.read_tensors(f"spaces/sig/layers/{layer}.embed.safetensors")["theta"]  # the first rule's
        torch.testing.assert_close(stored, lens.in_space("sig").arrays.theta(layer), atol=3e-3, rtol=0)


def test_extra_foundations_are_checked_before_anything_runs(colour_folder, tiny_clip_dir, siglip_dir) -> None:
    with pytest.raises(SemlensError, match="given twice"):
        config(colour_folder, tiny_clip_dir, extra_foundations=[f"hf:{tiny_clip_dir}"])  # the default one again
    with pytest.raises(SemlensError, match="given twice"):
        config(colour_folder, tiny_clip_dir, extra_foundations=[f"hf:{siglip_dir}", f"hf:{siglip_dir}"])
    result = runner.invoke(app, ["run", "--model", "py:tiny_models:tiny_cnn", "--layer", "head", "--data", f"folder:{colour_folder}",
                                 "-f", f"hf:{tiny_clip_dir}", "-f", f"hf:{tiny_clip_dir}", "--out", "never.lens"])  # fmt: skip
    assert result.exit_code == 2 and "given twice" in result.output and not Path("never.lens").exists()
