"""Export a built Lens as plain tables (Parquet or CSV) for the user's own tools: pandas, DuckDB, spreadsheets.

Units, labels and concept examples become one table each, so no semlens is needed to read them; theta goes
to ``theta.safetensors`` as one array per layer, with ``theta_units`` naming each row's unit.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._util.errors import SemlensError
from ..store.files import atomic_write

if TYPE_CHECKING:
    from .lens import Lens

FORMATS = ("parquet", "csv")

# Column names and their Arrow types (aliases for ``pyarrow.type_for_alias``), per table.
SCHEMAS: dict[str, dict[str, str]] = {
    "units": {
        "unit": "string",
        "layer": "string",
        "index": "int64",
        "inactive": "bool",
        "tied": "bool",
        "label": "string",
        "label_alignment": "double",
        "label_confidence": "double",
        "clarity": "double",
        "polysemanticity": "double",
        "redundancy": "double",
        "typical": "double",
    },
    "labels": {"unit": "string", "rank": "int64", "concept": "string", "alignment": "double"},
    "examples": {
        "unit": "string",
        "rank": "int64",
        "sample": "int64",
        "score": "double",
        "x0": "int64",
        "y0": "int64",
        "x1": "int64",
        "y1": "int64",
        "source": "string",
        "class_label": "int64",
    },
    "theta_units": {"layer": "string", "index": "int64", "unit": "string"},
}

Columns = dict[str, list[Any]]


@dataclass(frozen=True)
class ExportResult:
    """Where an export went: the directory, each written file by name, and each table's row count."""

    directory: Path
    files: dict[str, Path]
    rows: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "files": {name: str(path) for name, path in self.files.items()},
            "rows": dict(self.rows),
        }


def export_lens(lens: Lens, out: str | Path, format: str = "parquet") -> ExportResult:
    """Write ``lens`` to the directory ``out`` as ``format`` ("parquet" or "csv") tables plus ``theta.safetensors``."""
    if format not in FORMATS:
        raise SemlensError(f"unknown export format {format!r}; the formats are {', '.join(FORMATS)}")
    from safetensors.torch import save_file

    directory = Path(out).expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    tables = {"units": _units(lens)}
    if lens.labels.vocabulary is not None:
        tables["labels"] = _labels(lens)
    tables["examples"] = _examples(lens)
    tables["theta_units"] = _theta_units(lens)

    files, rows = {}, {}
    for name, columns in tables.items():
        files[name] = directory / f"{name}.{format}"
        rows[name] = _write_table(files[name], name, columns, format)
    theta = {layer: lens.arrays.theta(layer).float().contiguous() for layer in lens.layers}
    files["theta"] = directory / "theta.safetensors"
    atomic_write(files["theta"], lambda temporary: save_file(theta, str(temporary)))
    return ExportResult(directory, files, rows)


def _names(lens: Lens, layer: str) -> list[str]:
    return [f"{layer}/{name}" for name in lens.units(layer)]


def _nullable(values: list[float]) -> list[float | None]:
    """NaN to None (null in Parquet, empty in CSV)."""
    return [None if value != value else value for value in values]


def _units(lens: Lens) -> Columns:
    columns: Columns = {name: [] for name in SCHEMAS["units"]}
    for layer in lens.layers:
        names = _names(lens, layer)
        columns["unit"] += names
        columns["layer"] += [layer] * len(names)
        columns["index"] += list(range(len(names)))
        columns["inactive"] += lens.arrays.inactive(layer).tolist()
        columns["tied"] += lens.arrays.tied(layer).tolist()
        labels = lens.labels.of(layer)
        if labels is None:
            columns["label_alignment"] += [None] * len(names)
            columns["label_confidence"] += [None] * len(names)
        else:
            columns["label_alignment"] += _nullable(labels.candidate_alignments[:, 0].tolist())
            columns["label_confidence"] += [None] * len(names) if labels.confidence is None else _nullable(labels.confidence[:, 0].tolist())
        columns["label"] += lens.labels.shown(layer)
        for measure, values in lens.measures(layer).of(layer).items():
            columns[measure] += _nullable(values.tolist())
    return columns


def _labels(lens: Lens) -> Columns:
    columns: Columns = {name: [] for name in SCHEMAS["labels"]}
    concepts = lens.labels.vocabulary.concepts
    for layer in lens.layers:
        labels = lens.labels.of(layer)
        units, top = labels.concepts.shape
        columns["unit"] += [name for name in _names(lens, layer) for _ in range(top)]
        columns["rank"] += list(range(top)) * units
        columns["concept"] += [concepts[c] for c in labels.concepts.flatten().tolist()]
        columns["alignment"] += labels.candidate_alignments.flatten().tolist()
    return columns


def _examples(lens: Lens) -> Columns:
    """Every filled top-k slot of every unit, best first per unit (as ``Lens.concept_examples``)."""
    columns: Columns = {name: [] for name in SCHEMAS["examples"]}
    table = lens.examples.sample_table
    for layer in lens.layers:
        names = _names(lens, layer)
        ids = lens.arrays.samples(layer)
        filled = ids >= 0
        units, ranks = filled.nonzero(as_tuple=True)
        samples = ids[filled].tolist()
        columns["unit"] += [names[unit] for unit in units.tolist()]
        columns["rank"] += ranks.tolist()
        columns["sample"] += samples
        columns["score"] += lens.arrays.scores(layer)[filled].tolist()
        for name, values in zip(("x0", "y0", "x1", "y1"), lens.arrays.boxes(layer)[filled].T.tolist()):
            columns[name] += values
        columns["source"] += [table[sample][0] for sample in samples]
        columns["class_label"] += [table[sample][1] for sample in samples]
    return columns


def _theta_units(lens: Lens) -> Columns:
    """The row order of each layer's array in ``theta.safetensors``."""
    columns: Columns = {name: [] for name in SCHEMAS["theta_units"]}
    for layer in lens.layers:
        names = _names(lens, layer)
        columns["layer"] += [layer] * len(names)
        columns["index"] += list(range(len(names)))
        columns["unit"] += names
    return columns


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def inert_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: a string from a Lens (a label, a path) that starts like a formula
    gets a leading apostrophe (OWASP's advice), so opening the export runs nothing."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def _write_table(path: Path, name: str, columns: Columns, format: str) -> int:
    """Write one table atomically; returns its row count."""
    if format == "parquet":
        import pyarrow
        import pyarrow.parquet

        schema = pyarrow.schema([(column, pyarrow.type_for_alias(kind)) for column, kind in SCHEMAS[name].items()])
        table = pyarrow.Table.from_pydict(columns, schema=schema)
        atomic_write(path, lambda temporary: pyarrow.parquet.write_table(table, str(temporary)))
        return table.num_rows

    def write(temporary: Path) -> None:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            writer.writerows([inert_cell(value) for value in row] for row in zip(*columns.values()))

    atomic_write(path, write)
    return len(next(iter(columns.values())))
