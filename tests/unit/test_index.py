"""Search over all units: exact ranking with stable ties, the faiss index's recall against brute force,
its cache in the Lens directory, and brute force when faiss is missing."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
import torch.nn.functional as F

from semlens import BuildConfig, Lens, build_lens
from semlens.analysis.alignment import alignment
from semlens.lens import index as index_module
from semlens.lens.index import INDEX_FILE, UnitIndex, UnitTable, open_index, top_positions
from semlens.lens.search import _search_table

needs_faiss = pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="faiss is not installed")


def clustered_units(units: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Units around 50 concepts, as the theta of a real model's units are."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(50, dim, generator=generator)
    return centres[torch.randint(0, 50, (units,), generator=generator)] + 0.7 * torch.randn(
        units, dim, generator=generator
    )


def test_top_positions_is_a_stable_descending_sort() -> None:
    scores = torch.tensor([0.1, 0.5, 0.5, 0.2, 0.5, 0.0])
    assert top_positions(scores, 2).tolist() == [1, 2]
    assert top_positions(scores, 4).tolist() == [1, 2, 4, 3]
    assert top_positions(scores, 10).tolist() == torch.sort(scores, descending=True, stable=True).indices.tolist()


def test_brute_force_table_equals_alignment_per_layer() -> None:
    thetas = {"a": torch.randn(30, 16), "b": torch.randn(20, 16)}
    probe, null = torch.randn(16), torch.randn(16)
    table = UnitTable.stack(thetas)
    rows, scores = table.top(probe, null, 5)
    expected = torch.cat([alignment(theta, probe[None], null)[:, 0] for theta in thetas.values()])
    assert rows.tolist() == torch.sort(expected, descending=True, stable=True).indices[:5].tolist()
    torch.testing.assert_close(scores, expected[rows])
    assert table.locate(29) == ("a", 29) and table.locate(30) == ("b", 0)


def test_the_table_keeps_the_layers_arrays_and_gathers_normalised_rows_across_layers() -> None:
    thetas = {"a": torch.randn(30, 16), "b": torch.randn(20, 16), "c": torch.zeros(5, 16)}
    table = UnitTable.stack(thetas)
    assert all(kept is theta for kept, theta in zip(table.thetas, thetas.values()))  # no copy of theta
    everything = F.normalize(torch.cat(list(thetas.values())), dim=-1)
    rows = torch.tensor([54, 0, 31, 29, 30, 7, 50])
    torch.testing.assert_close(table.normalised(rows), everything[rows])
    assert table.shape == (55, 16)


def test_excluded_units_are_never_ranked_by_brute_force_or_index() -> None:
    vectors = F.normalize(clustered_units(3000, 32), dim=-1)
    excluded = torch.zeros(3000, dtype=torch.bool)
    query = clustered_units(1, 32, seed=1)[0]
    best = UnitTable.stack({"all": vectors}).top(query, None, 20)[0]
    excluded[best[::2]] = True  # every other of the best 20
    for with_index in (False, True):
        table = UnitTable.stack({"a": vectors[:1000], "b": vectors[1000:]}, {"a": excluded[:1000], "b": excluded[1000:]})
        if with_index and importlib.util.find_spec("faiss") is not None:
            table.index = UnitIndex.build(table)
        rows, _ = table.top(query, None, 10)
        assert not excluded[rows].any()
        assert rows.tolist() == best[1::2].tolist()  # the rest of the ranking is unchanged
    small = UnitTable.stack({"a": vectors[:4]}, {"a": torch.tensor([True, False, True, True])})
    assert small.top(query, None, 10)[0].tolist() == [1]  # asking for more than there are valid units


@needs_faiss
def test_index_recall_against_brute_force() -> None:
    vectors = F.normalize(clustered_units(20_000, 64), dim=-1)
    exact, indexed = UnitTable.stack({"all": vectors}), UnitTable.stack({"all": vectors})
    indexed.index = UnitIndex.build(indexed)
    queries = clustered_units(20, 64, seed=1)
    found = sum(
        len(set(exact.top(q, None, 10)[0].tolist()) & set(indexed.top(q, None, 10)[0].tolist())) for q in queries
    )
    assert found / (10 * len(queries)) >= 0.9
    rows, scores = indexed.top(queries[0], None, 10)
    torch.testing.assert_close(scores, vectors[rows] @ F.normalize(queries[0], dim=-1))  # re-scored exactly


@needs_faiss
def test_index_is_cached_by_fingerprint(tmp_path, monkeypatch) -> None:
    from semlens.store.files import LensStore

    monkeypatch.setattr(index_module, "INDEX_MIN_UNITS", 100)
    store, table = LensStore(tmp_path), UnitTable.stack({"all": clustered_units(500, 32)})
    assert open_index(store, UnitTable.stack({"all": clustered_units(99, 32)}), "theta-1") is None  # small: brute force
    open_index(store, table, "theta-1")
    written = store.path(INDEX_FILE).stat().st_mtime_ns
    assert open_index(store, table, "theta-1") is not None and store.path(INDEX_FILE).stat().st_mtime_ns == written
    open_index(store, table, "theta-2")  # other theta: rebuilt
    assert store.path(INDEX_FILE).stat().st_mtime_ns != written


def test_without_faiss_search_falls_back_to_brute_force(tmp_path, monkeypatch) -> None:
    from semlens.store.files import LensStore

    monkeypatch.setattr(index_module, "INDEX_MIN_UNITS", 100)
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now fails
    with pytest.warns(UserWarning, match="brute force"):
        assert open_index(LensStore(tmp_path), UnitTable.stack({"all": torch.randn(200, 16)}), "theta") is None


@needs_faiss
def test_lens_search_through_the_index_matches_brute_force(tmp_path, monkeypatch, colour_folder, tiny_clip_dir) -> None:
    config = BuildConfig(
        model="py:tiny_models:tiny_cnn", layers=["features.0", "features.3", "head:signed=true"],
        data=f"folder:{colour_folder}", foundation=f"hf:{tiny_clip_dir}", k=3, crop="none", workers=0,
        class_relevance=False,
    )  # fmt: skip
    path = tmp_path / "tiny.lens"
    build_lens(config, path, progress=False)
    exact = {hit.unit: hit.score for hit in Lens.open(path).search("red", top=100)}
    monkeypatch.setattr(index_module, "INDEX_MIN_UNITS", 1)
    indexed = Lens.open(path)
    hits = indexed.search("red", top=5)
    assert _search_table(indexed).index is not None and (indexed.embedding.cache.root / INDEX_FILE).is_file()
    assert not (path / INDEX_FILE).exists()  # a cache: never written into the Lens
    # the same best scores; units whose scores differ only by rounding may swap places
    assert all(abs(hit.score - score) < 1e-5 for hit, score in zip(hits, list(exact.values())[:5], strict=True))
    assert all(abs(hit.score - exact[hit.unit]) < 1e-5 for hit in hits)


def response_table(units: int = 40, dim: int = 8, crops: int = 300, seed: int = 0) -> tuple[UnitTable, torch.Tensor, torch.Tensor]:
    """Two layers of random theta with responses taken the build's way (``ResponseMoments``) from random
    activations on random crops; returns the table, the crops' normalised embeddings and the activations."""
    from semlens.analysis.responses import ResponseMoments

    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(crops, dim, generator=generator)
    activations = torch.randn(crops, units, generator=generator) + embeddings @ torch.randn(dim, units, generator=generator)
    moments = ResponseMoments(dim)
    normalised = moments.add_embeddings(embeddings)
    moments.add_activations("a", activations[:, : units // 2], normalised)
    moments.add_activations("b", activations[:, units // 2 :], normalised)
    thetas = {"a": torch.randn(units // 2, dim, generator=generator), "b": torch.randn(units - units // 2, dim, generator=generator)}
    table = UnitTable.stack(thetas, None, {"a": moments.cross("a"), "b": moments.cross("b")}, moments.scatter())
    return table, normalised.float(), activations


def test_a_units_response_is_the_pearson_correlation_of_its_activation_with_the_crops_alignment() -> None:
    table, crops, activations = response_table()
    probe, null = torch.randn(8), torch.randn(8)
    direction = F.normalize(probe, dim=0) - F.normalize(null, dim=0)
    aligned = crops @ direction  # each crop's alignment with the probe (Eq. 4)
    expected = torch.tensor([float(torch.corrcoef(torch.stack([activations[:, unit], aligned]))[0, 1]) for unit in range(40)])
    torch.testing.assert_close(table.correlations(direction), expected, atol=1e-4, rtol=0)
    rows = torch.tensor([39, 0, 21])
    torch.testing.assert_close(table.correlations(direction, rows), expected[rows], atol=1e-4, rtol=0)


def test_ranking_by_both_is_the_lower_standardised_score_and_alignment_alone_is_eq4() -> None:
    table, _, _ = response_table()
    probe, null = torch.randn(8), torch.randn(8)
    direction = F.normalize(probe, dim=0) - F.normalize(null, dim=0)
    aligned = torch.cat([alignment(theta, probe[None], null)[:, 0] for theta in table.thetas])
    response = table.correlations(direction)

    def z(values: torch.Tensor) -> torch.Tensor:
        return (values - values.mean()) / values.std(unbiased=False)

    both = torch.minimum(z(aligned), z(response))
    rows, scores = table.top(probe, null, 6)
    assert rows.tolist() == torch.sort(both, descending=True, stable=True).indices[:6].tolist()
    torch.testing.assert_close(scores, aligned[rows])  # the hits' scores stay their alignments
    rows, _ = table.top(probe, null, 6, by_response=False)
    assert rows.tolist() == torch.sort(aligned, descending=True, stable=True).indices[:6].tolist()


def test_a_unit_aligned_with_the_probe_that_does_not_respond_to_it_ranks_below_one_that_does() -> None:
    # unit 0: the best alignment, no response; unit 1: second in both; the rest: weak in both
    thetas = torch.tensor([[1.0, 0.0], [0.9, 0.45], [0.0, 1.0], [-1.0, 0.3], [0.2, 1.0]])
    crosses = torch.tensor([[-0.5, 0.0], [0.8, 0.0], [0.1, 0.0], [0.0, 0.0], [0.3, 0.0]])
    table = UnitTable.stack({"layer": thetas}, None, {"layer": crosses}, torch.eye(2))
    probe = torch.tensor([1.0, 0.0])
    assert table.top(probe, None, 5, by_response=False)[0].tolist()[:2] == [0, 1]
    assert table.top(probe, None, 2)[0].tolist() == [1, 4]  # unit 0 falls to the bottom on its response


def test_excluded_units_are_left_out_of_the_standardisation() -> None:
    table, _, _ = response_table()
    excluded = torch.zeros(40, dtype=torch.bool)
    excluded[::3] = True
    masked = UnitTable.stack(
        {"a": table.thetas[0], "b": table.thetas[1]}, {"a": excluded[:20], "b": excluded[20:]},
        {"a": table.responses[0], "b": table.responses[1]}, table.scatter,
    )  # fmt: skip
    probe, null = torch.randn(8), torch.randn(8)
    kept = (~excluded).nonzero().flatten()
    alone = UnitTable.stack({"kept": torch.cat(table.thetas)[kept]}, None, {"kept": torch.cat(table.responses)[kept]}, table.scatter)
    assert masked.top(probe, null, 8)[0].tolist() == kept[alone.top(probe, null, 8)[0]].tolist()


@needs_faiss
def test_the_index_ranks_by_both_as_brute_force_does(monkeypatch) -> None:
    table, _, _ = response_table(units=2000, dim=16, crops=500)
    indexed = UnitTable.stack({"a": table.thetas[0], "b": table.thetas[1]}, None, {"a": table.responses[0], "b": table.responses[1]}, table.scatter)
    indexed.index = UnitIndex.build(indexed)
    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        probe, null = torch.randn(16, generator=generator), torch.randn(16, generator=generator)
        exact_rows, exact_scores = table.top(probe, null, 10)
        rows, scores = indexed.top(probe, null, 10)
        assert len(set(rows.tolist()) & set(exact_rows.tolist())) >= 9  # the candidates are proposed by alignment
        assert rows[:3].tolist() == exact_rows[:3].tolist()
