"""The relevance examples stage: each unit's top-k samples by relevance (kept by the class relevance
stage) cropped by their CRP heatmaps and embedded, giving a second theta per unit, by relevance.

A relevance example is often an activation example too: a crop the embed stage embedded already
(same sample, same box) is not embedded again but shared. The crops that are new go to
``relevance_crops.safetensors``, and a layer's ``crop_index`` counts on from the rows of
``crops.safetensors`` into it (see :func:`semlens.store.files.read_crop_embeddings`).
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import torch

from .._util.fingerprint import hash_json
from ..model.units import LayerSpec
from ..store.files import CROPS, RELEVANCE_CROPS, layer_file, read_crop_embeddings
from ..store.slots import crop_rules, first_rule_ties, mean_of_examples, rule_slots, slot_embeddings, theta_key
from .context import BuildContext
from .crop_stage import HEAT_KEY, CropStage, slot_samples
from .embed import CropTable, HeatSource, plan_crops
from .embed_stage import EMBED_PARTIAL, EmbedStage


def shared_rows(existing: torch.Tensor, planned: torch.Tensor) -> torch.Tensor:
    """For each row of ``planned`` ``[N, 5]`` (sample and box) its row in ``existing`` ``[M, 5]`` (distinct
    rows), or -1 where it has none."""
    _, group = torch.unique(torch.cat([existing, planned]), dim=0, return_inverse=True)
    first = torch.full((int(group.max()) + 1 if group.numel() else 0,), -1, dtype=torch.int64)
    first[group[: existing.shape[0]]] = torch.arange(existing.shape[0])
    return first[group[existing.shape[0] :]]


class RelevanceCrops:
    """The relevance examples' crop table: per layer (those with relevance examples) the boxes of its
    examples' CRP heatmaps (whole images with ``crop="none"``, and for units that were never relevant),
    less the crops that ``crops.safetensors`` holds already; ``index[layer]`` points into the two in turn."""

    def __init__(self, context: BuildContext) -> None:
        self.context = context
        self.crops = CropStage(context)
        self.slot_boxes: dict[str, torch.Tensor] = {}
        self.shared = 0

    @property
    def seconds(self) -> dict[str, float]:
        """Where this table's time went (heatmaps, boxes), for the embed stage's record as for the activation crops."""
        return self.crops.seconds

    def layers(self) -> list[LayerSpec]:
        """The layers the class relevance stage keeps relevance examples of."""
        return [spec for spec in self.context.specs if not spec.sae]

    def run(self) -> CropTable:
        context, config = self.context, self.context.config
        samples, masked = {}, {}
        for spec in self.layers():
            stored = context.store.read_tensors(layer_file(spec.name, "relevance_topk"))
            record = context.manifest["layers"][spec.name]["relevance_examples"] = {}
            with self.crops.timed("heatmaps"):
                heat = None if config.crop == "none" else self._heatmaps(spec, stored["ids"], record)
            record["crop"] = "none" if heat is None else "relevance"
            with self.crops.timed("boxes"):
                self.slot_boxes[spec.name] = self.crops.boxes(heat, stored, spec.name)
            samples[spec.name] = slot_samples(stored, self.slot_boxes[spec.name])
            if heat is not None and config.crop_view == "masked":
                fired = heat.flatten(2).amax(dim=2) > 0
                masked[spec.name] = (HeatSource(layer_file(spec.name, "relevance_heat"), "heat"), fired & ~stored["inactive"][:, None])
        table = plan_crops(samples, self.slot_boxes, masked)
        return self._without_embedded(table)

    def _heatmaps(self, spec: LayerSpec, ids: torch.Tensor, record: dict[str, Any]) -> torch.Tensor:
        """CRP heatmaps ``[U, k, h, w]`` of the layer's relevance examples, kept in ``.relevance_heat`` (reused
        by a resumed run when computed for the same inputs); ``record`` gets the pairs per pass."""
        context = self.context
        name, key = layer_file(spec.name, "relevance_heat"), hash_json([context.stage_key("examples"), spec.fingerprint_fields()])
        kept = self.crops.stored_heatmaps(context.store, name, key)
        if kept is not None:
            return kept[0]
        heat = self.crops.compute_heatmaps(spec, ids, record)
        context.ranks.on_main(lambda: context.store.write_tensors(name, {"heat": heat}, {HEAT_KEY: key, "origin": "computed"}))
        return heat

    def _without_embedded(self, table: CropTable) -> CropTable:
        """The table less the rows ``crops.safetensors`` holds, its index pointing there for those rows and past
        its end for the others. Masked crops are never shared: the stored table keeps no masks to match."""
        existing = self.context.store.read_tensors(CROPS)
        existing_rows = torch.cat([existing["samples"][:, None], existing["boxes"]], dim=1)
        if self.context.config.crop_view == "masked":
            found = torch.full((table.rows.shape[0],), -1, dtype=torch.int64)
        else:
            found = shared_rows(existing_rows, table.rows)
        new = found < 0
        position = torch.where(new, existing_rows.shape[0] + new.cumsum(0) - 1, found)
        self.shared = int((~new).sum())
        index = {layer: torch.where(rows >= 0, position[rows.clamp_min(0)], -1) for layer, rows in table.index.items()}
        masks = None if table.masks is None else table.masks[new]
        return CropTable(table.rows[new], index, masks, table.sources)


class RelevanceExamplesStage(EmbedStage):
    """Inputs: the class relevance stage's ``layers/<layer>.relevance_topk``, ``crops.safetensors`` and the
    foundation model. Outputs: ``relevance_crops.safetensors`` (the crops not embedded before),
    ``layers/<layer>.relevance_embed`` (crop rows, boxes, theta, tied units) and ``.relevance_heat`` (CRP
    heatmaps). Resume: as the embed stage's (chunks under ``embed.partial/`` keyed by this stage's
    fingerprint). Runs with ``config.relevance_examples`` only; a stage record alone where LRP does not
    support the model (no relevance examples were kept)."""

    name = "examples"

    def __init__(self, context: BuildContext) -> None:
        super().__init__(context, RelevanceCrops(context))
        self.crops: RelevanceCrops

    def run(self) -> None:
        context = self.context
        if not context.config.relevance_examples or context.stage_done(self.name):
            return
        report = context.relevance_support()
        if not report.supported:
            if context.ranks.is_main:
                context.finish_stage(self.name, 0.0, skipped=f"LRP does not support this model: {report.reason}")
            return
        super().run()

    def _store(self, table: CropTable, embeddings: torch.Tensor, started: float, speed_ups: dict[str, Any]) -> dict[str, Any]:
        store = self.context.store
        store.write_tensors(RELEVANCE_CROPS, {"samples": table.samples, "boxes": table.boxes, "embeddings": embeddings.half()})
        topk = {layer: store.read_tensors(layer_file(layer, "relevance_topk")) for layer in table.index}
        tied = first_rule_ties(table.index, topk)
        rules, read = crop_rules(self.context.config.crop_rule), partial(read_crop_embeddings, store)  # activation or relevance crops
        for layer, index in table.index.items():
            k = topk[layer]["ids"].shape[1]
            thetas = {theta_key(rules, rule): mean_of_examples(slot_embeddings(read, rule_slots(index, k, rule))) for rule in range(len(rules))}
            boxes = torch.where((index >= 0)[..., None], self.crops.slot_boxes[layer], -1)
            store.write_tensors(layer_file(layer, "relevance_embed"), {"crop_index": index, "boxes": boxes, **thetas, "tied": tied[layer]})
        store.remove(EMBED_PARTIAL)
        slots = sum(int((index >= 0).sum()) for index in table.index.values())
        seconds, crops = time.perf_counter() - started, table.rows.shape[0]
        self.context.finish_stage(self.name, seconds, example_slots=slots, distinct_crops=crops, shared_crops=self.crops.shared, **speed_ups)
        return self.context.manifest
