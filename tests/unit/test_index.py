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
    from semlens.lens.store import LensStore

    monkeypatch.setattr(index_module, "INDEX_MIN_UNITS", 100)
    store, table = LensStore(tmp_path), UnitTable.stack({"all": clustered_units(500, 32)})
    assert open_index(store, UnitTable.stack({"all": clustered_units(99, 32)}), "theta-1") is None  # small: brute force
    open_index(store, table, "theta-1")
    written = store.path(INDEX_FILE).stat().st_mtime_ns
    assert open_index(store, table, "theta-1") is not None and store.path(INDEX_FILE).stat().st_mtime_ns == written
    open_index(store, table, "theta-2")  # other theta: rebuilt
    assert store.path(INDEX_FILE).stat().st_mtime_ns != written


def test_without_faiss_search_falls_back_to_brute_force(tmp_path, monkeypatch) -> None:
    from semlens.lens.store import LensStore

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
    assert indexed._search_table.index is not None and (indexed.cache.root / INDEX_FILE).is_file()
    assert not (path / INDEX_FILE).exists()  # a cache: never written into the Lens
    # the same best scores; units whose scores differ only by rounding may swap places
    assert all(abs(hit.score - score) < 1e-5 for hit, score in zip(hits, list(exact.values())[:5], strict=True))
    assert all(abs(hit.score - exact[hit.unit]) < 1e-5 for hit in hits)
