"""`semlens run`'s options are made from BuildConfig's fields: a new field is a new option, no CLI edit needed."""

from __future__ import annotations

from dataclasses import field, fields, make_dataclass
from pathlib import Path
from typing import Any, Optional

import typer
from typer.testing import CliRunner

from semlens import BuildConfig
from semlens.cli import app
from semlens.cli._options import config_from_options, config_options


def test_every_build_config_field_is_a_run_option_unless_marked_otherwise() -> None:
    command = typer.main.get_command(app).commands["run"]
    options = {parameter.name for parameter in command.params}
    marked = {item.name for item in fields(BuildConfig) if item.metadata.get("cli") is False or item.name == "extra_foundations"}
    assert {item.name for item in fields(BuildConfig)} - marked <= options
    assert not marked & options
    assert {"config", "out", "overwrite", "as_json", "progress"} <= options


def test_a_new_field_is_an_option_and_reaches_the_config(tmp_path) -> None:
    knob = field(default=1, metadata={"help": "A knob added later."})
    extended = make_dataclass("Extended", [("new_knob", int, knob), ("new_path", Optional[str], field(default=None))], bases=(BuildConfig,))
    made: list[Any] = []
    cli = typer.Typer()

    @cli.command()
    @config_options(extended, after="config")
    def build(config: Optional[Path] = typer.Option(None, "--config"), **options: Any) -> None:
        made.append(config_from_options(extended, options, config))

    options = {parameter.name: parameter for parameter in typer.main.get_command(cli).params}
    assert options["new_knob"].opts == ["--new-knob"] and options["new_knob"].help == "A knob added later."
    assert options["new_path"].opts == ["--new-path"] and options["layers"].opts == ["--layer", "-l"]
    result = CliRunner().invoke(cli, ["-m", "py:m:f", "-l", "head", "-d", "folder:x", "-f", "conse", "-f", "clip", "--new-knob", "5"])
    assert result.exit_code == 0, result.output
    assert (made[0].new_knob, made[0].new_path, made[0].foundation, made[0].extra_foundations, made[0].k) == (5, None, "conse", ["clip"], 30)


def test_missing_required_settings_are_named_by_their_flags() -> None:
    try:
        config_from_options(BuildConfig, {"model": "py:m:f", "layers": []})
    except Exception as error:
        assert str(error) == "missing --layer, --data (or give --config FILE.toml)"
    else:
        raise AssertionError("no error")


def test_data_typed_as_a_folder_is_a_folder_spec_and_specs_stay_as_they_are(tmp_path) -> None:
    """``semlens run -d ./images`` and ``--test-data ./clean`` as users type them; a spec with its prefix stays as it
    is (a Lens's recorded spec, read only when it is opened, always has one)."""
    from semlens import BuildConfig
    from semlens._util.specs import folder_or_spec

    assert folder_or_spec("images") == "folder:images" and folder_or_spec(str(tmp_path)) == f"folder:{tmp_path}"
    assert folder_or_spec("world::600:probe") == "world::600:probe" and folder_or_spec("py:pkg.mod:make") == "py:pkg.mod:make"
    config = BuildConfig(model="m", layers=["l"], data=str(tmp_path), relevance_data="labelled")
    assert (config.data, config.relevance_data) == (f"folder:{tmp_path}", "folder:labelled")
    assert BuildConfig(model="m", layers=["l"], data="folder:x").data == "folder:x"


def test_a_table_wider_than_the_terminal_wraps_between_words_and_keeps_every_column() -> None:
    """`semlens info` at 80 columns folded its headers mid-word ("inactiv|e"), and least widths past the terminal's
    width pushed its last column out of view: the widest columns give way, headers last."""
    from rich.console import Console

    from semlens.cli import _app

    columns = ("layer", "units", "inactive", "tied", "output", "crops", "shift px", "locality", "sae")
    rows = [("features.10", 64, 0, 0, "spatial", "relevance (85 % whole images)", "0,0", 20.03, "-")]
    assert _app.column_widths([[column, *(str(row[i]) for row in rows)] for i, column in enumerate(columns)], 200) == [None] * 9
    for width in (80, 60):
        console = Console(width=width, record=True)
        _app.console = console
        try:
            console.print(_app.table(None, columns, rows))
        finally:
            _app.console = Console(emoji=False)
        lines = console.export_text().splitlines()
        assert all(len(line) <= width for line in lines) and all(line.endswith(("┓", "┃", "┩", "│", "┘")) for line in lines)
        if width == 80:  # room for every header's words
            assert all(column.split()[0] in "\n".join(lines[:4]) for column in columns)


def test_a_table_too_wide_for_its_words_leaves_out_its_optional_columns_and_says_which() -> None:
    """`semlens audit` piped (80 columns) folded its numbers over lines ("0.11|6" for 0.116) in 11 columns: the columns
    a narrow terminal may lose go, in their order, until every word fits, and the caption names them."""
    from rich.console import Console

    from semlens.cli import _app

    columns = ("unit", "verdict", "relevance", "z_valid", "z_spur", "a_valid", "a_spur", "concept test", "examples")
    rows = [("features.14/53", "spurious", 0.116, 2.72, 10.61, -0.007, -0.001, "unconfirmed (AUC 0.72)", "probe/000411 (star), probe/000003 (star)")]
    for width, left_out in ((80, ["a_valid", "a_spur", "examples"]), (200, [])):
        console = Console(width=width, record=True)
        _app.console = console
        try:
            console.print(_app.table("audit", columns, rows, ("a_valid", "a_spur", "examples", "z_valid")))
        finally:
            _app.console = Console(emoji=False)
        text = console.export_text()
        assert all(f" {value} " in text for value in ("features.14/53", "0.116", "10.61"))  # whole, on one line
        assert all((f" {column} " not in text) == (column in left_out) for column in ("z_valid", "a_valid", "a_spur"))
        assert ("left out at this width: " + ", ".join(left_out) in " ".join(text.split())) == bool(left_out)
