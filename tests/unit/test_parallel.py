"""Splitting work (shards, ranks) and the precision of the collection pass (its top-k: test_exact_topk.py)."""

from __future__ import annotations

import pytest
import torch

from semlens._util.devices import autocast_dtype
from semlens._util.errors import SemlensError
from semlens.pipeline.parallel import Ranks, Shard, connect


@pytest.mark.parametrize("total, step, count", [(30, 7, 2), (30, 7, 3), (5, 7, 3), (100, 1, 7), (0, 4, 2)])
def test_shards_cover_every_index_once_in_whole_steps(total: int, step: int, count: int) -> None:
    blocks = [Shard(index, count).split(range(total), step) for index in range(count)]
    assert [i for block in blocks for i in block] == list(range(total))
    assert all(block.start % step == 0 for block in blocks if len(block))


def test_shards_nest_inside_shards() -> None:
    outer = Shard(1, 3).split(range(100), 8)
    inner = [Shard(rank, 2).split(outer, 8) for rank in range(2)]
    assert [i for block in inner for i in block] == list(outer)
    assert all(block.start % 8 == 0 for block in inner)


@pytest.mark.parametrize("text", ["3/3", "1", "a/2", "-1/2", "1/0"])
def test_bad_shard_specs_are_refused(text: str) -> None:
    with pytest.raises(SemlensError, match="i/n"):
        Shard.parse(text)


def test_one_process_is_rank_zero_of_one() -> None:
    ranks = Ranks()
    rows = torch.arange(6).reshape(3, 2)
    assert (ranks.rank, ranks.world, ranks.is_main) == (0, 1, True)
    assert ranks.concat(rows) is rows and ranks.gather_objects("x") == ["x"] and ranks.on_main(lambda: 5) == 5


def test_more_ranks_than_gpus_is_a_clear_error_before_any_group_is_joined(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun --nproc_per_node 2 on a one-GPU machine: NCCL would fail on the shared GPU with an obscure error."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    joined = []
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *args, **kwargs: joined.append(args))
    with pytest.raises(SemlensError, match=r"LOCAL_RANK 1, but the machine has 1 GPU.*--nproc_per_node 1.*CUDA_VISIBLE_DEVICES"):
        connect()
    assert not joined


def test_precision_auto_keeps_float32_on_the_cpu() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("float32", cpu) is None
    assert autocast_dtype("bfloat16", cpu) is torch.bfloat16
    with pytest.raises(SemlensError, match="precision"):
        autocast_dtype("int8", cpu)
