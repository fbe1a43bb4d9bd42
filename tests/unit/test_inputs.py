"""What users hand semlens: folders with system files beside the images, ``py:`` models of other input sizes."""

import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semlens import load_model
from semlens._util.errors import DataError, SpecError
from semlens.data.folder import FolderData


def test_hidden_files_and_system_folders_are_neither_samples_nor_classes(tmp_path: Path) -> None:
    for relative in ["cat/a.png", "dog/b.png", "__MACOSX/cat/._a.png", ".thumbnails/c.png", "dog/.hidden.png", "cat/._a.png", "cat/@eaDir/a.png/SYNOFILE_THUMB_M.jpg"]:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(path, format="PNG")
    data = FolderData(tmp_path)
    assert data.files == ["cat/a.png", "dog/b.png"]
    assert data.classes == ["cat", "dog"]


def test_linked_class_folders_are_followed_once_and_names_from_other_systems_are_read(tmp_path: Path) -> None:
    root, store = tmp_path / "data", tmp_path / "store"
    for folder in (root / "red", store / "green"):
        folder.mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(root / "red" / "a.png")
    Image.new("RGB", (8, 8), "green").save(store / "green" / "b.jfif", format="JPEG")  # Windows' and Chrome's JPEG suffix
    Image.new("RGB", (8, 8), "red").save(os.path.join(os.fsencode(root / "red"), b"caf\xe9.png"))  # Latin-1, not UTF-8
    (root / "green").symlink_to(store / "green", target_is_directory=True)  # a data set assembled from links
    (store / "green" / "loop").symlink_to(root, target_is_directory=True)  # a link back up: each folder once
    data = FolderData(root)
    assert data.classes == ["green", "red"] and len(data) == 3
    assert [data.describe(index) for index in range(3)] == ["green/b.jfif", "red/a.png", "red/caf\ufffd.png"]
    assert data.load(2).getpixel((0, 0)) == (255, 0, 0) and len(data.fingerprint()) == 16


