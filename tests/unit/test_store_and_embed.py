"""The Lens directory on disk (atomic writes, manifest checks) and the crop table that feeds embedding."""

import json
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image

from semlens._util.errors import SemlensError
from semlens.foundation import FoundationModel
from semlens.lens import probes as probes_module
from semlens.lens.probes import ProbeEncoder, read_probe_cache
from semlens.model.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from semlens.pipeline.embed import CropChunks, CropTable, cut_crops, mean_embeddings, plan_crops
from semlens.store.files import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    LensStore,
    UnreadableLensError,
    atomic_write,
    layer_file,
)

# ----------------------------------------------------------------------------------------------
# LensStore


def test_tensors_round_trip_with_dtypes_and_metadata(tmp_path):
    store = LensStore(tmp_path / "lens")
    tensors = {
        "scores": torch.randn(3, 4),
        "half": torch.randn(5).half(),
        "brain": torch.randn(2, 2).bfloat16(),
        "ids": torch.arange(6, dtype=torch.int64).reshape(2, 3) - 1,
        "inactive": torch.tensor([True, False]),
        "transposed": torch.arange(6.0).reshape(2, 3).T,  # not contiguous
    }
    store.write_tensors("layers/a.topk.safetensors", tensors, metadata={"fingerprint": "abc", "next_index": "7"})
    loaded = store.read_tensors("layers/a.topk.safetensors")
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype
        assert torch.equal(loaded[name], tensor)
    assert store.read_metadata("layers/a.topk.safetensors") == {"fingerprint": "abc", "next_index": "7"}
    store.write_tensors("plain.safetensors", {"x": torch.zeros(1)})
    assert store.read_metadata("plain.safetensors") == {}


def test_the_same_tensors_and_metadata_make_the_same_bytes(tmp_path):
    store, metadata = LensStore(tmp_path), {key: f"value {key}" for key in "abcdefgh"}  # safetensors orders them anew per file
    for copy in range(4):
        store.write_tensors(f"copy{copy}.safetensors", {"x": torch.arange(3.0)}, metadata)
    assert len({(tmp_path / f"copy{copy}.safetensors").read_bytes() for copy in range(4)}) == 1
    assert store.read_metadata("copy0.safetensors") == metadata


def test_metadata_of_an_older_lens_is_read_as_it_was_written(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "old.safetensors"), {"heatmaps": "key", "origin": "computed"})  # unpacked
    assert LensStore(tmp_path).read_metadata("old.safetensors") == {"heatmaps": "key", "origin": "computed"}


def test_json_round_trip(tmp_path):
    store = LensStore(tmp_path)
    value = {"ids": [3, 1], "paths": ["a/ü.png", None], "nested": {"x": 1.5, "flag": True}}
    store.write_json("samples.json", value)
    assert store.read_json("samples.json") == value
    assert json.loads((tmp_path / "samples.json").read_text(encoding="utf-8")) == value


def test_atomic_write_replaces_the_file(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    atomic_write(target, lambda temporary: temporary.write_text("first"))
    atomic_write(target, lambda temporary: temporary.write_text("second"))
    assert target.read_text() == "second"
    assert [path.name for path in target.parent.iterdir()] == ["file.txt"]


def test_atomic_write_keeps_the_old_file_and_no_temporary_when_the_writer_fails(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("old content")

    def half_then_fail(temporary):
        temporary.write_text("half of the new con")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old content"
    assert [path.name for path in tmp_path.iterdir()] == ["file.txt"]


def test_clear_removes_what_semlens_wrote_and_keeps_the_folder(tmp_path):
    store = LensStore(tmp_path / "lens")
    store.write_manifest({"format": FORMAT, "format_version": FORMAT_VERSION})
    store.write_tensors(layer_file("conv", "topk"), {"x": torch.zeros(1)})
    store.write_tensors("embed.partial/chunk/000000000.safetensors", {"x": torch.zeros(1)})
    store.clear()
    assert store.root.is_dir() and not any(store.root.iterdir())
    store.clear()  # an empty directory is fine
    LensStore(tmp_path / "missing").clear()  # and a missing one


@pytest.mark.parametrize("foreign", ["photos.txt", "layers/plot.png", "spaces/x/notes.md", "notes.json"])
def test_clear_refuses_a_lens_that_holds_files_semlens_does_not_write(tmp_path, foreign):
    store = LensStore(tmp_path)
    store.write_manifest({"format": FORMAT, "format_version": FORMAT_VERSION})
    store.write_tensors(layer_file("conv", "topk"), {"x": torch.zeros(1)})
    (tmp_path / foreign).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / foreign).write_text("precious")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SemlensError, match=f"holds files semlens does not write \\({foreign}\\).*nothing was deleted"):
        store.clear()
    assert sorted(tmp_path.rglob("*")) == before


