"""The responses stage: every unit's pooled activation on the Lens's own crops (the first crop rule's boxes,
each distinct crop once, resized to the model's input), kept as the moments that ``analysis.responses``
regresses on any vocabulary's concepts (the ``responses`` labelling method)."""

from __future__ import annotations

import time
from functools import partial
from typing import Sequence

import torch
from PIL import Image

from .._util.devices import quiet_worker
from .._util.progress import progress_bar
from ..analysis.responses import ResponseMoments
from ..interventions.effects import read_units
from ..model.preprocess import Preprocessing
from ..store.files import CROPS, RESPONSES, RESPONSES_FILE, layer_file
from ..store.slots import rule_slots
from .collect_stage import KEPT_ACTIVATIONS
from .context import BuildContext
from .crops import whole_views
from .embed import CropChunks, CropTable, chunks
from .kept_activations import kept_layer_activations

BATCH = 256  # crops per span a data-loader worker cuts: memory is a few spans of views, not the Lens's crops
MODEL_BATCH = 32  # crops per forward pass


class ResponseStage:
    """Inputs: the crop table and embeddings of :class:`EmbedStage`, the model and its layers. Outputs:
    ``layers/<layer>.responses`` (``cross`` ``[U, d]``, ``ResponseMoments.cross``) and ``responses.safetensors``
    (``scatter`` ``[d, d]``), and the number of crops in the stage record. Skipped (recorded, so the labels
    fall back to ``centred``) for the masked crop view, whose embeddings are of faded crops the model never
    sees here. A whole-image crop whose sample's activations the collect stage kept (``collect.activations*``)
    takes them instead of a model pass; the stage removes those files. Resume: done when the stage's fingerprint
    is unchanged (one pass, no checkpoint). Only rank 0 computes it, as the class relevance stage."""

    name = RESPONSES

    def __init__(self, context: BuildContext) -> None:
        self.context = context

    def run(self) -> None:
        context = self.context
        if context.stage_done(self.name) or not context.ranks.is_main:
            return
        self._run()
        for kept in context.store.root.glob(f"{KEPT_ACTIVATIONS}*"):  # kept where the stage failed: a resumed run reads them
            kept.unlink(missing_ok=True)

    def _run(self) -> None:
        context = self.context
        started = time.perf_counter()
        if context.config.crop_view == "masked":
            context.finish_stage(self.name, 0.0, skipped="masked crop view: its embeddings are of faded crops")
            return
        store = context.store
        table = store.read_tensors(CROPS)
        indices = {
            spec.name: store.read_tensors(layer_file(spec.name, "embed"))["crop_index"] for spec in context.specs
        }
        rows = torch.unique(torch.cat([rule_slots(index, context.config.k, 0).flatten() for index in indices.values()]))
        rows = rows[rows >= 0]  # sorted, so each sample is decoded once per batch
        if len(rows) < 2:
            context.finish_stage(self.name, 0.0, skipped="fewer than 2 crops: no response to regress")
            return
        moments = ResponseMoments(table["embeddings"].shape[1])
        reused = self._add_kept(moments, table, rows)
        rows = rows[~reused]
        if len(rows):
            self._add_model_responses(moments, table, rows)
        for spec in context.specs:
            store.write_tensors(layer_file(spec.name, RESPONSES), {"cross": moments.cross(spec.name)})
        store.write_tensors(RESPONSES_FILE, {"scatter": moments.scatter()})
        context.finish_stage(self.name, time.perf_counter() - started, crops=len(rows) + int(reused.sum()), from_collection=int(reused.sum()))

    def _add_model_responses(self, moments: ResponseMoments, table: dict[str, torch.Tensor], rows: torch.Tensor) -> None:
        """Count the crops ``rows`` by a model pass over them (cut, resized and stacked by data-loader workers)."""
        context, model = self.context, self.context.model
        crop_rows = torch.cat([table["samples"][rows, None], table["boxes"][rows]], dim=1)
        spans = list(chunks(len(rows), BATCH))
        crops = CropChunks(
            CropTable(crop_rows, {}, None, []), spans, context.data, model.preprocessing.view, partial(model_pixels, model.preprocessing), MODEL_BATCH
        )  # fmt: skip
        loader = torch.utils.data.DataLoader(
            crops, batch_size=None, num_workers=min(context.workers(), len(spans)), pin_memory=context.device.type == "cuda",
            worker_init_fn=quiet_worker,
        )
        with progress_bar("crop responses", len(rows), context.progress) as advance:
            for (begin, end), pixels in zip(spans, loader):
                unit_embeddings = moments.add_embeddings(table["embeddings"][rows[begin:end]])
                batches = (model.preprocessing.normalise_pixels(batch.to(context.device, non_blocking=True)) for batch in pixels)
                for name, scores in read_units(model, batches, context.specs)[0].items():
                    moments.add_activations(name, scores, unit_embeddings)
                advance(end - begin)

    def _add_kept(self, moments: ResponseMoments, table: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        """Count the crops ``rows`` that are whole views of samples the collect stage kept activations of, from
        those; returns which rows it counted ``[R]`` (bool). Files of other inputs are ignored (fingerprint)."""
        context = self.context
        whole = whole_views(table["boxes"][rows], context.model.preprocessing.input_size)
        reused = torch.zeros(len(rows), dtype=torch.bool)
        for path in sorted(context.store.root.glob(f"{KEPT_ACTIVATIONS}*.safetensors")):
            found = context.store.read_checkpoint(path.name, context.stage_key("collect"))
            if found is None:
                continue
            ids, activations = kept_layer_activations(found[0], [spec.name for spec in context.specs])
            here = whole & ~reused & torch.isin(table["samples"][rows], ids)
            if not here.any():
                continue
            at = torch.searchsorted(ids, table["samples"][rows[here]])  # ids are ascending
            unit_embeddings = moments.add_embeddings(table["embeddings"][rows[here]])
            for name, values in activations.items():
                moments.add_activations(name, values[at], unit_embeddings)
            reused |= here
        return reused


def model_pixels(preprocessing: Preprocessing, crops: Sequence[Image.Image]) -> torch.Tensor:
    """Crops as one uint8 batch of the model's input, each resized to its side (in data-loader workers)."""
    return torch.stack([preprocessing.resized_pixels(crop) for crop in crops])
