"""Correcting a model's reliance on a spurious concept, beyond switching units off.

Two corrections, each a small object that is applied to the model for the length of a block (the
model is restored on exit, errors included) and stored as plain tensors:

- ``ConceptProjection`` (P-ClArC: Anders et al. 2022; Pahde et al. 2023, "Reveal to Revise"): the
  concept's direction v (a CAV, unit norm) in one layer's activation space is learnt from images with
  and without the concept; at inference every activation vector (for conv layers: at each position,
  over the channels) loses its component along v relative to the clean mean z:
  x' = x - v v^T (x - z). Nothing else of the activations changes.
- ``TunedParameters``: the model's last parameterised modules fine-tuned on labelled images with the
  artefact inserted into the other classes' images (true labels kept, so the artefact no longer
  predicts the class), the clean images mixed in so that clean accuracy holds.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Collection, Iterator, Sequence

import torch
from PIL import Image
from torch import nn

from .._util.errors import SemlensError, asked
from .._util.progress import progress_bar
from ..model.loading import LoadedModel
from ..model.units import hooks, resolve_module
from .effects import Artifact, insertion_effect

ESTIMATORS = ("mean", "logistic")  # signal pattern (difference of means) or filter (logistic regression) CAV
METHODS = ("project", "finetune")


def _channels_last(output: torch.Tensor, already: bool = False) -> torch.Tensor:
    """A layer output with its channels on the last axis (conv maps ``N,C,H,W`` are moved; tokens, vectors and
    maps read channels last, ``already``, are)."""
    return output.movedim(1, -1) if output.dim() == 4 and not already else output


@torch.no_grad()
def layer_vectors(
    model: LoadedModel, views: Sequence[Image.Image], layer: str, batch_size: int = 32, channels_last: bool = False
) -> torch.Tensor:
    """Per view, the layer's activation vector ``[N, C]`` averaged over positions (or tokens); the channels of
    a map read ``channels_last`` (N,H,W,C) on its last dimension."""
    device = next(model.module.parameters()).device
    parts: list[torch.Tensor] = []

    def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        if not isinstance(output, torch.Tensor):
            raise SemlensError(f"layer {layer!r} outputs {type(output).__name__}, not a tensor: choose a layer that outputs activations")
        x = _channels_last(output.float(), channels_last)
        parts.append(x.reshape(len(x), -1, x.shape[-1]).mean(dim=1).cpu())

    with hooks([resolve_module(model.module, layer).register_forward_hook(keep)]):
        for start in range(0, len(views), batch_size):
            pixels = torch.stack([model.preprocessing.normalise(view) for view in views[start : start + batch_size]])
            model.module(pixels.to(device))
    return torch.cat(parts)


def concept_direction(with_concept: torch.Tensor, without: torch.Tensor, estimator: str = "mean") -> torch.Tensor:
    """The concept's unit direction ``[C]`` from activation vectors with ``[N1, C]`` and without ``[N0, C]`` it.

    ``mean``: the signal pattern, the difference of the two means (for a binary concept label it is the
    pattern CAV cov(x, t) / var(t) that Pahde et al. found to point at the concept most precisely);
    ``logistic``: the filter CAV, the weights of an L2 logistic regression on standardised vectors (in
    activation space: divided by each channel's scale), which also cancels correlated distractors."""
    if estimator not in ESTIMATORS:
        raise SemlensError(f"unknown direction estimator {estimator!r}; valid: {', '.join(ESTIMATORS)}")
    if len(with_concept) < 2 or len(without) < 2:
        raise SemlensError(f"a concept direction needs at least 2 images with and 2 without the concept; got {len(with_concept)} and {len(without)}")
    if estimator == "mean":
        direction = with_concept.double().mean(dim=0) - without.double().mean(dim=0)
    else:
        from sklearn.linear_model import LogisticRegression

        both = torch.cat([with_concept, without]).double()
        scale = both.std(dim=0).clamp_min(1e-8)
        truth = torch.cat([torch.ones(len(with_concept)), torch.zeros(len(without))]).numpy()
        fitted = LogisticRegression(max_iter=2000).fit(((both - both.mean(dim=0)) / scale).numpy(), truth)
        direction = torch.from_numpy(fitted.coef_[0]) / scale
    norm = direction.norm()
    if not torch.isfinite(norm) or norm < 1e-12:
        raise SemlensError("the concept does not change this layer's activations: there is no direction to remove (choose another layer)")
    return (direction / norm).float()


@dataclass(frozen=True)
class ConceptProjection:
    """Remove a concept's direction from one layer's activations: x' = x - v (v . (x - z)).

    ``direction`` v ``[C]`` (unit norm), ``reference`` z ``[C]`` (the clean images' mean activation
    vector): along v every activation is moved to the clean mean; orthogonal to v nothing changes. A map's
    channels are on dimension 1, or on its last for a layer read ``channels_last`` (N,H,W,C)."""

    layer: str
    direction: torch.Tensor
    reference: torch.Tensor
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.direction.dim() != 1 or self.direction.shape != self.reference.shape:
            shapes = f"{tuple(self.direction.shape)} and {tuple(self.reference.shape)}"
            raise SemlensError(f"a projection needs a direction and a reference of one shape [C]; got {shapes}")
        if abs(float(self.direction.norm()) - 1) > 1e-3:
            raise SemlensError(f"the projection's direction must have unit norm; it has {float(self.direction.norm()):.4f}")

    @classmethod
    def learn(
        cls,
        model: LoadedModel,
        layer: str,
        without: Sequence[Image.Image],
        with_concept: Sequence[Image.Image],
        estimator: str = "mean",
        channels_last: bool = False,
    ) -> ConceptProjection:
        """The projection of ``layer`` for the concept shown by ``with_concept`` and absent from ``without``."""
        clean = layer_vectors(model, without, layer, channels_last=channels_last)
        shown = layer_vectors(model, with_concept, layer, channels_last=channels_last)
        return cls(layer, concept_direction(shown, clean, estimator), clean.mean(dim=0), channels_last)

    def project(self, output: torch.Tensor) -> torch.Tensor:
        """The layer's output without the concept's component (relative to the clean mean)."""
        x = _channels_last(output, self.channels_last)
        if x.shape[-1] != len(self.direction):
            raise SemlensError(f"layer {self.layer!r} has {x.shape[-1]} channels, but the projection was learnt on {len(self.direction)}")
        v, z = self.direction.to(x), self.reference.to(x)
        x = x - ((x - z) @ v)[..., None] * v
        return x.movedim(-1, 1) if output.dim() == 4 and not self.channels_last else x

    @contextmanager
    def applied(self, model: LoadedModel) -> Iterator[LoadedModel]:
        """The model with the projection hooked onto its layer (removed on exit)."""
        handle = resolve_module(model.module, self.layer).register_forward_hook(lambda _m, _i, output: self.project(output))
        with hooks([handle]):
            yield model

    def folded(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The layer's new weight and bias with the projection in them (state-dict names), where the layer is a
        linear map whose outputs are the projected channels: an ``nn.Linear``, or an ``nn.Conv2d`` without
        groups read channels first, with a bias to take the constant v (v . z). Elsewhere (a ReLU, a block)
        no weights of the architecture can hold it, which is refused with what would work instead."""
        refusal = self.fold_refusal(module)
        if refusal:
            finetune = asked("method='finetune'", "--method finetune")
            raise SemlensError(
                f"the projection of layer {self.layer!r} cannot be folded into the model's weights ({refusal}): project a Linear "
                f"or Conv2d layer with a bias ({asked('layer=', '--layer')}), or correct by fine-tuning ({finetune}), "
                "whose weights always export"
            )
        layer = resolve_module(module, self.layer)
        weight, bias = layer.weight.detach(), layer.bias.detach()
        v, z = self.direction.to(weight), self.reference.to(weight)
        keep = torch.eye(len(v), dtype=weight.dtype, device=weight.device) - torch.outer(v, v)  # x - v v^T (x - z) = P x + v (v . z)
        folded_weight = (keep @ weight.reshape(len(v), -1)).reshape(weight.shape)
        return {f"{self.layer}.weight": folded_weight, f"{self.layer}.bias": keep @ bias + v * (v @ z)}

    def fold_refusal(self, module: nn.Module) -> str | None:
        """Why ``folded`` cannot put the projection into the layer's weights (None: it can)."""
        return fold_refusal(module, self.layer, self.channels_last)

    def attach(self, module: nn.Module) -> None:
        """Hook the projection onto the layer for good (a corrected model whose weights cannot hold it); its
        direction and reference become the layer's buffers, so that they are part of the model's weights and
        fingerprint and move with it to a device."""
        layer = resolve_module(module, self.layer)
        layer.register_buffer("correction_direction", self.direction.clone())
        layer.register_buffer("correction_reference", self.reference.clone())
        layer.register_forward_hook(lambda _m, _i, output: self.project(output))

    def settings(self) -> dict:
        return {"layer": self.layer, "channels": len(self.direction), "channels_last": self.channels_last}


def fold_refusal(module: nn.Module, layer: str, channels_last: bool = False) -> str | None:
    """Why a projection of ``layer`` cannot be folded into the model's weights (None: it can): only a linear map of
    the channels with a bias holds it (``ConceptProjection.folded``)."""
    owner = resolve_module(module, layer)
    if not (isinstance(owner, nn.Linear) or (isinstance(owner, nn.Conv2d) and owner.groups == 1 and not channels_last)):
        return f"it is a {type(owner).__name__}, not a linear map of the channels"
    return "it has no bias to hold the constant" if owner.bias is None else None


def foldable_layers(module: nn.Module) -> list[str]:
    """The model's layers a projection folds into (``fold_refusal`` None), in the order of the model."""
    return [name for name, _ in module.named_modules() if name and fold_refusal(module, name) is None]


ACCURACY_TOLERANCE = 0.02  # a projection may cost at most this much accuracy on the learning images to be chosen


def choose_projection(
    model: LoadedModel,
    layers: Sequence[str],
    views: Sequence[Image.Image],
    targets: torch.Tensor,
    class_index: int,
    artifact: Artifact,
    concept: tuple[Sequence[Image.Image], Sequence[Image.Image]],
    estimator: str = "mean",
    channels_last: Collection[str] = (),
) -> tuple[ConceptProjection, dict[str, dict]]:
    """The projection of the layer that leaves the smallest artefact effect on the class (its probability
    with minus without the artefact on ``views``, in absolute value) among those that keep accuracy within
    ``ACCURACY_TOLERANCE`` (else the one that costs least); each layer's direction learnt on
    ``concept`` (images without, with it), along the last dimension for the layers in ``channels_last``.
    Returns it and every layer's trial (effect, accuracy)."""
    before = insertion_effect(model, views, targets, class_index, artifact)["clean"]["accuracy"]
    trials, fixes = {}, {}
    for layer in layers:
        fixes[layer] = ConceptProjection.learn(model, layer, *concept, estimator, layer in channels_last)
        with fixes[layer].applied(model):
            after = insertion_effect(model, views, targets, class_index, artifact)
        trials[layer] = {"effect": after["change"]["class_probability"], "accuracy_drop": before - after["clean"]["accuracy"]}
    kept = [layer for layer in layers if trials[layer]["accuracy_drop"] <= ACCURACY_TOLERANCE]
    best = min(kept, key=lambda layer: abs(trials[layer]["effect"])) if kept else min(layers, key=lambda layer: trials[layer]["accuracy_drop"])
    return fixes[best], trials


def held_out_split(targets: torch.Tensor, names: Sequence[str], seed: int = 0) -> tuple[list[int], list[int]]:
    """The sample indices to learn on and to test on: half of each class's samples on each side, drawn at
    random (seeded: the same labels give the same split). Taken in order instead (even and odd samples),
    data whose labels cycle with the index put whole classes on one side."""
    from sklearn.model_selection import train_test_split

    counts = torch.bincount(targets)
    scarce = [index for index in targets.unique().tolist() if counts[index] < 2]
    if scarce:
        raise SemlensError(
            f"{_named(scarce, names)} {'has' if len(scarce) == 1 else 'have'} a single labelled image; the held-out split puts half of each class's images "
            f"on each side, so each class needs at least 2 (or give the test images: {asked('data=...', '--data')})"
        )
    learn, test = train_test_split(range(len(targets)), test_size=0.5, random_state=seed, stratify=targets.numpy())
    return sorted(learn), sorted(test)


def check_sides(learn: torch.Tensor, test: torch.Tensor, names: Sequence[str]) -> None:
    """Refuse learning and test images of different classes: a class learnt on but never tested hides what the
    correction does to it from the clean accuracy; one tested but never learnt on, fine-tuning may forget."""
    learnt, tested = set(learn.tolist()), set(test.tolist())
    for missing, where, other in ((learnt - tested, "test", "learning"), (tested - learnt, "learning", "test")):
        if missing:
            raise SemlensError(
                f"{_named(sorted(missing), names)} {'is' if len(missing) == 1 else 'are'} among the {other} images but not the {where} images; "
                "a correction is learnt and measured on images of the same classes: give labelled images of every class to both"
            )


def named_class(names: Sequence[str], index: int) -> str:
    """Class ``index``'s name (its index where the model names fewer classes)."""
    return names[index] if index < len(names) else str(index)


def _named(indices: Sequence[int], names: Sequence[str]) -> str:
    return ("class " if len(indices) == 1 else "classes ") + ", ".join(repr(named_class(names, index)) for index in indices)


def tunable_modules(module: nn.Module, last: int) -> list[str]:
    """The names of the model's last ``last`` modules that hold parameters of their own (registration order)."""
    owners = [name for name, child in module.named_modules() if name and any(True for _ in child.parameters(recurse=False))]
    if not 1 <= last <= len(owners):
        raise SemlensError(f"cannot fine-tune the last {last} parameterised modules: the model has {len(owners)} ({', '.join(owners[-5:])} last)")
    return owners[-last:]


@dataclass(frozen=True)
class TunedParameters:
    """New values of some of the model's parameters (state-dict names), swapped in while applied."""

    parameters: dict[str, torch.Tensor]

    @contextmanager
    def applied(self, model: LoadedModel) -> Iterator[LoadedModel]:
        """The model with the tuned values in place of its own (its own values restored on exit)."""
        own = dict(model.module.named_parameters())
        saved = {name: own[name].detach().clone() for name in self.folded(model.module)}
        try:
            with torch.no_grad():
                for name, value in self.parameters.items():
                    own[name].copy_(value)
            yield model
        finally:
            with torch.no_grad():
                for name, value in saved.items():
                    own[name].copy_(value)

    def folded(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The tuned values by state-dict name, each checked to be one of ``module``'s parameters of its shape."""
        own = dict(module.named_parameters())
        for name, value in self.parameters.items():
            if name not in own:
                raise SemlensError(f"the model has no parameter {name!r}: this correction was made for another model")
            if own[name].shape != value.shape:
                raise SemlensError(f"parameter {name!r} has shape {tuple(own[name].shape)}, the correction {tuple(value.shape)}")
        return dict(self.parameters)

    def settings(self) -> dict:
        return {"modules": sorted({name.rpartition(".")[0] for name in self.parameters}), "parameters": sum(v.numel() for v in self.parameters.values())}


@dataclass(frozen=True)
class Tuning:
    """How to fine-tune: the last ``last`` parameterised modules, ``epochs`` passes with Adam."""

    last: int = 1
    epochs: int = 3
    learning_rate: float = 1e-2
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.learning_rate > 0:
            raise SemlensError(
                f"fine-tuning needs at least one epoch, a positive batch size and a learning rate above 0 "
                f"(got epochs={self.epochs}, batch_size={self.batch_size}, learning_rate={self.learning_rate})"
            )


def counterfactual_set(
    views: Sequence[Image.Image], targets: torch.Tensor, artifact: Artifact, class_index: int
) -> tuple[list[Image.Image], torch.Tensor]:
    """The clean views plus a copy of every view of another class with the artefact inserted, true labels kept."""
    others = [view for view, target in zip(views, targets.tolist()) if target != class_index]
    if not others:
        raise SemlensError("fine-tuning needs images of classes other than the corrected one to insert the artefact into")
    return list(views) + [artifact.apply(view) for view in others], torch.cat([targets, targets[targets != class_index]])


def finetune(
    model: LoadedModel, views: Sequence[Image.Image], targets: torch.Tensor, tuning: Tuning = Tuning(), progress: bool = True
) -> TunedParameters:
    """Fine-tune the last parameterised modules on ``views`` with their class ``targets`` (cross-entropy,
    Adam; the model stays in eval mode, so batch-norm statistics and dropout stay as they are); returns
    the new values and leaves the model as it was."""
    module = model.module
    names = tunable_modules(module, tuning.last)
    tuned = {f"{owner}.{name}": value for owner in names for name, value in resolve_module(module, owner).named_parameters(recurse=False)}
    flags = {parameter: parameter.requires_grad for parameter in module.parameters()}
    saved = {name: value.detach().clone() for name, value in tuned.items()}
    device = next(module.parameters()).device
    generator = torch.Generator().manual_seed(tuning.seed)
    optimiser = torch.optim.Adam(tuned.values(), lr=tuning.learning_rate)
    batches = -(-len(views) // tuning.batch_size)
    try:
        for parameter in module.parameters():
            parameter.requires_grad_(False)
        for value in tuned.values():
            value.requires_grad_(True)
        with progress_bar("fine-tune", tuning.epochs * batches, progress) as advance:
            for _ in range(tuning.epochs):
                for batch in torch.randperm(len(views), generator=generator).split(tuning.batch_size):
                    pixels = torch.stack([model.preprocessing.normalise(views[i]) for i in batch.tolist()]).to(device)
                    optimiser.zero_grad()
                    nn.functional.cross_entropy(module(pixels).float(), targets[batch].to(device)).backward()
                    optimiser.step()
                    advance(1)
        return TunedParameters({name: value.detach().clone().cpu() for name, value in tuned.items()})
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                tuned[name].copy_(value)
        for parameter, flag in flags.items():
            parameter.requires_grad_(flag)
