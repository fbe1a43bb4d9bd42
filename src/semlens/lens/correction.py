"""Correcting the model's reliance on a spurious concept (``semlens.interventions.correction``): the part of
``Lens`` that learns a correction on labelled images, measures it with the artefact test before and
after, and the correction file (safetensors, no pickle) that re-applies it to the Lens's model."""

from __future__ import annotations

import json
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch

from .._util.allocator import freed_memory_kept
from .._util.errors import SemlensError, asked
from ..interventions.correction import (
    ACCURACY_TOLERANCE,
    METHODS,
    ConceptProjection,
    TunedParameters,
    Tuning,
    check_sides,
    choose_projection,
    counterfactual_set,
    finetune,
    fold_refusal,
    foldable_layers,
    held_out_split,
    named_class,
)
from ..interventions.effects import class_targets, insertion_effect, load_views
from ..model.loading import MODELS, LoadedModel, load_model
from ..store.files import atomic_write

if TYPE_CHECKING:
    from PIL import Image

    from ..data import ImageData
    from ..interventions.effects import Artifact, ConceptImages
    from .lens import Lens

Fix = ConceptProjection | TunedParameters
FORMAT = "semlens-correction-1"


@dataclass
class Correction:
    """A correction of one class's reliance on an artefact, with the artefact test (``insertion_effect``:
    class probability, share predicted as the class and accuracy, clean and with the artefact) before and
    after it, on the same images; ``fix`` re-applies it (``with correction.applied(model): ...``), and a
    model spec ``corrected:FILE`` loads the model with it for good. It has ``failed`` when it cost more
    clean accuracy than ``tolerance``: such a correction is reported, never saved."""

    class_name: str
    method: str
    model: str  # the fingerprint of the model it was made for
    fix: Fix
    settings: dict = field(default_factory=dict, metadata={"description": "The method's settings: layer and its trials, estimator; or modules, epochs."})
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    seconds: float = 0.0
    spec: str | None = None  # the spec of the model it was made for (None in files of earlier releases)
    tolerance: float = field(default=ACCURACY_TOLERANCE, metadata={"description": "The clean accuracy the correction may cost."})

    @property
    def failed(self) -> str | None:
        """Why the correction failed (None: it did not, or it was not measured): it cost more clean accuracy
        on the test images than ``tolerance``."""
        accuracy = [part["clean"]["accuracy"] if part else None for part in (self.before, self.after)]
        if None in accuracy or accuracy[0] - accuracy[1] <= self.tolerance:
            return None
        return f"clean accuracy fell from {accuracy[0]:.3f} to {accuracy[1]:.3f}, more than the tolerance of {self.tolerance}"

    @contextmanager
    def applied(self, model: LoadedModel) -> Iterator[LoadedModel]:
        """The model with the correction applied for the length of a ``with`` block."""
        self._check_model(model)
        with self.fix.applied(model):
            yield model

    def state_dict(self, model: LoadedModel) -> dict[str, torch.Tensor]:
        """``model``'s state dict with the correction folded into its weights: the plain architecture loads it
        (``module.load_state_dict``) and computes what the corrected model computes. Refused for a projection
        that no weight of the architecture can hold (see ``ConceptProjection.folded``)."""
        self._check_model(model)
        return {**model.module.state_dict(), **self.fix.folded(model.module)}

    def export_weights(self, model: LoadedModel, path: str | Path) -> Path:
        """Write ``state_dict(model)`` as safetensors (atomic): the corrected model's weights for
        ``module.load_state_dict(safetensors.torch.load_file(path))``, without semlens."""
        from safetensors.torch import save_file

        self._check_not_failed("exported")
        tensors = {name: value.detach().cpu().clone().contiguous() for name, value in self.state_dict(model).items()}
        path = Path(path)
        atomic_write(path, lambda temporary: save_file(tensors, str(temporary), {"format": "pt"}))
        return path

    def corrected(self, model: LoadedModel, spec: str) -> LoadedModel:
        """``model`` (the one the correction was made for) with the correction in it for good, named ``spec``:
        folded into its weights, or a projection no weight can hold hooked onto its layer (its direction and
        reference then the layer's buffers, part of the weights' fingerprint). ``model`` is changed in place."""
        self._check_model(model)
        if isinstance(self.fix, ConceptProjection) and self.fix.fold_refusal(model.module):
            self.fix.attach(model.module)
        else:
            model.module.load_state_dict(self.fix.folded(model.module), strict=False)
        return replace(model, spec=spec)

    def __repr__(self) -> str:
        """One line a notebook shows: what was corrected, the artefact's effect and the clean accuracy before and after, and
        whether it failed (its weights and tensors are in ``fix``)."""
        summary = self.to_dict()
        effect, accuracy = summary["artifact_effect"], summary["clean_accuracy"]
        figures = lambda pair: " -> ".join("?" if value is None else f"{value:.3f}" for value in pair)  # noqa: E731
        verdict = f"FAILED: {self.failed}" if self.failed else "ok"
        return (f"Correction({self.method} of {self.class_name!r}: artefact effect {figures(effect)}, clean accuracy "
                f"{figures(accuracy)}; {verdict})")  # fmt: skip

    def _check_model(self, model: LoadedModel) -> None:
        if model.fingerprint != self.model:
            raise SemlensError(f"this correction was made for the model with weights {self.model}; this model has {model.fingerprint}")

    def _check_not_failed(self, what: str) -> None:
        if self.failed:
            raise SemlensError(f"this correction failed ({self.failed}); it is not {what}. Raise the tolerance to keep it anyway")

    def to_dict(self) -> dict:
        def effect(result: dict) -> float | None:
            return result["change"]["class_probability"] if result else None

        return {
            "class": self.class_name, "method": self.method, "settings": {**self.settings, **self.fix.settings()},
            "samples": self.before.get("samples"), "before": self.before, "after": self.after,
            "artifact_effect": [effect(self.before), effect(self.after)],
            "clean_accuracy": [part["clean"]["accuracy"] if part else None for part in (self.before, self.after)],
            "seconds": round(self.seconds, 2), "ok": not self.failed, "failed": self.failed, "tolerance": self.tolerance,
        }  # fmt: skip

    def save(self, path: str | Path) -> Path:
        """Write the correction as safetensors (tensors, and the settings as JSON metadata); atomic."""
        from safetensors.torch import save_file

        self._check_not_failed("saved")
        if isinstance(self.fix, ConceptProjection):
            tensors = {"direction": self.fix.direction, "reference": self.fix.reference}
        else:
            tensors = {f"parameters/{name}": value for name, value in self.fix.parameters.items()}
        header = {"class": self.class_name, "method": self.method, "model": self.model, "spec": self.spec, "settings": self.settings}
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
    spec = header.get("spec") if isinstance(header.get("spec"), str) else None
    return Correction(str(header.get("class")), header["method"], str(header.get("model")), fix, dict(header.get("settings") or {}), spec=spec)


