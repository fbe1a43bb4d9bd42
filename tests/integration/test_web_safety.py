"""The explorer over a healthy, a damaged, a forged and an unreadable Lens: each fails alone (listed as damaged, its
neighbours answer), no answer names a path of this machine, and fuzzed requests get no server error."""

from __future__ import annotations

import builtins
import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
import schemathesis  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from semlens import BuildConfig, build_lens  # noqa: E402
from semlens.cli import app as cli_app  # noqa: E402
from semlens.store.files import LensStore  # noqa: E402
from semlens.web.app import create_app  # noqa: E402

#: a path of this machine in a text: what no answer to a client may hold
MACHINE_PATH = re.compile(r"(?<![\w.])/(tmp|root|home|work|usr|var|etc)/")


@pytest.fixture(scope="module")
def lenses(tmp_path_factory, colour_folder, tiny_clip_dir) -> list[Path]:
    """A healthy Lens; a copy with an array altered (found at its first read); a copy forged with other shapes and
    the hashes to match (found at open)."""
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("served")
    config = BuildConfig(
        model="py:tiny_models:tiny_cnn", layers=["features.3", "head"], data=f"folder:{colour_folder}",
        foundation=f"hf:{tiny_clip_dir}", k=4, workers=0,
    )  # fmt: skip
    healthy = build_lens(config, root / "healthy.lens", progress=False).path
    damaged, forged = root / "damaged.lens", root / "forged.lens"
    for copy in (damaged, forged):
        shutil.copytree(healthy, copy)
    theta = damaged / "layers/head.embed.safetensors"
    data = bytearray(theta.read_bytes())
    data[-8:] = b"\x00" * 8
    theta.write_bytes(bytes(data))
    arrays = load_file(str(forged / "layers/head.embed.safetensors"))
    arrays["theta"] = torch.randn(len(arrays["theta"]), 64)
    save_file(arrays, str(forged / "layers/head.embed.safetensors"))
    manifest = json.loads((forged / "manifest.json").read_text())
    manifest["arrays"]["layers/head.embed.safetensors"] = LensStore(forged).array_record("layers/head.embed.safetensors")
    (forged / "manifest.json").write_text(json.dumps(manifest))
    return [healthy, damaged, forged]


@pytest.fixture(scope="module")
def app(lenses):
    return create_app(lenses)


def machine_paths(text: str) -> list[str]:
    return MACHINE_PATH.findall(text) + [path for path in (os.environ["SEMLENS_CACHE"], str(Path.home())) if path in text]


def test_each_lens_fails_alone_and_is_listed_as_damaged(app) -> None:
    client = TestClient(app)
    listed = client.get("/api/lenses").json()
    assert [lens["name"] for lens in listed] == ["healthy.lens", "damaged.lens", "forged.lens"]
    assert listed[0]["damaged"] is None and listed[1]["damaged"] is None  # the altered array is not read yet
    assert "is damaged: layers/head.embed.safetensors: its array 'theta' has shape [3, 64]" in listed[2]["damaged"]
    page = client.get("/api/lenses/0/layers/head/units/0")
    assert page.status_code == 200, page.text
    similar = {entry["lens_name"]: entry for entry in page.json()["similar"]}
    assert similar["healthy.lens"]["hits"] and similar["healthy.lens"]["note"] is None
    assert "damaged.lens is damaged: layers/head.embed.safetensors" in similar["damaged.lens"]["note"]
    assert "forged.lens is damaged" in similar["forged.lens"]["note"]
    assert "damaged.lens is damaged" in client.get("/api/lenses/1").json()["damaged"]  # found by the neighbour's page
    assert client.get("/api/lenses/0/layers/head/units/0").status_code == 200  # and skipped since
    refused = client.get("/api/lenses/2/layers/head/units/0")
    assert refused.status_code == 400 and "Lens forged.lens cannot be opened: the Lens at forged.lens is damaged" in refused.json()["detail"]
    assert client.get("/api/lenses/1/search?q=red").status_code == 400


