"""The explorer's JSON API on tiny Lenses: every endpoint, its bad input (4xx with a message, never a 500),
its safety (no paths from clients, bounded bodies, trusted hosts, headers), a property-based run over its
own OpenAPI schema, and a server that keeps answering while a slow request runs."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import threading
import time

import httpx
import pytest
from PIL import Image

pytest.importorskip("fastapi")
import schemathesis  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from live_server import live_server  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from semlens import Lens  # noqa: E402
from semlens.cli import app as cli_app  # noqa: E402
from semlens.web.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def app(explorer_lenses):
    return create_app(explorer_lenses)


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app)


def refused(response: httpx.Response, status: int, *words: str) -> str:
    """Assert a refusal with a JSON message that contains ``words``; return the message."""
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert all(word in str(detail) for word in words), detail
    return detail


def valid_units(path) -> list[str]:
    """The units the explorer ranks and maps: those with examples of their own (not inactive or tied)."""
    return Lens.open(path, trust=True).arrays.all_units()[0]


def png(colour: str = "red", size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_lenses_by_index_and_name(client) -> None:
    lenses = client.get("/api/lenses").json()
    assert [lens["name"] for lens in lenses] == ["tiny.lens", "other.lens"]
    assert lenses[0]["layers"][0] == {"name": "features.0", "units": 8, "signed": False, "sae": None}
    assert lenses[1]["layers"][1] == {"name": "head", "units": 6, "signed": True, "sae": None}
    assert lenses[0]["classes"] == ["red", "green", "blue"] and lenses[0]["class_relevance"] and lenses[0]["seen_classes"] == [0, 1, 2]
    assert not lenses[0]["relevance_examples"]  # built without them: the search page's choice is disabled
    assert client.get("/api/lenses/tiny.lens").json() == client.get("/api/lenses/0").json() == lenses[0]
    refused(client.get("/api/lenses/2"), 404, "0 (tiny.lens)", "1 (other.lens)")


def test_unit_page_examples_thumbnails_and_full_images(client, explorer_lenses) -> None:
    unit = client.get("/api/lenses/0/layers/features.3/units/2").json()
    assert (unit["unit"], unit["layer"], unit["index"], unit["lens_name"]) == (
        "features.3/2",
        "features.3",
        2,
        "tiny.lens",
    )
    assert [example["rank"] for example in unit["examples"]] == [0, 1, 2, 3, 4]
    assert unit["relevance_examples"] is None  # built without them: the page has no such section
    assert len(unit["candidates"]) == 3 and unit["candidates"][0]["alignment"] >= unit["candidates"][1]["alignment"]
    assert all(unit[name] is not None for name in ("clarity", "polysemanticity", "redundancy"))
    assert [c["mean_share"] for c in unit["classes"]] == sorted(
        (c["mean_share"] for c in unit["classes"]), reverse=True
    )
    assert {c["class"] for c in unit["classes"]} <= {"red", "green", "blue"}
    mine, other = unit["similar"]
    assert (
        mine["lens_name"] == "tiny.lens"
        and len(mine["hits"]) == min(8, len(valid_units(explorer_lenses[0])) - 1)
        and "features.3/2" not in {h["unit"] for h in mine["hits"]}
    )
    assert other["lens"] == 1 and other["hits"] and other["note"] is None

    thumbnail = client.get(unit["examples"][0]["thumbnail"])
    assert thumbnail.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(thumbnail.content)).size == (
        128,
        128,
    )
    cached = Lens.open(explorer_lenses[0]).embedding.cache.root / "thumbnails" / "features.3" / "2_0_fires.jpg"
    assert cached.read_bytes() == thumbnail.content  # made once, kept in the user cache
    assert not (explorer_lenses[0] / "thumbnails").exists()  # never in the Lens
    full = Image.open(io.BytesIO(client.get(unit["examples"][0]["image"]).content))
    assert full.size == (32, 32)  # the tiny model's input view; the example's box lies in it
    heat = Lens.open(explorer_lenses[0], trust=True).arrays.heatmaps("features.3")  # CRP relevance, pooled, kept in the Lens
    assert heat is not None and heat.shape[:2] == (6, 5) and heat[2, 0].float().abs().sum() > 0
    overlay = client.get(unit["examples"][0]["heatmap"])
    assert overlay.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(overlay.content)).size == (32, 32)
    assert Image.open(io.BytesIO(overlay.content)).tobytes() != full.tobytes()  # the heat is drawn over the view
    assert (
        client.get("/api/lenses/1/layers/head/units/0-/examples")
        .json()[0]["thumbnail"]
        .endswith("/units/0-/examples/0/thumbnail")
    )


def test_bad_lenses_layers_units_and_ranks_are_4xx_with_the_valid_choices(client) -> None:
    refused(client.get("/api/lenses/0/layers/nope/units/1"), 404, "features.0, features.3, head")
    refused(client.get("/api/lenses/0/layers/head/units/9"), 404, "0..2")
    refused(client.get("/api/lenses/0/layers/head/units/x/examples"), 404, "0..2")
    refused(client.get("/api/lenses/0/layers/head/units/1/examples/9/thumbnail"), 404, "0, 1, 2, 3, 4")
    by_relevance = client.get("/api/lenses/0/layers/head/units/1/examples/0/thumbnail", params={"examples": "relevance"})
    refused(by_relevance, 400, "no relevance examples", "--relevance-examples")
    refused(client.get("/api/lenses/0/layers/head/units/1/examples", params={"examples": "relevance"}), 400, "--relevance-examples")
    refused(client.get("/api/lenses/0/layers/head/units/1/examples", params={"examples": "x"}), 422, "'activation' or 'relevance'")
    assert client.get("/api/lenses/0/layers/head/units/1/examples/-1/image").status_code == 422
    refused(client.get("/api/lenses/0/layers/head/units/1/examples/0/crop"), 422, "'thumbnail', 'image' or 'heatmap'")  # one route, its kinds named
    assert client.get("/api/lenses/0/layers/head/units/" + "1" * 40).status_code == 422
    refused(client.get("/api/lenses/zzz/dissect"), 404, "tiny.lens")


def test_search_by_text_and_image_with_layer_filter_and_bounds(client, explorer_lenses) -> None:
    hits = client.get("/api/lenses/0/search", params={"q": "red", "top": 5}).json()
    expected = Lens.open(explorer_lenses[0], trust=True).search("red", top=5)  # by alignment and response
    assert [(h["unit"], h["score"], h["response"]) for h in hits] == [(e.unit, pytest.approx(e.score), pytest.approx(e.response)) for e in expected]
    aligned = client.get("/api/lenses/0/search", params={"q": "red", "top": 5, "rank": "alignment"}).json()
    assert [h["score"] for h in aligned] == sorted((h["score"] for h in aligned), reverse=True)
    refused(client.get("/api/lenses/0/search", params={"q": "red", "rank": "best"}), 422, "'alignment' or 'model'")
    assert all(len(hit["thumbnails"]) == 4 for hit in hits)
    one_layer = client.get("/api/lenses/0/search", params=[("q", "red"), ("layer", "features.3"), ("layer", "features.3")]).json()
    valid = {unit for unit in valid_units(explorer_lenses[0]) if unit.startswith("features.3/")}  # inactive or tied: never
    assert valid and {hit["unit"] for hit in one_layer} == valid
    refused(client.get("/api/lenses/0/search", params={"q": "red", "layer": "nope"}), 404, "features.0")
    refused(client.get("/api/lenses/0/search", params={"q": "red", "examples": "relevance"}), 400, "--relevance-examples")
    for bad in ({"q": ""}, {"q": "x" * 201}, {"q": "red", "top": 0}, {"q": "red", "top": 101}, {}):
        assert client.get("/api/lenses/0/search", params=bad).status_code == 422

    found = client.post(
        "/api/lenses/1/search/image", params={"top": 3}, files={"image": ("red.png", png(), "image/png")}
    )
    assert found.status_code == 200 and len(found.json()) == 3
    by_model = client.post("/api/lenses/0/search/image", params={"top": 3, "rank": "model"}, files={"image": ("red.png", png(), "image/png")}).json()
    expected = Lens.open(explorer_lenses[0]).search(images=[Image.open(io.BytesIO(png()))], top=3, rank="model")
    assert [(h["unit"], h["score"], h["response"]) for h in by_model] == [(e.unit, pytest.approx(e.score), None) for e in expected]
    refused(client.get("/api/lenses/0/search", params={"q": "red", "rank": "model"}), 400, "give images and no text")
    # a concept the Lens was shown is ranked by the model's response to its images; the headers say so
    from semlens.lens.concepts import forget, remember

    overlay = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    overlay.paste((255, 0, 0, 255), (8, 8, 20, 20))
    opened = Lens.open(explorer_lenses[0])
    remember(opened, "pasted square", [overlay])
    try:
        shown = client.get("/api/lenses/0/search", params={"q": "pasted square", "top": 3})
        assert shown.headers["x-semlens-rank"] == "model" and shown.headers["x-semlens-concept"] == "pasted%20square"
        assert [hit["unit"] for hit in shown.json()] == [hit.unit for hit in opened.search(images=[overlay], rank="model", top=3)]
    finally:
        forget(opened, "pasted square")
    plain = client.get("/api/lenses/0/search", params={"q": "pasted square", "top": 3})
    assert plain.headers["x-semlens-rank"] == "named" and "x-semlens-concept" not in plain.headers
    from urllib.parse import unquote  # the hits' note (none aligns more than an empty prompt), where they have one

    drawn = client.get("/api/lenses/0/search", params={"q": "red frame", "top": 3})  # a concept semlens draws: said in words
    assert drawn.headers["x-semlens-rank"] == "model" and drawn.headers["x-semlens-concept"] == "frame"
    assert unquote(drawn.headers["x-semlens-ranking"]) == opened.search("red frame", top=3).ranking()
    assert unquote(plain.headers["x-semlens-ranking"]).startswith("by alignment with the probe")

    assert unquote(plain.headers.get("x-semlens-note", "")) == (Lens.open(explorer_lenses[0]).search("pasted square", top=3).note or "")
    not_an_image = client.post("/api/lenses/0/search/image", files={"image": ("x.png", b"not an image", "image/png")})
    refused(not_an_image, 400, "not an image")
    assert " at 0x" not in not_an_image.json()["detail"]  # no Python object's address
    assert client.post("/api/lenses/0/search/image").status_code == 422
    refused(
        client.post("/api/lenses/0/search/image", files={"image": ("big.png", b"0" * (9 * 2**20), "image/png")}),
        413,
        "MiB",
    )


def test_map_of_all_layers_and_of_one(client, explorer_lenses) -> None:
    everything = client.get("/api/lenses/0/map").json()
    valid = valid_units(explorer_lenses[0])
    assert everything["units"] == valid and len(everything["x"]) == len(everything["labels"]) == len(valid)
    assert everything["layer"] is None
    assert everything["figure"]["data"] and all(trace["type"] == "scatter" for trace in everything["figure"]["data"])
    head = client.get("/api/lenses/0/map", params={"layer": "head"}).json()
    assert head["units"] == [unit for unit in valid if unit.startswith("head/")]
    refused(client.get("/api/lenses/0/map", params={"layer": "nope"}), 404, "features.3")


def test_dissect_and_the_units_of_a_bar(client) -> None:
    counts = client.get("/api/lenses/0/dissect").json()["counts"]
    assert {layer: sum(c.values()) for layer, c in counts.items()} == {"features.0": 8, "features.3": 6, "head": 3}
    for category, count in counts["features.0"].items():
        units = client.get("/api/lenses/0/dissect/units", params={"layer": "features.0", "category": category}).json()[
            "units"
        ]
        assert len(units) == count and all(unit["layer"] == "features.0" for unit in units)
    refused(
        client.get("/api/lenses/0/dissect/units", params={"layer": "head", "category": "nope"}),
        400,
        "colors",
        "unlabelled",
    )


def test_audit_its_export_and_bad_requests(client) -> None:
    audit = client.post(
        "/api/lenses/0/audit", json={"class": "red", "valid": ["red"], "spurious": ["noise", "text"]}
    ).json()
    assert audit["class"] == "red" and audit["valid"] == ["red"] and audit["cut"] == 0.028
    assert set(audit["shares"]) == {"valid", "spurious", "both", "unexpected", "spurious_or_both"} and audit["units"]
    assert {"unit", "relevance", "a_valid", "a_spur", "z_valid", "z_spur", "tight_shift", "verdict", "copies", "thumbnails"} <= set(audit["units"][0])
    assert all(isinstance(unit["tight_shift"], float) for unit in audit["units"])  # built with the default's tight (share) boxes
    assert audit["rule"]["z"] == 3.0 and audit["rule"]["margin"] == 1.0 and "null" in audit["rule"] and audit["rule"]["by_label"]
    assert any(unit["responses_label"] for unit in audit["units"])  # the tiny Lens kept its crop responses
    assert audit["named_among"].startswith("the built-in vocabulary (")  # what they were ranked among, named
    alone = client.post(
        "/api/lenses/0/audit", json={"class": "red", "valid": ["red"], "spurious": ["noise", "text"], "by_label": False}
    ).json()  # the alignment alone: no unit is named
    assert not alone["rule"]["by_label"] and not any(unit["responses_label"] for unit in alone["units"])
    loose = client.post(
        "/api/lenses/0/audit", json={"class": "red", "valid": ["red"], "spurious": ["noise", "text"], "z": 0, "margin": 0}
    ).json()  # every unit above its layer's median is aligned: fewer unexpected verdicts
    assert loose["rule"]["z"] == 0 and sum(u["verdict"] == "unexpected" for u in loose["units"]) <= sum(
        u["verdict"] == "unexpected" for u in audit["units"]
    )
    assert audit["figure"]["data"]
    by_index = client.post(
        "/api/lenses/0/audit", json={"class": "0", "valid": ["red"], "spurious": ["noise"], "cut": 0.5}
    ).json()
    assert by_index["class"] == "red" and all(unit["relevance"] > 0.5 for unit in by_index["units"])
    refused(
        client.post("/api/lenses/0/audit", json={"class": "purple", "valid": ["x"], "spurious": ["y"]}),
        400,
        "red, green, blue",
    )
    refused(
        client.post("/api/lenses/0/audit", json={"class": "7", "valid": ["x"], "spurious": ["y"]}), 400, "3 classes"
    )
    named = client.post("/api/lenses/0/audit", json={"class": "red", "spurious": ["noise", "text"]}).json()
    assert named["valid"] == ["red"] and named["shares"] == audit["shares"]  # no valid concept: the class's own name
    assert audit["reliance"] is None  # "noise" and "text" together: no concept semlens draws alone, no test
    # a spurious concept semlens draws is tested on its drawings where the model loads; draw=false: not
    drawn = client.post("/api/lenses/0/audit", json={"class": "red", "spurious": ["frame"]}).json()
    assert drawn["reliance"]["drawn"].startswith("frames semlens drew (") and drawn["reliance"]["samples"][0] > 0
    assert all(unit["verdict"] for unit in drawn["units"]) and isinstance(drawn["detectors"], list)
    assert client.post("/api/lenses/0/audit", json={"class": "red", "spurious": ["frame"], "draw": False}).json()["reliance"] is None
    for bad in ({"class": "red", "valid": ["x"], "spurious": []}, {"class": "red", "valid": ["x"] * 21, "spurious": ["y"]},
                {"class": "red", "valid": ["x"], "spurious": ["y"], "cut": 2}, {"valid": ["x"], "spurious": ["y"]},
                {"class": "red", "valid": ["x"], "spurious": ["y"], "margin": -1}):  # fmt: skip
        assert client.post("/api/lenses/0/audit", json=bad).status_code == 422


def test_attribution_graph(client) -> None:
    graph = client.get("/api/lenses/0/graph", params={"class": "red"}).json()
    assert graph["class"] == "red" and {node["layer"] for node in graph["nodes"]} <= {
        "features.0",
        "features.3",
        "head",
    }
    assert graph["edges"] and graph["figure"]["data"][0]["type"] == "sankey"
    two = client.get(
        "/api/lenses/0/graph", params=[("class", "red"), ("layer", "head"), ("layer", "features.3")]
    ).json()
    assert {node["layer"] for node in two["nodes"]} <= {"features.3", "head"}
    refused(client.get("/api/lenses/0/graph", params={"class": "red", "layer": "head"}), 400, "at least two layers")
    refused(client.get("/api/lenses/1/graph", params={"class": "red"}), 400, "signed")
    refused(client.get("/api/lenses/0/graph", params={"class": "²"}), 400, "unknown class")


def test_compare_two_lenses(client, explorer_lenses) -> None:
    result = client.get("/api/compare", params={"a": "tiny.lens", "b": 1}).json()
    assert (result["a"], result["b"], result["layers_b"]) == (0, 1, ["features.3", "head"])
    assert len(result["s_a_to_b"]) == 3 and len(result["s_a_to_b"][0]) == 2 and len(result["s_b_to_a"]) == 3
    similarity = [match["similarity"] for match in result["matches"]]
    assert len(similarity) == len(valid_units(explorer_lenses[0])) and similarity == sorted(similarity, reverse=True)
    assert result["matches"][0]["match"]["lens"] == 1
    assert client.get("/api/compare", params={"a": 0, "b": 0}).status_code == 200
    refused(client.get("/api/compare", params={"a": 0, "b": 5}), 404, "other.lens")
    assert client.get("/api/compare", params={"a": 0}).status_code == 422


def test_an_unlabelled_lens_is_labelled_in_memory_when_a_page_needs_labels(explorer_lenses, tmp_path) -> None:
    copy = tmp_path / "copy.lens"
    shutil.copytree(
        explorer_lenses[1], copy, ignore=shutil.ignore_patterns("labels.json", "*.labels.safetensors", "thumbnails")
    )
    client = TestClient(create_app([copy]))
    assert client.get("/api/lenses/0").json()["labelled"] is False
    assert sum(client.get("/api/lenses/0/dissect").json()["counts"]["head"].values()) == 6
    assert client.get("/api/lenses/0").json()["labelled"] is True
    assert Lens.open(copy).labels.vocabulary is None  # a GET writes nothing


def test_files_only_from_the_package_and_the_lenses(client) -> None:
    assert client.get("/").headers["content-type"].startswith("text/html")
    assert client.get("/vendor/plotly.min.js").headers["content-type"].startswith("text/javascript")
    for path in (
        "/../pyproject.toml",
        "/%2e%2e/%2e%2e/pyproject.toml",
        "/static/../../../../etc/passwd",
        "/..%2f..%2fetc/passwd",
    ):
        assert client.get(path).status_code == 404, path
    headers = client.get("/api/lenses").headers
    assert "default-src 'self'" in headers["content-security-policy"] and headers["x-content-type-options"] == "nosniff"
    assert not {"docs", "redoc"} & {path.strip("/") for path in client.get("/api/openapi.json").json()["paths"]}


def test_bodies_are_bounded_and_hosts_checked(explorer_lenses) -> None:
    guarded = TestClient(
        create_app(explorer_lenses[:1], allowed_hosts=["127.0.0.1", "localhost"]), base_url="http://127.0.0.1"
    )
    assert guarded.get("/api/lenses").status_code == 200
    assert guarded.get("/api/lenses", headers={"Host": "evil.example"}).status_code == 400
    chunked = guarded.post(
        "/api/lenses/0/audit", content=iter([b'{"class": "red"}']), headers={"Content-Type": "application/json"}
    )
    refused(chunked, 411, "Content-Length")


def test_keeps_answering_while_a_slow_request_runs(explorer_lenses) -> None:
    lens = Lens.open(explorer_lenses[0])
    started, release = threading.Event(), threading.Event()
    slow_overview = lens.overview

    def overview(*args, **kwargs):
        started.set()
        release.wait(30)
        return slow_overview(*args, **kwargs)

    lens.overview = overview
    with live_server(create_app([lens])) as url:
        slow = threading.Thread(target=httpx.get, args=(f"{url}/api/lenses/0/map?layer=head",), kwargs={"timeout": 60})
        slow.start()
        assert started.wait(30)
        begin = time.monotonic()
        for path in (
            "/api/lenses",
            "/api/lenses/0/layers/head/units/1",
            "/api/lenses/0/layers/head/units/1/examples/0/thumbnail",
            "/",
        ):
            assert httpx.get(url + path, timeout=10).status_code == 200
        answered = time.monotonic() - begin
        release.set()
        slow.join(60)
    assert answered < 5 and not slow.is_alive()


def test_serve_command_binds_loopback_by_default(explorer_lenses, monkeypatch) -> None:
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    result = CliRunner().invoke(cli_app, ["serve", str(explorer_lenses[0]), "--port", "8123"])
    assert result.exit_code == 0, result.output
    app, kwargs = calls[0]
    assert kwargs["host"] == "127.0.0.1" and kwargs["port"] == 8123 and "http://127.0.0.1:8123/" in result.output
    assert TestClient(app).get("/api/lenses", headers={"Host": "evil.example"}).status_code == 400  # DNS rebinding
    missing = CliRunner().invoke(cli_app, ["serve", str(explorer_lenses[0].parent / "missing.lens")])
    assert missing.exit_code == 2 and "not a Lens directory" in missing.output
    import socket

    with socket.socket() as holder:  # a port another program holds: said in words before uvicorn's raw [Errno 98]
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        busy = CliRunner().invoke(cli_app, ["serve", str(explorer_lenses[0]), "--port", str(taken)])
    assert busy.exit_code == 2 and f"port {taken} on 127.0.0.1 is taken" in " ".join(busy.output.split()) and f"--port {taken + 1}" in busy.output


def test_import_semlens_does_not_import_the_web_stack() -> None:
    code = "import sys, semlens; assert not {'fastapi', 'uvicorn', 'starlette'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_property_based_requests_never_get_a_server_error(app) -> None:
    """schemathesis against the app's own OpenAPI schema: for every operation, valid requests (once free, once
    with an existing Lens, layer and unit so that they reach the analyses) and invalid ones; every response is
    checked (no 5xx, documented status codes, content types and shapes)."""
    existing = {"lens": "0", "layer": "head", "unit": "1"}
    for result in schemathesis.openapi.from_asgi("/api/openapi.json", app).get_all_operations():
        operation = result.ok()
        names = {parameter.name for parameter in operation.path_parameters}
        pinned = {"path_parameters": {name: value for name, value in existing.items() if name in names}}
        runs = [{}, {**pinned, "query": {"a": "0", "b": "1"}} if operation.path == "/api/compare" else pinned]
        if any(len(part) for part in (operation.path_parameters, operation.query, operation.body)):
            runs.append({"generation_mode": GenerationMode.NEGATIVE})
        for fixed in runs:

            @given(case=operation.as_strategy(**fixed))
            @settings(
                max_examples=10, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
            )
            def check(case) -> None:
                case.call_and_validate(excluded_checks=[positive_data_acceptance], timeout=120)

            check()


def test_openapi_documents_every_endpoint(client) -> None:
    paths = client.get("/api/openapi.json").json()["paths"]
    operations = [operation for methods in paths.values() for operation in methods.values()]
    assert len(operations) == 19 and all(
        operation["summary"] and {"400", "404"} <= set(operation["responses"]) for operation in operations
    )