@MODELS.register("corrected", "corrected:FILE[:MODEL_SPEC]", "a model with a correction saved by `semlens correct --out FILE` in it for good")
def corrected_model(rest: str) -> LoadedModel:
    """The model of spec ``corrected:FILE[:MODEL_SPEC]``: the model the correction FILE was made for (the spec
    it records, or MODEL_SPEC) with the correction in it for good (``Correction.corrected``)."""
    from ..store.trust import spec_risk

    path, _, base = rest.partition(":")
    correction = load_correction(path)
    if not base:
        base = correction.spec
        if not base:
            raise SemlensError(f"the correction {path} does not record the spec of its model (saved by an earlier semlens); name it: corrected:{path}:MODEL_SPEC")
        risk = spec_risk(base)
        if risk is not None:  # a correction file may come from someone else: what it names is followed only when the user names it
            raise SemlensError(f"the correction {path} names its model as {base!r}, which {risk}; name the model yourself if you mean it: corrected:{path}:{base}")
    return correction.corrected(load_model(base), f"corrected:{rest}")


@freed_memory_kept()  # forward (and for finetune backward) passes over the images
def correct(
    lens: Lens,
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
    tolerance: float = ACCURACY_TOLERANCE,
    seed: int = 0,
    exportable: bool = False,
) -> Correction:
    """Learn a correction of the class's reliance on ``artifact`` and measure the artefact test on ``data``
    before and after it.

    ``method``: ``project`` (remove the concept's direction from ``layer``'s activations; default: the Lens
    layer, but the last, that leaves the smallest effect on the train images while keeping their
    accuracy within 0.02; ``estimator`` ``mean`` or ``logistic``; the direction is learnt on
    ``concept``, default the other classes' ``train`` images with and without the artefact) or
    ``finetune`` (``tuning``: the last modules, epochs, learning rate). ``train``: labelled images to
    learn on (default the Lens's probe data); without ``data`` half of each class's train images, drawn
    with ``seed``, are held out to test on. Learning and test images must hold the same classes. The
    correction has ``failed`` when it costs more than ``tolerance`` of the clean test accuracy. ``exportable``: a
    projection is chosen among the layers whose weights can hold it (``Correction.export_weights``), refused up front
    where none of them can."""
    if method not in METHODS:
        raise SemlensError(f"unknown correction method {method!r}; valid: {', '.join(METHODS)}")
    if not 0 <= tolerance <= 1:
        raise SemlensError(f"tolerance={tolerance} must lie between 0 and 1 (the clean accuracy a correction may cost, e.g. {ACCURACY_TOLERANCE})")
    model, index = lens.sources.model(), lens.units.class_index(class_name)
    candidates = [layer] if layer else _projection_layers(lens)
    last = lens.units.channels_last([name for name in candidates if name in lens.layers])
    if method == "project" and exportable:
        candidates = _foldable(model, candidates, last, chosen=layer is not None)
    names = lens.classes or model.classes or []
    views, targets = _labelled_views(model, train if train is not None else lens.sources.probe_data)
    if data is None:
        learn, test = held_out_split(targets, names, seed)
        views, test_views = [views[i] for i in learn], [views[i] for i in test]
        targets, test_targets = targets[learn], targets[test]
    else:
        test_views, test_targets = _labelled_views(model, data)
    check_sides(targets, test_targets, names)
    settings: dict = {"train_samples": len(views), "held_out": data is None, **({"split_seed": seed} if data is None else {})}
    settings["test_classes"] = {named_class(names, label): count for label, count in sorted(Counter(test_targets.tolist()).items())}
    start = time.perf_counter()
    if method == "project":
        settings["concept"] = "the artefact inserted into other classes' train images" if concept is None else "concept images"
        if concept is not None:
            without, with_concept = concept.views(model)
        else:
            without = [view for view, target in zip(views, targets.tolist()) if target != index]
            with_concept = [artifact.apply(view) for view in without]
        fix, settings["layer_trials"] = choose_projection(model, candidates, views, targets, index, artifact, (without, with_concept), estimator, last)
        settings["estimator"] = estimator
    else:
        tuning = tuning or Tuning()
        fix = finetune(model, *counterfactual_set(views, targets, artifact, index), tuning, progress)
        settings.update(last=tuning.last, epochs=tuning.epochs, learning_rate=tuning.learning_rate)
    seconds = time.perf_counter() - start
    name = named_class(lens.classes or [], index)
    correction = Correction(name, method, model.fingerprint, fix, settings, seconds=seconds, spec=model.spec, tolerance=tolerance)
    correction.before = insertion_effect(model, test_views, test_targets, index, artifact)
    with correction.applied(model):
        correction.after = insertion_effect(model, test_views, test_targets, index, artifact)
    return correction


