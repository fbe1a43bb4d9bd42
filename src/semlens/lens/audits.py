"""The model's classes and the units they rely on: a unit's relevant classes, audits of a class's units
(with the concept test) and attribution graphs; the part of ``Lens`` that hands class relevance, theta and
probes to ``semlens.analysis`` and ``semlens.relevance``."""

from __future__ import annotations

import math
import shlex
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import torch

from .._util.allocator import freed_memory_kept
from .._util.display import HtmlResult, made_by
from .._util.errors import SemlensError, asked, quoted, warn_caller
from ..analysis.alignment import alignment
from ..data.base import decoded, spread
from ..model.imagenet import readable_class
from .arrays import recorded_placements
from .concepts import remember_pasted
from .labels import names_by_responses, naming_description
from .search import probe_backgrounds
from .units import named_classes

if TYPE_CHECKING:
    from PIL import Image

    from ..analysis.audit import AlignmentRule, Audit
    from ..data import ImageData
    from ..interventions.effects import Artifact, ConceptImages
    from ..model.loading import LoadedModel
    from ..relevance.graph import AttributionGraph
    from .lens import Lens


#: probe images a drawn concept test pastes semlens's drawings into (``_drawn_test``), of ``DRAWN_CANDIDATES`` spread
#: over the probe data less the audited class's
DRAWN_TEST_IMAGES = 48
DRAWN_CANDIDATES = 64
#: the class's own probe images a drawn concept test measures the class's rise of each unit on (``_class_views``)
DRAWN_CLASS_IMAGES = 8


@dataclass(frozen=True)
class RelevantUnit:
    """A unit a class relies on: its mean and max share of its layer's relevance for the class's samples
    (shares sum to 1 over a layer's units per sample) and its label (None where it shows no concept)."""

    unit: str
    layer: str
    mean_share: float
    max_share: float
    label: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RelevantUnits(HtmlResult, list):
    """What ``Lens.relevant_units`` returns: the ``RelevantUnit``s of one class, each layer's highest share first,
    as a list that draws itself in a notebook (a table with the units' concept examples)."""

    def __init__(self, units: list[RelevantUnit], class_name: str) -> None:
        super().__init__(units)
        self.class_name = class_name

    def to_dict(self) -> list[dict[str, Any]]:
        return [unit.to_dict() for unit in self]

    def __repr__(self) -> str:
        """Outside a notebook: the class, then a line per unit (a list's repr was every field of every unit)."""
        lines = [f"RelevantUnits: {len(self)} units class {self.class_name!r} relies on most, by their mean share of their layer's relevance"]
        lines += [f"  {unit.unit}: mean share {unit.mean_share:.3f}, max {unit.max_share:.3f}, label {unit.label or '(no concept)'}" for unit in self]
        return "\n".join(lines)


def relevant_classes(lens: Lens, unit: str, top: int = 5) -> list[tuple[str, int, float, float]]:
    """The classes a unit matters most for, as (name, index, max share, mean share), highest mean share
    first; classes never seen in the class-relevance data are left out, and all of them without it."""
    layer, row = lens.units.index(unit)
    relevance = lens.arrays.class_relevance(layer)
    if relevance is None:
        return []
    mean = relevance["mean_share"][row]
    order = torch.argsort(mean.nan_to_num(float("-inf")), descending=True, stable=True)
    chosen = order[~mean[order].isnan()][:top].tolist()
    names = lens.classes or [str(index) for index in range(mean.numel())]
    return [(names[i], i, float(relevance["max_share"][row, i]), float(mean[i])) for i in chosen]