def test_clear_refuses_a_link_and_leaves_its_target(tmp_path):
    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    store = LensStore(tmp_path / "lens")
    store.write_manifest({"format": FORMAT, "format_version": FORMAT_VERSION})
    (store.root / "layers").symlink_to(outside)
    with pytest.raises(SemlensError, match="does not write \\(layers\\)"):
        store.clear()
    assert (outside / "keep").is_dir()


@pytest.mark.parametrize("manifest", [None, '{"tool": "another"}', "{truncated"])
def test_clear_refuses_a_directory_without_a_semlens_manifest(tmp_path, manifest):
    (tmp_path / "photos.txt").write_text("precious")
    if manifest is not None:
        (tmp_path / MANIFEST).write_text(manifest)
    with pytest.raises(SemlensError, match="refusing to delete anything"):
        LensStore(tmp_path).clear()
    assert (tmp_path / "photos.txt").read_text() == "precious"


def test_files_get_the_permissions_of_the_umask_arrays_as_json(tmp_path):
    store = LensStore(tmp_path)
    old = os.umask(0o027)
    try:
        store.write_tensors("a.safetensors", {"x": torch.zeros(1)})
        store.write_json("b.json", {})
    finally:
        os.umask(old)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in tmp_path.iterdir()}
    assert modes == {"a.safetensors": 0o640, "b.json": 0o640}


def test_a_file_the_user_may_not_read_is_one_clear_error(tmp_path, monkeypatch):
    import builtins
    import io

    store = LensStore(tmp_path, {"a.safetensors": {"bytes": 0, "sha256": "0"}})
    store.write_manifest({"format": FORMAT, "format_version": FORMAT_VERSION})
    store.write_tensors("a.safetensors", {"x": torch.zeros(1)})
    real_open = builtins.open

    def refused(file, *args, **kwargs):  # as for a Lens of another user, its files private (root reads anything)
        if str(file).startswith(str(tmp_path)):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refused)
    monkeypatch.setattr(io, "open", refused)
    for read in (store.read_manifest, lambda: store.read_tensors("a.safetensors"), lambda: store.read_json("b.json")):
        with pytest.raises(UnreadableLensError, match="cannot be read by this user: .*permission denied.*chmod"):
            read()


def test_manifest_round_trip(tmp_path):
    store = LensStore(tmp_path)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "layers": {"conv": {"units": 4}}}
    store.write_manifest(manifest)
    assert store.has_manifest()
    assert store.read_manifest() == manifest


def test_read_manifest_of_a_directory_without_one_says_how_to_build(tmp_path):
    store = LensStore(tmp_path)
    assert not store.has_manifest()
    with pytest.raises(SemlensError, match="is not a Lens directory \\(no manifest.json\\).*semlens run"):
        store.read_manifest()


@pytest.mark.parametrize("manifest", [{"format": "something-else", "format_version": 1}, {"layers": {}}])
def test_read_manifest_rejects_another_format(tmp_path, manifest):
    store = LensStore(tmp_path)
    store.write_json(MANIFEST, manifest)
    with pytest.raises(SemlensError, match="is not a semlens Lens manifest"):
        store.read_manifest()


