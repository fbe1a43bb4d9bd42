"""Correcting the model's reliance on a spurious concept (``semlens.analysis.correction``): the part of
``Lens`` that learns a correction on labelled images, measures it with the artefact test before and
after, and the correction file (safetensors, no pickle) that re-applies it to the Lens's model."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch

from .._util.allocator import freed_memory_kept
from .._util.errors import SemlensError
from ..analysis.correction import METHODS, ConceptProjection, TunedParameters, Tuning, choose_projection, counterfactual_set, finetune
from ..analysis.interventions import class_targets, insertion_effect, load_views
from .store import atomic_write

if TYPE_CHECKING:
    from PIL import Image

    from ..analysis.interventions import Artifact, ConceptImages
    from ..data import ImageData
    from ..model.loading import LoadedModel
    from .lens import Lens

Fix = ConceptProjection | TunedParameters
FORMAT = "semlens-correction-1"


@dataclass
class Correction:
    """A correction of one class's reliance on an artefact, with the artefact test (``insertion_effect``:
    class probability, share predicted as the class and accuracy, clean and with the artefact) before and
    after it, on the same images; ``fix`` re-applies it (``with correction.applied(model): ...``)."""

    class_name: str
    method: str
    model: str  # the fingerprint of the model it was made for
    fix: Fix
    settings: dict = field(default_factory=dict)
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    seconds: float = 0.0

    def applied(self, model: LoadedModel):
        """The model with the correction applied for the length of a ``with`` block."""
        return applied(self.fix, self.model, model)

    def to_dict(self) -> dict:
        def effect(result: dict) -> float | None:
            return result["change"]["class_probability"] if result else None

        return {
            "class": self.class_name, "method": self.method, "settings": {**self.settings, **self.fix.settings()},
            "samples": self.before.get("samples"), "before": self.before, "after": self.after,
            "artifact_effect": [effect(self.before), effect(self.after)],
            "clean_accuracy": [part["clean"]["accuracy"] if part else None for part in (self.before, self.after)],
            "seconds": round(self.seconds, 2),
        }  # fmt: skip

    def save(self, path: str | Path) -> Path:
        """Write the correction as safetensors (tensors, and the settings as JSON metadata); atomic."""
        from safetensors.torch import save_file

        if isinstance(self.fix, ConceptProjection):
            tensors = {"direction": self.fix.direction, "reference": self.fix.reference}
        else:
            tensors = {f"parameters/{name}": value for name, value in self.fix.parameters.items()}
        header = {"class": self.class_name, "method": self.method, "model": self.model, "settings": self.settings}
        header["layer"] = getattr(self.fix, "layer", None)
        header["channels_last"] = getattr(self.fix, "channels_last", False)
        path = Path(path)
        tensors = {name: value.detach().cpu().contiguous() for name, value in tensors.items()}
        atomic_write(path, lambda temporary: save_file(tensors, str(temporary), {"format": FORMAT, "correction": json.dumps(header)}))
        return path


def load_correction(path: str | Path) -> Correction:
    """A correction saved by ``Correction.save`` (read as safetensors: tensors and JSON, nothing runs)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        header = json.loads(metadata["correction"]) if metadata.get("format") == FORMAT else None
    except (OSError, ValueError, KeyError, SafetensorError) as error:
        raise SemlensError(f"cannot read the correction {path}: {error}") from error
    if not isinstance(header, dict) or header.get("method") not in METHODS:
        raise SemlensError(f"{path} is not a semlens correction file (written by `semlens correct --out`)")
    if header["method"] == "project":
        if not isinstance(header.get("layer"), str) or set(tensors) != {"direction", "reference"}:
            raise SemlensError(f"the projection in {path} needs a layer name and the tensors direction and reference")
        fix: Fix = ConceptProjection(header["layer"], tensors["direction"], tensors["reference"], header.get("channels_last") is True)
    else:
        if not tensors or not all(name.startswith("parameters/") for name in tensors):
            raise SemlensError(f"the fine-tuned correction in {path} holds no parameters/... tensors")
        fix = TunedParameters({name.removeprefix("parameters/"): value for name, value in tensors.items()})
    return Correction(str(header.get("class")), header["method"], str(header.get("model")), fix, dict(header.get("settings") or {}))


