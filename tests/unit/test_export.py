"""Exporting a Lens to Parquet / CSV tables and theta arrays: every table reads back to what the Lens answers."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import pyarrow.parquet
import pytest
import torch
from safetensors.torch import load_file

from semlens import BuildConfig, Lens, build_lens
from semlens._util.errors import SemlensError
from semlens.lens.export import export_lens


@pytest.fixture(scope="module")
def lens_path(tmp_path_factory, colour_folder, tiny_clip_dir) -> Path:
    out = tmp_path_factory.mktemp("export") / "tiny.lens"
    config = BuildConfig(
        model="py:tiny_models:tiny_cnn", layers=["features.3", "head:signed=true"], data=f"folder:{colour_folder}",
        foundation=f"hf:{tiny_clip_dir}", k=5, workers=0,
    )  # fmt: skip
    build_lens(config, out, progress=False)
    return out


@pytest.fixture
def labelled_lens(lens_path, tmp_path) -> Lens:
    """A labelled copy of the Lens (the module's own Lens stays unlabelled)."""
    copy = tmp_path / "labelled.lens"
    shutil.copytree(lens_path, copy)
    vocabulary = tmp_path / "vocab.toml"
    vocabulary.write_text('colours = ["red", "green", "blue"]\nshapes = ["square", "noise"]\n')
    lens = Lens.open(copy)
    lens.label(vocabulary, threshold=-1)
    return lens


def read_table(path: Path) -> list[dict]:
    """A Parquet or CSV table as rows; CSV values typed back (empty -> None, numbers, booleans)."""
    if path.suffix == ".parquet":
        return pyarrow.parquet.read_table(path).to_pylist()

    def typed(text: str):
        if text == "":
            return None
        if text in ("True", "False"):
            return text == "True"
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    with open(path, newline="", encoding="utf-8") as handle:
        return [{key: typed(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def unit_rows(lens: Lens) -> list[str]:
    return [f"{layer}/{name}" for layer in lens.layers for name in lens.units(layer)]


@pytest.mark.parametrize("format", ["parquet", "csv"])
def test_tables_read_back_to_what_the_lens_answers(lens_path, tmp_path, format) -> None:
    lens = Lens.open(lens_path)
    result = export_lens(lens, tmp_path / "out", format)
    # not labelled yet: the default vocabulary's labels, as every face shows them, held in memory, not stored
    assert set(result.files) == {"units", "examples", "theta_units", "theta", "labels"}
    assert lens.labels.vocabulary.name == lens.embedding.default_vocabulary.name and Lens.open(lens_path).labels.vocabulary is None
    assert all(path.is_file() and path.parent == result.directory for path in result.files.values())
    assert result.to_dict()["files"]["units"] == str(tmp_path.resolve() / "out" / f"units.{format}")

    units = read_table(result.files["units"])
    assert [row["unit"] for row in units] == unit_rows(lens) and result.rows["units"] == len(units)
    for layer in lens.layers:
        rows = [row for row in units if row["layer"] == layer]
        assert [row["index"] for row in rows] == list(range(len(lens.units(layer))))
        assert [row["inactive"] for row in rows] == lens.arrays.inactive(layer).tolist()
        assert [row["label"] for row in rows] == lens.labels.shown(layer)
        for measure, values in lens.measures(layer).of(layer).items():
            expected = [None if math.isnan(value) else value for value in values.tolist()]
            assert [row[measure] for row in rows] == pytest.approx(expected)

    examples = read_table(result.files["examples"])
    columns = ("unit", "rank", "sample", "score", "x0", "y0", "x1", "y1", "source", "class_label")
    expected = [
        dict(zip(columns, (unit, e.rank, e.sample, e.score, *e.box, e.source, e.label)))
        for unit in unit_rows(lens)
        for e in lens.examples.concept_examples(unit)
    ]
    assert examples == expected and result.rows["examples"] == len(expected) > 0

    theta_units = read_table(result.files["theta_units"])
    theta = load_file(result.files["theta"])
    assert set(theta) == set(lens.layers)
    for layer in lens.layers:
        assert theta[layer].dtype == torch.float32 and torch.equal(theta[layer], lens.arrays.theta(layer).float())
        order = [row["unit"] for row in theta_units if row["layer"] == layer]
        assert order == [f"{layer}/{name}" for name in lens.units(layer)]
        assert [row["index"] for row in theta_units if row["layer"] == layer] == list(range(len(order)))


@pytest.mark.parametrize("format", ["parquet", "csv"])
def test_labels_are_exported_once_the_lens_is_labelled(labelled_lens, tmp_path, format) -> None:
    lens = labelled_lens
    result = export_lens(lens, tmp_path / "out", format)
    labels = read_table(result.files["labels"])
    expected = [
        {"unit": unit, "rank": rank, "concept": concept, "alignment": alignment}
        for unit in unit_rows(lens)
        for rank, (concept, alignment, _) in enumerate(lens.labels.candidates(unit))
    ]
    assert labels == expected and result.rows["labels"] == len(expected) > 0
    units = read_table(result.files["units"])
    assert [row["label"] for row in units] == [lens.labels.label_of(unit) for unit in unit_rows(lens)]
    assert [row["label_alignment"] for row in units] == [lens.labels.candidates(unit)[0][1] for unit in unit_rows(lens)]


def test_an_unknown_format_names_the_valid_ones(lens_path, tmp_path) -> None:
    with pytest.raises(SemlensError, match="parquet, csv"):
        export_lens(Lens.open(lens_path), tmp_path / "out", "xlsx")
    assert not (tmp_path / "out").exists()


def test_csv_cells_that_start_like_a_formula_are_written_as_text() -> None:
    from semlens.lens.export import inert_cell

    assert [inert_cell(value) for value in ("=HYPERLINK(1)", "+1", "-x", "@SUM", "\tx", "red", 3, -0.5, None)] == [
        "'=HYPERLINK(1)", "'+1", "'-x", "'@SUM", "'\tx", "red", 3, -0.5, None
    ]  # fmt: skip
