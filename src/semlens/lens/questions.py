"""The questions a Lens answers beyond search and labels: each gathers the Lens's arrays and probes and
hands them to a pure function in ``semlens.analysis`` or ``semlens.relevance`` (``Lens`` delegates here)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .._util.errors import SemlensError
from ..analysis.alignment import alignment
from ..analysis.label import label_units
from ..analysis.vocabulary import Vocabulary

if TYPE_CHECKING:
    from ..analysis.audit import AlignmentRule, Audit
    from ..analysis.compare import Comparison
    from ..analysis.interventions import ConceptImages
    from ..analysis.overview import OverviewMap
    from ..relevance.graph import AttributionGraph
    from .lens import Lens


def overview(lens: Lens, layers: list[str] | None, clusters: int | None, seed: int) -> OverviewMap:
    from ..analysis.overview import build_overview

    vocabulary = lens.vocabulary_or(None)
    concepts = lens.probes.concepts(vocabulary.concepts, "label")
    categories = vocabulary.category_names()
    members = torch.tensor([categories.index(category) for category in vocabulary.categories])
    category_probes = torch.stack([concepts[members == index].mean(dim=0) for index in range(len(categories))])
    units, theta = lens.all_units(layers)
    null = lens.probes.null("label")
    return build_overview(units, theta, concepts, list(vocabulary.concepts), category_probes, categories, null, clusters, seed)


def concept_labels(lens: Lens, vocabulary: Vocabulary) -> set[str]:
    """The labels the Lens's units get from ``vocabulary`` (not stored)."""
    concepts = lens.probes.concepts(vocabulary.concepts, "label")
    found = set()
    for layer in lens.layers:
        labels = label_units(lens.theta(layer), concepts, lens.probes.null("label"), valid=lens.valid(layer))
        found |= {vocabulary.concepts[index] for index in labels.concepts[labels.labelled, 0].tolist()}
    return found


def compare(lens: Lens, other: Lens, vocabulary: Vocabulary | str | Path | None) -> Comparison:
    from ..analysis.compare import Comparison, best_matches, concept_sets, overlap_matrices

    if lens.foundation_id != other.foundation_id:
        raise SemlensError(
            f"cannot compare Lenses embedded by different foundation models ({lens.foundation_id} vs "
            f"{other.foundation_id}); rebuild one of them with the other's foundation model"
        )
    a_to_b, b_to_a = overlap_matrices(
        {layer: lens.theta(layer)[lens.valid(layer)] for layer in lens.layers},
        {layer: other.theta(layer)[other.valid(layer)] for layer in other.layers},
    )
    units_a, theta_a = lens.all_units()
    units_b, theta_b = other.all_units()
    vocab = lens.vocabulary_or(vocabulary)
    shared, only_a, only_b = concept_sets(concept_labels(lens, vocab), concept_labels(other, vocab))
    return Comparison(lens.layers, other.layers, a_to_b, b_to_a, best_matches(units_a, theta_a, units_b, theta_b), shared, only_a, only_b)


def measures(lens: Lens, layer: str) -> dict[str, torch.Tensor]:
    from ..analysis.measures import clarity, polysemanticity, redundancy

    left_out = ~lens.valid(layer)
    examples = lens.example_embeddings(layer).masked_fill(left_out[:, None, None], float("nan"))
    theta = lens.theta(layer).masked_fill(left_out[:, None], float("nan"))  # takes part in no unit's redundancy
    return {"clarity": clarity(examples), "polysemanticity": polysemanticity(examples), "redundancy": redundancy(theta)}


def relevant_classes(lens: Lens, unit: str, top: int) -> list[tuple[str, int, float, float]]:
    layer, row = lens.unit_index(unit)
    relevance = lens.class_relevance(layer)
    if relevance is None:
        return []
    mean = relevance["mean_share"][row]
    order = torch.argsort(mean.nan_to_num(float("-inf")), descending=True, stable=True)
    chosen = order[~mean[order].isnan()][:top].tolist()
    names = lens.classes or [str(index) for index in range(mean.numel())]
    return [(names[i], i, float(relevance["max_share"][row, i]), float(mean[i])) for i in chosen]


