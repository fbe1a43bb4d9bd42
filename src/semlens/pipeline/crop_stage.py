"""The crop stage: a square crop box per (unit, example), from the unit's CRP relevance heatmap on
the example where LRP supports the model, else from its activation map, else the whole image; and
the distinct crops of all layers, which the embed stage embeds once each.

Boxes (and masked views) are derived from the heatmaps as the Lens stores them. The heatmaps depend
on the model, the layer, the data and the top-k, not on the crop rule or view: they are keyed by
those alone, so a Lens built with another rule or view reuses them (``heatmaps_from``)."""

from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from .._util.devices import ShrinkingBatch, pass_memory, quiet_worker, relevance_pixels
from .._util.errors import SemlensError
from .._util.fingerprint import hash_json
from .._util.progress import progress_bar
from ..analysis.validity import arbitrary_slots
from ..data.base import DecodingDataset, collate_decoded
from ..model.sae import SparseAutoencoder, has_decoder
from ..model.units import LayerSpec
from ..store.files import LensStore, layer_file, safe_name
from ..store.slots import recorded_shift, rule_slots
from .collect import EMPTY_ID
from .context import BuildContext
from .crops import crop_boxes, full_boxes, pool_heatmaps, snap_boxes, whole_views
from .embed import CropTable, HeatSource, chunks, plan_crops

HEAT_KEY = "heatmaps"  # metadata key of a layer's ``.crops`` file: the fingerprint its heatmaps were computed for


def heat_source(layer: str, mode: str, shift: tuple[float, float] = (0.0, 0.0)) -> HeatSource | None:
    """Where a built Lens stores the heatmaps a layer's crops were cut from in crop ``mode`` (None: whole images),
    with ``shift``, the activation maps' cells off the even grid (relevance heatmaps are computed at the input)."""
    if mode == "relevance":
        return HeatSource(layer_file(layer, "crops"), "heat")
    return HeatSource(layer_file(layer, "topk"), "maps", shift) if mode == "activation" else None


def faded_slots(heat: torch.Tensor, inactive: torch.Tensor) -> torch.Tensor:
    """The (unit, slot) pairs ``[U, k]`` whose masked view is faded by their heatmap: none where the unit did not
    fire (nothing to fade by) or is inactive (its examples are arbitrary)."""
    return (heat.flatten(2).amax(dim=2) > 0) & ~inactive[:, None]


