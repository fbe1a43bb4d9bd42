"""A Lens from a stranger: tampered specs run no code, tampered roots and changed folders show no wrong or
foreign images, damaged arrays get one clear message, a read-only Lens answers everything and nothing
(neither a command nor an explorer GET) writes into a Lens."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from semlens import BuildConfig, Lens, SemlensError, build_lens
from semlens.cli import app
from semlens.store.files import DamagedLensError
from semlens.store.trust import UntrustedSpecError
from semlens.web.app import create_app

runner = CliRunner()
MARKER_MODULE = """
from pathlib import Path
Path({marker!r}).write_text("imported")
def factory(*args, **kwargs):
    Path({marker!r}).write_text("called")
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory, colour_folder, tiny_clip_dir) -> Path:
    out = tmp_path_factory.mktemp("trust") / "tiny.lens"
    config = BuildConfig(
        model="py:tiny_models:tiny_cnn", layers=["features.3", "head"], data=f"folder:{colour_folder}",
        foundation=f"hf:{tiny_clip_dir}", k=4, workers=0, class_relevance=False,
    )  # fmt: skip
    build_lens(config, out, progress=False)
    return out


@pytest.fixture
def stranger(monkeypatch, tmp_path):
    """A user who built none of the test's Lenses: an empty trust file, an empty cache."""
    monkeypatch.setenv("SEMLENS_CACHE", str(tmp_path / "stranger-cache"))


