"""The class relevance stage: per unit and class, the max and mean LRP relevance share over a
labelled (or predicted) test set, and the samples with the highest share; with
``config.relevance_examples`` also each unit's top-k samples by share over all classes (zennit-crp's
relevance-based reference sampling: the samples on which the unit matters most for the model's
output), exact by the same :class:`TopK` as the collect stage."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import torch

from .._util.devices import ShrinkingBatch, pass_memory, relevance_pixels
from .._util.fingerprint import hash_json
from .._util.progress import progress_bar
from ..analysis.explain import error_share, relevance_shares
from ..analysis.validity import inactive_units
from ..data import load_data
from ..model.loading import class_mapping, unmatched
from ..model.sae import has_decoder
from ..store.files import layer_file
from .class_relevance import ClassRelevance
from .collect import TopK
from .collect_stage import write_sample_table
from .context import BuildContext

RELEVANCE_PARTIAL = "relevance.partial.safetensors"


class ClassRelevanceStage:
    """Inputs: the model, the layers (SAE layers through their features, those whose SAE has a decoder) and
    ``config.relevance_data`` (or the probe data). Outputs: ``layers/<layer>.relevance`` (for SAE layers also the
    max and mean share of the SAE's error term per class, ``error_max_share``/``error_mean_share`` ``[K]``), with ``relevance_examples``
    also ``layers/<layer>.relevance_topk`` (layers without an SAE; their samples join ``samples.json``), and the
    data and targets it used (and the layers left out, with why) in the manifest; only a stage record when LRP
    does not support the model. Resume: done when the stage's fingerprint is unchanged; an interrupted run goes
    on from its ``relevance.partial`` checkpoint (taken every ``checkpoint_seconds``) if that was taken of the
    same inputs and passes, adding the rest in the same order: the same float64 sums as one run.

    Only rank 0 computes it (the other ranks are done): its float64 sums, split across ranks, would
    be added in another order and differ in the last bits from a single-process run. Shards never
    run it (``semlens merge`` does, on the merged Lens), so its top-k needs no merge across processes.
    """

    name = "relevance"

    def __init__(self, context: BuildContext) -> None:
        self.context = context

    def run(self) -> None:
        context = self.context
        if not context.config.class_relevance or context.stage_done(self.name) or not context.ranks.is_main:
            return
        started = time.perf_counter()
        report = context.relevance_support()
        if not report.supported:
            context.finish_stage(self.name, 0.0, skipped=f"LRP does not support this model: {report.reason}")
            return
        from ..relevance.lrp import PREDICTED, predicted_where_unlabelled, unit_and_error_relevance

        model = context.model
        data = load_data(context.config.relevance_data) if context.config.relevance_data else context.data
        mapping, targets_from, warning, names = class_mapping(model, data)
        left_out = {spec.name: "its SAE has no decoder (W_dec)" for spec in context.specs if spec.sae and not has_decoder(spec.sae)}
        left_out |= {
            spec.name: "relevance of a layer read channels last from a picked output is not supported"
            for spec in context.specs
            if spec.channels_last and spec.pick
        }
        layers = [spec for spec in context.specs if spec.name not in left_out]
        saes: dict = {spec.name: spec.sae for spec in layers if spec.sae}  # paths, loaded on first use
        picks = {spec.name: spec.pick for spec in layers}
        channels_last = {spec.name for spec in layers if spec.channels_last}
        memory = pass_memory(context.device, context.config.relevance_memory_gib)
        passes = ShrinkingBatch(context.config.relevance_batch(model.preprocessing.input_size, relevance_pixels(context.device)), context.relevance.release, memory)
        key = hash_json([context.stage_key(self.name), data.fingerprint(), passes.asked])
        found = context.store.read_checkpoint(RELEVANCE_PARTIAL, key)  # an interrupted run's progress, if of these inputs
        progress = RelevanceProgress() if found is None else RelevanceProgress.from_checkpoint(*found)
        resumed = {"resumed_at_sample": progress.next_index} if progress.next_index else {}  # in the stage's record
        stats, errors, examples = progress.stats, progress.errors, progress.examples
        loader = context.image_loader(data, range(progress.next_index, len(data)), passes.asked)
        last_save = time.monotonic()
        with (
            context.relevance.attributing() as modified,
            progress_bar("class relevance", len(data), context.progress, completed=progress.next_index) as advance,
        ):
            for pixels, ids, failed in loader:
                progress.next_index += len(ids) + len(failed)
                advance(len(failed))  # the bar moves as images are explained, pass by pass, not as they are loaded
                if pixels is None:
                    advance(len(ids))
                    continue
                pixels = context.model_input(pixels)
                labelled = [None if mapping is None else mapping.get(data.label(index)) for index in ids.tolist()]  # model outputs
                if mapping is not None:  # a sample outside every class folder (or labelled past the outputs): its prediction
                    progress.unlabelled += labelled.count(None)
                targets = torch.tensor([PREDICTED if output is None else output for output in labelled], device=context.device)
                explain = lambda b, e: unit_and_error_relevance(modified, pixels[b:e], targets[b:e], [spec.name for spec in layers], picks, saes, channels_last)  # noqa: E731
                for b, e, (outputs, relevance, error) in passes.parts(len(ids), explain):
                    advance(e - b)
                    part_targets, part_ids = predicted_where_unlabelled(targets[b:e], outputs), ids[b:e]
                    for spec in layers:
                        shares = relevance_shares(relevance[spec.name], error.get(spec.name))
                        stats.setdefault(spec.name, ClassRelevance(shares.shape[1], outputs.shape[1])).update(shares, part_targets, part_ids)
                        if spec.name in error:
                            share = error_share(relevance[spec.name], error[spec.name])[:, None]
                            errors.setdefault(spec.name, ClassRelevance(1, outputs.shape[1], top=1)).update(share, part_targets, part_ids)
                        if context.config.relevance_examples and not spec.sae:  # CRP crops of SAE features: see relevance_examples_stage
                            examples.setdefault(spec.name, TopK.empty(shares.shape[1], context.config.k)).update(shares.float().cpu(), part_ids.cpu())
                if time.monotonic() - last_save >= context.config.checkpoint_seconds and progress.next_index < len(data):
                    context.store.write_tensors(RELEVANCE_PARTIAL, progress.tensors(), {"fingerprint": key, **progress.counts()})
                    last_save = time.monotonic()
        for name, accumulator in stats.items():
            error_state = errors[name].state() if name in errors else {}
            sae_error = {f"error_{key}": error_state[key][0] for key in ("max_share", "mean_share") if key in error_state}
            context.store.write_tensors(layer_file(name, "relevance"), {**accumulator.state(), **sae_error})
        for name, topk in examples.items():
            context.store.write_tensors(layer_file(name, "relevance_topk"), {**topk.state(), "inactive": inactive_units(topk.scores)})
        if examples:
            write_sample_table(context.store, data, [topk.ids for topk in examples.values()], keep=True)
        if progress.unlabelled:
            said_before = unmatched(mapping, targets_from).warning  # the mapping's own warning, which this one extends
            targets_from += f"; {progress.unlabelled} samples without a class of the model (no class folder, or one the model has not): predicted classes"
            said = unmatched(mapping, targets_from).warning
            warning = said if warning in (None, said_before) else f"{warning}; {said}"
        context.manifest["relevance"] = {"data": data.spec, "targets": targets_from, "layers": list(stats), "example_layers": list(examples), "left_out": left_out}
        if warning:
            context.manifest["relevance"]["warning"] = warning
        if names:  # by index: the outputs are the data's classes
            context.manifest["model_classes"] = names
        smaller = {"images_per_pass": passes.shrunk} if passes.shrunk else {}
        if passes.memory_used:
            smaller["relevance_memory"] = passes.memory_used
        context.store.remove(RELEVANCE_PARTIAL)
        context.finish_stage(self.name, time.perf_counter() - started, **smaller, **resumed)


@dataclass
class RelevanceProgress:
    """How far the class relevance pass got: per layer its statistics (and the SAE error term's, and the top-k
    samples by share), the next sample to explain, and the samples taken by prediction so far."""

    stats: dict[str, ClassRelevance] = field(default_factory=dict)
    errors: dict[str, ClassRelevance] = field(default_factory=dict)  # per SAE layer the error term's share, as one more unit
    examples: dict[str, TopK] = field(default_factory=dict)  # per layer the top-k samples by share (config.relevance_examples)
    next_index: int = 0
    unlabelled: int = 0  # labelled data's samples without a label of their own, taken by prediction

    def tensors(self) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {}
        for kind, layers in (("stats", self.stats), ("errors", self.errors)):
            for position, (layer, accumulator) in enumerate(layers.items()):
                tensors.update(accumulator.checkpoint(prefix=f"{kind}.{position}."))
        for position, topk in enumerate(self.examples.values()):
            tensors.update(topk.state(prefix=f"examples.{position}."))
        return tensors

    def counts(self) -> dict[str, str]:
        """The checkpoint's metadata: the positions' layers, the next sample and the predicted ones."""
        layers = {kind: list(layers) for kind, layers in (("stats", self.stats), ("errors", self.errors), ("examples", self.examples))}
        return {"layers": json.dumps(layers), "next_index": str(self.next_index), "unlabelled": str(self.unlabelled)}

    @classmethod
    def from_checkpoint(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> RelevanceProgress:
        layers = json.loads(metadata["layers"])
        restored = cls(next_index=int(metadata["next_index"]), unlabelled=int(metadata["unlabelled"]))
        for position, layer in enumerate(layers["stats"]):
            restored.stats[layer] = ClassRelevance.from_checkpoint(tensors, f"stats.{position}.")
        for position, layer in enumerate(layers["errors"]):
            restored.errors[layer] = ClassRelevance.from_checkpoint(tensors, f"errors.{position}.", top=1)
        for position, layer in enumerate(layers["examples"]):
            restored.examples[layer] = TopK.from_state(tensors, prefix=f"examples.{position}.")
        return restored