def slot_samples(topk: dict[str, torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
    """The sample of each crop slot ``[U, V·k]`` of ``boxes`` ``[U, V·k, 4]`` (V crop rules): a top-k's ids
    ``[U, k]``, ``EMPTY_ID`` where an example was kept by chance, once per rule."""
    ids = topk["ids"].masked_fill(arbitrary_slots(topk["scores"]), EMPTY_ID)
    return ids.repeat(1, boxes.shape[1] // ids.shape[1])


class CropStage:
    """Inputs: the collect stage's ``layers/<layer>.topk`` and ``config.crop``. Outputs: the crop
    table of all layers (in memory, for the embed stage), each layer's crop mode and why in the
    manifest, and ``layers/<layer>.crops`` (the CRP heatmaps) for relevance crops. Resume: it runs
    within the embed stage; a layer's heatmaps are reused from ``.crops`` files computed for the same
    model, layer, data and top-k, in this Lens (an interrupted run) or in ``config.heatmaps_from``; a layer
    interrupted while its heatmaps were computed goes on from its rank's ``.crops.partial*`` checkpoint (taken
    every ``checkpoint_seconds``) if that was taken of the same inputs and split."""

    def __init__(self, context: BuildContext) -> None:
        self.context = context
        self.resumed: dict[str, int] = {}  # per layer, the heatmap pairs this rank took from a checkpoint (see _record_resumed)
        self.seconds = {"heatmaps": 0.0, "boxes": 0.0}  # where the last run's time went (the embed stage's record)

    @contextmanager
    def timed(self, part: str) -> Iterator[None]:
        """Add the seconds of the ``with`` block to ``seconds[part]`` (the embed stage's record of its parts)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] += time.perf_counter() - started

    def run(self) -> CropTable:
        samples, boxes, masked = {}, {}, {}
        self.seconds = dict.fromkeys(self.seconds, 0.0)
        for spec in self.context.specs:
            stored = self.context.store.read_tensors(layer_file(spec.name, "topk"))
            with self.timed("heatmaps"):
                heat, source = self._heatmaps(spec, stored)
            with self.timed("boxes"):
                boxes[spec.name] = self.boxes(heat, stored, spec.name, (0.0, 0.0) if source is None else source.shift)
            samples[spec.name] = slot_samples(stored, boxes[spec.name])
            if heat is not None:
                self._count_whole_views(spec.name, boxes[spec.name], stored)
            if heat is not None and self.context.config.crop_view == "masked":
                masked[spec.name] = (source, faded_slots(heat, stored["inactive"]))
        return plan_crops(samples, boxes, masked)

    def _count_whole_views(self, layer: str, boxes: torch.Tensor, stored: dict[str, torch.Tensor]) -> None:
        """Record how many of the active units' first-rule crops are the whole view (``crop.whole_views``: [whole, all]),
        which ``semlens info`` shows: where heatmaps reach over all of the input (random weights, coarse maps), the
        concept examples are whole images."""
        size, k = self.context.model.preprocessing.input_size, stored["ids"].shape[1]
        whole = whole_views(rule_slots(boxes, k, 0)[~stored["inactive"]], size)
        self.context.manifest["layers"][layer]["crop"]["whole_views"] = [int(whole.sum()), whole.numel()]

    def _crop_mode(self, spec: LayerSpec, has_maps: bool) -> tuple[str, str]:
        """The crop mode a layer gets, and why: auto picks relevance wherever LRP supports the model, on any
        device (on a CPU a pair costs about three forward passes of the model or less: benchmarks/crops.py)."""
        context = self.context
        mode = context.config.crop
        if mode in ("auto", "relevance"):
            report = context.relevance_support()
            problem = None if report.supported else report.reason
            if problem is None and spec.sae and not has_decoder(spec.sae):
                problem = "CRP through a sparse autoencoder needs its decoder (W_dec)"
            if problem is None:
                return "relevance", report.reason
            if mode == "relevance":
                raise SemlensError(f"crop=relevance is not possible for layer {spec.name}: {problem}; use crop=activation")
            mode, why = "activation", f"relevance not possible ({problem})"
            return (mode, why) if has_maps else ("none", why + "; no activation map either")
        if mode == "activation" and not has_maps:
            return "none", "the layer has no spatial map"
        return mode, "as asked"

    def _heatmaps(self, spec: LayerSpec, stored: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, HeatSource | None]:
        """The layer's heatmaps ``[U, k, h, w]`` the crops are cut from, and where the Lens stores them:
        CRP relevance, the activation maps, or none (whole images); the mode and why go in the manifest."""
        mode, why = self._crop_mode(spec, stored.get("maps") is not None)
        record = self.context.manifest["layers"][spec.name]["crop"] = {"mode": mode, "why": why}
        if mode == "relevance":
            heat, record["heatmaps"] = self._relevance_heatmaps(spec, stored["ids"], record)
            return heat, heat_source(spec.name, mode)
        if mode == "activation":
            return stored["maps"], heat_source(spec.name, mode, recorded_shift(self.context.manifest["layers"][spec.name]))
        return None, None

    def boxes(
        self, heat: torch.Tensor | None, stored: dict[str, torch.Tensor], layer: str, heat_shift: tuple[float, float] = (0.0, 0.0)
    ) -> torch.Tensor:
        """Crop boxes ``[U, V·k, 4]`` by the build's V crop rules (``crop_boxes``); one whole image per example
        without heatmaps, and whole images for inactive units (their examples are arbitrary: no crop to trust); boxes
        snap to the build's ``crop_grid``.
        Boxes cut from ``layer``'s activation maps follow its cells off the even grid (``recorded_shift``), those
        cut from ``heat`` by ``heat_shift`` (its ``HeatSource``'s: none for relevance heatmaps)."""
        config, size = self.context.config, self.context.model.preprocessing.input_size
        units, k = stored["ids"].shape
        if heat is None:
            return full_boxes(units * k, (size, size)).reshape(units, k, 4)
        rules = (config.crop_rule, config.crop_threshold, config.crop_share, config.crop_quantile)
        shift = recorded_shift(self.context.manifest["layers"][layer])
        boxes = crop_boxes(heat, (size, size), *rules, activations=stored.get("maps"), heat_shift=heat_shift, activation_shift=shift)
        boxes = snap_boxes(boxes, (size, size), config.crop_grid)
        boxes[stored["inactive"]] = full_boxes(1, (size, size))
        return boxes

    def _heat_key(self, spec: LayerSpec) -> str:
        """What a layer's CRP heatmaps depend on: the model, its input, the data, the top-k, this layer, the
        LRP rule and the CRP focus (each named where it is not the default, so that heatmaps stored before the
        choice keep their key)."""
        identity = self.context.identity
        parts = {part: identity[part] for part in ("model", "data", "preprocessing", "collect")}
        chosen = {name: identity["embed"][name] for name in ("lrp_rule", "crp_focus") if name in identity["embed"]}
        return hash_json({**parts, "layer": spec.fingerprint_fields(), **chosen})

    def _relevance_heatmaps(self, spec: LayerSpec, ids: torch.Tensor, record: dict[str, Any]) -> tuple[torch.Tensor, str]:
        """The layer's CRP heatmaps ``[U, k, h, w]`` (pooled, float16) and where they came from: this Lens's
        ``.crops`` file or ``heatmaps_from``'s when computed for the same inputs (and the same top-k
        samples), else computed now (``record``, the layer's crop entry, gets smaller passes); stored in this Lens
        with their key and origin."""
        context = self.context
        name, key = layer_file(spec.name, "crops"), self._heat_key(spec)
        kept = self.stored_heatmaps(context.store, name, key)
        if kept is not None:
            return kept
        origin = context.config.heatmaps_from
        found = None
        if origin is not None:
            other = LensStore(origin)
            if not other.has_manifest():
                raise SemlensError(
                    f"heatmaps_from={origin} is not a Lens directory (no manifest.json); give a Lens built from the same model and data"
                )
            found = self.stored_heatmaps(other, name, key, ids, layer_file(spec.name, "topk"))
        heat, source = (found[0], f"reused from {LensStore(origin).root}") if found else (self.compute_heatmaps(spec, ids, record), "computed")
        context.ranks.on_main(lambda: context.store.write_tensors(name, {"heat": heat}, {HEAT_KEY: key, "origin": source}))
        context.ranks.on_main(lambda: self._record_resumed(spec, name))
        context.ranks.on_main(lambda: self._remove_checkpoints(spec))
        return heat, source

    def _record_resumed(self, spec: LayerSpec, name: str) -> None:
        """Note in the manifest's ``resumed`` how many of a layer's heatmap pairs came from a checkpoint, at once (the
        stage's record is written when the stage ends, after a kill maybe by a later run); never in the file, whose
        bytes are the same however often the build was interrupted."""
        if spec.name in self.resumed:
            self.context.manifest.setdefault("resumed", {})[name] = self.resumed[spec.name]
            self.context.store.write_manifest(self.context.manifest)

    @staticmethod
    def stored_heatmaps(store: LensStore, name: str, key: str, ids: torch.Tensor | None = None, topk: str = "") -> tuple[torch.Tensor, str] | None:
        """The heatmaps in ``store``'s file ``name`` and their origin, if computed for ``key`` (and, from
        another Lens, for the same top-k samples ``ids`` in its file ``topk``: ties may rank otherwise)."""
        if not store.path(name).is_file():
            return None
        metadata = store.read_metadata(name)
        if metadata.get(HEAT_KEY) != key or (ids is not None and not torch.equal(store.read_tensors(topk)["ids"], ids)):
            return None
        return store.read_tensors(name)["heat"], metadata.get("origin", "computed")

    def compute_heatmaps(self, spec: LayerSpec, ids: torch.Tensor, record: dict[str, Any]) -> torch.Tensor:
        """CRP heatmaps ``[U, k, h, w]``: each unit's heatmap on each of its samples, pooled as the Lens stores
        them; many pairs per backward pass, split into blocks of whole batches across ranks. Pairs are
        ordered by sample, and data-loader workers decode each distinct sample of the next batches once
        while the model explains this one. ``record`` (the layer's manifest entry) gets the pairs per
        pass asked for and used where the GPU ran out of memory and passes ran smaller."""
        from ..relevance.lrp import crp_heatmaps

        context = self.context
        ranks, model = context.ranks, context.model
        sae = SparseAutoencoder.load(spec.sae) if spec.sae else None
        size, focus = model.preprocessing.input_size, context.config.crp_focus
        units, k = ids.shape
        base = context.manifest["layers"][spec.name]["base_units"]
        unit_of = torch.arange(units).repeat_interleave(k)
        flat_ids = ids.reshape(-1)
        valid = (flat_ids != EMPTY_ID).nonzero().flatten()
        order = valid[torch.argsort(flat_ids[valid], stable=True)]  # by sample: each image decoded once per batch
        batch = context.config.relevance_batch(size, relevance_pixels(context.device))
        mine = ranks.shard.split(range(len(order)), batch)
        spans = list(chunks(mine.stop, batch, mine.start))
        side = min(size, context.config.max_map_side)
        checkpoint = self._checkpoint_name(spec)
        samples = hashlib.sha256(ids.cpu().contiguous().numpy().tobytes()).hexdigest()  # the crop stage's top-k or the relevance examples'
        key = hash_json([self._heat_key(spec), samples, mine.start, mine.stop, batch])
        pooled, done = self._load_checkpoint(checkpoint, key, torch.zeros(len(mine), side, side, dtype=torch.float16))
        if done:
            self.resumed[spec.name] = done
        spans = [(begin, end) for begin, end in spans if begin - mine.start >= done]
        passes = ShrinkingBatch(batch, context.relevance.release, pass_memory(context.device, context.config.relevance_memory_gib))
        last_save = time.monotonic()
        with (
            context.relevance.attributing() as modified,
            progress_bar(f"relevance crops {spec.name}", len(mine), context.progress, completed=done) as advance,
        ):
            for (begin, end), inputs in zip(spans, self._pair_inputs(flat_ids, order, spans)):
                positions = order[begin:end]
                channels = (unit_of[positions] % base).to(context.device)
                signs = torch.where(unit_of[positions] >= base, -1.0, 1.0).to(context.device)
                explain = lambda b, e: crp_heatmaps(modified, inputs[b:e], spec.name, channels[b:e], signs[b:e], spec.pick, sae, spec.channels_last, focus)  # noqa: E731
                offset = begin - mine.start
                for b, e, heat in passes.parts(end - begin, explain):
                    pooled[offset + b : offset + e] = pool_heatmaps(heat.detach().cpu(), context.config.max_map_side)
                advance(len(positions))
                if time.monotonic() - last_save >= context.config.checkpoint_seconds and end < mine.stop:
                    context.store.write_tensors(checkpoint, {"heat": pooled[: end - mine.start]}, {"fingerprint": key})
                    last_save = time.monotonic()
        if passes.shrunk:
            record["pairs_per_pass"] = passes.shrunk
        if passes.memory_used:
            record["relevance_memory"] = passes.memory_used
        heat = torch.zeros(units * k, side, side, dtype=torch.float16)
        heat[order] = ranks.concat(pooled)
        return heat.reshape(units, k, side, side)

    def _checkpoint_name(self, spec: LayerSpec) -> str:
        """This rank's checkpoint of a layer's heatmaps while they are computed."""
        return layer_file(spec.name, self.context.ranks.own("crops.partial"))

    def _load_checkpoint(self, name: str, key: str, pooled: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``pooled`` with the rows a checkpoint taken for ``key`` holds filled in, and how many those are
        (``LensStore.read_checkpoint``)."""
        found = self.context.store.read_checkpoint(name, key)
        if found is None:
            return pooled, 0
        done = found[0]["heat"]
        pooled[: len(done)] = done
        return pooled, len(done)

    def _remove_checkpoints(self, spec: LayerSpec) -> None:
        """Every rank's heatmap checkpoints of a layer (of any earlier world size), once its heatmaps are stored."""
        prefix = f"{safe_name(spec.name)}.crops.partial."
        for path in self.context.store.path("layers").glob("*.safetensors"):
            if path.name.startswith(prefix):
                path.unlink()

    def _pair_inputs(self, flat_ids: torch.Tensor, order: torch.Tensor, spans: list[tuple[int, int]]) -> Iterator[torch.Tensor]:
        """The model's input for each span of ``order`` (one row per pair), on the device; each span's
        distinct samples are decoded once, by data-loader workers, ahead of the model."""
        context = self.context
        distinct = [torch.unique(flat_ids[order[begin:end]]) for begin, end in spans]
        starts = torch.tensor([0] + [len(samples) for samples in distinct]).cumsum(0).tolist()
        loader = torch.utils.data.DataLoader(
            DecodingDataset(context.data, context.model.preprocessing.pixels, torch.cat([torch.empty(0, dtype=torch.int64), *distinct]).tolist()),
            batch_sampler=[range(start, stop) for start, stop in zip(starts, starts[1:])],
            num_workers=min(context.workers(), len(spans)),
            collate_fn=collate_decoded,
            pin_memory=context.device.type == "cuda",
            worker_init_fn=quiet_worker,
        )  # fmt: skip
        for (begin, end), samples, (pixels, _, failed) in zip(spans, distinct, loader):
            if failed:
                index, error = failed[0]
                raise SemlensError(
                    f"sample {index} ({error}) cannot be decoded for its relevance crop, though it was when the top "
                    "examples were collected: the data changed; rebuild with --overwrite"
                )
            yield context.model_input(pixels)[torch.searchsorted(samples, flat_ids[order[begin:end]]).to(context.device)]