def received(built: Path, tmp_path: Path, **specs: str) -> Path:
    """A copy of ``built`` whose manifest names ``specs`` (model, data, foundation) instead."""
    copy = tmp_path / "received.lens"
    shutil.copytree(built, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    for kind, spec in specs.items():
        target = manifest["foundation"] if kind == "foundation" else manifest["identity"][kind]
        target["spec"] = spec
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.fixture
def marker(tmp_path, monkeypatch) -> Path:
    """A file that importing the module ``evil`` (on the path) writes, and calling ``evil.factory`` rewrites."""
    written = tmp_path / "ran"
    (tmp_path / "evil.py").write_text(MARKER_MODULE.format(marker=str(written)))
    monkeypatch.syspath_prepend(str(tmp_path))
    return written


def files_of(root: Path) -> dict[str, int]:
    return {str(path.relative_to(root)): path.stat().st_mtime_ns for path in root.rglob("*")}


def test_a_tampered_lens_runs_no_code_in_any_command_or_route(built, tmp_path, marker, stranger) -> None:
    copy = received(built, tmp_path, model="py:evil:factory", data="py:evil:factory", foundation="py:evil:factory")
    lens = Lens.open(copy)
    assert not lens.trusted
    for question in (lambda: lens.search("red"), lambda: lens.label(), lambda: lens.sources.model()):
        with pytest.raises(UntrustedSpecError, match="imports and runs Python code"):
            question()
    with pytest.raises(UntrustedSpecError, match=r"data=FOLDER\)"):  # in Python's words; the command line says --probe-data
        lens.examples.image(lens.examples.concept_examples("head/0")[0])
    for command in (["search", copy, "red"], ["show", copy, "head/0", "-o", tmp_path / "u.png"], ["label", copy], ["map", copy]):
        result = runner.invoke(app, [str(part) for part in command])
        assert result.exit_code == 2 and "--trust" in " ".join(result.output.split()), result.output
    client = TestClient(create_app([copy]))
    unit = client.get("/api/lenses/0/layers/head/units/0/examples").json()[0]
    assert unit["thumbnail"] is None and unit["image"] is None  # no URL to an image the server cannot read; asked anyway:
    pictures = [f"/api/lenses/0/layers/head/units/0/examples/0/{kind}" for kind in ("thumbnail", "image")]
    for url in ("/api/lenses/0/search?q=red", *pictures, "/api/lenses/0/map", "/api/lenses/0/dissect"):
        response = client.get(url)
        assert response.status_code == 400 and "trust" in response.json()["detail"], url
    assert not marker.exists()


def test_every_command_that_reads_labels_takes_the_foundation_model_and_trust_its_message_names(built, tmp_path, tiny_clip_dir, stranger) -> None:
    """An untrusted Lens whose foundation model is code: each command's message names --foundation SPEC and --trust,
    and each command takes both (dissect, relevant, similar, show and explain took neither or one; relevant needs class
    relevance, which this Lens lacks)."""
    copy = received(built, tmp_path, foundation="py:evil:factory")
    commands = (["dissect", copy, "-o", tmp_path / "d.png"], ["similar", copy, "head/0"], ["show", copy, "head/0", "-o", tmp_path / "u.png"])
    refused = " ".join(runner.invoke(app, [str(part) for part in commands[0]]).output.split())
    assert "Name the foundation model yourself (--foundation SPEC)" in refused and "pass --trust" in refused, refused
    for command in commands:
        result = runner.invoke(app, [str(part) for part in (*command, "--foundation", f"hf:{tiny_clip_dir}", "--trust")])
        assert "No such option" not in result.output and result.exit_code == 0, (command, result.output)
    explained = runner.invoke(app, ["explain", str(copy), "0", "--foundation", f"hf:{tiny_clip_dir}", "--trust"])
    assert "No such option" not in explained.output and explained.exit_code == 0, explained.output


def test_the_user_names_what_an_untrusted_lens_may_not(built, tmp_path, colour_folder, tiny_clip_dir, stranger) -> None:
    copy = received(built, tmp_path)  # its specs name local folders: not followed without trust
    with pytest.raises(UntrustedSpecError, match="reads"):
        Lens.open(copy).search("red")
    lens = Lens.open(copy, foundation=f"hf:{tiny_clip_dir}", data=colour_folder)
    assert lens.search("red", top=3) and lens.examples.image(lens.examples.concept_examples("head/0")[0]).size[0] > 0
    result = runner.invoke(app, ["search", str(copy), "red", "--foundation", f"hf:{tiny_clip_dir}", "--json"])
    assert result.exit_code == 0, result.output
    # a warning that quotes why the model is not followed says it in the command line's words there (it said trust=True)
    with pytest.warns(UserWarning, match="ranked by name and alignment") as caught:
        drawn = runner.invoke(app, ["search", str(copy), "frame", "--foundation", f"hf:{tiny_clip_dir}", "--probe-data", str(colour_folder)])
    said = [warning.message.on_the_command_line() for warning in caught if "ranked by name" in str(warning.message)][0]
    assert drawn.exit_code == 0 and "Name the model yourself (--model SPEC)" in said and "pass --trust" in said and "trust=True" not in said
    result = runner.invoke(app, ["show", str(copy), "head/0", "--probe-data", str(colour_folder), "-o", str(tmp_path / "u.png")])
    assert result.exit_code == 0, result.output
    assert Lens.open(copy, trust=True).search("red", top=1)
    assert runner.invoke(app, ["trust", str(copy)]).exit_code == 0
    assert Lens.open(copy).trusted and Lens.open(copy).search("red", top=1)


def test_a_lens_served_without_its_images_lists_their_sources_instead_of_asking_for_each(built, tmp_path, tiny_clip_dir, stranger) -> None:
    """The explorer says once why a received Lens's example images cannot be shown and gives no image URL (every
    thumbnail of a page was requested and failed, about 80 a page); with the data named, the URLs are back."""
    copy = received(built, tmp_path)
    client = TestClient(create_app([Lens.open(copy, foundation=f"hf:{tiny_clip_dir}")]))
    info = client.get("/api/lenses").json()[0]
    assert "probe data" in info["images"] and "--probe-data" in info["images"]  # why, and what to do
    hits = client.get("/api/lenses/0/search", params={"q": "red", "top": 3}).json()
    assert hits and all(hit["thumbnails"] == [] for hit in hits)
    examples = client.get("/api/lenses/0/layers/head/units/0/examples").json()
    assert examples and all(example["thumbnail"] is None and example["image"] is None and example["source"] for example in examples)
    served = TestClient(create_app([Lens.open(copy, foundation=f"hf:{tiny_clip_dir}", data=str(built.parent / "missing"))]))
    assert served.get("/api/lenses").json()[0]["images"]  # a folder that is not there: said too
    given = TestClient(create_app([Lens.open(copy, foundation=f"hf:{tiny_clip_dir}", data=Lens.open(built).manifest["identity"]["data"]["spec"])]))
    assert given.get("/api/lenses").json()[0]["images"] is None
    assert all(hit["thumbnails"] for hit in given.get("/api/lenses/0/search", params={"q": "red", "top": 3}).json())


def test_samples_json_names_no_files_that_are_shown(built, tmp_path, colour_folder) -> None:
    copy = received(built, tmp_path)
    table = json.loads((copy / "samples.json").read_text())
    original = Lens.open(built)
    example = original.examples.concept_examples("head/0")[0]
    table["root"] = "/"
    table["paths"] = ["etc/passwd" for _ in table["paths"]]
    (copy / "samples.json").write_text(json.dumps(table))
    tampered = Lens.open(copy, data=colour_folder)
    shown = tampered.examples.image(tampered.examples.concept_examples("head/0")[0])
    expected = original.examples.image(example)
    assert (shown.size, shown.mode, shown.tobytes()) == (expected.size, expected.mode, expected.tobytes())


def test_a_changed_probe_folder_is_reported_not_shown(built, tmp_path, colour_folder) -> None:
    changed = tmp_path / "changed"
    shutil.copytree(colour_folder, changed)
    first = sorted(path for path in changed.rglob("*.png"))[0]
    Image.new("RGB", (40, 40), "white").save(first)
    lens = Lens.open(built, data=changed)
    with pytest.raises(SemlensError, match="not what this Lens was built from"):
        lens.examples.image(lens.examples.concept_examples("head/0")[0])


def test_damaged_arrays_get_one_clear_message(built, tmp_path) -> None:
    overwritten = received(built, tmp_path)
    theta = next(overwritten.glob("layers/head.embed.safetensors"))
    data = bytearray(theta.read_bytes())
    data[-8:] = b"\x00" * 8
    theta.write_bytes(bytes(data))
    with pytest.raises(DamagedLensError, match="head.embed"):
        Lens.open(overwritten).arrays.theta("head")
    truncated = tmp_path / "truncated.lens"
    shutil.copytree(built, truncated)
    crops = truncated / "crops.safetensors"
    crops.write_bytes(crops.read_bytes()[:100])
    with pytest.raises(DamagedLensError, match="crops.safetensors"):
        Lens.open(truncated)


@pytest.mark.parametrize(("file", "key"), [("layers/head.embed.safetensors", "crop_index"), ("layers/head.topk.safetensors", "ids"), ("layers/head.topk.safetensors", "inactive")])
def test_a_consistent_lens_with_arrays_of_another_dtype_is_damaged_not_a_crash(built, tmp_path, file, key) -> None:
    from safetensors.torch import load_file, save_file

    from semlens.store.files import LensStore

    copy = received(built, tmp_path)
    arrays = load_file(str(copy / file))
    arrays[key] = arrays[key].float() + 0.5  # indices and flags as fractions, as someone else's writer might store them
    save_file(arrays, str(copy / file))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["arrays"][file] = LensStore(copy).array_record(file)  # the manifest agrees: only the dtype is wrong
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DamagedLensError, match=f"{file}: its array '{key}' holds float32, where semlens writes (integer|bool) values"):
        lens = Lens.open(copy)
        lens.measures("head")
        lens.examples.concept_examples("head/0")


