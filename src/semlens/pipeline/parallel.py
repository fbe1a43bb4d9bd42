"""Splitting a build across processes: shards of the data (job arrays) and torch.distributed ranks.

Both split the sample indices into contiguous blocks whose bounds are multiples of the batch size,
so every batch a process sees is a batch the single-process run sees too: the activations, and so
the top-k after the exact associative merge of :class:`~semlens.pipeline.collect.TopK`, come out bit for
bit the same. With one process every collective here is a no-op, and nothing is imported from
``torch.distributed`` that a CPU-only install lacks.
"""

from __future__ import annotations

import atexit
import os
import sys
from dataclasses import dataclass
from functools import reduce
from typing import Any, Callable, NoReturn, TypeVar

import torch
import torch.distributed as dist

from .._util.errors import SemlensError
from .collect import TopK

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Part ``index`` of ``count`` equal parts of something (``"0/1"`` is the whole)."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/n"`` with ``0 <= i < n``, as given to ``semlens run --shard``."""
        index, sep, count = text.partition("/")
        try:
            shard = cls(int(index), int(count))
        except ValueError:
            shard = None
        if not sep or shard is None or not 0 <= shard.index < shard.count:
            raise SemlensError(f"--shard {text!r} is not of the form i/n with 0 <= i < n (e.g. 0/4 ... 3/4)")
        return shard

    def split(self, items: range, step: int = 1) -> range:
        """This shard's contiguous block of ``items``; block bounds fall on multiples of ``step``."""
        blocks = -(-len(items) // step)
        begin = blocks * self.index // self.count * step
        end = blocks * (self.index + 1) // self.count * step
        return items[begin:end]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def connect() -> bool:
    """Join the process group that ``torchrun`` describes in the environment, unless one is running;
    True when this call made it (and so :meth:`Ranks.finish` should leave it).

    NCCL when CUDA is there (each rank on its ``LOCAL_RANK`` GPU), gloo on the CPU. Should a build
    fail, the group is left at exit.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        local, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local >= gpus:
            raise SemlensError(
                f"this torchrun rank has LOCAL_RANK {local}, but the machine has {gpus} GPU(s), and NCCL needs one GPU "
                f"per rank: start at most {gpus} process(es) per machine (--nproc_per_node {gpus}), or hide the GPUs "
                "(CUDA_VISIBLE_DEVICES=) to run the ranks on the CPU with gloo"
            )
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    atexit.register(_leave)
    return True


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def end_rank_process() -> NoReturn:
    """End a ``torchrun`` rank's process after its build finished: flush the output, exit 0 at once.

    Not through the interpreter's teardown: a gloo worker thread releases a collective's tensors
    after the collective is done, and if the operating system runs it only once the interpreter is
    finalising, the release cannot take the GIL and aborts the process (SIGABRT, "terminate called
    without an active exception"), failing the whole job after the Lens was written (seen in 1 to 4 %
    of 2-rank builds on 2 busy cores). ``destroy_process_group`` does not prevent it: once transformers
    has loaded a model or image processor, the group's worker threads outlive it.
    Every file of the Lens is closed by then: its writes are atomic.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class Ranks:
    """This process's place in a torch.distributed job, and the few collectives a build needs.

    Without an initialised process group it is rank 0 of 1 and every method returns its input.
    """

    def __init__(self) -> None:
        self.active = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.active else 0
        self.world = dist.get_world_size() if self.active else 1
        nccl = self.active and dist.get_backend() == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.world)

    def own(self, name: str) -> str:
        """``name`` for a file of this rank's own (a checkpoint): as it is in one process, ``NAME.rankRofW`` in a group."""
        return name if self.world == 1 else f"{name}.rank{self.rank}of{self.world}"

    def place(self, device: torch.device) -> torch.device:
        """A bare ``cuda`` means this rank's own GPU under NCCL."""
        if device.type == "cuda" and device.index is None and self.device.type == "cuda":
            return self.device
        return device

    def finish(self, leave: bool) -> None:
        """Wait until every rank is done, then leave the group if ``leave`` (this build joined it).

        Rank 0 writes last, so no rank may open the Lens before this; a process group the caller
        made stays theirs.
        """
        if not self.active:
            return
        dist.barrier()
        if leave:
            _leave()

    def on_main(self, work: Callable[[], T]) -> T:
        """Run ``work`` on rank 0 only and hand its result, or its error, to every rank.

        Writes to the Lens directory happen once, and a failure on rank 0 stops the other ranks
        too instead of leaving them waiting at the next collective.
        """
        outcome: list[Any] = [None]
        if self.is_main:
            try:
                outcome = [(True, work())]
            except Exception as error:
                if self.active:
                    dist.broadcast_object_list([(False, f"{type(error).__name__}: {error}")], src=0)
                raise
        if self.active:
            dist.broadcast_object_list(outcome, src=0)
        succeeded, value = outcome[0]
        if not succeeded:
            raise SemlensError(f"rank 0 failed: {value}")
        return value

    def gather_objects(self, value: T) -> list[T]:
        """Every rank's ``value`` (small, picklable), in rank order."""
        if not self.active:
            return [value]
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, value)
        return gathered

    def _all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Equal-shaped tensors of all ranks, in rank order, on the CPU."""
        local = tensor.to(self.device).contiguous()
        gathered = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(gathered, local)
        return [part.cpu() for part in gathered]

    def concat(self, rows: torch.Tensor) -> torch.Tensor:
        """The rows of every rank concatenated in rank order (ranks may hold different counts)."""
        if not self.active:
            return rows
        counts = self.gather_objects(rows.shape[0])
        padded = torch.zeros((max(counts), *rows.shape[1:]), dtype=rows.dtype)
        padded[: rows.shape[0]] = rows.cpu()
        parts = self._all_gather(padded)
        return torch.cat([part[:count] for part, count in zip(parts, counts)])

    def merge_topk(self, results: dict[str, TopK]) -> dict[str, TopK]:
        """Every layer's top-k over the samples of all ranks (exact: the associative TopK merge).

        A rank that saw no sample of its block decode holds no results; it joins with empty ones.
        """
        if not self.active:
            return results
        layouts: dict[str, tuple[int, int, tuple[int, ...] | None]] = {}
        for shapes in self.gather_objects({name: _layout(topk) for name, topk in results.items()}):
            layouts.update(shapes)
        merged = {}
        for name, (units, k, map_shape) in sorted(layouts.items()):
            local = results[name] if name in results else TopK.empty(units, k, map_shape)
            parts = zip(self._all_gather(local.scores), self._all_gather(local.ids), self._gather_maps(local))
            merged[name] = reduce(TopK.merge, [TopK(*part) for part in parts])
        return merged

    def _gather_maps(self, topk: TopK) -> list[torch.Tensor | None]:
        return [None] * self.world if topk.maps is None else self._all_gather(topk.maps)


def _layout(topk: TopK) -> tuple[int, int, tuple[int, ...] | None]:
    return topk.units, topk.k, None if topk.maps is None else tuple(topk.maps.shape[2:])