def relevant_units(lens: Lens, class_name: str | int, top: int = 10, layers: list[str] | None = None) -> RelevantUnits:
    """The units a class relies on most, the ``top`` of each layer (of ``layers``, default all) by mean share
    of the layer's relevance over the class's samples, highest first: the reverse of ``relevant_classes``.
    Shares are within a layer, so each layer is ranked on its own; units with no share on any of its samples are
    left out (a layer may list fewer)."""
    index = lens.units.class_index(class_name)
    found = []
    for layer in lens.units.checked(layers):
        relevance = lens.arrays.class_relevance(layer)
        if relevance is None:
            raise SemlensError(f"no class relevance for layer {layer}; rebuild with class relevance on")
        _seen_class(lens, index, class_name, relevance)
        mean, peak = relevance["mean_share"][:, index], relevance["max_share"][:, index]
        order = torch.argsort(mean.nan_to_num(float("-inf")), descending=True, stable=True)[:top]
        order = order[peak[order].nan_to_num(0) > 0].tolist()  # a unit the class never gives relevance is not among them
        units = lens.units(layer)
        found += [RelevantUnit(f"{layer}/{units[row]}", layer, float(mean[row]), float(peak[row]), lens.labels.label_of(f"{layer}/{units[row]}")) for row in order]
    return made_by(RelevantUnits(found, lens.classes[index] if lens.classes else str(index)), lens)


def sae_error_shares(lens: Lens, class_name: str | int, layers: list[str] | None = None) -> dict[str, float]:
    """Per SAE layer (of the given, default all, layers), the class's mean share of the layer's relevance
    carried by the SAE's error term (what its features do not reconstruct; the features' shares and it sum
    to 1 in absolute value). Layers without an SAE, and Lenses built before it was kept, have none."""
    index = lens.units.class_index(class_name)
    found = {}
    for layer in lens.units.checked(layers):
        relevance = lens.arrays.class_relevance(layer)
        if relevance is not None and "error_mean_share" in relevance:
            found[layer] = float(relevance["error_mean_share"][index])
    return found