def test_read_manifest_rejects_a_newer_format_version(tmp_path):
    store = LensStore(tmp_path)
    store.write_manifest({"format": FORMAT, "format_version": FORMAT_VERSION + 1})
    with pytest.raises(SemlensError, match=f"format version {FORMAT_VERSION + 1}, newer .*upgrade semlens"):
        store.read_manifest()


@pytest.mark.parametrize("text", ["{truncated", "[1, 2]"])
def test_read_manifest_rejects_a_manifest_that_is_not_a_json_object(tmp_path, text):
    (tmp_path / MANIFEST).write_text(text)
    with pytest.raises(SemlensError, match="not a semlens Lens manifest"):
        LensStore(tmp_path).read_manifest()


@pytest.mark.parametrize(
    "layer,kind,name",
    [
        ("features.7", "topk", "layers/features.7.topk.safetensors"),
        ("blocks.0-a_b", "embed", "layers/blocks.0-a_b.embed.safetensors"),
        ("encoder/layers[3]:x", "topk", "layers/encoder_layers_3__x.topk.safetensors"),
    ],
)
def test_layer_file_names_keep_module_paths_and_replace_unsafe_characters(layer, kind, name):
    assert layer_file(layer, kind) == name


# ----------------------------------------------------------------------------------------------
# crop table


WHOLE, LEFT, RIGHT = [0, 0, 8, 8], [0, 0, 4, 4], [4, 4, 8, 8]  # boxes: x0, y0, x1, y1


def test_plan_crops_deduplicates_sample_box_pairs_across_units_and_layers():
    samples = {
        "conv": torch.tensor([[7, 2, -1], [2, 7, 7]]),
        "head": torch.tensor([[2, 5, -1]]),
    }
    boxes = {
        "conv": torch.tensor([[LEFT, WHOLE, RIGHT], [WHOLE, LEFT, RIGHT]]),
        "head": torch.tensor([[WHOLE, WHOLE, LEFT]]),  # the empty slot's box matches a real one: still ignored
    }
    table = plan_crops(samples, boxes)
    assert table.rows.tolist() == [[2, *WHOLE], [5, *WHOLE], [7, *LEFT], [7, *RIGHT]]
    assert table.index["conv"].tolist() == [[2, 0, -1], [0, 2, 3]]
    assert table.index["head"].tolist() == [[0, 1, -1]]
    assert torch.equal(table.samples, torch.tensor([2, 5, 7, 7]))
    assert table.boxes.tolist() == [WHOLE, WHOLE, LEFT, RIGHT]


def test_plan_crops_on_random_input_points_every_slot_at_its_own_distinct_row_sorted_by_sample():
    torch.manual_seed(0)
    samples = {name: torch.randint(-1, 20, (6, 5)) for name in ("a", "b")}
    boxes = {name: torch.randint(0, 3, (6, 5, 1)).repeat(1, 1, 4) for name in ("a", "b")}
    table = plan_crops(samples, boxes)
    assert torch.equal(table.samples, table.samples.sort().values)
    assert table.rows.unique(dim=0).shape == table.rows.shape  # every row distinct
    used = set()
    for layer, ids in samples.items():
        for unit in range(ids.shape[0]):
            for slot in range(ids.shape[1]):
                row = table.index[layer][unit, slot].item()
                if ids[unit, slot] < 0:
                    assert row == -1
                else:
                    assert table.rows[row].tolist() == [ids[unit, slot].item(), *boxes[layer][unit, slot].tolist()]
                    used.add(row)
    assert used == set(range(table.rows.shape[0]))  # no row that no slot needs


def test_plan_crops_with_only_empty_slots_has_no_rows():
    table = plan_crops({"conv": torch.full((2, 3), -1)}, {"conv": torch.zeros(2, 3, 4, dtype=torch.int64)})
    assert table.rows.shape == (0, 5)
    assert table.index["conv"].tolist() == [[-1, -1, -1]] * 2


