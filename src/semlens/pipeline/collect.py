"""Streaming top-k: per unit, the k highest-scoring samples of a whole dataset in one pass.

The order is total: a higher score wins, and equal scores go to the lower sample index. Both are
packed into one int64 key per (unit, sample), so ``torch.topk`` over keys is exact and deterministic,
and combining two partial results is associative: shards, workers and resumed runs give the same
answer as one pass. Memory is units x k (plus units x k small maps), whatever the data size.

At reduced precision (autocast) the ranking is not float32's: samples whose scores lie closer than the
precision resolves swap places, and one that belongs in the float32 top-k can fall out. There the pass keeps
``candidate_slots`` samples per unit (no maps), and :func:`rescore` runs the model in float32 (TF32 off) over
only the distinct candidates to keep the exact float32 top-k and its maps.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from .._util.devices import strict_float32
from .._util.errors import LayerError, SemlensError
from ..model.units import LayerSpec, UnitReader, refuse_unreadable_layout, resolve_module, reused_module_error, select_output

EMPTY_ID = -1
_ID_SPAN = 1 << 32  # sample ids must be below 2**32
_EMPTY_KEY = torch.iinfo(torch.int64).min
CANDIDATES_PER_K = 3  # candidates per top-k slot at reduced precision (what they need: benchmarks/collect.py --displacement)


def candidate_slots(k: int, autocast: torch.dtype | None) -> int:
    """Samples per unit the collection pass keeps: ``k`` in float32; at reduced precision a margin more, so that
    the float32 top-k is among them for :func:`rescore` to find (memory units x slots, without maps)."""
    return k if autocast is None else CANDIDATES_PER_K * k


def order_keys(scores: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """int64 keys ordered like (score descending, id ascending); NaN ranks as -inf, empty slots last."""
    scores = torch.nan_to_num(scores.float(), nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    scores = scores + 0.0  # turns -0.0 into +0.0 so both zeros rank alike
    bits = scores.view(torch.int32).to(torch.int64)
    magnitude = bits & 0x7FFFFFFF
    ordered = torch.where(bits < 0, -magnitude, magnitude)  # monotone in the float value
    keys = ordered * _ID_SPAN + (_ID_SPAN - 1 - ids)
    return torch.where(ids < 0, torch.full_like(keys, _EMPTY_KEY), keys)


@dataclass
class TopK:
    """The k best samples per unit: ``scores`` and ``ids`` are ``[U, k]``, best first.

    ``maps`` (``[U, k, h, w]``) holds each kept sample's activation map of that unit, for cropping;
    ``None`` for layers without spatial structure. Slots not yet filled have id -1 and score -inf.
    """

    scores: torch.Tensor
    ids: torch.Tensor
    maps: torch.Tensor | None = None

    @classmethod
    def empty(
        cls, units: int, k: int, map_shape: tuple[int, int] | None = None, device: torch.device | str = "cpu"
    ) -> TopK:
        scores = torch.full((units, k), float("-inf"), device=device)
        ids = torch.full((units, k), EMPTY_ID, dtype=torch.int64, device=device)
        maps = None if map_shape is None else torch.zeros((units, k, *map_shape), device=device)
        return cls(scores, ids, maps)

    @property
    def units(self) -> int:
        """Units (rows)."""
        return self.scores.shape[0]

    @property
    def k(self) -> int:
        """Slots per unit."""
        return self.scores.shape[1]

    def update(self, scores: torch.Tensor, ids: torch.Tensor, maps: torch.Tensor | None = None) -> None:
        """Fold in a batch: ``scores`` ``[N, U]``, ``ids`` ``[N]``, ``maps`` ``[N, U, h, w]``."""
        batch_ids = ids.to(self.ids.device).unsqueeze(0).expand(self.units, -1)
        self._absorb(scores.T.to(self.scores.device), batch_ids, None if maps is None else maps.transpose(0, 1))

    def merge(self, other: TopK) -> TopK:
        """The top-k of the union of two disjoint sample sets (associative and commutative)."""
        merged = TopK(self.scores.clone(), self.ids.clone(), None if self.maps is None else self.maps.clone())
        merged._absorb(other.scores.to(merged.scores.device), other.ids.to(merged.ids.device), other.maps)
        return merged

    def _absorb(self, scores: torch.Tensor, ids: torch.Tensor, maps: torch.Tensor | None) -> None:
        """Keep the best k of the current slots and candidates laid out ``[U, M]`` (maps ``[U, M, h, w]``)."""
        keys = order_keys(torch.cat([self.scores, scores], dim=1), torch.cat([self.ids, ids], dim=1))
        picked = keys.topk(self.k, dim=1, sorted=True).indices
        new_scores = torch.cat([self.scores, scores.float()], dim=1).gather(1, picked)
        new_ids = torch.cat([self.ids, ids], dim=1).gather(1, picked)
        if self.maps is not None and maps is not None:
            self.maps = self._gather_maps(picked, maps)
        self.scores, self.ids = new_scores, new_ids

    def _gather_maps(self, picked: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Maps of the picked slots, copying from the candidates only where a candidate won."""
        k = self.k
        kept = self.maps.gather(1, picked.clamp(max=k - 1)[..., None, None].expand(-1, -1, *self.maps.shape[2:]))
        unit, slot = (picked >= k).nonzero(as_tuple=True)
        if unit.numel():
            kept[unit, slot] = candidates[unit, picked[unit, slot] - k].to(kept.device, kept.dtype)
        return kept

    def to(self, device: torch.device | str) -> TopK:
        """The same top-k with its tensors on ``device``."""
        return TopK(self.scores.to(device), self.ids.to(device), None if self.maps is None else self.maps.to(device))

    def state(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Flat tensors for safetensors; :meth:`from_state` reverses it."""
        tensors = {f"{prefix}scores": self.scores, f"{prefix}ids": self.ids}
        if self.maps is not None:
            tensors[f"{prefix}maps"] = self.maps
        return {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], prefix: str = "") -> TopK:
        return cls(tensors[f"{prefix}scores"], tensors[f"{prefix}ids"], tensors.get(f"{prefix}maps"))


BatchObserver = Callable[[torch.Tensor, dict[str, torch.Tensor], dict[str, TopK]], None]


class Collector:
    """Hooks every chosen layer at once and folds each batch into one :class:`TopK` per layer.

    Use as a context manager (the hooks are removed on exit, also on errors)::

        with Collector(model, specs, k=30) as collector:
            for pixels, ids in batches:
                collector.update(pixels, ids)
        results = collector.results
    """

    def __init__(
        self,
        model: nn.Module,
        specs: Iterable[LayerSpec],
        k: int = 30,
        max_map_side: int = 32,
        state: dict[str, TopK] | None = None,
        autocast: torch.dtype | None = None,
        maps: bool = True,
        on_batch: BatchObserver | None = None,
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.model = model
        self.specs = list(specs)
        self.k = k
        self.readers = {spec.name: UnitReader(spec, max_map_side) for spec in self.specs}
        self.modules = {spec.name: resolve_module(model, spec.name) for spec in self.specs}
        self.results: dict[str, TopK] = dict(state or {})
        self.autocast = autocast
        self.keep_maps = maps  # False for candidates: rescore() takes the kept samples' maps in float32
        self.on_batch = on_batch  # sees each batch's ids, every layer's scores and the updated results
        self._batch_scores: dict[str, torch.Tensor] = {}
        self._device_type = "cpu"
        self._batch_ids: torch.Tensor | None = None
        self._seen: set[str] = set()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> Collector:
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, _inputs: object, output: object) -> None:
            if self._batch_ids is None:
                return  # outside update()
            if name in self._seen:
                raise reused_module_error(name)
            self._seen.add(name)
            if name not in self.results:
                spec = self.readers[name].spec
                refuse_unreadable_layout(spec, module, select_output(output, spec.pick, name))
            with self._precision(enabled=False):
                scores, maps = self.readers[name](output)
            maps = maps if self.keep_maps else None
            self._batch_scores[name] = scores
            if name not in self.results:
                map_shape = None if maps is None else tuple(maps.shape[2:])
                self.results[name] = TopK.empty(scores.shape[1], self.k, map_shape, scores.device)
            self.results[name].update(scores, self._batch_ids, maps)

        return hook

    @torch.no_grad()
    def update(self, inputs: torch.Tensor, ids: torch.Tensor) -> None:
        """Run the model on a batch whose samples have dataset indices ``ids``."""
        self._batch_ids, self._seen = ids.to(inputs.device), set()
        self._device_type = inputs.device.type
        try:
            with self._precision(enabled=True):
                self.model(inputs)
        finally:
            batch_ids, self._batch_ids = self._batch_ids, None
        missing = set(self.modules) - self._seen
        if missing:
            raise LayerError(
                f"layer(s) {', '.join(sorted(missing))} did not run in the model's forward pass; "
                "choose modules that forward() calls (see `semlens layers MODEL`)"
            )
        if self.on_batch is not None:
            self.on_batch(batch_ids, self._batch_scores, self.results)
        self._batch_scores = {}

    def _precision(self, enabled: bool) -> AbstractContextManager:
        """Autocast for the model's forward pass when asked for, else float32 proper (no TF32 on a GPU); unit
        scores, pooling and SAE encoding always run in float32 on the layer's output, so only the model's own
        arithmetic is reduced."""
        if self.autocast is None:
            return strict_float32() if enabled else nullcontext()
        return torch.autocast(self._device_type, dtype=self.autocast, enabled=enabled)


Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def collect_topk(
    model: nn.Module,
    specs: Iterable[LayerSpec],
    batches: Batches,
    k: int = 30,
    max_map_side: int = 32,
    autocast: torch.dtype | None = None,
    reload: Callable[[torch.Tensor], Batches] | None = None,
) -> dict[str, TopK]:
    """One pass over ``(inputs, sample_ids)`` batches; returns the top-k of every layer's units by float32 scores.

    With ``autocast`` the pass runs in that precision and ``reload(ids)`` (batches of just those samples, e.g.
    ``lambda ids: iterate_batches(data, 32, ids)``) feeds the float32 re-scoring of the candidates."""
    specs = list(specs)
    slots = candidate_slots(k, autocast)
    if slots > k and reload is None:
        raise SemlensError(
            f"autocast={autocast} ranks samples in reduced precision, and their float32 re-scoring needs reload= "
            "(a function from sample ids to batches of those samples); or collect in float32 (autocast=None)"
        )
    samples = 0
    with Collector(model, specs, slots, max_map_side, autocast=autocast, maps=slots == k) as collector:
        for inputs, ids in batches:
            collector.update(inputs, ids)
            samples += len(ids)
    results = collector.results
    if slots > k:
        results, _ = rescore(model, specs, results, reload, k, samples, max_map_side)
    return {name: topk.to("cpu") for name, topk in results.items()}


def rescore(
    model: nn.Module,
    specs: list[LayerSpec],
    candidates: dict[str, TopK],
    reload: Callable[[torch.Tensor], Batches],
    k: int,
    samples: int,
    max_map_side: int = 32,
    on_batch: BatchObserver | None = None,
) -> tuple[dict[str, TopK], dict[str, int]]:
    """The exact float32 top-k (and maps) from reduced-precision candidates: one float32 pass, TF32 off, of every
    layer at once over the distinct samples any unit keeps (``reload(ids)`` gives their batches).

    A unit's float32 top-k over this superset of its own candidates is its top-k over all samples whenever
    that top-k is among its candidates. Also returns what it did: the samples re-scored and the units whose
    exactness the measured errors do not show (:func:`unconfirmed_units`; none where the candidates are all
    ``samples`` the pass saw). ``on_batch`` sees the float32 pass as ``Collector``'s does."""
    ids = candidate_ids(candidates)
    with Collector(model, specs, k, max_map_side, on_batch=on_batch) as collector:
        for inputs, batch_ids in reload(ids):
            collector.update(inputs, batch_ids)
    results = collector.results
    unconfirmed = 0 if len(ids) == samples else sum(int(unconfirmed_units(candidates[name], results[name]).sum()) for name in results)
    return results, {"rescored_samples": len(ids), "unconfirmed_units": unconfirmed}


def candidate_ids(candidates: dict[str, TopK]) -> torch.Tensor:
    """The distinct samples that any unit of any layer keeps, ascending (on the CPU)."""
    if not candidates:
        return torch.empty(0, dtype=torch.int64)
    ids = torch.unique(torch.cat([topk.ids.reshape(-1).cpu() for topk in candidates.values()]))
    return ids[ids != EMPTY_ID]


def unconfirmed_units(candidates: TopK, exact: TopK) -> torch.Tensor:
    """Per unit, True where a sample outside its candidates might still belong in its float32 top-k, judged by
    the errors measured on the re-scored candidates.

    A sample left out scored at most the last candidate's reduced-precision score; with an error of at most
    ``e`` its float32 score is at most that plus ``e``, so it cannot enter a top-k whose k-th float32 score
    is higher. ``e`` is the layer's largest error seen (a sample kept both as candidate and in the exact
    top-k), relative to each unit's largest score magnitude: a measurement, not a bound the precision gives.
    """
    candidates = candidates.to(exact.scores.device)
    errors = torch.zeros(exact.units, device=exact.scores.device)
    for slot in range(exact.k):  # one slot at a time: memory units x slots
        same = exact.ids[:, slot, None] == candidates.ids
        gaps = (exact.scores[:, slot, None] - candidates.scores).abs().nan_to_num(0.0, 0.0, 0.0)
        errors = torch.maximum(errors, torch.where(same, gaps, 0.0).amax(dim=1))
    magnitude = exact.scores.nan_to_num(0.0, 0.0, 0.0).abs().amax(dim=1)
    relative = (errors / magnitude.clamp_min(torch.finfo(torch.float32).tiny)).amax()
    full = candidates.ids[:, -1] != EMPTY_ID  # a unit whose every sample is a candidate is exact
    return full & ~(exact.scores[:, -1] > candidates.scores[:, -1] + relative * magnitude)


def iterate_batches(
    tensor: torch.Tensor, batch_size: int, ids: torch.Tensor | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of an in-memory tensor's rows ``ids`` (default: all) with their row indices as sample ids."""
    ids = torch.arange(tensor.shape[0]) if ids is None else ids.cpu()
    for chunk in ids.split(batch_size):
        yield tensor[chunk.to(tensor.device)], chunk
