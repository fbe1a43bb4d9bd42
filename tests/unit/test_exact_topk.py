"""Top-k at reduced precision is float32's: bfloat16 autocast picks candidates, a float32 pass re-scores them."""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager, nullcontext

import pytest
import tiny_models
import torch

from semlens import LayerSpec
from semlens._util.devices import strict_float32
from semlens._util.errors import SemlensError
from semlens.model.units import UnitReader, resolve_module
from semlens.pipeline.collect import (
    Collector,
    TopK,
    candidate_ids,
    candidate_slots,
    collect_topk,
    iterate_batches,
    rescore,
    unconfirmed_units,
)

LAYERS = [LayerSpec.parse("features.3"), LayerSpec.parse("head:signed=true")]
K = 4


def every_score(model: torch.nn.Module, data: torch.Tensor, precision: AbstractContextManager) -> dict[str, tuple]:
    """Every sample's scores ``[N, U]`` and maps of each layer in one forward pass: the brute-force reference."""
    readers = {spec.name: UnitReader(spec) for spec in LAYERS}
    seen: dict[str, tuple] = {}
    hooks = [
        resolve_module(model, name).register_forward_hook(lambda _m, _i, output, name=name: seen.__setitem__(name, readers[name](output)))
        for name in readers
    ]
    with torch.no_grad(), precision:
        model(data)
    for hook in hooks:
        hook.remove()
    return seen


def top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Per unit the ids of the k best samples by (score desc, id asc): ``[U, k]``."""
    return torch.tensor([sorted(range(scores.shape[0]), key=lambda i: (-scores[i, unit].item(), i))[:k] for unit in range(scores.shape[1])])


@pytest.fixture(scope="module")
def model_and_data() -> tuple[torch.nn.Module, torch.Tensor]:
    data = torch.randn(160, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    return tiny_models.TinyCNN().eval(), data


def test_bfloat16_collection_stores_the_float32_top_k_scores_and_maps(model_and_data) -> None:
    model, data = model_and_data
    reference, reduced = every_score(model, data, nullcontext()), every_score(model, data, torch.autocast("cpu", dtype=torch.bfloat16))
    differs = [name for name in reference if not torch.equal(top(reference[name][0], K), top(reduced[name][0], K))]
    assert differs  # the emulated GPU ranks some unit's samples otherwise than float32: without re-scoring it would be wrong

    result = collect_topk(model, LAYERS, iterate_batches(data, 16), k=K, autocast=torch.bfloat16, reload=lambda ids: iterate_batches(data, 16, ids))
    for name, (scores, maps) in reference.items():
        expected = top(scores, K)
        assert torch.equal(result[name].ids, expected), name
        torch.testing.assert_close(result[name].scores, scores.T.gather(1, expected), rtol=1e-6, atol=1e-6)
        if maps is None:
            assert result[name].maps is None
        else:  # the maps kept for cropping are the float32 ones of the final top-k
            units = torch.arange(maps.shape[1])[:, None]
            torch.testing.assert_close(result[name].maps, maps[expected, units], rtol=1e-6, atol=1e-6)
    with Collector(model, LAYERS, candidate_slots(K, torch.bfloat16), autocast=torch.bfloat16, maps=False) as candidates:
        for batch, ids in iterate_batches(data, 16):
            candidates.update(batch, ids)
    assert len(candidate_ids(candidates.results)) < len(data)  # only some samples re-scored: which ones mattered


def test_float32_collection_keeps_k_slots_and_needs_no_second_pass(model_and_data) -> None:
    model, data = model_and_data
    assert candidate_slots(K, None) == K and candidate_slots(K, torch.bfloat16) > K
    result = collect_topk(model, LAYERS, iterate_batches(data, 16), k=K)
    reference = every_score(model, data, nullcontext())
    for name, (scores, _maps) in reference.items():
        assert torch.equal(result[name].ids, top(scores, K)), name


def test_reduced_precision_without_reload_is_refused_by_name(model_and_data) -> None:
    model, data = model_and_data
    with pytest.raises(SemlensError, match="float32 re-scoring needs reload="):
        collect_topk(model, LAYERS, iterate_batches(data, 16), k=K, autocast=torch.bfloat16)


def test_a_unit_whose_candidates_may_miss_a_sample_is_unconfirmed() -> None:
    """Unit 0: the last candidate scored 5 in bfloat16 and the errors seen are 0.1 (1 % of the peak 10); a sample
    left out scored at most 5 + 0.1, under the exact k-th 8: confirmed. Unit 1's k-th 5.05 is not above that."""
    candidates = TopK(torch.tensor([[10.0, 8.0, 5.0], [10.0, 6.0, 5.0]]), torch.tensor([[1, 2, 3], [1, 4, 5]]))
    exact = TopK(torch.tensor([[10.1, 8.0], [10.0, 5.05]]), torch.tensor([[1, 2], [1, 5]]))
    assert unconfirmed_units(candidates, exact).tolist() == [False, True]
    fewer = TopK(torch.tensor([[10.0, 8.0, float("-inf")]] * 2), torch.tensor([[1, 2, -1]] * 2))  # every sample a candidate
    assert unconfirmed_units(fewer, exact).tolist() == [False, False]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (SEMLENS_TEST_CUDA=1 shows the GPU to the tests)")
def test_on_a_gpu_both_precisions_store_the_float32_top_k_with_tf32_off(model_and_data) -> None:
    """The reference is one float32 pass with TF32 off; auto's bfloat16 and float32 with torch's TF32 default on
    both store its top-k. Compared by scores, so that samples tied to within cuDNN's batch-dependent rounding
    may trade places: a sample in the wrong place scores far below (bfloat16 missed by up to 7 % of the peak)."""
    model, data = model_and_data
    model, data = copy.deepcopy(model).to("cuda"), data.to("cuda")
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True  # torch's default for convolutions
    try:
        check_both_precisions(model, data)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def check_both_precisions(model: torch.nn.Module, data: torch.Tensor) -> None:
    seen = every_score(model, data, strict_float32())
    for autocast in (torch.bfloat16, None):
        result = collect_topk(model, LAYERS, iterate_batches(data, 16), k=K, autocast=autocast, reload=lambda ids: iterate_batches(data, 16, ids))
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32  # the user's settings, restored
        for name, (scores, _maps) in seen.items():
            scores = scores.cpu().T  # [U, N]
            expected = scores.sort(dim=1, descending=True, stable=True).values[:, :K]
            torch.testing.assert_close(result[name].scores, expected, rtol=1e-5, atol=1e-5, msg=f"{name} {autocast}")
            torch.testing.assert_close(scores.gather(1, result[name].ids), expected, rtol=1e-5, atol=1e-5, msg=f"{name} {autocast}")


def test_where_every_sample_was_re_scored_no_unit_is_unconfirmed(model_and_data) -> None:
    """Candidates whose reduced scores (1000) are far off make each unit unconfirmed on its own; but when the
    candidates of all units together are every sample the pass saw, none was left out."""
    model, data = model_and_data
    head = LAYERS[1]
    ids = torch.tensor([[0, 1], [1, 2], [2, 0]]).repeat(2, 1)  # the signed head's 6 units, 3 samples in all
    candidates = {head.name: TopK(torch.full((6, 2), 1000.0), ids)}
    reload = lambda chosen: iterate_batches(data, 2, chosen)  # noqa: E731
    assert rescore(model, [head], candidates, reload, k=1, samples=4)[1] == {"rescored_samples": 3, "unconfirmed_units": 6}
    assert rescore(model, [head], candidates, reload, k=1, samples=3)[1] == {"rescored_samples": 3, "unconfirmed_units": 0}