def _alignments(lens: Lens, theta: torch.Tensor, concepts: list[str], images: list[str | Path], templates: str | list[str]) -> torch.Tensor:
    """The alignment ``[U, P]`` of every unit (rows of ``theta``) with each probe: each text concept (less the
    empty templates, Eq. 4), then each image (the cosine; what it shares with every unit is taken out, as for
    texts, by the audit's null over the units of each layer)."""
    results = []
    if concepts:
        results.append(alignment(theta, lens.probes.concepts(concepts, templates), lens.probes.null(templates)))
    if images:
        results.append(alignment(theta, torch.stack([lens.probes.images([image]) for image in images]), None))
    return torch.cat(results, dim=1)


def audit(
    lens: Lens,
    class_name: str | int,
    valid: list[str],
    spurious: list[str],
    valid_images: list[str | Path],
    spurious_images: list[str | Path],
    cut: float | None,
    layers: list[str] | None,
    templates: str | list[str],
    rule: AlignmentRule | None = None,
    concept: ConceptImages | None = None,
) -> Audit:
    from ..analysis.audit import AUDIT_CUT, AlignmentRule, audit_units, null_z

    if not (valid or valid_images) or not (spurious or spurious_images):
        raise SemlensError("an audit needs at least one valid and one spurious concept (text or image)")
    index = lens.class_index(class_name)
    chosen = lens.checked_layers(layers)
    missing = [layer for layer in chosen if lens.class_relevance(layer) is None]
    if missing:
        reason = lens.manifest["stages"].get("relevance", {}).get("skipped", "class relevance was not computed")
        raise SemlensError(f"no class relevance for layer(s) {', '.join(missing)} ({reason}); rebuild with class relevance on")
    units = [f"{layer}/{name}" for layer in chosen for name in lens.units(layer)]
    theta = torch.cat([lens.theta(layer) for layer in chosen])
    examples = torch.cat([lens.valid(layer) for layer in chosen])
    sizes = [len(lens.units(layer)) for layer in chosen]
    groups = torch.repeat_interleave(torch.arange(len(chosen)), torch.tensor(sizes))
    bases = [lens.manifest["layers"][layer]["base_units"] for layer in chosen]
    offsets = torch.tensor([0] + sizes[:-1]).cumsum(0)
    channel = torch.cat([offset + torch.arange(size) % base for offset, size, base in zip(offsets.tolist(), sizes, bases)])
    a_valid = _alignments(lens, theta, list(valid), list(valid_images), templates)
    a_spur = _alignments(lens, theta, list(spurious), list(spurious_images), templates)
    z_valid, z_spur = null_z(a_valid, groups, examples).amax(dim=1), null_z(a_spur, groups, examples).amax(dim=1)
    max_share = torch.cat([lens.class_relevance(layer)["max_share"][:, index] for layer in chosen])
    mean_share = torch.cat([lens.class_relevance(layer)["mean_share"][:, index] for layer in chosen])
    name = lens.classes[index] if lens.classes else str(index)
    result = audit_units(
        name, units, max_share, mean_share, a_valid.amax(dim=1), a_spur.amax(dim=1), z_valid, z_spur,
        list(valid) + [str(p) for p in valid_images], list(spurious) + [str(p) for p in spurious_images],
        AUDIT_CUT if cut is None else cut, rule or AlignmentRule(), channel, examples,
    )  # fmt: skip
    result.null_units = {layer: int(lens.valid(layer).sum()) for layer in chosen}
    for audited in result.units:
        audited.examples = [example.source for example in lens.concept_examples(audited.unit)[:3]]
    if concept is not None:
        test_findings(lens, result, index, concept)
    return result


def test_findings(lens: Lens, result: Audit, class_index: int, concept: ConceptImages) -> None:
    """Run the concept test on ``result``'s flagged units (in place): the class's reliance on the concept
    and, per flagged unit, whether the concept raises it and zeroing it costs the class more with the
    concept than without. Needs the model (loaded under the Lens's trust model)."""
    from ..analysis.interventions import UnitToTest, concept_tests
    from ..model.units import LayerSpec

    model = lens.model()
    without, with_concept = concept.views(model)
    flagged = result.flagged
    layers = sorted({unit.unit.rpartition("/")[0] for unit in flagged})
    saes = lens.sae_files(layers)
    tested = []
    for unit in flagged:
        layer, row = lens.unit_index(unit.unit)
        spec = LayerSpec(**{**lens.manifest["layers"][layer]["spec"], "sae": saes.get(layer)})
        tested.append(UnitToTest(unit.unit, spec, row, row % lens.manifest["layers"][layer]["base_units"]))
    result.reliance, tests = concept_tests(model, without, with_concept, class_index, tested, saes, concept.artifact is not None)
    for unit, test in zip(flagged, tests):
        unit.test = test


