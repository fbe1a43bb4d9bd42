"""The collection pass keeps every unit's activations on the samples a top-k holds: all of them at the end,
exactly, within its memory, and through a checkpoint."""

from __future__ import annotations

import pytest
import torch

import semlens.pipeline.kept_activations as kept_module
from semlens.pipeline.collect import TopK, candidate_ids
from semlens.pipeline.kept_activations import KeptActivations, kept_layer_activations


def streamed(scores: dict[str, torch.Tensor], k: int, batch: int, kept: KeptActivations) -> dict[str, TopK]:
    """Batches of per-layer scores ``[N, U]`` through a top-k per layer, the kept activations watching."""
    results = {name: TopK.empty(values.shape[1], k) for name, values in scores.items()}
    samples = next(iter(scores.values())).shape[0]
    for start in range(0, samples, batch):
        ids = torch.arange(start, min(start + batch, samples))
        part = {name: values[ids] for name, values in scores.items()}
        for name, topk in results.items():
            topk.update(part[name], ids)
        kept.add(ids, part, results)
    return results


@pytest.fixture
def scores() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"a": torch.randn(400, 6, generator=generator), "b": torch.randn(400, 3, generator=generator) ** 3}


def test_every_sample_of_the_final_top_k_is_kept_with_all_its_activations(scores, monkeypatch) -> None:
    monkeypatch.setattr(kept_module, "MIN_PRUNE_ROWS", 8)  # prune often, as a long pass does
    kept = KeptActivations(["a", "b"])
    results = streamed(scores, 4, 16, kept)
    held = candidate_ids(results)
    assert len(kept.rows) < 400  # samples every unit pushed out were dropped on the way
    kept.prune(held)
    assert sorted(kept.rows) == held.tolist()
    ids, layers = kept_layer_activations(kept.state(), ["a", "b"])
    assert torch.equal(ids, held)
    for name, values in layers.items():
        assert torch.equal(values, scores[name][held])


def test_past_its_memory_it_keeps_what_fits_and_the_rest_is_left_to_the_model(scores) -> None:
    kept = KeptActivations(["a", "b"], max_bytes=4 * 9 * 10)  # 9 units: room for 10 samples
    results = streamed(scores, 4, 16, kept)
    kept.prune(candidate_ids(results))
    assert 0 < len(kept.rows) <= 10
    for sample, row in kept.rows.items():
        assert torch.equal(row, torch.cat([scores["a"][sample], scores["b"][sample]]))


def test_a_checkpoint_gives_back_what_was_kept(scores) -> None:
    kept = KeptActivations(["a", "b"])
    streamed({name: values[:50] for name, values in scores.items()}, 4, 16, kept)
    again = KeptActivations(["a", "b"])
    again.load(kept.state())
    assert again.rows.keys() == kept.rows.keys()
    assert all(torch.equal(again.rows[sample], row) for sample, row in kept.rows.items())
    empty = KeptActivations(["a", "b"])
    empty.load({})  # a checkpoint of a pass that kept nothing
    assert not empty.rows and empty.state()["kept.ids"].numel() == 0


def test_when_full_it_still_drops_the_samples_no_top_k_holds_and_keeps_later_ones(scores, monkeypatch) -> None:
    """A cap below the clean-up size: past it, samples pushed out must still make room for later ones."""
    monkeypatch.setattr(kept_module, "FULL_PRUNE_BATCHES", 1)
    kept = KeptActivations(["a", "b"], max_bytes=4 * 9 * 30)  # room for 30 samples, under MIN_PRUNE_ROWS
    results = streamed(scores, 1, 16, kept)  # one sample per unit: at most 9 held at a time
    kept.prune(candidate_ids(results))
    assert sorted(kept.rows) == candidate_ids(results).tolist()
    assert all(row.untyped_storage().nbytes() == 4 * 9 for row in kept.rows.values())  # none holds its whole batch
