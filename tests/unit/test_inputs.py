"""What users hand semlens: folders with system files beside the images, ``py:`` models of other input sizes."""

from pathlib import Path

import pytest
from PIL import Image

from semlens import load_model
from semlens._util.errors import SpecError
from semlens.data.folder import FolderData


def test_hidden_files_and_system_folders_are_neither_samples_nor_classes(tmp_path: Path) -> None:
    for relative in ["cat/a.png", "dog/b.png", "__MACOSX/cat/._a.png", ".thumbnails/c.png", "dog/.hidden.png", "cat/._a.png"]:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(path, format="PNG")
    data = FolderData(tmp_path)
    assert data.files == ["cat/a.png", "dog/b.png"]
    assert data.classes == ["cat", "dog"]


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