def audit(
    lens: Lens,
    class_name: str | int,
    valid: list[str] = (),
    spurious: list[str] = (),
    valid_images: list[str | Path] = (),
    spurious_images: list[str | Path] = (),
    cut: float | None = None,
    layers: list[str] | None = None,
    templates: str | list[str] = "audit",
    rule: AlignmentRule | None = None,
    concept: ConceptImages | None = None,
    test_all: bool = False,
    draw: bool = True,
) -> Audit:
    """Audit one class (``valid`` concepts: by default the class's own name): verdicts for its relevant units (each
    alignment judged against its layer's null by ``rule``; where the Lens kept crop responses, a unit whose best concept by them is one of the audit's
    text concepts takes its verdict from it: ``analysis.audit``) and the class's relevance by verdict. With ``concept`` (images without and with the spurious
    concept), also the concept test of the flagged units and the class's reliance on the concept (needs
    the model; a flagged unit the concept does not raise, or that fires away from where it is pasted, loses
    its flag, and a contested unit, named valid by its crop responses but flagged by its alignment, that fires
    where it is and is raised by it is judged "both": ``AlignmentRule.by_rise``, ``by_location``); ``test_all`` tests every relevant unit, so that units the reliance runs through are found
    where the foundation model does not see the concept in their examples (``Audit.carriers``; one
    more pass over the images per unit). Without ``concept``, a ``spurious`` text naming a concept semlens draws (a
    watermark, a frame, a logo, a ruler, a colour cast: ``interventions.drawn``) is tested on semlens's drawings of it
    pasted into probe images of other classes, where the model and the probe data load (``draw=False``: not;
    ``Audit.reliance["drawn"]`` says what was drawn: ``_drawn_test``)."""
    from ..analysis.audit import AlignmentRule, AuditedLayers, audit_layers

    if not (spurious or spurious_images):
        suspect = asked("spurious=['watermark'] or spurious_images=[...]", "--spurious watermark or --spurious-image FILE")
        relied_on = asked(f"lens.relevant_units({class_name!r})", f"semlens relevant LENS --class {shlex.quote(str(class_name))}")
        raise SemlensError(
            f"an audit of class {class_name!r} tests a concept you suspect it relies on: give one ({suspect}); "
            f"to see first which units it relies on and what they show: {relied_on}"
        )
    chosen = lens.units.checked(layers) if layers else audited_layers(lens)
    missing = [layer for layer in chosen if lens.arrays.class_relevance(layer) is None]
    if missing:  # first: without class relevance a model object has no class names either, and the class is not to blame
        raise SemlensError(f"no class relevance for layer(s) {', '.join(missing)}: {_why_no_class_relevance(lens, missing[0])}")
    index = lens.units.class_index(class_name)
    if not (valid or valid_images):  # as audit_classes does: the class's own name is what its units should show
        if not lens.classes:
            raise SemlensError(f"an audit needs a valid concept (text or image), and this model's classes have no names to take it from: give one ({asked('valid=[...]', '--valid')})")
        valid = [readable_class(lens.classes[index])]
    _seen_class(lens, index, class_name, lens.arrays.class_relevance(chosen[-1]))
    theta = torch.cat([lens.arrays.theta(layer) for layer in chosen])
    tight = None
    if lens.arrays.search_rule != lens.arrays.crop_rules[0]:  # tight boxes: is the spurious concept where each unit looks?
        tight = _alignments(lens, torch.cat([lens.arrays.theta(layer, lens.arrays.search_rule) for layer in chosen]), list(spurious), list(spurious_images), templates)
    rule = rule or AlignmentRule()
    arrays = AuditedLayers(
        units=[f"{layer}/{name}" for layer in chosen for name in lens.units(layer)],
        sizes=[len(lens.units(layer)) for layer in chosen],
        bases=[lens.manifest["layers"][layer]["base_units"] for layer in chosen],
        examples=torch.cat([lens.arrays.valid(layer) for layer in chosen]),
        # a tied unit has its twin's examples and theta: audited by them (the relevance is its own), not part of the null
        audited=torch.cat([~lens.arrays.inactive(layer) for layer in chosen]),
        max_share=torch.cat([lens.arrays.class_relevance(layer)["max_share"][:, index] for layer in chosen]),
        mean_share=torch.cat([lens.arrays.class_relevance(layer)["mean_share"][:, index] for layer in chosen]),
        a_valid=_alignments(lens, theta, list(valid), list(valid_images), templates),
        a_spur=_alignments(lens, theta, list(spurious), list(spurious_images), templates),
        tight=tight,
        labels=names_by_responses(lens, chosen, list(valid) + list(spurious)) if rule.by_label else None,
    )
    name = lens.classes[index] if lens.classes else str(index)
    valid_names, spurious_names = list(valid) + [str(p) for p in valid_images], list(spurious) + [str(p) for p in spurious_images]
    result = audit_layers(name, arrays, valid_names, spurious_names, cut, rule)
    result.null_units = {layer: int(lens.arrays.valid(layer).sum()) for layer in chosen}
    result.class_images = int(lens.arrays.class_relevance(chosen[-1])["count"][index])
    result.named_among = naming_description(lens) if arrays.labels is not None else None
    result.sae_error = sae_error_shares(lens, index, chosen)
    for audited in result.units:
        audited.examples = [example.source for example in lens.examples.concept_examples(audited.unit)[:3]]
    drawn = _drawn_test(lens, index, spurious[0], chosen[-1]) if concept is None and draw and drawn_spurious(spurious, spurious_images) else None
    if drawn is not None:  # a drawing unlike what the model learnt raises none of its units: no verdict falls by it
        concept, result.rule = drawn.concept, replace(result.rule, by_rise=False, by_location=False)
    if concept is not None:
        _test_findings(lens, result, index, concept, test_all, list(spurious), drawn)
    return made_by(result, lens)


def drawn_spurious(spurious: Sequence[str], spurious_images: Sequence) -> bool:
    """Whether an audit given no concept images tests its spurious concept on semlens's drawings (``draw``): one
    spurious text and no image, naming a concept semlens draws (``drawn.named_concept``)."""
    from ..interventions.drawn import named_concept

    return len(spurious) == 1 and not spurious_images and named_concept(spurious[0]) is not None


class DrawnTest(NamedTuple):
    """A concept test of semlens's drawings (``_drawn_test``): its images, what was drawn in words, views of the
    class's own images (its rise of each unit alone), the colour drawn, its control (its colours without its shape, pasted
    into the test's views as the drawing is: ``drawn.control``; none for a colour cast) and that in words, and the
    concept's name."""

    concept: ConceptImages
    said: str
    own: list[Image.Image]
    colour: str
    control: tuple[Artifact, ...]
    control_said: str
    name: str