def test_cut_crops_decodes_each_sample_once_and_crops_its_boxes():
    images = {
        sample: Image.frombytes("RGB", (8, 8), bytes((sample * 40 + i) % 256 for i in range(8 * 8 * 3)))
        for sample in (2, 5, 7)
    }
    loaded = []

    def load_view(sample):
        loaded.append(sample)
        return images[sample]

    rows = torch.tensor([[2, *WHOLE], [5, *WHOLE], [5, *RIGHT], [7, *LEFT], [7, *RIGHT], [7, 1, 2, 4, 5]])
    crops = list(cut_crops(rows, load_view))
    assert loaded == [2, 5, 7]
    assert len(crops) == 6
    for crop, (sample, *corners) in zip(crops, rows.tolist()):
        assert crop.size == (corners[2] - corners[0], corners[3] - corners[1])
        assert crop.tobytes() == images[sample].crop(tuple(corners)).tobytes()


def test_crop_chunks_hand_over_the_foundation_models_batches_of_each_spans_crops():
    views = {
        sample: Image.frombytes("RGB", (8, 8), bytes((sample * 40 + i) % 256 for i in range(192)))
        for sample in (2, 5, 7)
    }

    class Views:
        def load(self, sample):
            return views[sample]

    rows = torch.tensor([[2, *WHOLE], [5, *WHOLE], [5, *RIGHT], [7, *LEFT], [7, *RIGHT]])
    chunks = CropChunks(
        CropTable(rows, {}), [(0, 3), (3, 5)], Views(), lambda image: image, lambda crops: [crop.size for crop in crops], 2
    )
    assert len(chunks) == 2
    assert chunks[0] == [[(8, 8), (8, 8)], [(4, 4)]]  # spans split into batches of 2 crops
    assert chunks[1] == [[(4, 4), (4, 4)]]


def test_workers_hand_floating_batches_over_in_the_towers_half_precision():
    """A GPU tower in half precision gets its batches from the workers in that dtype (half the bytes to move);
    integer entries (masks, grids) stay as they are, and the values are the device's own cast of float32."""
    pixels = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    image = Image.new("RGB", (8, 8))

    class Views:
        def load(self, sample):
            return image

    def preprocess(crops):
        return {"pixel_values": pixels[: len(crops)], "mask": torch.ones(len(crops), 2, dtype=torch.long)}

    rows = torch.tensor([[2, *WHOLE], [5, *WHOLE], [7, *LEFT]])
    halved = CropChunks(CropTable(rows, {}), [(0, 3)], Views(), lambda view: view, preprocess, 2, dtype=torch.bfloat16)[0]
    assert [batch["pixel_values"].dtype for batch in halved] == [torch.bfloat16, torch.bfloat16]
    expected = torch.cat([pixels[:2], pixels[:1]])  # batches of 2 crops and 1
    assert torch.equal(torch.cat([batch["pixel_values"] for batch in halved]), expected.to(torch.bfloat16))
    assert all(batch["mask"].dtype == torch.long for batch in halved)
    kept = CropChunks(CropTable(rows, {}), [(0, 3)], Views(), lambda view: view, preprocess, 2)[0]
    assert torch.equal(torch.cat([batch["pixel_values"] for batch in kept]), expected)  # no dtype: as preprocessed