def test_a_large_image_is_read_quietly_and_one_past_twice_pillows_limit_is_refused(tmp_path: Path, monkeypatch) -> None:
    Image.new("RGB", (40, 40), "red").save(tmp_path / "large.png")  # 1 600 pixels
    Image.new("RGB", (60, 60), "red").save(tmp_path / "huge.png")  # 3 600 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow warns from 1 000 pixels, refuses from 2 000
    data = FolderData(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert data.load(data.files.index("large.png")).size == (40, 40)
    with pytest.raises(DataError, match="cannot decode huge.png"):
        data.load(data.files.index("huge.png"))


def test_python_model_takes_its_input_size_from_the_spec() -> None:
    default = load_model("py:tiny_models:tiny_cnn_module")
    assert (default.preprocessing.input_size, default.preprocessing.resize) == (224, 256)
    small = load_model("py:tiny_models:tiny_cnn_module:64")
    assert (small.preprocessing.input_size, small.preprocessing.resize) == (64, 73)
    assert small.spec == "py:tiny_models:tiny_cnn_module:64"
    given = load_model("py:tiny_models:tiny_cnn:48")  # a LoadedModel keeps its normalisation, takes the size
    assert (given.preprocessing.input_size, given.preprocessing.mean) == (48, load_model("py:tiny_models:tiny_cnn").preprocessing.mean)


@pytest.mark.parametrize("size", ["0", "big", "-3"])
def test_python_model_input_size_must_be_a_positive_integer(size: str) -> None:
    with pytest.raises(SpecError, match="positive integer"):
        load_model(f"py:tiny_models:tiny_cnn:{size}")


def test_16_bit_and_float_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    from PIL import Image

    ramp = np.linspace(0, 60000, 64).reshape(8, 8).astype(np.uint16)  # 0 .. 92 % of the 16-bit range
    Image.fromarray(ramp).save(tmp_path / "sixteen.png")
    Image.fromarray((ramp / 60000).astype(np.float32)).save(tmp_path / "float.tif")  # 0 .. 1
    data = FolderData(tmp_path)
    for index in range(len(data)):
        grey = np.asarray(data.load(index))[..., 0].astype(int)
        assert grey.min() == 0 and grey.max() in (233, 255) and len(np.unique(grey)) > 50, data.describe(index)  # a ramp, not white or black


def test_image_tensors_and_arrays_keep_their_values() -> None:
    import torch

    from semlens.data.sequence import to_pil

    stored = (torch.arange(48) * 5).to(torch.uint8).reshape(3, 4, 4)  # as torchvision.io.read_image gives it
    assert torch.equal(torch.from_numpy(np.asarray(to_pil(stored))).permute(2, 0, 1), stored)
    assert np.asarray(to_pil(stored.float() / 255)).tolist() == np.asarray(to_pil(stored)).tolist()  # ToTensor's [0, 1]
    assert np.asarray(to_pil(np.full((4, 4), 0.5))).max() == 128  # a float array in [0, 1]
    with pytest.raises(ValueError, match="should hold values in \\[0, 1\\].*before normalisation"):
        to_pil(torch.full((3, 4, 4), -1.8))  # an ImageNet-normalised tensor
    # 16-bit arrays by their range (as a 16-bit PNG; they failed to decode), integers of 0 to 255 of any width as they are
    assert np.asarray(to_pil(np.full((4, 4, 3), 65535, dtype=np.uint16))).max() == 255
    assert np.asarray(to_pil(np.full((4, 4, 3), 32896, dtype=np.uint16))).max() == 128
    assert np.asarray(to_pil(stored.long())).tolist() == np.asarray(to_pil(stored)).tolist()  # an int64 tensor of 0 to 255
    with pytest.raises(ValueError, match="int32 values spanning 0 to 4095: give uint8 \\(0 to 255\\), uint16"):
        to_pil(np.arange(4096, dtype=np.int32).reshape(64, 64))


def test_python_model_spec_may_name_the_module_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "made_models.py").write_text("from torch import nn\nNET = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = load_model("py:made_models:NET:48")  # an instance, not a factory: used as it is, not called
    assert model.module[0].out_channels == 2 and model.preprocessing.input_size == 48


def test_python_datasets_that_cannot_be_read_by_index_or_label_say_why() -> None:
    from semlens._util.errors import DataError
    from semlens.data.sequence import SequenceData

    with pytest.raises(DataError, match="gave a generator, not a sequence"):
        SequenceData((image for image in []), "py:made:data")
    labelled = SequenceData([(Image.new("RGB", (4, 4)), "cat"), (Image.new("RGB", (4, 4)), 1)], "py:made:data")
    assert labelled.load(0).size == (4, 4) and labelled.label(1) == 1  # the image loads whatever its label
    with pytest.raises(DataError, match="has the label 'cat': labels are class indices"):
        labelled.label(0)


def test_a_python_factory_that_raises_is_reported_with_its_spec_error_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from semlens import load_data, load_foundation_model

    source = "def broken(**options):\n    raise RuntimeError('weights file missing')\n"
    (tmp_path / "broken_factories.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    for load, kind in ((load_model, "model"), (load_data, "dataset"), (load_foundation_model, "foundation model")):
        with pytest.raises(SpecError, match=f"py:broken_factories:broken: the {kind} factory raised RuntimeError: weights file missing \\(at .*broken_factories.py:2\\)"):
            load("py:broken_factories:broken")


def test_a_strip_image_is_viewed_from_its_box_with_bounded_memory_and_the_whole_resizes_pixels(monkeypatch) -> None:
    """A 20 000 x 4 strip resized whole to 256 px high would take 983 MB to keep 224 x 224 of it; its view resamples
    only its box (the peak memory of a fresh process stays far below that), at the same sample points as the whole
    resize: on a smooth strip the two views agree within a few levels."""
    from semlens.model import preprocess

    script = (
        "import resource; from PIL import Image; from semlens.model.preprocess import Preprocessing\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "view = Preprocessing().view(Image.new('RGB', (20000, 4), 'red'))\n"
        "print(view.size, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)"
    )
    size, grown_mb = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.rsplit(" ", 1)
    assert size == "(224, 224)" and int(grown_mb) < 100

    ramp = np.linspace(0, 255, 3000)
    strip = Image.fromarray(np.stack([np.tile(ramp, (40, 1)), np.tile(ramp[::-1], (40, 1)), np.full((40, 3000), 90.0)], -1).astype(np.uint8))
    assert 256 * (3000 * 256 // 40) > preprocess.WHOLE_RESIZE_PIXELS  # the box path
    boxed = np.asarray(preprocess.Preprocessing().view(strip), dtype=int)
    monkeypatch.setattr(preprocess, "WHOLE_RESIZE_PIXELS", 10**12)
    whole = np.asarray(preprocess.Preprocessing().view(strip), dtype=int)
    assert boxed.shape == whole.shape == (224, 224, 3) and np.abs(boxed - whole).max() <= 2


def test_a_py_spec_finds_a_module_in_the_working_directory_as_python_m_would(tmp_path, monkeypatch) -> None:
    """The `semlens` command's path holds its bin folder, not the working directory; the docs' own-model page
    names a file there (``py:my_model:small_cnn``)."""
    (tmp_path / "semlens_cwd_model.py").write_text(
        "from torch import nn\n\ndef net():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry not in ("", str(tmp_path))])
    assert load_model("py:semlens_cwd_model:net:32").module[3].out_features == 2
    with pytest.raises(SpecError, match="cannot import module 'semlens_no_such_model'.*or in the working directory"):
        load_model("py:semlens_no_such_model:net")
    sys.modules.pop("semlens_cwd_model", None)


def test_a_timm_model_object_takes_the_preprocessing_its_pretrained_cfg_names() -> None:
    """A notebook's timm ViT normalises with mean 0.5: ImageNet's statistics would shift every view it sees."""
    timm = pytest.importorskip("timm")
    from semlens._util.errors import SemlensWarning

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3)
    with pytest.warns(SemlensWarning, match="pretrained_cfg's"):
        loaded = load_model(vit)
    assert (loaded.preprocessing.input_size, loaded.preprocessing.mean) == (224, (0.5, 0.5, 0.5))
    assert loaded.preprocessing.resize == round(224 / vit.pretrained_cfg["crop_pct"]) == 249
    small = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=64)  # its config still says 224
    with pytest.warns(SemlensWarning, match="centre crop 64"):
        assert load_model(small).preprocessing.input_size == 64
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    with pytest.warns(SemlensWarning, match="ImageNet's"):
        assert load_model(plain).preprocessing.input_size == 224


def test_a_transformers_model_object_is_viewed_at_the_side_its_config_names() -> None:
    """A notebook's transformers ViT made for 64 px refused semlens's 224 px views ("Input image size (224*224)
    doesn't match model (64*64)"): its config's ``image_size`` is the side, with ImageNet's mean and std, said."""
    from transformers import ViTConfig, ViTForImageClassification

    from semlens._util.errors import SemlensWarning

    config = ViTConfig(image_size=64, patch_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       num_labels=2, id2label={0: "cat", 1: "dog"}, label2id={"cat": 0, "dog": 1})  # fmt: skip
    with pytest.warns(SemlensWarning, match="its config's image_size 64 with ImageNet's mean and std"):
        loaded = load_model(ViTForImageClassification(config))
    assert (loaded.preprocessing.input_size, loaded.preprocessing.resize, loaded.classes) == (64, 64, ["cat", "dog"])
    sys.modules["semlens_vit_factory"] = types.SimpleNamespace(net=lambda: ViTForImageClassification(config))  # the command line's py: spec
    try:
        with pytest.warns(SemlensWarning, match=r"py:semlens_vit_factory:net: its config's image_size 64 .*\(py:semlens_vit_factory:net:SIZE\)"):
            assert load_model("py:semlens_vit_factory:net").preprocessing.input_size == 64
        assert load_model("py:semlens_vit_factory:net:64").preprocessing.resize == 73  # a side given: 256/224 of it, as before
        with pytest.raises(SpecError, match=r"give the input size it takes with preprocessing=") as refused:
            load_model("py:semlens_vit_factory:net:32")
        assert "after its factory in the spec (e.g. py:package.module:factory:32)" in refused.value.on_the_command_line()
    finally:
        sys.modules.pop("semlens_vit_factory")