def test_no_error_answer_names_a_path_of_this_machine(app, lenses) -> None:
    """Every route, with every served Lens and with names that do not exist (layer, unit, rank, space, crop rule)."""
    client = TestClient(app)
    paths = client.get("/api/openapi.json").json()["paths"]
    answers = []
    for template, methods in paths.items():
        for lens in ("0", "1", "2", "nope"):
            for layer, unit in (("head", "0"), ("nope", "99")):
                url = template.format(lens=lens, layer=layer, unit=unit, rank="99", kind="heatmap")
                for query in ("", "?space=nope", "?q=red&space=nope&a=0&b=1&rule=nope", "?q=red&a=default&b=nope"):
                    for method in methods:
                        response = client.request(method.upper(), url + query, json={})
                        assert response.status_code < 500, (url + query, response.text)
                        answers.append((url + query, response))
    errors = [(url, response.text) for url, response in answers if response.status_code >= 400]
    assert len(errors) > 500 and any("space" in text for _, text in errors)
    assert not [(url, text) for url, text in errors if machine_paths(text)]
    for path in lenses:
        assert not [(url, text) for url, text in errors if str(path) in text]


def test_a_link_out_of_the_lens_is_named_without_paths(lenses, tmp_path) -> None:
    copy = tmp_path / "linked.lens"
    shutil.copytree(lenses[0], copy)
    (copy / "samples.json").unlink()
    (copy / "samples.json").symlink_to(tmp_path / "outside.json")
    response = TestClient(create_app([lenses[0], copy])).get("/api/lenses/1/layers/head/units/0/examples")
    assert response.status_code == 400 and "linked.lens links 'samples.json' to a file outside itself" in response.json()["detail"]
    assert not machine_paths(response.text)


def test_sample_names_outside_the_data_are_shown_cut(lenses, tmp_path) -> None:
    """A tampered Lens naming ``/etc/passwd`` as its samples: nothing reads it (the image is refused) and the page
    shows "…/passwd", as specs' paths are cut, not a path of this machine."""
    copy = tmp_path / "renamed.lens"
    shutil.copytree(lenses[0], copy)
    table = json.loads((copy / "samples.json").read_text())
    table["paths"] = ["/etc/passwd" if i % 2 else "../../etc/shadow" for i in range(len(table["paths"]))]
    (copy / "samples.json").write_text(json.dumps(table))
    response = TestClient(create_app([copy])).get("/api/lenses/0/layers/head/units/0/examples")
    assert response.status_code == 200, response.text
    assert {example["source"] for example in response.json()} <= {"…/passwd", "…/shadow"} and not machine_paths(response.text)


def test_a_lens_this_user_may_not_read_is_one_line_in_the_explorer_and_the_cli(lenses, tmp_path, monkeypatch) -> None:
    copy = tmp_path / "private.lens"
    shutil.copytree(lenses[0], copy)
    real_open = builtins.open

    def refused(file, *args, **kwargs):  # its arrays private to another user (root reads anything: simulated)
        if str(file).startswith(str(copy)) and str(file).endswith(".safetensors"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refused)
    monkeypatch.setattr(io, "open", refused)
    client = TestClient(create_app([lenses[0], copy]))
    response = client.get("/api/lenses/1/layers/head/units/0")
    assert response.status_code == 400 and "private.lens cannot be read by this user" in response.json()["detail"]
    assert client.get("/api/lenses/0/layers/head/units/0").status_code == 200
    result = CliRunner().invoke(cli_app, ["search", str(copy), "red"])
    assert result.exit_code == 2 and "Traceback" not in result.output and "cannot be read by this user" in result.output


def test_fuzzed_requests_over_healthy_damaged_and_forged_lenses_get_no_server_error(app) -> None:
    """schemathesis against the app's schema, each operation pinned to each served Lens and free, valid and
    invalid requests: no 5xx and no path of this machine in any answer."""
    for result in schemathesis.openapi.from_asgi("/api/openapi.json", app).get_all_operations():
        operation = result.ok()
        names = {parameter.name for parameter in operation.path_parameters}
        runs = [{"path_parameters": {name: value for name, value in {"lens": lens, "layer": "head", "unit": "1"}.items() if name in names}}
                for lens in ("0", "1", "2")] if "lens" in names else [{}]  # fmt: skip
        if any(len(part) for part in (operation.path_parameters, operation.query, operation.body)):
            runs.append({"generation_mode": GenerationMode.NEGATIVE})
        for fixed in runs:

            @given(case=operation.as_strategy(**fixed))
            @settings(max_examples=5, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
            def check(case) -> None:
                response = case.call(timeout=120)
                assert response.status_code < 500, (case.path, case.query, response.text)
                if "json" in response.headers.get("content-type", ""):
                    assert not machine_paths(response.text), response.text

            check()