@contextmanager
def applied(fix: Fix, fingerprint: str, model: LoadedModel) -> Iterator[LoadedModel]:
    """``fix`` applied to ``model``, which must be the model the correction was made for."""
    if model.fingerprint != fingerprint:
        raise SemlensError(f"this correction was made for the model with weights {fingerprint}; this model has {model.fingerprint}")
    with fix.applied(model):
        yield model


class LensCorrection:
    """Correct the Lens's model for one class and artefact (mixed into ``Lens``)."""

    @freed_memory_kept()  # forward (and for finetune backward) passes over the images
    def correct(
        self: Lens,
        class_name: str | int,
        artifact: Artifact,
        method: str = "project",
        data: ImageData | None = None,
        layer: str | None = None,
        estimator: str = "mean",
        tuning: Tuning | None = None,
        train: ImageData | None = None,
        concept: ConceptImages | None = None,
        progress: bool = True,
    ) -> Correction:
        """Learn a correction of the class's reliance on ``artifact`` and measure the artefact test on ``data``
        before and after it.

        ``method``: ``project`` (remove the concept's direction from ``layer``'s activations; default: the Lens
        layer, but the last, that leaves the smallest effect on the train images while keeping their
        accuracy within 0.02; ``estimator`` ``mean`` or ``logistic``; the direction is learnt on
        ``concept``, default the other classes' ``train`` images with and without the artefact) or
        ``finetune`` (``tuning``: the last modules, epochs, learning rate). ``train``: labelled images to
        learn on (default the Lens's probe data); without ``data`` the train images are split in two
        (even samples learn, odd samples test)."""
        if method not in METHODS:
            raise SemlensError(f"unknown correction method {method!r}; valid: {', '.join(METHODS)}")
        model, index = self.model(), self.class_index(class_name)
        views, targets = _labelled_views(model, train if train is not None else self.probe_data)
        if data is None:
            (views, test_views), (targets, test_targets) = (views[0::2], views[1::2]), (targets[0::2], targets[1::2])
        else:
            test_views, test_targets = _labelled_views(model, data)
        settings: dict = {"train_samples": len(views), "held_out": data is None}
        start = time.perf_counter()
        if method == "project":
            settings["concept"] = "the artefact inserted into other classes' train images" if concept is None else "concept images"
            if concept is not None:
                without, with_concept = concept.views(model)
            else:
                without = [view for view, target in zip(views, targets.tolist()) if target != index]
                with_concept = [artifact.apply(view) for view in without]
            candidates = [layer] if layer else self._projection_layers()
            last = self.channels_last([name for name in candidates if name in self.layers])
            fix, settings["layer_trials"] = choose_projection(model, candidates, views, targets, index, artifact, (without, with_concept), estimator, last)
            settings["estimator"] = estimator
        else:
            tuning = tuning or Tuning()
            fix = finetune(model, *counterfactual_set(views, targets, artifact, index), tuning, progress)
            settings.update(last=tuning.last, epochs=tuning.epochs, learning_rate=tuning.learning_rate)
        seconds = time.perf_counter() - start
        name = self.classes[index] if self.classes else str(index)
        correction = Correction(name, method, model.fingerprint, fix, settings, seconds=seconds)
        correction.before = insertion_effect(model, test_views, test_targets, index, artifact)
        with correction.applied(model):
            correction.after = insertion_effect(model, test_views, test_targets, index, artifact)
        return correction

    def _projection_layers(self: Lens) -> list[str]:
        """The layers a projection is chosen among: the Lens's layers but the last (the output, when it
        reads the logits); its only layer when it has one."""
        return self.layers[:-1] or self.layers

def _labelled_views(model: LoadedModel, data: ImageData) -> tuple[list[Image.Image], torch.Tensor]:
    views, labels = load_views(model, data)
    targets = class_targets(model, data, labels)
    if targets is None:
        raise SemlensError(f"correcting a model needs labelled images whose classes are the model's; {data.spec} has none or others")
    return views, targets