def audit_classes(
    lens: Lens, spurious: list[str], cut: float | None, spurious_images: list[str | Path], rule: AlignmentRule | None = None
) -> list[Audit]:
    if not lens.classes:
        raise SemlensError("auditing all classes needs class names (this model has none); audit one class with --valid")
    seen = lens.class_relevance(lens.layers[-1])
    if seen is None:
        raise SemlensError("no class relevance in this Lens; rebuild with class relevance on")
    audits = [
        audit(lens, int(index), [lens.classes[int(index)]], spurious, [], spurious_images, cut, None, "audit", rule)
        for index in seen["seen_classes"].tolist()
    ]
    return sorted(audits, key=lambda result: -result.shares["spurious_or_both"])


def attribution_graph(lens: Lens, class_name: str | int, layers: list[str] | None, cut: float | None, samples: int) -> AttributionGraph:
    from ..relevance.graph import GRAPH_CUT, build_graph, relevant_samples
    from ..relevance.lrp import RelevanceModel

    chosen = lens.checked_layers(layers)
    if len(chosen) < 2:
        raise SemlensError("an attribution graph needs at least two layers")
    if any(lens.manifest["layers"][layer]["unit_names"] == "signed" or lens.manifest["layers"][layer]["spec"].get("sae") for layer in chosen):
        raise SemlensError("attribution graphs need plain layers (not signed, not SAE)")
    index = lens.class_index(class_name)
    relevance = lens.class_relevance(chosen[-1])
    if relevance is None:
        raise SemlensError("no class relevance in this Lens; rebuild with class relevance on")
    seen = relevance["seen_classes"].tolist()
    if index not in seen:
        raise SemlensError(f"class {class_name} has no samples in the class-relevance data")
    weights = relevance["mean_share"][:, index].masked_fill(~lens.valid(chosen[-1]), 0.0)
    row = seen.index(index)
    ids = relevant_samples(relevance["top_samples"][row], relevance["top_shares"][row], weights, samples)
    model = lens.model()
    inputs = torch.stack([model.preprocessing(lens.probe_data.load(i)) for i in ids])
    lrp = RelevanceModel(model.module, inputs[:2])
    if not lrp.check().supported:
        raise SemlensError(f"LRP does not support this model: {lrp.check().reason}")
    if lens.vocabulary is None:
        raise SemlensError("an attribution graph groups units by label: run `semlens label LENS` (or Lens.label()) first")
    units = {layer: [f"{layer}/{name}" for name in lens.units(layer)] for layer in chosen}
    labels = {layer: lens.label_store.graph_labels(layer) for layer in chosen}
    title = lens.classes[index] if lens.classes else str(index)
    valid = {layer: lens.valid(layer) for layer in chosen}
    return build_graph(lrp, inputs, index, title, chosen, units, labels, GRAPH_CUT if cut is None else cut, valid)


def similarity(lens: Lens, unit: str, other_unit: str, other: Lens) -> float:
    if other.foundation_id != lens.foundation_id:
        raise SemlensError("units of Lenses embedded by different foundation models cannot be compared")
    layer, row = lens.unit_index(unit)
    other_layer, other_row = other.unit_index(other_unit)
    return float(alignment(lens.theta(layer)[row : row + 1], other.theta(other_layer)[other_row : other_row + 1], None))


def class_index(classes: list[str] | None, name: str | int) -> int:
    if isinstance(name, int) or str(name).isdecimal():
        index = int(name)
        if classes and not 0 <= index < len(classes):
            raise SemlensError(f"class index {index} is out of range: this model has {len(classes)} classes")
        return index
    names = [candidate.lower() for candidate in classes or []]
    if str(name).lower() in names:
        return names.index(str(name).lower())
    hint = f"e.g. {', '.join((classes or [])[:5])}" if classes else "this model has no class names"
    raise SemlensError(f"unknown class {name!r}; give a class index or a class name ({hint})")


def channels(lens: Lens, units: list[str]) -> dict[str, list[int]]:
    grouped: dict[str, list[int]] = {}
    for unit in units:
        layer, row = lens.unit_index(unit)
        grouped.setdefault(layer, []).append(row % lens.manifest["layers"][layer]["base_units"])
    return {layer: sorted(set(members)) for layer, members in grouped.items()}