def _drawn_test(lens: Lens, class_index: int, text: str, layer: str) -> DrawnTest | None:
    """The concept test's images for a ``text`` naming a concept semlens draws (``drawn.named_concept``), what was
    drawn in words, and views of the class's own images: up to ``DRAWN_TEST_IMAGES`` probe images spread over the
    probe data, those labelled (or, unlabelled, predicted) as the class left out, since the class's own images may
    show the concept already (the model learnt it from them) and would read as images without it; pasted with the
    variant (colour) of the drawing that raises the class's probability most (``drawn.strongest_variant``), and the
    same views with its control (its colours without its shape: ``drawn.control``), which a reliance must beat. The
    class's own images (up to ``DRAWN_CLASS_IMAGES`` of its top samples by relevance in ``layer``) measure only
    how much the class raises each unit, against which a detector must be raised by the drawing (``concept_tests``'
    ``own``): a unit of the class's content that a drawing of its colour nudges is no detector of it. ``text`` names
    a drawn concept (``drawn_spurious``). None where the model or the probe data cannot be read (said in a warning:
    the audit is by alignment alone)."""
    from ..data.base import Subset
    from ..interventions.drawn import control, drawn_concept, named_concept, strongest_variant
    from ..interventions.effects import ConceptImages, class_targets, predict

    try:
        model, data = lens.sources.model(), lens.sources.probe_data
    except SemlensError as error:  # a received Lens without its model or data: judged by alignment alone
        warn_caller(f"no concept test: testing {text!r} on the {named_concept(text)[0]}s semlens draws needs the model under study and the probe data: {quoted(error)}")
        return None
    candidates = decoded(data, spread(len(data), DRAWN_CANDIDATES), model.preprocessing.view)
    views = [view for _, view in candidates]
    labelled = class_targets(model, data, [data.label(index) for index, _ in candidates]) if candidates else None
    classes = labelled if labelled is not None else (predict(model, views).argmax(dim=1) if views else torch.empty(0))
    kept = [candidate for candidate, of_class in zip(candidates, classes.tolist()) if of_class != class_index][:DRAWN_TEST_IMAGES]
    if not kept:
        warn_caller(f"no concept test of {text!r}: no probe image of another class than the audited one could be read")
        return None
    size = kept[0][1].size
    concept = drawn_concept(text, size)
    colour, probabilities = strongest_variant(model, [view for _, view in kept], class_index, concept)
    runners_up = sorted((name for name in probabilities if name != colour), key=lambda name: -probabilities[name])[:2]
    why = "" if not runners_up else f", of {len(probabilities)} colours the one that raises the class's probability most; next {', '.join(runners_up)}"
    said = f"{concept.name}s semlens drew ({colour}{why}) pasted into {len(kept)} probe images of other classes"
    # the probe images themselves, which the test views as the model does (as the views above were made)
    concept_images = ConceptImages(Subset(data, [index for index, _ in kept]), artifact=concept.variants[colour])
    drawn_control, control_said = control(concept.name, concept.variants[colour], size) or ((), "")
    own = _class_views(lens, model, data, class_index, layer)
    return DrawnTest(concept_images, said, own, colour, drawn_control, control_said, concept.name)


def _control_said(reliance: dict, control: str, name: str) -> str:
    """What a drawn test's control (``control``, in words: ``drawn.control``) found: whether it raises the class as
    much as the drawing does (``concept_tests``' ``control``)."""
    from ..interventions.effects import RELIANCE_ODDS

    found = reliance.get("log_odds_control")
    if found is None:
        return ""
    said = f"; its control ({control})"
    if reliance["log_odds"] < math.log(RELIANCE_ODDS):
        return f"{said}: log-odds {found:+.2f}"
    if reliance["relies"]:
        return f"{said} raises the class less: log-odds {found:+.2f}"
    return f"{said} raises the class as much or more (log-odds {found:+.2f}): it answers to the colour, not to a {name}"


