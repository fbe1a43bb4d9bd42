"""The collect stage: one pass of the model over the data with hooks on every chosen layer, keeping
the top-k samples (and their activation maps) per unit; checkpointed every few seconds."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict
from itertools import chain, islice
from typing import Any

import torch

from .._util.errors import DataError
from .._util.fingerprint import hash_json
from .._util.progress import progress_bar
from ..analysis.validity import inactive_units
from ..data import ImageData
from ..data.base import DecodingDataset
from ..model.receptive import SHIFT_IMAGES, measured_placement
from ..model.sae import SparseAutoencoder
from ..store.files import LensStore, layer_file
from .collect import EMPTY_ID, Collector, TopK, candidate_ids, candidate_slots, rescore
from .context import BuildContext
from .kept_activations import CHECKPOINT_BYTES, KeptActivations

COLLECT_PARTIAL = "collect.partial"  # the checkpoint's stem; each rank of a group adds its rank
KEPT_ACTIVATIONS = "collect.activations"  # the kept activations' stem, per rank; the responses stage reads and removes them


class CollectStage:
    """Inputs: the model, the layers and the samples ``context.rows`` (each rank its block of whole
    batches). Outputs: ``layers/<layer>.topk`` (scores, ids, maps, inactive units), ``samples.json``,
    ``failures.json`` and the layers' records in the manifest. Resume: done when the stage's
    fingerprint is unchanged; an interrupted run goes on from its rank's ``collect.partial*``
    checkpoint if that was taken of the same inputs and split."""

    name = "collect"

    def __init__(self, context: BuildContext) -> None:
        self.context = context

    def run(self) -> None:
        context = self.context
        if context.stage_done(self.name):
            return
        started = time.perf_counter()
        ranks, config = context.ranks, context.config
        rows = ranks.shard.split(context.rows, config.batch_size)  # this rank's whole batches
        slots = candidate_slots(config.k, context.autocast)
        key = hash_json([context.stage_key(self.name), rows.start, rows.stop, slots])
        checkpoint = f"{ranks.own(COLLECT_PARTIAL)}.safetensors"
        rescoring = slots > config.k
        responses = context.shard is None and config.crop_view != "masked"  # the responses stage will run here
        kept = KeptActivations([spec.name for spec in context.specs]) if responses else None
        first_pass_kept = None if rescoring else kept  # at reduced precision the float32 re-scoring keeps them
        state, next_index, failures = self._load_checkpoint(checkpoint, key, rows.start, first_pass_kept)
        model = context.model.module.to(context.device).eval()
        loader = context.image_loader(context.data, range(next_index, rows.stop), config.batch_size)
        last_save, resumed_at = time.monotonic(), next_index
        observe = None if first_pass_kept is None else first_pass_kept.add
        with Collector(model, context.specs, slots, config.max_map_side, state, context.autocast, maps=not rescoring, on_batch=observe) as collector:
            with progress_bar("collect", len(rows), context.progress, completed=next_index - rows.start) as advance:
                for pixels, ids, failed in loader:
                    if pixels is not None:
                        collector.update(context.model_input(pixels), ids.to(context.device))
                    failures.extend(failed)
                    next_index += len(ids) + len(failed)
                    advance(len(ids) + len(failed))
                    if time.monotonic() - last_save >= config.checkpoint_seconds and next_index < rows.stop:
                        self._save_checkpoint(checkpoint, key, collector.results, next_index, failures, first_pass_kept)
                        last_save = time.monotonic()
        results, info = collector.results, {}
        if rescoring:
            if next_index > resumed_at:  # a run killed while re-scoring resumes here, without passing over the data again
                self._save_checkpoint(checkpoint, key, results, next_index, failures)
            decoded = len(rows) - len(failures)
            results, info = rescore(
                model, context.specs, results, self._reload, config.k, decoded, config.max_map_side, None if kept is None else kept.add
            )  # fmt: skip
        results = ranks.merge_topk({name: topk.to("cpu") for name, topk in results.items()})
        if kept is not None:  # before the gathering below, so every rank's file is there once rank 0 goes on
            kept.prune(candidate_ids(results))
            context.store.write_tensors(f"{ranks.own(KEPT_ACTIVATIONS)}.safetensors", kept.state(), {"fingerprint": context.stage_key(self.name)})
        failures = sorted(chain.from_iterable(ranks.gather_objects(failures)))
        info = {"rescored": {"candidates_per_unit": slots, **sum_counts(ranks.gather_objects(info))}} if rescoring else {}
        seconds = time.perf_counter() - started
        context.manifest = ranks.on_main(lambda: self.finish(results, failures, seconds, ranks=ranks.world, **info))

    def _reload(self, ids: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of the samples ``ids`` as model inputs (the float32 re-scoring of the candidates); each
        decoded in the collection pass, so one that fails now is an error, not a sample to leave out."""
        context = self.context
        for pixels, batch_ids, failed in context.image_loader(context.data, ids.tolist(), context.config.batch_size):
            if failed:
                index, error = failed[0]
                raise DataError(f"sample {index} decoded in the collection pass but not when re-scored ({error}); is the data changing?")
            yield context.model_input(pixels), batch_ids.to(context.device)

    def finish(self, results: dict[str, TopK], failures: list, seconds: float, **info: Any) -> dict[str, Any]:
        """Store the stage's results (from this run, or merged from shards) and mark it done."""
        self._write_results(results, failures)
        for checkpoint in self.context.store.root.glob(f"{COLLECT_PARTIAL}*"):  # every rank's, of any earlier world size
            checkpoint.unlink()
        self.context.finish_stage(self.name, seconds, failed=len(failures), **info)
        return self.context.manifest

    def _save_checkpoint(
        self, name: str, key: str, results: dict[str, TopK], next_index: int, failures: list, kept: KeptActivations | None = None
    ) -> None:
        tensors: dict[str, torch.Tensor] = kept.state() if kept is not None and kept.nbytes <= CHECKPOINT_BYTES else {}
        for position, spec in enumerate(self.context.specs):
            if spec.name in results:
                tensors.update(results[spec.name].state(prefix=f"{position}."))
        metadata = {"fingerprint": key, "next_index": str(next_index), "failures": json.dumps(failures)}
        self.context.store.write_tensors(name, tensors, metadata)

    def _load_checkpoint(self, name: str, key: str, start: int, kept: KeptActivations | None) -> tuple[dict[str, TopK], int, list]:
        found = self.context.store.read_checkpoint(name, key)
        if found is None:
            return {}, start, []
        tensors, metadata = found
        if kept is not None:
            kept.load(tensors)
        state = {}
        for position, spec in enumerate(self.context.specs):
            if f"{position}.scores" in tensors:
                state[spec.name] = TopK.from_state(tensors, prefix=f"{position}.").to(self.context.device)
        failures = [tuple(item) for item in json.loads(metadata["failures"])]
        return state, int(metadata["next_index"]), failures

    def _write_results(self, results: dict[str, TopK], failures: list) -> None:
        context = self.context
        store, data = context.store, context.data
        if len(failures) == len(context.rows):
            examples = "; ".join(error for _, error in failures[:3])
            raise DataError(f"none of the {len(context.rows)} samples of {data.spec} could be decoded ({examples})")
        store.write_json("failures.json", [{"sample": index, "error": error} for index, error in failures])
        shift_images = None
        for spec in context.specs:
            topk = results[spec.name]
            inactive = inactive_units(topk.scores, values=topk.maps is None)  # a vector output's scores are its values
            store.write_tensors(layer_file(spec.name, "topk"), {**topk.state(), "inactive": inactive})
            base_units = topk.units // 2 if spec.signed else topk.units
            context.manifest["layers"][spec.name] = {
                "units": topk.units,
                "unit_names": "signed" if spec.signed else "index",
                "base_units": base_units,
                "output": "spatial" if topk.maps is not None else "vector",
                "map_shape": None if topk.maps is None else list(topk.maps.shape[2:]),
                "inactive_units": int(inactive.sum()),
                "spec": asdict(spec),
            }
            if topk.maps is not None:  # where the map's cells sit in the input: activation boxes and masks follow it
                shift_images = self._shift_images() if shift_images is None else shift_images
                placement, failed = measured_placement(context.model.module, spec, shift_images)
                context.manifest["layers"][spec.name].update(
                    {"map_shift": list(placement.shift), "map_locality": placement.locality, **({"map_shift_failed": failed} if failed else {})}
                )
            if spec.sae:
                context.manifest["layers"][spec.name]["sae"] = SparseAutoencoder.load(spec.sae).describe()
        write_sample_table(store, data, [results[spec.name].ids for spec in context.specs])

    def _shift_images(self) -> torch.Tensor:
        """The first ``SHIFT_IMAGES`` samples that decode, as model inputs: what the map shifts are measured on."""
        context = self.context
        decoded = (pixels for _, pixels, _ in DecodingDataset(context.data, context.model.preprocessing.pixels, context.rows) if pixels is not None)
        return context.model_input(torch.stack(list(islice(decoded, SHIFT_IMAGES))))


def sum_counts(parts: list[dict[str, int]]) -> dict[str, int]:
    """The re-scoring records of every rank as one: samples re-scored and units unconfirmed (per rank) add up."""
    return {name: sum(part[name] for part in parts) for name in parts[0]}


def write_sample_table(store: LensStore, data: ImageData, ids: list[torch.Tensor], keep: bool = False) -> None:
    """``samples.json``: path and label of every sample that ``ids`` (top-k id arrays, -1 empty) name;
    ``keep`` adds those already listed (a later stage's examples join the collect stage's)."""
    referenced = set(torch.unique(torch.cat([tensor.reshape(-1) for tensor in ids])).tolist()) - {EMPTY_ID}
    if keep:
        referenced |= set(store.read_json("samples.json")["ids"])
    ordered = sorted(referenced)
    store.write_json(
        "samples.json",
        {
            "root": str(getattr(data, "root", "")),
            "ids": ordered,
            "paths": [data.describe(index) for index in ordered],
            "labels": [data.label(index) for index in ordered],
        },
    )