def test_the_uint8_hand_over_normalises_to_the_same_numbers_as_per_image_preprocessing():
    """Workers hand over uint8 views; the model's device normalises whole batches: bit for bit the same."""
    preprocessing = Preprocessing(input_size=24, resize=28)
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(40, 30), (28, 28), (31, 77)]
    ]
    batch = torch.stack([preprocessing.pixels(image) for image in images])
    assert batch.dtype == torch.uint8 and batch.shape == (3, 3, 24, 24)
    expected = torch.stack([preprocessing(image) for image in images])
    view = np.asarray(preprocessing.view(images[0]), dtype=np.float32) / 255.0  # the formula, written out
    formula = (torch.from_numpy(view).permute(2, 0, 1) - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(
        IMAGENET_STD
    )[:, None, None]
    assert torch.equal(expected[0], formula)
    assert torch.equal(preprocessing.normalise_pixels(batch), expected)


def test_mean_embeddings_average_the_filled_slots_only():
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]])
    index = torch.tensor([[0, 1, -1], [2, -1, -1], [-1, -1, -1], [2, 0, 1]])
    theta = mean_embeddings(embeddings, index)
    expected = torch.tensor([[0.5, 1.0], [4.0, 4.0], [0.0, 0.0], [5 / 3, 2.0]])  # a unit with no example: zeros
    torch.testing.assert_close(theta, expected)


class _CountingTexts(FoundationModel):
    """A text-only stand-in that embeds each string as a fixed random vector and counts what it embeds."""

    id = "counting-texts@1"
    dim = 4

    def __init__(self) -> None:
        super().__init__("cpu")
        self.embedded: list[str] = []

    image_preprocessor = None  # texts only
    _embed_pixels = None

    def _embed_texts(self, texts):
        self.embedded += list(texts)
        return torch.stack([torch.randn(4, generator=torch.Generator().manual_seed(len(text))) for text in texts])


def test_probe_cache_is_shared_per_foundation_model_and_bounded(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(probes_module, "MAX_CACHED_PROMPTS", 3)
    path = tmp_path / "probes.safetensors"
    first = ProbeEncoder(_CountingTexts(), path)
    embedded = first.texts(["a", "bb", "ccc", "dddd"])
    assert first.foundation.embedded == ["a", "bb", "ccc", "dddd"]
    again = ProbeEncoder(_CountingTexts(), path)  # a second Lens of the same foundation model
    torch.testing.assert_close(again.texts(["bb", "ccc", "dddd"]), embedded[1:])
    assert again.foundation.embedded == []  # all three read from the cache; the oldest prompt was dropped
    assert again.texts(["a"]) is not None and again.foundation.embedded == ["a"]
    other = _CountingTexts()
    other.id = "another-model@2"
    assert read_probe_cache(path, other.id) == {}  # another model's prompts are never reused
    path.write_bytes(b"not a safetensors file")
    assert read_probe_cache(path, first.foundation.id) == {}  # a damaged cache is embedded again, not an error


def test_specs_shown_to_others_cut_local_paths_and_say_so() -> None:
    """The explorer shows where a Lens's data was without the author's paths, and with "…/" where a path was cut:
    ``folder:/etc`` read as ``folder:etc`` (a folder next to the server's) before."""
    from semlens.store.trust import display_spec

    assert display_spec("folder:/etc") == "folder:…/etc" and display_spec("folder:/") == "folder:/"
    assert display_spec("folder:/home/ann/photos") == "folder:…/photos" and display_spec("hf:/home/ann/clip") == "hf:…/clip"
    assert display_spec("folder:photos") == "folder:photos" and display_spec("hf:openai/clip-vit-base-patch32") == "hf:openai/clip-vit-base-patch32"
    assert display_spec("world::30:probe") == "world::30:probe" and display_spec("py:pkg.mod:make") == "py:pkg.mod:make"


def test_sample_names_shown_to_others_cut_paths_outside_the_data() -> None:
    """A tampered Lens may name ``/etc/passwd`` as a sample (nothing reads it) and a list of files names its samples
    absolutely: the explorer shows names inside the data as they are, and cuts the others as it cuts specs."""
    from semlens.store.trust import display_source

    assert display_source("star/0001.png") == "star/0001.png" and display_source("0001") == "0001"
    assert display_source("/etc/passwd") == "…/passwd" and display_source("../../etc/passwd") == "…/passwd"
    assert display_source("a/../b.png") == "…/b.png" and display_source("~/x.png") == "…/x.png"
    assert display_source("C:\\data\\x.png") == "…/x.png" and display_source("/home/ann/photos/cat.jpg") == "…/cat.jpg"
