"""The CLI and its errors: bad input gets one clear line (exit code 2), never a traceback."""

from __future__ import annotations

from dataclasses import asdict

import json
import re
import warnings
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from semlens import BuildConfig, Lens, SemlensError
from semlens.cli import app
from semlens.pipeline.builder import LensBuilder

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(arg) for arg in args])


def run_args(folder: Path, clip: Path, out: Path, *extra: str) -> list[str]:
    return [
        "run", "--model", "py:tiny_models:tiny_cnn", "--data", f"folder:{folder}", "--foundation", f"hf:{clip}",
        "--out", str(out), "-k", "3", "--workers", "0", "--no-progress", *extra,
    ]  # fmt: skip


def assert_clear_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_layers_lists_modules_with_shapes_and_units() -> None:
    result = invoke("layers", "py:tiny_models:tiny_cnn", "--json")
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["features.0"]["shape"] == "1x8x32x32" and rows["features.0"]["units"] == 8
    assert rows["head"]["units"] == 3


def test_run_prints_json_summary_and_info_reads_it_back(tmp_path, colour_folder, tiny_clip_dir) -> None:
    out = tmp_path / "cli.lens"
    result = invoke(*run_args(colour_folder, tiny_clip_dir, out, "--layer", "features.3", "--layer", "head", "--json"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [layer["name"] for layer in summary["layers"]] == ["features.3", "head"]
    assert summary["samples"] == 30 and summary["failed"] == 0
    info = json.loads(invoke("info", out, "--json").stdout)
    assert info["identity"]["collect"]["k"] == 3 and info["layers"]["features.3"]["map_shift"] == [0.0, 0.0]
    table = invoke("info", out).stdout
    assert "shift" in table and "0,0" in table  # the layer with maps (rows, columns); "-" for the head
    locality = info["layers"]["features.3"]["map_locality"]
    assert "locali" in table and f"{locality:g}" in table and info["layers"]["head"].get("map_locality") is None  # the header wraps at 80 columns


def test_config_file_with_flag_override(tmp_path, colour_folder, tiny_clip_dir) -> None:
    config = tmp_path / "build.toml"
    config.write_text(
        f'model = "py:tiny_models:tiny_cnn"\nlayers = ["head"]\ndata = "folder:{colour_folder}"\n'
        f'foundation = "hf:{tiny_clip_dir}"\nk = 4\nworkers = 0\n'
    )
    result = invoke("run", "--config", config, "--k", "2", "--out", tmp_path / "toml.lens", "--json", "--no-progress")  # --k as BuildConfig(k=...) names it, or -k
    assert result.exit_code == 0, result.output
    assert json.loads(invoke("info", tmp_path / "toml.lens", "--json").stdout)["identity"]["collect"]["k"] == 2
    config.write_text('model = "x"\nlayerz = ["head"]\n')
    assert_clear_error(invoke("run", "--config", config, "--out", tmp_path / "bad.lens"), "unknown keys layerz")


def test_unknown_layer_names_close_matches(tmp_path, colour_folder, tiny_clip_dir) -> None:
    result = invoke(*run_args(colour_folder, tiny_clip_dir, tmp_path / "x", "--layer", "feature.0"))
    assert_clear_error(result, "no layer 'feature.0'", "features.0", "semlens layers")


@pytest.mark.parametrize(
    "flag,value,fragments",
    [
        ("--model", "zooo:efficientnet-lite0", ["unknown model spec", "zoo:NAME", "py:package.module:factory"]),
        ("--model", "zoo:resnet", ["unknown zoo model 'resnet'", "efficientnet-lite0", "world-cnn"]),
        ("--foundation", "clip", ["unknown foundation model spec", "conse", "hf:NAME_OR_PATH", "open_clip:"]),
        ("--foundation", "hf:/no/such/model", ["no such directory"]),
        ("--data", "folders:x", ["unknown data spec", "folder:PATH"]),
        ("--data", "py:nowhere_module:items", ["cannot import module 'nowhere_module'"]),
        ("--layer", "head:pool=median", ["pool='median'", "mean, max"]),
        ("--layer", "head:colour=red", ["bad option 'colour=red'", "pool, token, pick, signed, sae"]),
        ("--crop", "heatmap", ["crop='heatmap'", "auto, relevance, activation, none"]),
        ("--device", "tpu", ["unknown device 'tpu'"]),
    ],
)
def test_bad_specs_and_options_list_the_valid_ones(tmp_path, colour_folder, tiny_clip_dir, flag, value, fragments):
    args = run_args(colour_folder, tiny_clip_dir, tmp_path / "x")
    if flag in args:
        position = args.index(flag)
        args[position + 1] = value
    else:
        args += [flag, value]
    if "--layer" not in args:
        args += ["--layer", "head"]
    assert_clear_error(invoke(*args), *fragments)


def test_empty_data_folder(tmp_path, tiny_clip_dir) -> None:
    (tmp_path / "empty").mkdir()
    result = invoke(*run_args(tmp_path / "empty", tiny_clip_dir, tmp_path / "x", "--layer", "head"))
    assert_clear_error(result, "holds no images")


def test_corrupt_images_are_skipped_counted_and_reported(tmp_path, colour_folder, tiny_clip_dir) -> None:
    from PIL import Image

    folder = tmp_path / "mixed"
    for path in sorted(colour_folder.rglob("*.png")):
        target = folder / path.relative_to(colour_folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    (folder / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (folder / "green" / "empty.jpg").write_bytes(b"")
    Image.new("RGB", (1, 1), (255, 0, 0)).save(folder / "red" / "pixel.png")  # decodes, but is one colour blown up
    result = invoke(*run_args(folder, tiny_clip_dir, tmp_path / "m.lens", "--layer", "head"))
    assert result.exit_code == 0, result.output
    assert "33 samples (3 could not be read (broken, or under 4 px a side) and were skipped: listed in" in " ".join(result.output.split())
    failures = json.loads((tmp_path / "m.lens" / "failures.json").read_text())
    assert sorted(item["error"].split(":")[0] for item in failures) == [
        "cannot decode green/empty.jpg",
        "cannot decode red/broken.png",
        "red/pixel.png is 1x1 px",
    ]
    assert "too small to show anything (at least 4 px a side)" in " ".join(item["error"] for item in failures)


def test_all_images_corrupt_is_an_error(tmp_path, tiny_clip_dir) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"garbage")
    result = invoke(*run_args(folder, tiny_clip_dir, tmp_path / "x", "--layer", "head"))
    assert_clear_error(result, "none of the 1 samples", "could be decoded")


def test_a_layer_that_never_fires_is_reported(tmp_path, colour_folder, tiny_clip_dir) -> None:
    args = run_args(colour_folder, tiny_clip_dir, tmp_path / "dead.lens", "--layer", "features.1", "--layer", "head")
    args[args.index("py:tiny_models:tiny_cnn")] = "py:tiny_models:dead_cnn"
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "layer features.1: 8 of 8 units never fired or were constant on this data" in text
    assert "layer head: 3 of 3 units never fired or were constant" in text  # constant downstream of the dead layer
    assert "mean-pooled maps, so a layer read before its activation" in text and "--pool max" in text and "pool='max'" not in text


def test_existing_lens_built_from_other_inputs_is_refused_then_overwritten(tmp_path, colour_folder, tiny_clip_dir) -> None:
    out = tmp_path / "o.lens"
    assert invoke(*run_args(colour_folder, tiny_clip_dir, out, "--layer", "head")).exit_code == 0
    changed = invoke(*run_args(colour_folder, tiny_clip_dir, out, "--layer", "features.3"))
    assert_clear_error(changed, "built from other inputs", "layers: was", "(--overwrite)")
    assert "overwrite=True" not in changed.output  # each face is told in its own words
    config = BuildConfig(model="py:tiny_models:tiny_cnn", layers=["features.3"], data=f"folder:{colour_folder}",
                         foundation=f"hf:{tiny_clip_dir}", k=3, workers=0)  # fmt: skip
    with pytest.raises(SemlensError, match=r"built from other inputs.*\(overwrite=True\)\.$") as refused:
        LensBuilder(config, out, progress=False).run()
    assert "--overwrite" not in str(refused.value)
    assert invoke(*run_args(colour_folder, tiny_clip_dir, out, "--layer", "features.3", "--overwrite")).exit_code == 0


def test_non_lens_directories_are_left_alone(tmp_path, colour_folder, tiny_clip_dir) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    result = invoke(*run_args(colour_folder, tiny_clip_dir, tmp_path / "busy", "--layer", "head", "--overwrite"))
    assert_clear_error(result, "not empty and holds no Lens manifest")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    assert_clear_error(invoke("info", tmp_path / "busy"), "is not a Lens directory")


def test_overwrite_deletes_only_a_lens_that_semlens_built(tmp_path, colour_folder, tiny_clip_dir) -> None:
    other = tmp_path / "other-tool"
    other.mkdir()
    (other / "manifest.json").write_text('{"name": "another tool\'s manifest"}')
    (other / "notes.txt").write_text("mine")
    result = invoke(*run_args(colour_folder, tiny_clip_dir, other, "--layer", "head", "--overwrite"))
    assert_clear_error(result, "refusing to delete anything", "not a semlens Lens manifest")
    assert sorted(path.name for path in other.iterdir()) == ["manifest.json", "notes.txt"]

    out = tmp_path / "o.lens"
    assert invoke(*run_args(colour_folder, tiny_clip_dir, out, "--layer", "head")).exit_code == 0
    (out / "notes.txt").write_text("mine")
    (out / "layers" / "plot.png").write_bytes(b"mine too")
    before = sorted(path.relative_to(out).as_posix() for path in out.rglob("*"))
    result = invoke(*run_args(colour_folder, tiny_clip_dir, out, "--layer", "features.3", "--overwrite"))
    assert_clear_error(result, "holds files semlens does not write (layers/plot.png, notes.txt)", "nothing was deleted")
    assert sorted(path.relative_to(out).as_posix() for path in out.rglob("*")) == before
    (out / "notes.txt").unlink()
    (out / "layers" / "plot.png").unlink()
    assert invoke(*run_args(colour_folder, tiny_clip_dir, out, "--layer", "features.3", "--overwrite")).exit_code == 0
    assert list(Lens.open(out).manifest["layers"]) == ["features.3"]


def test_out_naming_a_file_is_one_line(tmp_path, colour_folder, tiny_clip_dir) -> None:
    (tmp_path / "file").write_text("not a folder")
    for extra in ((), ("--overwrite",)):
        result = invoke(*run_args(colour_folder, tiny_clip_dir, tmp_path / "file", "--layer", "head", *extra))
        assert_clear_error(result, "is a file, not a folder")
    assert (tmp_path / "file").read_text() == "not a folder"


def test_a_warning_is_printed_once_without_its_source_line(tmp_path, colour_folder, tiny_clip_dir) -> None:
    with warnings.catch_warnings(record=True) as raised:
        warnings.simplefilter("always")
        result = invoke(*run_args(colour_folder, tiny_clip_dir, tmp_path / "k.lens", "--layer", "head", "-k", "500"))
    assert result.exit_code == 0, result.output
    assert not [warning for warning in raised if "500" in str(warning.message)]  # said by the summary alone
    assert warnings.formatwarning("torch says so", UserWarning, "/x/torch.py", 7, "warnings.warn(...)") == "warning: torch says so\n"
    text = " ".join(result.output.split())
    assert text.count("500") == 1 and "warning: k = 30 instead of 500" in text, result.output
    assert "warnings.warn" not in text and "UserWarning" not in text
    # the closing line's seconds by stage, named as a user reads them, with where the crops' seconds went
    assert re.search(r"collect [0-9.]+s, crops and embedding [0-9.]+s \(heatmaps [0-9.]+s, boxes [0-9.]+s, embedding [0-9.]+s\)", text), text
    assert re.search(r"class relevance [0-9.]+s", text), text


def test_a_module_given_twice_is_refused_with_both_specs(tmp_path, colour_folder, tiny_clip_dir) -> None:
    result = invoke(*run_args(colour_folder, tiny_clip_dir, tmp_path / "x", "--layer", "head", "--layer", "head:signed=true"))
    assert_clear_error(result, "layer 'head' is given twice", "'head'", "'head:signed=true'")


def test_k_larger_than_the_data_is_lowered_to_it(tmp_path, colour_folder) -> None:
    config = BuildConfig(model="py:tiny_models:tiny_cnn", layers=["head"], data=f"folder:{colour_folder}", k=500)
    builder = LensBuilder(config, tmp_path / "x", progress=False)
    assert builder.config.k == 30 and builder.identity["collect"]["k"] == 30  # no slot that no sample can fill
    assert "k = 30 instead of 500: the data has only 30 samples" in builder.summary().fallbacks


def test_a_second_build_into_a_folder_a_build_is_writing_is_refused_until_it_ends(tmp_path, colour_folder, tiny_clip_dir) -> None:
    """Two builds into one folder (a notebook cell run again while a terminal build runs) would interleave their
    files: the second is refused at once, saying why; once the first ends, or fails, the folder builds again."""
    config = BuildConfig(model="py:tiny_models:tiny_cnn", layers=["head"], data=f"folder:{colour_folder}", foundation=f"hf:{tiny_clip_dir}", k=3, workers=0)
    first = LensBuilder(config, tmp_path / "x", progress=False)
    with pytest.raises(SemlensError, match="another build is writing .*x right now"):
        LensBuilder(config, tmp_path / "x", progress=False)
    first.run()
    assert LensBuilder(config, tmp_path / "x", progress=False).run().reused  # the lock went with the first build
    with pytest.raises(SemlensError, match="built from other inputs"):  # a failed start gives the lock back too
        LensBuilder(BuildConfig(**{**asdict(config), "k": 4}), tmp_path / "x", progress=False)
    assert LensBuilder(config, tmp_path / "x", progress=False).run().reused


def test_a_bad_foundation_spec_or_empty_data_is_refused_before_any_pass(tmp_path, colour_folder) -> None:
    config = BuildConfig(model="py:tiny_models:tiny_cnn", layers=["head"], data=f"folder:{colour_folder}", foundation="clip")
    with pytest.raises(SemlensError, match="unknown foundation model spec 'clip'; valid forms: .*hf:"):
        LensBuilder(config, tmp_path / "x", progress=False)
    with pytest.raises(SemlensError, match="the data py:builtins:list has no samples"):  # a dataset factory returning []
        LensBuilder(BuildConfig(model="py:tiny_models:tiny_cnn", layers=["head"], data="py:builtins:list"), tmp_path / "y", progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_crop_threshold_on_the_command_line(tmp_path, colour_folder, tiny_clip_dir) -> None:
    out = tmp_path / "threshold.lens"
    args = run_args(colour_folder, tiny_clip_dir, out, "--layer", "features.3", "--crop", "activation", "--crop-threshold", "0.5")
    assert invoke(*args).exit_code == 0
    loose = run_args(colour_folder, tiny_clip_dir, tmp_path / "loose.lens", "--layer", "features.3", "--crop", "activation")
    assert invoke(*loose).exit_code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["identity"]["embed"]["crop_threshold"] == 0.5
    area = lambda lens: (lambda b: ((b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])).float().mean())(Lens.open(lens).arrays.boxes("features.3"))  # noqa: E731
    assert area(out) <= area(tmp_path / "loose.lens")  # a higher threshold keeps less of each map
    result = invoke(*run_args(colour_folder, tiny_clip_dir, tmp_path / "bad.lens", "--layer", "features.3", "--crop-threshold", "1.5"))
    assert result.exit_code == 2 and "between 0 and 1" in result.output


def test_errors_print_brackets_and_emoji_codes_as_written(capsys) -> None:
    from semlens._util.errors import SemlensError
    from semlens.cli._app import friendly

    @friendly
    def fails() -> None:
        raise SemlensError("pip install 'semlens[web]'")

    with pytest.raises(typer.Exit):
        fails()
    assert "semlens[web]" in capsys.readouterr().err

    @friendly
    def names_a_spec() -> None:
        raise SemlensError("py:mymodels.tiny:net:abc: the input size :thumbs_up: is not a number")

    with pytest.raises(typer.Exit):
        names_a_spec()
    assert "py:mymodels.tiny:net:abc: the input size :thumbs_up:" in " ".join(capsys.readouterr().err.split())  # no emoji made of it

    @friendly
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(typer.Exit) as stopped:
        interrupted()
    assert stopped.value.exit_code == 130 and "run again resumes where it stopped" in " ".join(capsys.readouterr().err.split())

    @friendly
    def worker_killed() -> None:  # as torch says it when the system kills a loader worker
        raise RuntimeError("DataLoader worker (pid(s) 8102) exited unexpectedly")

    with pytest.raises(typer.Exit) as stopped:
        worker_killed()
    said = " ".join(capsys.readouterr().err.split())
    assert stopped.value.exit_code == 2 and "exited unexpectedly" in said and "run the same command again to resume" in said

    @friendly
    def other_bug() -> None:  # as torch passes on an error raised inside a worker: a bug, not a killed worker
        raise RuntimeError("Caught RuntimeError in DataLoader worker process 0.\nRuntimeError: mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError):  # any other error keeps its traceback
        other_bug()


def test_an_image_outside_every_class_folder_takes_the_predicted_class(tmp_path, colour_folder, tiny_clip_dir) -> None:
    import shutil

    from PIL import Image

    folder = tmp_path / "mixed"
    shutil.copytree(colour_folder, folder)
    Image.new("RGB", (40, 40), (200, 30, 30)).save(folder / "loose.png")  # beside the class folders, in none
    out = tmp_path / "mixed.lens"
    result = invoke(*run_args(folder, tiny_clip_dir, out, "--layer", "head"))
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["relevance"]["targets"] == "labels; 1 samples without a class of the model (no class folder, or one the model has not): predicted classes"
    first = sorted(path for path in folder.iterdir() if path.is_dir())[0]
    first.rename(folder / "unknown")  # a class folder the model has no class of, too: the warning says each thing once
    again = invoke(*run_args(folder, tiny_clip_dir, tmp_path / "unknown.lens", "--layer", "head"))
    warning = json.loads((tmp_path / "unknown.lens" / "manifest.json").read_text())["relevance"]["warning"]
    assert again.exit_code == 0 and warning.count("class relevance of predicted classes") == 1 and "not among the model's: unknown" in warning, warning


def test_a_config_file_with_values_of_the_wrong_type_is_refused_by_name(tmp_path) -> None:
    for line, message in [('k = "3"', "k='3' should be an integer"), ("k = 3.7", "k=3.7 should be an integer"),
                          ('layers = "head"', "layers='head' should be a list of strings"),
                          ('foundation = ["world"]', "foundation=['world'] should be a string")]:  # fmt: skip
        path = tmp_path / "config.toml"
        layers = "" if line.startswith("layers") else 'layers = ["head"]'
        path.write_text(f'model = "py:tiny_models:tiny_cnn"\ndata = "folder:x"\n{layers}\n{line}\n')
        with pytest.raises(SemlensError, match=re.escape(message)):
            BuildConfig.from_toml(path)


def test_tables_on_a_narrow_terminal_wrap_long_names_instead_of_cutting_them() -> None:
    from rich.console import Console

    from semlens.cli._app import table

    narrow = Console(width=40, record=True)
    name = "backbone.stages.3.blocks.11.mlp.fc2/1023-"
    narrow.print(table("audit", ("unit", "verdict", "share"), [(name, "spurious", 0.25)]))
    shown = narrow.export_text()
    first_column = "".join(line.split("│")[1].strip() for line in shown.splitlines() if line.startswith("│"))
    assert "…" not in shown and first_column == name


def test_a_notebook_build_says_how_many_samples_could_not_be_read_and_why(tmp_path, colour_folder, tiny_clip_dir) -> None:
    """A dataset of normalised tensors fails at every sample with a clear reason, which only failures.json held: the
    notebook gets a warning with the count and the first reason, and, where most failed, what to do."""
    import torch
    from PIL import Image

    from semlens import build_lens
    from semlens._util.errors import SemlensWarning

    images = [(Image.open(path).convert("RGB"), 0) for path in sorted(colour_folder.rglob("*.png"))[:8]]
    images += [(torch.randn(3, 16, 16), 0) for _ in range(12)]  # normalised: values outside [0, 1]
    settings = dict(model="py:tiny_models:tiny_cnn", layers=["head"], data=images, foundation=f"hf:{tiny_clip_dir}", k=3, workers=0)
    with pytest.warns(UserWarning, match=r"12 of 20 samples could not be read and were skipped \(the first: .*normalisation.*overwrite=True"):
        build_lens(out=tmp_path / "n.lens", progress=False, **settings)
    with warnings.catch_warnings(record=True) as caught:  # the cell run again: the Lens is reused, its notes said once
        warnings.simplefilter("always")
        build_lens(out=tmp_path / "n.lens", progress=False, **settings)
    said = [str(warning.message) for warning in caught if issubclass(warning.category, SemlensWarning)]
    assert len(said) == 1 and "was complete already" in said[0] and "12 of 20 samples could not be read" in said[0], said


def test_help_names_values_as_the_command_line_takes_them() -> None:
    """A flag takes no value and a repeatable option or argument one value per use: typer 0.29 wrote ``--json <bool>``,
    ``--class <list[str]>``, ``query... <list[str]>`` and ``--top <int range> [x>=1]``."""
    for command in ("report", "audit", "run", "search"):
        shown = runner.invoke(app, [command, "--help"], terminal_width=160).output
        assert "--json" in shown or "--overwrite" in shown
        assert "<bool>" not in shown and "<list[" not in shown and " range>" not in shown, shown
    shown = runner.invoke(app, ["search", "--help"], terminal_width=160).output
    assert "query...  " in shown and "<int> [x>=1]" in shown, shown