def _projection_layers(lens: Lens) -> list[str]:
    """The layers a projection is chosen among: the Lens's layers but the last (the output, when it
    reads the logits); its only layer when it has one."""
    return lens.layers[:-1] or lens.layers


def _foldable(model: LoadedModel, candidates: list[str], channels_last: list[str], chosen: bool) -> list[str]:
    """The ``candidates`` a projection folds into the weights of (to export them), refused where none does, with
    the model's layers that would."""
    refusals = {name: fold_refusal(model.module, name, name in channels_last) for name in candidates}
    kept = [name for name in candidates if refusals[name] is None]
    if not kept:
        whose = "; ".join(f"{name}: {refusal}" for name, refusal in refusals.items())
        foldable = foldable_layers(model.module)
        examples = ", ".join((foldable[:-1] or foldable)[-3:]) or "none in this model"  # before the classifier, where there are others
        finetune = asked("method='finetune'", "--method finetune")
        raise SemlensError(
            f"exporting the corrected weights needs a projection the weights can hold, and {'the layer given cannot' if chosen else 'no layer of the Lens can'} "
            f"({whose}): give {asked('layer', '--layer')} a Linear or Conv2d layer with a bias (e.g. {examples}), or correct by fine-tuning "
            f"({finetune})"
        )
    return kept


def _labelled_views(model: LoadedModel, data: ImageData) -> tuple[list[Image.Image], torch.Tensor]:
    views, labels = load_views(model, data)
    targets = class_targets(model, data, labels)
    if targets is None:
        raise SemlensError(f"correcting a model needs labelled images whose classes are the model's; {data.spec} has none or others")
    return views, targets

