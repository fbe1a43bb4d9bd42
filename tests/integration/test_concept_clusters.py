"""A unit's concept clusters through the Lens, the CLI and the explorer's API: planted groups of example
embeddings come back as clusters with the right members, named by the concepts they were planted around."""

from __future__ import annotations

import json

import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from semlens import Lens
from semlens.analysis.clusters import MIN_SEPARATION, SPLIT_P
from semlens.cli import app as cli_app
from semlens.web.app import create_app

CONCEPTS = ["red", "dog", "car", "tree", "house"]


@pytest.fixture()
def lens(explorer_lenses) -> Lens:
    return Lens.open(explorer_lenses[0], trust=True)


def planted(lens: Lens, groups: list[tuple[str, list[int]]], k: int = 5) -> torch.Tensor:
    """Example embeddings ``[1, k, d]``: each slot near the text embedding of its group's concept."""
    concepts = lens.embedding.probes.concepts(tuple(CONCEPTS), "label")
    generator = torch.Generator().manual_seed(0)
    rows = torch.zeros(k, concepts.shape[1])
    for concept, ranks in groups:
        centre = concepts[CONCEPTS.index(concept)]
        for rank in ranks:
            rows[rank] = centre + 0.02 * centre.norm() * torch.randn(centre.shape, generator=generator)
    return rows[None]


def test_planted_groups_are_the_clusters_named_by_their_concepts(lens: Lens, tmp_path, monkeypatch) -> None:
    vocabulary = tmp_path / "concepts.txt"
    vocabulary.write_text("\n".join(CONCEPTS))
    layer, row = lens.units.index("features.3/2")
    for groups in ([("red", [0, 2, 4]), ("dog", [1, 3])], [("car", [0, 1, 2, 3, 4])]):
        embeddings = lens.arrays.example_embeddings(layer).clone()
        embeddings[row] = planted(lens, groups)[0]
        monkeypatch.setattr(lens.examples, "embeddings", lambda _layer, _examples="activation", e=embeddings: e)
        found = lens.concept_clusters("features.3/2", vocabulary)
        assert [(c.concept, c.ranks, c.size) for c in found.clusters] == [(name, ranks, len(ranks)) for name, ranks in groups]
        assert all(c.alignment > 0 for c in found.clusters) and found.vocabulary == "concepts"
        assert len(groups) == 1 or (found.polysemanticity >= MIN_SEPARATION and found.split_p < SPLIT_P)


def test_unnamed_clusters_without_a_vocabulary_and_the_cli(explorer_lenses) -> None:
    opened = Lens.open(explorer_lenses[1], trust=True)  # never labelled: no vocabulary to name clusters
    found = opened.concept_clusters("head/0")
    assert found.vocabulary is None and all(c.concept is None and c.alignment is None for c in found.clusters)
    assert sorted(rank for c in found.clusters for rank in c.ranks) == [e.rank for e in opened.examples.concept_examples("head/0")]
    result = CliRunner().invoke(cli_app, ["clusters", str(explorer_lenses[1]), "head/0", "--json", "--trust"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == json.loads(json.dumps(found.to_dict()))
    table = CliRunner().invoke(cli_app, ["clusters", str(explorer_lenses[1]), "head/0", "--trust"])
    assert table.exit_code == 0 and "concept cluster" in table.output
    bad = CliRunner().invoke(cli_app, ["clusters", str(explorer_lenses[1]), "head/9", "--trust"])
    assert bad.exit_code != 0 and "0..2" in bad.output


def test_the_explorer_serves_a_units_clusters_with_thumbnails(explorer_lenses) -> None:
    client = TestClient(create_app(explorer_lenses))
    answer = client.get("/api/lenses/0/layers/features.3/units/2/clusters")
    assert answer.status_code == 200, answer.text
    found = answer.json()
    expected = Lens.open(explorer_lenses[0], trust=True).concept_clusters("features.3/2")
    assert [c["ranks"] for c in found["clusters"]] == [c.ranks for c in expected.clusters]
    assert found["vocabulary"] == "builtin" and all(c["concept"] for c in found["clusters"])  # tiny.lens is labelled
    for cluster in found["clusters"]:
        assert [e["rank"] for e in cluster["examples"]] == cluster["ranks"]
        thumbnail = client.get(cluster["examples"][0]["thumbnail"])
        assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    missing = client.get("/api/lenses/0/layers/head/units/9/clusters")
    assert missing.status_code == 404 and "0..2" in missing.json()["detail"]


def test_a_unit_of_one_concept_names_its_cluster_by_its_own_label(lens: Lens) -> None:
    """One cluster is all of a unit's examples: it shows the unit's label (every face the same), where naming it by
    the raw alignment gave a concept every crop leans to ("person" for the demo's circle, ring and watermark units)."""
    for layer in lens.layers:
        for name in lens.units(layer):
            unit = f"{layer}/{name}"
            found = lens.concept_clusters(unit)
            if len(found.clusters) == 1 and lens.labels.candidates(unit):
                cluster, (concept, alignment, _) = found.clusters[0], lens.labels.candidates(unit)[0]
                assert (cluster.concept, cluster.alignment, cluster.label) == (concept, round(alignment, 5), lens.labels.label_of(unit))