def _class_views(lens: Lens, model: LoadedModel, data: ImageData, class_index: int, layer: str) -> list[Image.Image]:
    """The model's views of up to ``DRAWN_CLASS_IMAGES`` of the class's own probe images: the samples the class's
    relevance in ``layer`` ranks highest (class relevance keeps them per unit), spread over them."""
    relevance = lens.arrays.class_relevance(layer)
    row = relevance["seen_classes"].tolist().index(class_index)
    ids = sorted({int(i) for i in relevance["top_samples"][row].flatten().tolist() if 0 <= int(i) < len(data)})
    return [view for _, view in decoded(data, [ids[i] for i in spread(len(ids), DRAWN_CLASS_IMAGES)], model.preprocessing.view)]


def _why_no_class_relevance(lens: Lens, layer: str) -> str:
    """Why a layer has no class relevance, and what would give it some: a rebuild with it on only where it was off."""
    left_out = lens.manifest.get("relevance", {}).get("left_out", {}).get(layer)
    if left_out:
        return f"{left_out}; audit the other layers ({asked('layers=[...]', '--layer')})"
    skipped = lens.manifest["stages"].get("relevance", {}).get("skipped")
    if skipped:
        return f"{skipped}; an audit needs LRP relevance (docs/lrp.md says what it supports)"
    if not lens.manifest.get("identity", {}).get("relevance", {}).get("enabled", True):
        return f"the Lens was built with class relevance off; build it again with it on ({asked('class_relevance=True, the default', 'drop --no-class-relevance')})"
    return "class relevance was not computed (an interrupted build?); run the same build again to finish it"


def audited_layers(lens: Lens) -> list[str]:
    """The layers an audit reads by default: the Lens's layers but its logits (``logit_layers``), whose relevance
    for a class lies wholly on the class's own unit: with them, that one unit would carry most of every class's
    relevance, and the shares of the concepts below it would shrink (the world's watermark 0.30 -> 0.17)."""
    logits = logit_layers(lens)
    return [layer for layer in lens.layers if layer not in logits] or list(lens.layers)


def logit_layers(lens: Lens) -> list[str]:
    """The Lens's layers whose units are the model's logits (``reads_logits``)."""
    found = []
    for layer in lens.layers:
        relevance = lens.arrays.class_relevance(layer)
        if relevance is not None and reads_logits(relevance["mean_share"], relevance["max_share"], relevance["seen_classes"]):
            found.append(layer)
    return found


def reads_logits(mean_share: torch.Tensor, max_share: torch.Tensor, seen: torch.Tensor) -> bool:
    """Whether a layer's class relevance (``[U, C]`` shares) is that of the model's logits: LRP starts from the class's
    logit alone, so every class seen gives relevance to one unit (two in a signed layer: its positive and negative
    parts), of either sign, and no unit to two classes; a layer of features shares its units among the classes."""
    if not len(seen):
        return False
    given = ((mean_share[:, seen].nan_to_num(0) != 0) | (max_share[:, seen].nan_to_num(0) != 0))
    per_class = given.sum(dim=0)
    return bool(((per_class >= 1) & (per_class <= 2)).all() and (given.sum(dim=1) <= 1).all())


def _alignments(lens: Lens, theta: torch.Tensor, concepts: list[str], images: list[str | Path], templates: str | list[str]) -> torch.Tensor:
    """The alignment ``[U, P]`` of every unit (rows of ``theta``) with each probe: each text concept (less the
    empty templates, Eq. 4), then each image (the cosine; what it shares with every unit is taken out, as for
    texts, by the audit's null over the units of each layer)."""
    results = []
    if concepts:
        results.append(alignment(theta, lens.embedding.probes.concepts(concepts, templates), lens.embedding.probes.null(templates)))
    if images:
        results.append(alignment(theta, torch.stack([lens.embedding.probes.images([image], lambda: probe_backgrounds(lens)) for image in images]), None))
    return torch.cat(results, dim=1)


