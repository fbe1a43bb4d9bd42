"""One prediction explained with the Lens's concepts: the part of ``Lens`` that runs the model on one image
(``semlens.relevance.explain``), ranks its units (``semlens.analysis.explain``) and adds their labels and
concept examples."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .._util.allocator import freed_memory_kept
from .._util.display import made_by
from .._util.errors import SemlensError, asked
from ..data.sequence import image_object
from .remembered import per_lens

if TYPE_CHECKING:
    from ..analysis.explain import ExplainedUnit, Explanation, LayerExplanation
    from ..model.loading import LoadedModel
    from ..model.sae import SparseAutoencoder
    from ..model.units import LayerSpec
    from ..relevance.explain import ImageRelevance
    from ..relevance.lrp import RelevanceModel
    from .lens import Lens

EXPLAIN_TOP = 6  # units listed per layer
EXAMPLES = 4  # concept examples per listed unit


@dataclass
class Explainer:
    """The model under study (loaded once, under the trust model), prepared for LRP on first use, and the lock
    that keeps two threads (the explorer's requests) from attributing with it at the same time."""

    model: LoadedModel
    rule: str = "zplus"  # the convolutions' LRP rule (the Lens's)
    lock: threading.Lock = field(default_factory=threading.Lock)
    lrp: RelevanceModel | None = None
    saes: dict[str, SparseAutoencoder | str] = field(default_factory=dict)  # SAE layers' files, loaded on first use

    def prepared(self, inputs: torch.Tensor) -> RelevanceModel:
        """The model prepared for LRP; its support is checked on the first image it explains (zeros explain
        nothing), and kept once it passes."""
        if self.lrp is None:
            from ..relevance.lrp import RelevanceModel

            lrp = RelevanceModel(self.model.module, inputs, rule=self.rule)
            report = lrp.check()
            if not report.supported:
                raise SemlensError(f"explaining a prediction needs LRP, which does not support this model: {report.reason}")
            self.lrp = lrp
        return self.lrp


@freed_memory_kept()  # relevance passes that allocate and free large blocks
def explain(
    lens: Lens,
    image: str | Path | Image.Image | int,
    class_name: str | int | None = None,
    layers: list[str] | None = None,
    top: int = EXPLAIN_TOP,
) -> Explanation:
    """Explain the model's prediction on ``image`` (a file, a PIL image, or a probe sample's index): its most
    probable classes and, for the predicted class (or ``class_name``), per layer (default: every layer; SAE
    layers only in a trusted Lens, whose SAE files it reads) the ``top`` units with the highest share of the
    layer's relevance, grouped by label, and apart the ``top`` units with the most negative share (they spoke
    against the class), each with its conditional heatmap (CRP) and concept examples; for SAE layers also
    the share of the SAE's error term. Needs the model (loaded under the Lens's trust model) and LRP support."""
    from ..analysis.explain import Explanation, top_classes
    from ..model.preprocess import Preprocessing
    from ..relevance.explain import image_relevance

    if top < 1:
        raise SemlensError(f"top must be at least 1 (got {top})")
    chosen = _explainable_layers(lens, layers)
    picture, described = _explained_image(lens, image)
    target = None if class_name is None else lens.units.class_index(class_name)
    preprocessing = Preprocessing(**lens.manifest["identity"]["preprocessing"])
    view = preprocessing.view(picture)
    inputs = preprocessing.normalise(view)[None]
    explainer, specs = _explainer(lens), list(lens.sources.layer_specs(chosen).values())  # SAE files checked (trust, hashes) on every call
    for spec in specs:
        if spec.sae:
            explainer.saes.setdefault(spec.name, spec.sae)  # loaded in place on first use, kept for the next images
    with explainer.lock:  # LRP's rules are hooks on the one model: one explanation at a time
        lens.sources.checked(explainer.model)  # at every explanation: a notebook may train the model it holds on
        lrp = explainer.prepared(inputs)
        result = image_relevance(lrp, inputs, target, specs, explainer.saes)
        explained = [_explain_layer(lens, lrp, inputs, result, spec, top, explainer.saes) for spec in specs]
    names = lens.classes or explainer.model.classes
    title = names[result.target] if names else str(result.target)
    explanation = Explanation(described, title, result.target, target is None, top_classes(result.probabilities, names), explained, view)
    return made_by(explanation, lens)


@per_lens
def _explainer(lens: Lens) -> Explainer:
    return Explainer(lens.sources.model(), lens.units.lrp_rule)


def _explain_layer(
    lens: Lens, lrp: RelevanceModel, inputs: torch.Tensor, result: ImageRelevance, spec: LayerSpec, top: int, saes: dict
) -> LayerExplanation:
    """One layer's top units for and against the class on the image, with heatmaps, labels and examples,
    those for it grouped by label; for an SAE layer also its error term's share."""
    from ..analysis.explain import (
        LayerExplanation,
        channel_units,
        error_share,
        group_by_label,
        rank_channels,
        relevance_shares,
    )
    from ..relevance.explain import conditional_heatmaps

    layer, relevance = spec.name, result.relevance[spec.name]
    error = torch.tensor(result.errors[layer]) if layer in result.errors else None
    shares = relevance_shares(relevance, error)
    rows = channel_units(relevance, result.negative[layer], lens.manifest["layers"][layer]["unit_names"] == "signed")
    valid = ~lens.arrays.inactive(layer)[rows]  # a tied unit is listed with the crops and label it shares
    channels, against = rank_channels(shares, valid, top).tolist(), rank_channels(shares, valid, top, against=True).tolist()
    heatmaps = conditional_heatmaps(lrp, inputs, result.target, layer, channels + against, spec.pick, saes, spec.channels_last)
    units = [
        _explained_unit(lens, layer, int(rows[channel]), float(shares[channel]), result, heatmap)
        for channel, heatmap in zip(channels + against, heatmaps)
    ]
    total = float(relevance.sum()) + (0.0 if error is None else float(error))
    sae_error = None if error is None else float(error_share(relevance, error))
    groups, left_out = group_by_label(units[: len(channels)]), float(shares[~valid].sum())
    return LayerExplanation(layer, groups, total, left_out, units[len(channels) :], sae_error)


def _explained_unit(lens: Lens, layer: str, row: int, share: float, result: ImageRelevance, heatmap: torch.Tensor) -> ExplainedUnit:
    """A listed unit: its share, its score on the image, label, first concept examples and heatmap."""
    from ..analysis.explain import ExplainedUnit

    unit = f"{layer}/{lens.units(layer)[row]}"
    score = float(result.scores[layer][row])
    return ExplainedUnit(unit, share, score, lens.labels.label_of(unit), lens.examples.concept_examples(unit)[:EXAMPLES], heatmap)


def _explainable_layers(lens: Lens, layers: list[str] | None) -> list[str]:
    """The given layers (checked), else all of them; by default SAE layers only where the Lens is trusted
    (explaining with one reads the SAE file the Lens names: ``Lens.sources.sae_files``)."""
    if layers:
        return lens.units.checked(layers)
    chosen = [layer for layer in lens.layers if lens.trusted or not lens.manifest["layers"][layer]["spec"].get("sae")]
    if not chosen:
        raise SemlensError(
            "every layer of this Lens is read through a sparse autoencoder, whose files an untrusted Lens never "
            f"reads: pass {asked('trust=True', '--trust')}"
        )
    return chosen


def _explained_image(lens: Lens, image: str | Path | Image.Image | int) -> tuple[Image.Image, str]:
    """The image to explain and how to name it, refused as a build skips it where too small to show anything."""
    from ..data.base import too_small

    decoded, name = _image_to_explain(lens, image)
    small = too_small(decoded, name)
    if small:
        raise SemlensError(f"{small}; a build skips such an image")
    return decoded, name


def _image_to_explain(lens: Lens, image: str | Path | Image.Image | int) -> tuple[Image.Image, str]:
    """The image to explain and how to name it: a PIL image, an array or tensor, a file, or a probe sample by index."""
    if isinstance(image, Image.Image):
        return image.convert("RGB"), "image"
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return image_object(image, "the image to explain"), "image"
    if isinstance(image, int) or (isinstance(image, str) and image.isdecimal() and not Path(image).exists()):
        index, data = int(image), lens.sources.probe_data
        if not 0 <= index < len(data):
            raise SemlensError(f"probe sample {index} does not exist: the probe data has samples 0..{len(data) - 1}")
        where = data.describe(index)
        return data.load(index), where if where == f"sample {index}" else f"sample {index} ({where})"
    path = Path(image)
    if not path.is_file():
        raise SemlensError(f"no image file {path}; give an image file, a PIL image or a probe sample's index")
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB"), str(path)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        raise SemlensError(f"cannot read image {path}: {error}") from error