def forged(built: Path, tmp_path: Path, file: str, change) -> Path:
    """A copy of ``built`` whose array file ``file`` holds ``change(arrays)``, its size and hash recorded to match:
    consistent as far as hashes go, only the shapes are wrong."""
    from safetensors.torch import load_file, save_file

    from semlens.store.files import LensStore

    copy = received(built, tmp_path)
    arrays = load_file(str(copy / file))
    change(arrays)
    save_file({key: value.contiguous() for key, value in arrays.items()}, str(copy / file))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["arrays"][file] = LensStore(copy).array_record(file)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


FORGERIES = {
    "theta of another width": ("layers/head.embed.safetensors", "theta", lambda a: a.update(theta=torch.randn(len(a["theta"]), 64))),
    "more units": ("layers/head.topk.safetensors", "ids", lambda a: a.update(ids=torch.zeros(9, a["ids"].shape[1], dtype=torch.int64))),
    "fewer slots": ("layers/features.3.embed.safetensors", "crop_index", lambda a: a.update(crop_index=a["crop_index"][:, :2])),
    "maps of one example less": ("layers/features.3.topk.safetensors", "maps", lambda a: a.update(maps=a["maps"][:, 1:])),
    "crop table rows that disagree": ("crops.safetensors", "embeddings", lambda a: a.update(embeddings=a["embeddings"][:3])),
    "a flat box table": ("crops.safetensors", "boxes", lambda a: a.update(boxes=a["boxes"].reshape(-1))),
}