def _test_findings(
    lens: Lens, result: Audit, class_index: int, concept: ConceptImages, test_all: bool, names: list[str], drawn: DrawnTest | None = None
) -> None:  # fmt: skip
    """Run the concept test on the units of ``result`` (in place; all with ``test_all``, else ``Audit.to_test``):
    the class's reliance on the concept and, per unit, whether the concept raises it (also against how much
    the class's own images do: see ``concept_tests``), whether it fires where a pasted concept is (against the
    best of its layer's examined units, tested or not), and zeroing it costs the class more with the concept than without; then a flagged unit the concept does not
    raise or firing away from the pasted concept loses its flag and a contested one firing there and raised by
    it is "both"
    (``Audit.revise_by_test``). Needs the model (loaded under the Lens's trust model). A pasted artefact's placements
    are kept under the audit's spurious text where it has one (``names``; several may name other concepts than the
    one pasted), with the units the test found detect it: a search for it then names those first and ranks the
    others as this test does (``semlens.lens.concepts``); semlens's drawings (``drawn``: said in ``result.reliance``,
    with the class's own images that measure its rise alone) only where the test found units detect them."""
    from ..interventions.effects import concept_tests, pasted_in_turn

    model = lens.sources.model()
    without, with_concept, classes = concept.views_and_classes(model)
    region = concept.region(with_concept)
    units = result.units if test_all else result.to_test(located=region is not None)
    layers = sorted({unit.unit.rpartition("/")[0] for unit in result.units})
    specs = lens.sources.layer_specs(layers)
    saes = {layer: spec.sae for layer, spec in specs.items() if spec.sae}
    shifts, localities = recorded_placements(lens.arrays, layers)  # else measured now
    tested = [lens.units.to_test(unit.unit, specs) for unit in units]
    tested_names = {unit.name for unit in tested}
    # the examined units the test does not switch off: measured all the same (detectors among them), and where the
    # concept raises them they set the location bar
    untested = [unit for unit in result.units if unit.unit not in tested_names]
    peers = [lens.units.to_test(unit.unit, specs) for unit in untested]
    with freed_memory_kept():  # forward passes over the test images, each unit switched off in turn
        result.reliance, tests = concept_tests(
            model, without, with_concept, class_index, tested, saes, concept.artifact is not None, classes, region, peers,
            result.rule.locate_share, result.rule.locate_enough, shifts, localities, drawn.own if drawn else (),
            pasted_in_turn(drawn.control, without) if drawn and drawn.control else (),
        )
    shown = concept.shown_classes(model)
    if shown is not None:  # the class's own images among those that show the concept: their class raises it too
        result.reliance["class_images_with_concept"] = int((shown == class_index).sum())
    for unit, test in zip([*units, *untested], tests):
        unit.test = test
    if drawn:
        result.reliance["drawn"] = drawn.said + _control_said(result.reliance, drawn.control_said, drawn.name)
    result.revise_by_test()
    if len(names) == 1 and (result.detectors or not drawn):
        remember_pasted(lens, names[0], concept.placements, without[0].size, result.detectors, drawn.colour if drawn else None)


@freed_memory_kept()  # forward passes over the data, twice
def pruning_effect(
    lens: Lens, units: list[str], data: ImageData, class_name: str | int | None = None, artifact: Artifact | None = None
) -> dict:
    """Accuracy (and the class's probability) on ``data``, clean and with ``artifact``, before and after
    switching ``units`` off: channels zeroed, or for SAE layers the features' decoded shares taken out of
    the layer's output (needs the model and, for SAE layers, a trusted Lens)."""
    from ..interventions.effects import pruning_effect as measure_pruning

    channels = lens.units.channels(units)
    index = None if class_name is None else lens.units.class_index(class_name)
    return measure_pruning(lens.sources.model(), data, channels, index, artifact, lens.sources.sae_files(list(channels)), lens.units.channels_last(list(channels)))


def audit_classes(
    lens: Lens, spurious: list[str], cut: float | None = None, spurious_images: list[str | Path] = (), rule: AlignmentRule | None = None
) -> list[Audit]:
    """Audit every class seen in the class-relevance data, each with its own name as the valid concept, by alignment
    (no concept test: one per class would take a pass over images per class); returns the audits ranked by
    spurious-or-both share (highest first)."""
    if not lens.classes:
        raise SemlensError("auditing all classes needs class names (this model has none); audit one class with --valid")
    seen = lens.arrays.class_relevance(lens.layers[-1])
    if seen is None:
        raise SemlensError("no class relevance in this Lens; rebuild with class relevance on")
    audits = [
        lens.audit(int(index), [readable_class(lens.classes[int(index)])], spurious, [], list(spurious_images), cut, None, "audit", rule, draw=False)
        for index in seen["seen_classes"].tolist()
    ]
    return sorted(audits, key=lambda result: -result.shares["spurious_or_both"])


