"""The crop stage: a square crop box per (unit, example), from the unit's CRP relevance heatmap on
the example where LRP supports the model, else from its activation map, else the whole image; and
the distinct crops of all layers, which the embed stage embeds once each."""

from __future__ import annotations

from typing import Iterator

import torch

from .._util.errors import SemlensError
from .._util.progress import progress_bar
from ..analysis.validity import arbitrary_slots
from ..data.base import DecodingDataset, collate_decoded
from ..lens.store import layer_file
from ..model.units import LayerSpec
from .collect import EMPTY_ID
from .context import BuildContext
from .crops import crop_boxes, full_boxes, pool_heatmaps
from .embed import CropTable, chunks, plan_crops


class CropStage:
    """Inputs: the collect stage's ``layers/<layer>.topk`` and ``config.crop``. Outputs: the crop
    table of all layers (in memory, for the embed stage), each layer's crop mode and why in the
    manifest, and ``layers/<layer>.crops`` for relevance crops. Resume: it runs within the embed
    stage and shares its fingerprint; a layer's relevance crops of that fingerprint are reused."""

    def __init__(self, context: BuildContext) -> None:
        self.context = context

    def run(self) -> CropTable:
        samples, boxes = {}, {}
        for spec in self.context.specs:
            stored = self.context.store.read_tensors(layer_file(spec.name, "topk"))
            samples[spec.name] = stored["ids"].masked_fill(arbitrary_slots(stored["scores"]), EMPTY_ID)
            boxes[spec.name] = self._layer_boxes(spec, stored)
        return plan_crops(samples, boxes)

    def _crop_mode(self, spec: LayerSpec, has_maps: bool) -> tuple[str, str]:
        """The crop mode a layer gets, and why: auto picks relevance wherever LRP supports the model, on any
        device (on a CPU a pair costs about six forward passes of the model: benchmarks/crops.py)."""
        context = self.context
        mode = context.config.crop
        if mode in ("auto", "relevance"):
            report = context.relevance_support()
            problem = None if report.supported else report.reason
            if problem is None and spec.sae:
                problem = "CRP through a sparse autoencoder is not supported"
            if problem is None:
                return "relevance", report.reason
            if mode == "relevance":
                raise SemlensError(f"crop=relevance is not possible for layer {spec.name}: {problem}; use crop=activation")
            mode, why = "activation", f"relevance not possible ({problem})"
            return (mode, why) if has_maps else ("none", why + "; no activation map either")
        if mode == "activation" and not has_maps:
            return "none", "the layer has no spatial map"
        return mode, "as asked"

    def _layer_boxes(self, spec: LayerSpec, stored: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, maps, inactive = stored["ids"], stored.get("maps"), stored["inactive"]
        size = self.context.model.preprocessing.input_size
        mode, why = self._crop_mode(spec, maps is not None)
        self.context.manifest["layers"][spec.name]["crop"] = {"mode": mode, "why": why}
        if mode == "relevance":
            layer_boxes = self._relevance_boxes(spec, ids)
        elif mode == "activation":
            layer_boxes = self._boxes(maps.reshape(-1, *maps.shape[2:]))
            layer_boxes = layer_boxes.reshape(*ids.shape, 4)
        else:
            layer_boxes = full_boxes(ids.numel(), (size, size)).reshape(*ids.shape, 4)
        layer_boxes[inactive] = full_boxes(1, (size, size))  # arbitrary examples: no crop to trust
        return layer_boxes

    def _boxes(self, maps: torch.Tensor) -> torch.Tensor:
        """Crop boxes for heatmaps ``[M, h, w]`` by the build's crop rule."""
        config, size = self.context.config, self.context.model.preprocessing.input_size
        return crop_boxes(maps, (size, size), config.crop_rule, config.crop_threshold, config.crop_share)

    def _relevance_boxes(self, spec: LayerSpec, ids: torch.Tensor) -> torch.Tensor:
        """CRP crop boxes ``[U, k, 4]``: each unit's heatmap on each of its samples, many pairs per backward
        pass, split into blocks of whole batches across ranks; stored per layer so that an interrupted
        run does not redo finished layers. Pairs are ordered by sample, and data-loader workers decode
        each distinct sample of the next batches once while the model explains this one."""
        from ..relevance.lrp import crp_heatmaps

        context = self.context
        store, ranks, model = context.store, context.ranks, context.model
        name = layer_file(spec.name, "crops")
        key = context.stage_key("embed")
        if store.path(name).is_file() and store.read_metadata(name).get("fingerprint") == key:
            return store.read_tensors(name)["boxes"]
        size = model.preprocessing.input_size
        units, k = ids.shape
        base = context.manifest["layers"][spec.name]["base_units"]
        unit_of = torch.arange(units).repeat_interleave(k)
        flat_ids = ids.reshape(-1)
        valid = (flat_ids != EMPTY_ID).nonzero().flatten()
        order = valid[torch.argsort(flat_ids[valid], stable=True)]  # by sample: each image decoded once per batch
        batch = context.config.relevance_batch(size)
        mine = ranks.shard.split(range(len(order)), batch)
        spans = list(chunks(mine.stop, batch, mine.start))
        found = torch.empty(len(mine), 4, dtype=torch.int64)
        side = min(size, context.config.max_map_side)
        pooled = torch.zeros(len(mine), side, side, dtype=torch.float16)
        with context.relevance.attributing() as modified, progress_bar(f"relevance crops {spec.name}", len(mine), context.progress) as advance:
            for (begin, end), inputs in zip(spans, self._pair_inputs(flat_ids, order, spans)):
                positions = order[begin:end]
                channels = unit_of[positions] % base
                signs = torch.where(unit_of[positions] >= base, -1.0, 1.0)
                heat = crp_heatmaps(modified, inputs, spec.name, channels.to(context.device), signs.to(context.device), spec.pick)
                heat = heat.detach().cpu()
                found[begin - mine.start : end - mine.start] = self._boxes(heat)
                pooled[begin - mine.start : end - mine.start] = pool_heatmaps(heat, context.config.max_map_side)
                advance(len(positions))
        boxes = full_boxes(units * k, (size, size))
        boxes[order] = ranks.concat(found)
        boxes = boxes.reshape(units, k, 4)
        heat = torch.zeros(units * k, side, side, dtype=torch.float16)
        heat[order] = ranks.concat(pooled)
        heat = heat.reshape(units, k, side, side)
        ranks.on_main(lambda: store.write_tensors(name, {"boxes": boxes, "heat": heat}, {"fingerprint": key}))
        return boxes

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
        )  # fmt: skip
        for (begin, end), samples, (pixels, _, failed) in zip(spans, distinct, loader):
            if failed:
                index, error = failed[0]
                raise SemlensError(
                    f"sample {index} ({error}) cannot be decoded for its relevance crop, though it was when the top "
                    "examples were collected: the data changed; rebuild with --overwrite"
                )
            yield context.model_input(pixels)[torch.searchsorted(samples, flat_ids[order[begin:end]]).to(context.device)]
