"""Every question command on a Lens of the tiny models: runs, and its --json output parses back."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image
from typer.testing import CliRunner

from semlens import BuildConfig, Lens, SemlensError, Vocabulary, build_lens
from semlens.cli import app
from semlens.lens.probes import probe_cache_path
from semlens.lens.search import probe as probe_of

runner = CliRunner()


def ask(*args) -> object:
    result = runner.invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout, parse_constant=refuse)  # standard JSON: no NaN or Infinity


def refuse(constant: str) -> None:
    raise AssertionError(f"{constant} in --json output: not standard JSON")


def built(out, model: str, layers: list[str], colour_folder, tiny_clip_dir):
    """A Lens of the tiny model ``model`` (a ``tiny_models`` function) over the colour images, at ``out``."""
    config = BuildConfig(model=f"py:tiny_models:{model}", layers=layers, data=f"folder:{colour_folder}", foundation=f"hf:{tiny_clip_dir}", k=5, workers=0)
    build_lens(config, out, progress=False)
    return out


@pytest.fixture(scope="module")
def lens_path(tmp_path_factory, colour_folder, tiny_clip_dir):
    return built(tmp_path_factory.mktemp("ask") / "tiny.lens", "tiny_cnn", ["features.3", "head:signed=true"], colour_folder, tiny_clip_dir)


def test_search_ranks_units_by_alignment_and_response(lens_path, tmp_path) -> None:
    hits = ask("search", lens_path, "red", "--top", "4", "--json")
    assert [hit["unit"] for hit in hits] == [hit.unit for hit in Lens.open(lens_path).search("red", top=4)]
    assert set(hits[0]) == {"unit", "layer", "index", "score", "label", "examples", "response"}
    assert all(-1 <= hit["response"] <= 1 for hit in hits)
    aligned = ask("search", lens_path, "red", "--top", "4", "--rank", "alignment", "--json")
    assert [hit["score"] for hit in aligned] == sorted((hit["score"] for hit in aligned), reverse=True)
    wrong = runner.invoke(app, ["search", str(lens_path), "red", "--rank", "best"])
    assert wrong.exit_code != 0 and "named, both, alignment" in wrong.output
    only_head = ask("search", lens_path, "red", "--layer", "head", "--json")
    valid_head = int(Lens.open(lens_path).arrays.valid("head").sum())  # inactive and tied units are never ranked
    assert {hit["layer"] for hit in only_head} == {"head"} and len(only_head) == valid_head
    assert runner.invoke(app, ["search", str(lens_path), "red", "--top", "0"]).exit_code == 2  # not an empty table
    with pytest.raises(SemlensError, match="top=0: ask for at least one unit"):
        Lens.open(lens_path).search("red", top=0)
    Image.new("RGB", (40, 40), "red").save(tmp_path / "red.png")
    assert len(ask("search", lens_path, "--image", tmp_path / "red.png", "--top", "3", "--json")) == 3
    lens = Lens.open(lens_path)
    assert probe_cache_path(lens.embedding.foundation_id).is_file()  # prompts cached for the next query,
    assert not lens.store.path("probes.safetensors").exists()  # outside the Lens
    custom = ask("search", lens_path, "red", "-t", "photograph of a {}", "-t", "{}", "--top", "2", "--json")
    audit = ask("search", lens_path, "red", "-t", "audit", "--top", "2", "--json")
    assert len(custom) == len(audit) == 2


def test_a_search_no_shown_unit_aligns_with_says_so(lens_path, monkeypatch) -> None:
    """On every face: the hits themselves carry the note (``SearchResults.note``), the command line prints it and
    a notebook shows it under the table."""
    import html

    from semlens.lens import search
    from semlens.lens.search import SearchHit, SearchResults

    monkeypatch.setattr(search, "_rank", lambda *args, **kwargs: SearchResults([SearchHit("features.3/1", "features.3", 1, -0.002, None, [])], rank="named"))
    expected = "no unit shown aligns with 'daisy' more than with an empty prompt (best alignment -0.002)"
    hits = Lens.open(lens_path).search("daisy")
    assert hits.note.startswith(expected) and html.escape(expected) in hits._repr_html_()
    shown = runner.invoke(app, ["search", str(lens_path), "daisy"])
    assert shown.exit_code == 0 and f"note: {expected}" in " ".join(shown.output.split())


def test_search_by_both_is_the_lower_standardised_score_of_the_lenss_valid_units(lens_path) -> None:
    import torch
    import torch.nn.functional as F

    from semlens.analysis.alignment import alignment

    lens = Lens.open(lens_path)
    assert lens.arrays.has_responses
    probe, null = probe_of(lens, "red")
    direction = F.normalize(probe, dim=0) - F.normalize(null, dim=0)
    names, aligned, responses = [], [], []
    for layer in lens.layers:
        valid = lens.arrays.valid(layer)  # inactive and tied units neither ranked nor counted in the standardisation
        names += [f"{layer}/{unit}" for unit, ok in zip(lens.units(layer), valid.tolist()) if ok]
        aligned.append(alignment(lens.arrays.theta(layer, lens.arrays.search_rule)[valid], probe[None], null)[:, 0])
        responses.append(lens.arrays.crop_responses(layer)[valid] @ direction / (direction @ lens.arrays.response_scatter @ direction).sqrt())
    aligned, responses = torch.cat(aligned), torch.cat(responses)

    def z(values: torch.Tensor) -> torch.Tensor:
        return (values - values.mean()) / values.std(unbiased=False)

    order = torch.sort(torch.minimum(z(aligned), z(responses)), descending=True, stable=True).indices[:6].tolist()
    hits = lens.search("red", top=6, rank="both")
    assert [hit.unit for hit in hits] == [names[i] for i in order]
    assert [hit.response for hit in hits] == pytest.approx(responses[order].tolist(), abs=1e-5)
    assert [hit.score for hit in hits] == pytest.approx(aligned[order].tolist(), abs=1e-5)
    with pytest.raises(SemlensError, match="rank by one of named, both, alignment"):
        lens.search("red", rank="responses")


@pytest.mark.parametrize("query", ["red", "green", "blue"])
def test_search_puts_first_the_units_the_audit_names_by_the_query(lens_path, query, monkeypatch) -> None:
    """The default ranking: of the best units by "both", those whose best concept by their crop responses (among the
    query and the Lens's vocabulary, as the audit names units) is the query come first, each part in its order."""
    from semlens.lens import search
    from semlens.lens.labels import names_by_responses
    from semlens.lens.search import NAMED_AMONG

    lens = Lens.open(lens_path)
    ranked = [hit.unit for hit in lens.search(query, top=NAMED_AMONG, rank="both")]
    units = [f"{layer}/{unit}" for layer in lens.layers for unit in lens.units(layer)]
    named = {unit for unit, best in zip(units, names_by_responses(lens, lens.layers, [query])) if best == query}
    expected = [unit for unit in ranked if unit in named] + [unit for unit in ranked if unit not in named]
    assert [hit.unit for hit in lens.search(query, top=3)] == expected[:3]
    assert [hit["unit"] for hit in ask("search", lens_path, query, "--top", "3", "--json")] == expected[:3]
    # a unit the audit names by the query, last by "both", is lifted to the top; the other rankings leave it last
    last = ranked[-1]
    monkeypatch.setattr(search, "names_by_responses", lambda lens, layers, concepts: [query if f"{layer}/{unit}" == last else None for layer in layers for unit in lens.units(layer)])
    assert lens.search(query, top=1)[0].unit == last
    assert lens.search(query, top=1, rank="both")[0].unit == ranked[0] != last


def test_the_audit_names_units_as_their_labels_would_whatever_the_last_vocabulary(explorer_lenses) -> None:
    """A unit's name by its crop responses is its label by the responses method among the audit's concepts, the
    built-in vocabulary and the stored labels' (None where its confidence is under the labels' bar), and a labelling
    with a vocabulary of two words no longer narrows the candidates (the verdicts moved with it)."""
    from semlens.lens.labels import names_by_responses, naming_candidates

    lens = Lens.open(explorer_lenses[0])  # labels held in this process only: the stored ones stay
    concepts = ["red", "noise"]
    lens.label(["fish", "dog"], save=False)
    narrow = names_by_responses(lens, lens.layers, concepts)
    lens.label(save=False)  # the built-in vocabulary
    assert names_by_responses(lens, lens.layers, concepts) == narrow
    candidates = naming_candidates(lens, concepts)
    assert candidates[:2] == concepts and len(candidates) == len({concept.lower() for concept in candidates})
    lens.label(candidates, method="responses", save=False)
    assert narrow == [label for layer in lens.layers for label in lens.labels.shown(layer)]
    assert None in narrow and any(narrow)  # some units' best concepts set them apart from nothing: unnamed


@pytest.fixture(scope="module")
def patch_lens_path(tmp_path_factory, colour_folder, tiny_clip_dir):
    """A Lens of the tiny CNN whose first conv's unit 5 detects white (``tiny_models.patch_cnn``; features.1/5, after its ReLU)."""
    return built(tmp_path_factory.mktemp("patch") / "patch.lens", "patch_cnn", ["features.1", "features.3"], colour_folder, tiny_clip_dir)


def test_search_by_the_models_response_puts_first_the_unit_a_pasted_patch_raises(patch_lens_path, tmp_path) -> None:
    """rank="model": the units a concept image raises in the model itself, as the audit's concept test measures it
    (activation AUC), where the foundation model's view of the units' examples need not show the concept."""
    import numpy as np

    overlay = np.zeros((40, 40, 4), dtype=np.uint8)  # a white square on a transparent canvas of the images' size
    overlay[14:24, 14:24] = 255
    Image.fromarray(overlay).save(tmp_path / "patch.png")
    photo = Image.fromarray(np.where(overlay[..., :3] > 0, 255, 30).astype(np.uint8))  # opaque: used as it is
    lens = Lens.open(patch_lens_path)
    hits = lens.search(images=[tmp_path / "patch.png"], rank="model", top=3)
    assert hits[0].unit == "features.1/5" and hits[0].score == 1.0 and hits[0].response is None
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    every = {hit.unit for hit in lens.search(images=[tmp_path / "patch.png"], rank="model", top=10_000)}
    units = [(f"{layer}/{name}", row, layer) for layer in lens.layers for row, name in enumerate(lens.units(layer))]
    assert every == {unit for unit, row, layer in units if not lens.arrays.inactive(layer)[row]}  # tied units too: their response is their own
    assert lens.search(images=[tmp_path / "patch.png"], rank="named", top=1)[0].unit != "features.1/5"  # the foundation model's view: not first
    # an overlay (transparent parts) is ranked by the model by default where the model loads; an opaque image and
    # a Lens without its model keep "named"
    by_default = lens.search(images=[tmp_path / "patch.png"], top=3)
    assert by_default.rank == "model" and [hit.unit for hit in by_default] == [hit.unit for hit in hits] and hits.rank == "model"
    assert lens.search(images=[photo], top=1).rank == "named" and lens.search("white", top=1).rank == "named"
    assert lens.search(images=[photo], rank="model", layers=["features.1"], top=1)[0].unit == "features.1/5"
    shown = ask("search", patch_lens_path, "--image", tmp_path / "patch.png", "--top", "3", "--json")  # the CLI's default too
    assert [hit["unit"] for hit in shown] == [hit.unit for hit in hits]
    with pytest.raises(SemlensError, match="give images and no text"):
        lens.search("white", rank="model")
    Image.fromarray(np.zeros((40, 40, 4), dtype=np.uint8)).save(tmp_path / "nothing.png")  # pasted, it changes nothing
    with pytest.raises(SemlensError, match="nothing.png is transparent all over: it shows nothing to search by"):
        lens.search(images=[tmp_path / "nothing.png"])
    wrong = Lens.open(patch_lens_path, model="py:tiny_models:tiny_cnn")  # other weights: not the Lens's model
    with pytest.raises(SemlensError, match="ranking by the model's response needs the model under study: model .* now has weights"):
        wrong.search(images=[tmp_path / "patch.png"], rank="model")
    assert wrong.search(images=[tmp_path / "patch.png"], top=1).rank == "named"  # by default: the foundation model's view


def test_ranked_by_the_model_the_units_firing_where_an_overlay_is_pasted_come_first(tmp_path, colour_folder, tiny_clip_dir) -> None:
    """Two units a pasted white square raises on every probe image (AUC 1): one fires on it, one in a corner (a unit
    downstream of it); the one located on the square comes first, though the other is the lower unit."""
    import numpy as np

    lens = Lens.open(built(tmp_path / "away.lens", "away_cnn", ["features"], colour_folder, tiny_clip_dir))
    overlay = np.zeros((32, 32, 4), dtype=np.uint8)
    overlay[20:28, 20:28] = 255
    hits = lens.search(images=[Image.fromarray(overlay)], rank="model", top=2)
    assert [hit.score for hit in hits] == [1.0, 1.0] and [hit.unit for hit in hits] == ["features/1", "features/0"]


def test_a_text_naming_a_concept_shown_to_the_lens_is_ranked_by_its_images_in_the_model(patch_lens_path, tmp_path) -> None:
    """A concept kept with its images (``concepts.remember``, or an audit's pasted artefact) is searched by name as its
    images are: by the model's response; before, and for other texts, the foundation model's view; kept with the Lens."""
    import numpy as np

    import torch

    from semlens.lens.concepts import forget, recall, remember

    shutil.copytree(patch_lens_path, tmp_path / "patch.lens")
    lens = Lens.open(tmp_path / "patch.lens")
    overlay = np.zeros((40, 40, 4), dtype=np.uint8)
    overlay[14:24, 14:24] = 255
    before = lens.search("white square", top=3)
    assert before.rank == "named" and before.concept is None and recall(lens, ["white square"]) is None
    remember(lens, "White  Square", [Image.fromarray(overlay)])
    by_name = lens.search("white square", top=3)
    by_image = lens.search(images=[Image.fromarray(overlay)], rank="model", top=3)
    assert by_name.rank == "model" and by_name.concept == "white square" and by_name[0].unit == "features.1/5"
    assert [(hit.unit, hit.score) for hit in by_name] == [(hit.unit, hit.score) for hit in by_image]
    assert lens.search("white square", rank="model", top=3).concept == "white square"
    assert "pasting the images of &#x27;white square&#x27; shown to the Lens" in by_name._repr_html_()  # the notebook says so
    assert lens.search("white square", rank="named", top=3).rank == "named"  # asked for: the foundation model's view
    assert lens.search(["white square", "box"], top=3).rank == "named"  # several texts: a probe of their mean
    assert [hit["unit"] for hit in ask("search", tmp_path / "patch.lens", "white square", "--top", "3", "--json")] == [hit.unit for hit in by_name]
    printed = runner.invoke(app, ["search", str(tmp_path / "patch.lens"), "white square", "--top", "3"])
    assert "the images of 'white square' shown to the Lens" in " ".join(printed.output.split())
    assert Lens.open(tmp_path / "patch.lens").search("white square", top=1).concept == "white square"  # kept with the Lens
    assert Lens.open(patch_lens_path).search("white square", top=1).rank == "named"  # not with another one
    with pytest.raises(SemlensError, match="must each have transparent parts.*image 0 is opaque"):
        remember(lens, "gray", [Image.new("RGB", (40, 40), (128, 128, 128))])
    with pytest.raises(SemlensError, match="give images and no text, the name of a concept the Lens was shown .* or of one semlens draws .watermark, frame"):
        lens.search("gray", rank="model")
    wrong = Lens.open(tmp_path / "patch.lens", model="py:tiny_models:tiny_cnn")  # without its model: the foundation model's view
    assert wrong.search("white square", top=1).rank == "named"
    # kept with the units an audit's concept test found detect it (Audit.detectors): they come first, then the rest
    remember(lens, "white square", [Image.fromarray(overlay)], detectors=[by_name[2].unit])
    assert recall(lens, ["white square"]).detectors == [by_name[2].unit]
    assert [hit.unit for hit in lens.search("white square", top=3)] == [by_name[2].unit, by_name[0].unit, by_name[1].unit]
    remember(lens, "white square", [Image.fromarray(overlay)], detectors=["features.9/0"])  # not a unit of this Lens: not kept
    assert recall(lens, ["white square"]).detectors == []
    # semlens's drawings (a drawn audit's) never replace images the user's audit pasted, and a search says whose they are
    from semlens.interventions.effects import Artifact
    from semlens.lens.concepts import remember_pasted

    drawing = Artifact(image=Image.new("RGBA", (6, 6), (255, 0, 0, 255)), position=(2, 2))
    remember(lens, "red logo", [Image.fromarray(overlay)])
    remember_pasted(lens, "red logo", [drawing], (40, 40), [by_name[0].unit], drawn="red")
    assert recall(lens, ["red logo"]).drawn is None and recall(lens, ["red logo"]).detectors == []
    forget(lens, "red logo")
    remember_pasted(lens, "red logo", [drawing], (40, 40), [by_name[1].unit], drawn="red")
    assert recall(lens, ["red logo"]).drawn == "red" and recall(lens, ["red logo"]).detectors == [by_name[1].unit]
    # a search for it draws the logo again in that colour (as a drawn search does), the audit's detectors first
    again = lens.search("red logo", top=3)
    assert again.rank == "model" and again[0].unit == by_name[1].unit and again.concept == "red logo"
    assert "logos semlens drew (red), the colour an audit tested" in again.ranking() and "; first the units an audit found detect it" in again.ranking()
    remember(lens, "red logo", [Image.fromarray(overlay)])  # the user's own images replace the drawings
    assert recall(lens, ["red logo"]).drawn is None and forget(lens, "red logo")
    # a concept file that is not what semlens writes (a Lens may come from anyone) is refused before it is read
    from safetensors.torch import save_file

    from semlens.store.files import DamagedLensError, LensStore

    kept = next((tmp_path / "patch.lens" / "concepts").glob("*.safetensors"))
    save_file({"image00": torch.zeros(4000, 4000, 4, dtype=torch.uint8)}, str(kept), {"semlens": '{"name": "white square"}'})
    with pytest.raises(DamagedLensError, match="not the RGBA pixels semlens writes .found U8 \\[4000, 4000, 4\\]"):
        Lens.open(tmp_path / "patch.lens").search("white square")
    pixels = {"image00": torch.from_numpy(overlay)}
    save_file(pixels, str(kept), {"semlens": json.dumps({"name": "white square", "drawn": "red"})})
    with pytest.raises(DamagedLensError, match="its drawings' colour 'red' is none semlens draws of concept 'white square'"):
        Lens.open(tmp_path / "patch.lens").search("white square")  # a colour where the name is no concept semlens draws
    for detectors in ('["features.9/0"]', '{"features.1": 5}', "not json"):
        save_file(pixels, str(kept), {"semlens": json.dumps({"name": "white square", "detectors": detectors})})
        with pytest.raises(DamagedLensError, match="its detectors are not a list of the Lens's unit names"):
            Lens.open(tmp_path / "patch.lens").search("white square")
    assert forget(lens, "white square") and not forget(lens, "white square")
    assert Lens.open(tmp_path / "patch.lens").search("white square", top=1).rank == "named"
    remember(lens, "white square", [Image.fromarray(overlay)])
    LensStore(tmp_path / "patch.lens").clear()  # --overwrite: a shown concept is semlens's own file, deleted with the Lens
    assert not any((tmp_path / "patch.lens").iterdir())


def test_a_text_naming_a_concept_semlens_draws_is_ranked_by_the_models_response_to_its_drawings(patch_lens_path, recwarn, monkeypatch) -> None:
    """A watermark, a frame, a logo, a ruler or a colour cast: the foundation model may not see it in any unit's
    examples, the model's units do; semlens draws it in its colours (or the query's) and ranks by the colour that
    raises each unit most. Features.1/5 detects white: a white frame raises it most."""
    lens = Lens.open(patch_lens_path)
    white = lens.search("a white frame", top=3)
    assert white.rank == "model" and white.concept == "frame" and white[0].unit == "features.1/5" and white[0].score == 1.0
    assert "pasting frames semlens drew (white)" in white.ranking()
    frames = lens.search("borders", top=3)  # every colour: white's is this unit's best (others raise other units)
    assert frames.drawn.startswith("frames semlens drew (12 colours") and ("features.1/5", 1.0) in [(hit.unit, hit.score) for hit in frames]
    assert lens.search("frame", rank="model", top=1).concept == "frame"
    assert lens.search("bicycle frame", top=1).rank == "named" and lens.search("frame", rank="named", top=1).rank == "named"
    printed = runner.invoke(app, ["search", str(patch_lens_path), "white frame", "--top", "3"])
    assert "raised in the model by frames semlens drew (white)" in " ".join(printed.output.split())
    assert [hit["unit"] for hit in ask("search", patch_lens_path, "white frame", "--top", "3", "--json")] == [hit.unit for hit in white]
    assert all(len(lens.search(text, top=2)) == 2 for text in ("watermark", "logo", "ruler", "blue tint"))  # each draws and ranks
    # by default, the units the text names (as "named" lifts them) come first where the drawings raise them
    import semlens.lens.search as searching

    by_model = lens.search("white frame", rank="model", top=10_000)
    assert not by_model.named_first and [hit.unit for hit in by_model[:3]] == [hit.unit for hit in white]  # none named here
    raised, unraised = by_model[5], by_model[-1]
    assert raised.score >= searching.NAMED_RAISED > unraised.score
    monkeypatch.setattr(searching, "_named_units", lambda *args: [(raised.layer, raised.index), (unraised.layer, unraised.index)])
    fused = lens.search("white frame", top=3)
    assert fused.named_first and [hit.unit for hit in fused] == [raised.unit, *(hit.unit for hit in white[:2])]
    assert "the query, where it raises them" in fused.ranking() and not lens.search("white frame", rank="model", top=3).named_first
    wrong = Lens.open(patch_lens_path, model="py:tiny_models:tiny_cnn")  # without its model: the foundation model's view, said
    assert wrong.search("white frame", top=1).rank == "named"
    assert any("not by the model's response to the frames semlens draws" in str(warning.message) for warning in recwarn)


def test_show_writes_a_grid_png(lens_path, tmp_path) -> None:
    shown = ask("show", lens_path, "head/0-", "--out", tmp_path / "unit.png", "--json")
    assert Image.open(shown["png"]).size[0] > 0 and len(shown["examples"]) == 5
    assert set(shown["examples"][0]) == {"rank", "sample", "score", "box", "source", "label"}
    lens = Lens.open(lens_path)
    left_out = [f"{layer}/{lens.units(layer)[row]}" for layer in lens.layers for row in (~lens.arrays.valid(layer)).nonzero().flatten().tolist()]
    assert left_out  # the tiny model has inactive or tied units
    result = runner.invoke(app, ["show", str(lens_path), left_out[0], "--out", str(tmp_path / "other.png")])
    assert result.exit_code == 0 and "left out of search" in " ".join(result.output.split()), result.output  # shown with a note


def test_label_dissect_and_their_storage(lens_path, tmp_path, monkeypatch) -> None:
    vocabulary = tmp_path / "vocab.toml"
    vocabulary.write_text('colours = ["red", "green", "blue"]\nshapes = ["square", "noise"]\n')
    labelled = ask("label", lens_path, "--vocabulary", vocabulary, "--threshold", "-1", "--min-confidence", "-100", "--json")
    labels, coverage = labelled["layers"], labelled["coverage"]
    assert set(labels) == {"features.3", "head"} and len(labels["head"]) == 6
    assert coverage["all"]["coverage"] == 1.0 and coverage["layers"]["head"]["labelled"] == Lens.open(lens_path).arrays.valid("head").sum()
    valid = Lens.open(lens_path).arrays.valid("head").tolist()
    entry = labels["head"][valid.index(True)]  # units without examples of their own get no label
    assert entry["label"] in {"red", "green", "blue", "square", "noise"} and entry["valid"]
    assert [e["label"] is not None for e in labels["head"]] == valid
    assert len(entry["candidates"]) == 3
    assert Lens.open(lens_path).labels.label_of(entry["unit"]) == entry["label"]
    dissected = ask("dissect", lens_path, "--out", tmp_path / "d.png", "--json")
    assert sum(dissected["counts"]["head"].values()) == 6
    assert set(dissected["counts"]["head"]) == {"colours", "shapes", "unlabelled", "inactive or tied"}
    assert dissected["counts"]["head"]["inactive or tied"] == valid.count(False)
    assert (tmp_path / "d.png").is_file()
    monkeypatch.chdir(tmp_path)
    assert ask("dissect", lens_path, "--json")["png"] is None and not (tmp_path / "dissect.png").exists()  # an answer, no file
    replaced = runner.invoke(app, ["label", str(lens_path), "--json"])  # the default vocabulary, over the stored labels
    assert replaced.exit_code == 0 and "note: these labels replace the Lens's labels from vocabulary" in " ".join(replaced.stderr.split())
    json.loads(replaced.stdout)  # the answer stays JSON
    strict = ask("label", lens_path, "--vocabulary", vocabulary, "--threshold", "5", "--json")["layers"]
    assert all(entry["label"] is None for entry in strict["head"])  # nothing passes an alignment of 5


def test_a_labelling_cut_short_leaves_no_labels_and_mismatched_label_files_are_refused(lens_path, tmp_path, monkeypatch) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    from semlens.store.files import LensStore

    copy = tmp_path / "copy.lens"
    shutil.copytree(lens_path, copy)
    Lens.open(copy).label(vocabulary=Vocabulary("a", ("red", "green", "blue"), ("colours",) * 3))

    def killed(self, name, value):  # the process dies once the layer files are written, before labels.json
        raise KeyboardInterrupt

    monkeypatch.setattr(LensStore, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        Lens.open(copy).label()  # the built-in vocabulary: other concepts under the same indices
    monkeypatch.undo()
    assert Lens.open(copy).labels.vocabulary is None  # no labels, rather than one vocabulary's indices read by another's
    Lens.open(copy).label(vocabulary=Vocabulary("a", ("red", "green", "blue"), ("colours",) * 3))
    layer_labels = copy / "layers" / "features.3.labels.safetensors"
    save_file(load_file(str(layer_labels)), str(layer_labels), {"labelling": "another"})  # a file of another labelling
    with pytest.raises(SemlensError, match=r"features.3.labels.safetensors is not of the labelling labels.json records .* label again"):
        Lens.open(copy).search("red")
    Lens.open(copy).label()
    assert Lens.open(copy).labels.vocabulary.name == "builtin"


def test_measures_similar_and_map(lens_path, tmp_path) -> None:
    measured = ask("measures", lens_path, "--json")
    assert set(measured["head"]["summary"]) == {"clarity", "polysemanticity", "redundancy", "typical"}
    assert len(measured["head"]["units"]) == 6
    assert measured["head"]["summary"]["typical"] < measured["head"]["summary"]["redundancy"]  # the scale redundancy is read against
    assert "typical pair" in runner.invoke(app, ["measures", str(lens_path)], terminal_width=200).output
    lens = Lens.open(lens_path)
    valid = lens.arrays.all_units()[0]  # names of the units with examples of their own
    similar = ask("similar", lens_path, valid[0], "--top", "3", "--json")
    assert len(similar) == 3 and all(hit["unit"] != valid[0] for hit in similar)
    everyone = ask("similar", lens_path, valid[0], "--top", "50", "--json")
    assert {hit["unit"] for hit in everyone} == set(valid[1:])  # every other valid unit, no inactive or tied one
    mapped = ask("map", lens_path, "--out", tmp_path / "new" / "map.html", "--json")  # its folder is made
    shown = runner.invoke(app, ["map", str(lens_path), "--out", str(tmp_path / "shown.html")])
    assert shown.exit_code == 0 and "map: figures" in shown.stderr and "2/2" in shown.stderr  # the steps' bar, on stderr
    assert "made the folder" not in shown.stderr
    made = runner.invoke(app, ["map", str(lens_path), "--out", str(tmp_path / "typo" / "deeper" / "m.html")])
    assert made.exit_code == 0 and f"note: made the folder {tmp_path / 'typo' / 'deeper'} for m.html" in " ".join(made.stderr.split())
    assert mapped["units"] == valid and len(mapped["x"]) == len(valid)
    assert "<script" in (tmp_path / "new" / "map.html").read_text()[:5_000_000] and (tmp_path / "new" / "map.png").is_file()


def test_compare_names_the_concepts_the_units_show_and_leaves_the_labels_shown_as_they_are(explorer_lenses) -> None:
    """Shared and unique concepts are the labels the units show (the stored ones where they are of the vocabulary,
    else made by the default method and gate); a raw alignment threshold named the demo world's Lenses as sharing
    "dog", "fire" and "person". Comparing with another vocabulary holds no labels in place of the shown ones."""
    labelled, other = Lens.open(explorer_lenses[0]), Lens.open(explorer_lenses[1])
    shown = {label for layer in labelled.layers for label in labelled.labels.shown(layer) if label}
    comparison = labelled.compare(labelled)
    assert set(comparison.shared_concepts) == shown and comparison.only_a == comparison.only_b == []
    words = ["red", "green", "blue", "stripes"]
    before = (labelled.labels.vocabulary.name, [labelled.labels.shown(layer) for layer in labelled.layers])
    compared = labelled.compare(other, words)
    assert (labelled.labels.vocabulary.name, [labelled.labels.shown(layer) for layer in labelled.layers]) == before
    fresh = Lens.open(explorer_lenses[0])
    fresh.label(words, save=False)
    assert set(compared.shared_concepts) | set(compared.only_a) == {label for layer in fresh.layers for label in fresh.labels.shown(layer) if label}


def test_compare_two_lenses_and_refuse_other_foundation_models(lens_path, tmp_path, colour_folder, tiny_clip_dir) -> None:
    other = tmp_path / "other.lens"
    build_lens(
        BuildConfig(model="py:tiny_models:tiny_cnn", layers=["head"], data=f"folder:{colour_folder}", foundation=f"hf:{tiny_clip_dir}", k=5, workers=0),
        other,
        progress=False,
    )
    compared = ask("compare", lens_path, other, "--json")
    assert compared["layers_a"] == ["features.3", "head"] and compared["layers_b"] == ["head"]
    assert len(compared["s_a_to_b"]) == 2 and len(compared["s_a_to_b"][0]) == 1
    lens = Lens.open(lens_path)
    valid = lens.arrays.all_units()[0]  # names of the units with examples of their own
    assert list(compared["best_match"]) == valid and set(compared["best_match"][valid[0]]) == {"unit", "similarity"}
    assert {"shared_concepts", "only_a", "only_b"} <= set(compared)
    shown = runner.invoke(app, ["compare", str(lens_path), str(other)])  # the tables say A and B: which Lens is which
    assert shown.exit_code == 0 and f"A:{lens_path}B:{other}" in "".join(shown.output.split())

    from tiny_foundation import SAVERS

    SAVERS["clip"](tmp_path / "clip-2")  # other random weights: another foundation model id
    third = tmp_path / "third.lens"
    build_lens(
        BuildConfig(model="py:tiny_models:tiny_cnn", layers=["head"], data=f"folder:{colour_folder}", foundation=f"hf:{tmp_path / 'clip-2'}", k=5, workers=0),
        third,
        progress=False,
    )
    refused = runner.invoke(app, ["compare", str(lens_path), str(third)])
    assert refused.exit_code == 2 and "different foundation models" in refused.output


def test_report_with_audit_graph_and_comparison_sections(tmp_path, colour_folder, tiny_clip_dir) -> None:
    lens = tmp_path / "plain.lens"
    config = BuildConfig(
        model="py:tiny_models:tiny_cnn", layers=["features.3", "head"], data=f"folder:{colour_folder}",
        foundation=f"hf:{tiny_clip_dir}", k=4, workers=0,
    )  # fmt: skip
    build_lens(config, lens, progress=False)
    out = tmp_path / "report.html"
    made = ask("report", lens, "--out", out, "--class", "red", "--spurious", "noise", "--graph", "--compare", lens, "--json")
    page = out.read_text()
    assert made["html"] == str(out) and made["graphs"] == 1 and made["audits"][0]["class"] == "red"
    for heading in ("Audit of class red", "Attribution graph of class red", "Comparison with plain.lens"):
        assert heading in page, heading
    refused = runner.invoke(app, ["report", str(lens), "--out", str(out), "--class", "red"])
    assert refused.exit_code == 2 and "--spurious" in refused.output


def test_audit_of_every_class_needs_the_suspected_concept(lens_path) -> None:
    result = runner.invoke(app, ["audit", str(lens_path), "--all"])
    assert result.exit_code == 2 and "--all audits every class against the spurious concepts you suspect: give --spurious" in " ".join(result.output.split())
    ranked = ask("audit", lens_path, "--all", "--spurious", "stripes", "--json")
    assert [audit["class"] for audit in ranked] and all("shares" in audit for audit in ranked)
    unused = runner.invoke(app, ["audit", str(lens_path), "--all", "--spurious", "stripes", "--class", "red", "--valid", "red"])
    assert unused.exit_code == 2 and "it takes no --class, --valid: audit one class with --class for those" in " ".join(unused.output.split())


def test_an_audit_of_one_class_takes_its_name_as_the_valid_concept_unless_given_one(lens_path) -> None:
    """As ``--all`` does: a user who names the class and the concept they suspect gets an audit, and is told
    which valid concept it took."""
    named = runner.invoke(app, ["audit", str(lens_path), "--class", "red", "--spurious", "stripes"])
    assert named.exit_code == 0 and "valid concept: red (the class's name; --valid gives others)" in " ".join(named.output.split())
    given = runner.invoke(app, ["audit", str(lens_path), "--class", "red", "--valid", "red", "--spurious", "stripes"])
    assert given.exit_code == 0 and "valid concept:" not in given.output
    assert ask("audit", lens_path, "--class", "red", "--spurious", "stripes", "--json")["valid"] == ["red"]
    refused = runner.invoke(app, ["audit", str(lens_path), "--class", "red", "--valid", "red"])
    said = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "tests a concept you suspect it relies on: give one (--spurious watermark" in said
    assert "semlens relevant LENS --class red" in said and "spurious=" not in said  # what to run first, in this face's words
    with pytest.raises(SemlensError, match=r"spurious=\['watermark'\].*lens\.relevant_units\('red'\)"):
        Lens.open(lens_path).audit("red")


def test_an_audit_reads_every_layer_but_the_logits_unless_told_to(lens_path) -> None:
    """The logits' relevance for a class lies wholly on its own unit, which would carry most of the shares."""
    from semlens.lens.audits import logit_layers

    lens = Lens.open(lens_path)
    assert logit_layers(lens) == ["head"]
    default, features = lens.audit("red", spurious=["stripes"]), lens.audit("red", spurious=["stripes"], layers=["features.3"])
    assert {unit.unit.partition("/")[0] for unit in default.units} == {"features.3"} and default.shares == features.shares
    with_logits = lens.audit("red", spurious=["stripes"], layers=["features.3", "head"])
    assert any(unit.unit.startswith("head/") for unit in with_logits.units)


def test_a_class_without_samples_in_the_class_relevance_data_is_refused_not_audited_empty(tmp_path, colour_folder, tiny_clip_dir) -> None:
    reds = tmp_path / "reds"
    shutil.copytree(colour_folder / "red", reds / "red")  # class relevance sees only red images
    lens = tmp_path / "reds.lens"
    config = BuildConfig(
        model="py:tiny_models:tiny_cnn", layers=["features.3", "head"], data=f"folder:{colour_folder}",
        foundation=f"hf:{tiny_clip_dir}", k=4, workers=0, relevance_data=f"folder:{reds}",
    )  # fmt: skip
    build_lens(config, lens, progress=False)
    assert ask("audit", lens, "--class", "red", "--valid", "red", "--spurious", "noise", "--json")["class"] == "red"
    for command in (["audit", str(lens), "--class", "green", "--valid", "green", "--spurious", "noise"], ["graph", str(lens), "--class", "green"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert "class green has no samples in the class-relevance data" in " ".join(result.output.split()), result.output


def test_results_read_in_a_line_or_a_few_outside_a_notebook(lens_path) -> None:
    """In a script or a REPL a result prints what it answers, not every field of every unit (an audit's repr ran to
    6 500 characters; a search's said nothing of how it ranked)."""
    lens = Lens.open(lens_path)
    found = lens.search("red", top=3)
    shown = repr(found).splitlines()
    assert shown[0].startswith("SearchResults: 3 units ranked by alignment") and f"(rank={found.rank!r})" in shown[0] and len(shown) == 4
    assert all(line.startswith(f"  {hit.unit}: score ") for line, hit in zip(shown[1:], found))
    audit = lens.audit(lens.classes[0], spurious=["noise"])
    assert repr(audit).startswith(f"Audit(class {lens.classes[0]!r}") and "spurious share" in repr(audit) and len(repr(audit)) < 400
    assert repr(lens.labels).startswith("LabelStore(")