@freed_memory_kept()  # conditional relevance passes, one per upper group
def attribution_graph(
    lens: Lens, class_name: str | int, layers: list[str] | None = None, cut: float | None = None, samples: int = 32
) -> AttributionGraph:
    """The concepts behind a class between two or more layers (lowest first): relevant units grouped by
    label (the stored labels users see, "no concept" where a unit shows none), edges weighted by CRP relevance conditioned on the
    upper group. Computed on the class's samples with the highest relevance (from class relevance);
    needs labels, the model and the probe data."""
    from ..relevance.graph import GRAPH_CUT, build_graph, relevant_samples
    from ..relevance.lrp import RelevanceModel

    chosen = lens.units.checked(layers)
    if len(chosen) < 2:
        if len(lens.layers) < 2:
            raise SemlensError(f"an attribution graph traces relevance between layers, and this Lens has one ({lens.layers[0]}): build a Lens with two or more")
        raise SemlensError(f"an attribution graph needs at least two layers: give two or more of {', '.join(lens.layers)}, or none for all of them")
    if any(lens.manifest["layers"][layer]["unit_names"] == "signed" for layer in chosen):
        raise SemlensError("attribution graphs need unsigned layers (channels or SAE features)")
    relevance = lens.arrays.class_relevance(chosen[-1])
    if relevance is None:  # first: without class relevance a model object has no class names either
        raise SemlensError(f"no class relevance for layer {chosen[-1]}: {_why_no_class_relevance(lens, chosen[-1])}")
    index = lens.units.class_index(class_name)
    seen = _seen_class(lens, index, class_name, relevance)
    weights = relevance["mean_share"][:, index].masked_fill(lens.arrays.inactive(chosen[-1]), 0.0)
    row = seen.index(index)
    ids = relevant_samples(relevance["top_samples"][row], relevance["top_shares"][row], weights, samples)
    model = lens.sources.model()
    inputs = torch.stack([model.preprocessing(lens.sources.probe_data.load(i)) for i in ids])
    lrp = RelevanceModel(model.module, inputs[:2], rule=lens.units.lrp_rule)
    if not lrp.check().supported:
        raise SemlensError(f"LRP does not support this model: {lrp.check().reason}")
    labels = {layer: lens.labels.shown(layer) for layer in chosen}  # the default vocabulary's where none are stored, as every face shows
    if lens.labels.vocabulary is None:
        lens.embedding.require_text("an attribution graph (it groups units by their labels)")
        raise SemlensError(f"an attribution graph groups units by label, and this Lens shows none: label it first ({asked('lens.label()', 'semlens label LENS')})")
    units = {layer: [f"{layer}/{name}" for name in lens.units(layer)] for layer in chosen}
    title = lens.classes[index] if lens.classes else str(index)
    valid = {layer: ~lens.arrays.inactive(layer) for layer in chosen}  # a tied unit shows its crops' label
    saes: dict = lens.sources.sae_files(chosen)  # paths, loaded on first use
    return made_by(build_graph(lrp, inputs, index, title, chosen, units, labels, GRAPH_CUT if cut is None else cut, valid, saes, lens.units.channels_last(chosen)), lens)


def _seen_class(lens: Lens, index: int, class_name: str | int, relevance: dict) -> list[int]:
    """The classes the class-relevance data holds samples of, once ``index`` is checked to be one of them:
    a class without any has no relevance to audit or trace (all its shares would read 0)."""
    seen = relevance["seen_classes"].tolist()
    if index not in seen:
        raise SemlensError(
            f"class {class_name} has no samples in the class-relevance data (no probe image is labelled or predicted "
            f"{class_name}): choose one of the {len(seen)} classes it holds ({named_classes(lens.classes, seen)}), or rebuild with relevance "
            "data that shows this one"
        )
    return seen