@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_forged_lens_with_other_shapes_is_damaged_at_open(built, tmp_path, forgery) -> None:
    file, key, change = FORGERIES[forgery]
    copy = forged(built, tmp_path, file, change)
    with pytest.raises(DamagedLensError, match=f"is damaged: {file}: its array '{key}' has shape .*, where this Lens's manifest needs"):
        Lens.open(copy)
    for command in (["search", copy, "red"], ["show", copy, "head/0", "-o", tmp_path / "u.png"], ["measures", copy], ["info", copy]):
        result = runner.invoke(app, [str(part) for part in command])
        assert result.exit_code == 2 and "Traceback" not in result.output and "is damaged" in result.output, result.output


def test_a_manifest_whose_sizes_are_not_counts_is_damaged(built, tmp_path) -> None:
    copy = received(built, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["layers"]["head"]["units"] = "6"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DamagedLensError, match="manifest.json: its layers.head.units is '6', where semlens writes a positive whole number"):
        Lens.open(copy)


def test_a_read_only_lens_answers_everything_and_nothing_writes_into_a_lens(built, tmp_path, monkeypatch) -> None:
    copy = received(built, tmp_path)
    before = files_of(copy)
    monkeypatch.setattr("semlens.lens.spaces.writable", lambda _folder: False)  # as for a read-only mount (root may write anyway)
    lens = Lens.open(copy)
    labels = lens.label()
    assert lens.labels.label_of("head/0") == Lens.open(copy).labels.label_of("head/0") and set(labels) == {"features.3", "head"}
    assert lens.search("red", top=2) and lens.labels.dissect()
    client = TestClient(create_app([copy]))
    unit = client.get("/api/lenses/0/layers/head/units/0").json()
    for url in ("/api/lenses/0/search?q=red", unit["examples"][0]["thumbnail"], unit["examples"][0]["image"], "/api/lenses/0/dissect"):
        assert client.get(url).status_code == 200, url
    for command in (["search", copy, "red"], ["label", copy], ["measures", copy], ["export", copy, "-o", tmp_path / "export"]):
        result = runner.invoke(app, [str(part) for part in command])
        assert result.exit_code == 0, result.output
    assert files_of(copy) == before


def test_explorer_gets_write_nothing_into_a_writable_lens(built, tmp_path) -> None:
    copy = received(built, tmp_path)
    (copy / "labels.json").unlink(missing_ok=True)
    before = files_of(copy)
    client = TestClient(create_app([copy]))
    unit = client.get("/api/lenses/0/layers/head/units/0").json()
    for url in ("/api/lenses/0/search?q=red", unit["examples"][0]["thumbnail"], "/api/lenses/0/dissect", "/api/lenses/0/map"):
        assert client.get(url).status_code == 200, url
    assert files_of(copy) == before
    # nor the command line's questions, which label a Lens without labels first (they wrote labels.json into it)
    for command in (["search", copy, "red"], ["measures", copy], ["report", copy, "--out", tmp_path / "report.html"]):
        result = runner.invoke(app, [str(part) for part in command])
        assert result.exit_code == 0, result.output
    assert files_of(copy) == before
    served = client.get("/api/lenses").json()[0]
    assert served["data"].startswith("folder:…/") and served["data"].count("/") == 1  # where the data lives is not shown


def test_a_spec_hidden_behind_whitespace_is_refused_as_the_loader_would_read_it(built, tmp_path, marker, stranger) -> None:
    copy = received(built, tmp_path, model=" py:evil:factory", data="\tpy:evil:factory", foundation="\u3000py:evil:factory")
    lens = Lens.open(copy)
    for question in (lambda: lens.search("red"), lambda: lens.sources.model(), lambda: lens.sources.probe_data):
        with pytest.raises(UntrustedSpecError, match="imports and runs Python code"):
            question()
    assert not marker.exists()


def test_trust_covers_every_spec_the_lens_makes_semlens_follow(built, tmp_path, stranger) -> None:
    copy = received(built, tmp_path)
    assert runner.invoke(app, ["trust", str(copy)]).exit_code == 0 and Lens.open(copy).trusted
    manifest = json.loads((copy / "manifest.json").read_text())
    changes = {
        "foundation": lambda m: m["foundation"].update(spec="py:evil:factory"),
        "an SAE file": lambda m: m["layers"]["head"]["spec"].update(sae="/tmp/evil.safetensors"),
        "a space": lambda m: m.setdefault("spaces", {}).update(second={"spec": "py:evil:factory", "complete": True}),
        "a build setting": lambda m: m["settings"].update(model="py:evil:factory"),
    }
    for what, change in changes.items():
        changed = json.loads(json.dumps(manifest))
        change(changed)
        (copy / "manifest.json").write_text(json.dumps(changed))
        assert not Lens.open(copy).trusted, what  # the same build id with another spec: another Lens
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert Lens.open(copy).trusted


def test_a_look_alike_lens_gets_a_cache_of_its_own(built, tmp_path) -> None:
    copy = received(built, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    assert Lens.open(copy).embedding.cache.root == Lens.open(built).embedding.cache.root  # a copy shares the cache it can
    name = next(iter(manifest["arrays"]))
    manifest["arrays"][name]["sha256"] = "0" * 64  # same build id and specs, other arrays
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert Lens.open(copy).embedding.cache.root != Lens.open(built).embedding.cache.root


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda m: m.setdefault("spaces", {}).update({"../../outside": {"spec": "x", "complete": True}}), "space name '../../outside' is not valid"),
        (lambda m: m["arrays"].update({"../../etc/passwd": {"bytes": 1, "sha256": "0"}}), "names a file outside itself"),
        (lambda m: m["arrays"].update({"/etc/passwd": {"bytes": 1, "sha256": "0"}}), "names a file outside itself"),
        (lambda m: m.update(identity=None), "its identity should be tables"),
    ],
)
def test_a_manifest_cannot_lead_semlens_out_of_the_lens(built, tmp_path, tamper, message) -> None:
    copy = received(built, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    tamper(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SemlensError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Lens.open(copy)
    result = runner.invoke(app, ["info", str(copy)])
    assert result.exit_code == 2 and "Traceback" not in result.output


@pytest.mark.parametrize(
    "name, content",
    [("samples.json", "{not json"), ("samples.json", '{"ids": [0], "paths": 5, "labels": [0]}'), ("labels.json", '{"vocabulary": 5}'),
     ("labels.json", '{"vocabulary": {"name": "v", "concepts": [1], "categories": ["c"]}, "threshold": 0.1}')],
)  # fmt: skip
def test_a_json_file_not_of_semlens_form_is_reported_as_damage(built, tmp_path, name, content) -> None:
    copy = received(built, tmp_path)
    runner.invoke(app, ["label", str(copy)])  # labels.json, samples.json: both there before one is spoilt
    (copy / name).write_text(content)
    result = runner.invoke(app, ["show", str(copy), "features.3/0"] if name == "samples.json" else ["search", str(copy), "red"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"is damaged: {name}: it is not the JSON semlens writes" in " ".join(result.output.split())


@pytest.mark.parametrize("name", ["samples.json", "labels.json", "layers/head.topk.safetensors"])
def test_a_link_out_of_the_lens_is_not_followed(built, tmp_path, name) -> None:
    copy = received(built, tmp_path)
    runner.invoke(app, ["label", str(copy)])
    outside = tmp_path / "outside.txt"
    outside.write_text("not the Lens's")
    (copy / name).unlink()
    (copy / name).symlink_to(outside)
    with pytest.raises(DamagedLensError, match="links .* to a file outside itself"):
        lens = Lens.open(copy)
        lens.examples.concept_examples("features.3/0")
        lens.search("red")
    assert outside.read_text() == "not the Lens's"


def test_control_characters_from_a_lens_reach_the_terminal_as_escapes(built, tmp_path, stranger) -> None:
    copy = received(built, tmp_path, model="zoo:evil\x1b[2J\u202e")
    result = runner.invoke(app, ["info", str(copy)])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\u202e" not in result.output and "zoo:evil\\x1b[2J\\u202e" in result.output
