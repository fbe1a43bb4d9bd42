"""A Lens's labels: made by ``Lens.label``, stored beside the Lens (or in the user cache when the Lens is
read-only), read by search hits, maps, audits, graphs, the explorer and the report."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .._util.display import HtmlResult
from .._util.errors import SemlensError, asked, quoted, warn_caller
from ..analysis.alignment import alignment
from ..analysis.label import (
    MIN_CONFIDENCE,
    MIN_NULL_UNITS,
    Labels,
    dissect,
    label_confidence,
    rank_concepts,
    unit_categories,
)
from ..analysis.labelling_methods import (
    ALIGNMENT_METHODS,
    DEFAULT_METHOD,
    FALLBACK_METHOD,
    alignment_method_scores,
    check_method,
    method_scores,
    response_scores,
)
from ..analysis.responses import concept_directions
from ..analysis.vocabulary import Vocabulary, load_vocabulary
from ..store.files import layer_file
from .label_prior import prior_sets
from .remembered import per_lens

if TYPE_CHECKING:
    from ..store.files import LensStore
    from .lens import Lens

StoredLabels = tuple[Vocabulary, dict[str, Labels]]

LABELS = "labels.json"


class Labelling(HtmlResult, Mapping[str, Labels]):
    """What ``Lens.label`` returns: each layer's ``Labels``, readable with the units and concepts they name."""

    def __init__(self, layers: dict[str, Labels], units: dict[str, list[str]], vocabulary: Vocabulary) -> None:
        self._layers, self.units, self.vocabulary = layers, units, vocabulary

    def __getitem__(self, layer: str) -> Labels:
        return self._layers[layer]

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def __repr__(self) -> str:
        """One line outside a notebook: the vocabulary and how many valid units show a concept."""
        total = self.coverage()["all"]
        return (f"Labelling(vocabulary {self.vocabulary.name!r} of {len(self.vocabulary.concepts)} concepts, layers {', '.join(self._layers)}: "
                f"{total['labelled']} of {total['valid_units']} valid units show a concept)")  # fmt: skip

    def most_common(self, layer: str, top: int = 6) -> list[tuple[str, int]]:
        """The layer's most frequent labels with their unit counts."""
        labels = self._layers[layer]
        counts: dict[str, int] = {}
        for concept in labels.concepts[labels.labelled, 0].tolist():
            name = self.vocabulary.concepts[concept]
            counts[name] = counts.get(name, 0) + 1
        return sorted(counts.items(), key=lambda item: -item[1])[:top]

    def coverage(self) -> dict[str, Any]:
        """Per layer and over the Lens: valid units, how many show a concept, the share, and the median confidence."""
        return labels_coverage(self._layers)

    def to_dict(self) -> dict[str, Any]:
        concepts = self.vocabulary.concepts
        return {
            layer: [
                {
                    "unit": f"{layer}/{name}",
                    "label": concepts[int(labels.concepts[row, 0])] if bool(labels.labelled[row]) else None,
                    "confidence": _confidences(labels, row)[0],
                    "valid": labels.valid is None or bool(labels.valid[row]),
                    "candidates": [
                        {"concept": concepts[int(c)], "alignment": round(float(a), 5), "score": round(float(s), 5), "confidence": z}
                        for c, a, s, z in zip(labels.concepts[row], labels.candidate_alignments[row], labels.scores[row], _confidences(labels, row))
                    ],
                }
                for row, name in enumerate(self.units[layer])
            ]
            for layer, labels in self._layers.items()
        }


def _confidences(labels: Labels, row: int) -> list[float | None]:
    if labels.confidence is None:
        return [None] * labels.concepts.shape[1]
    return [round(float(z), 3) for z in labels.confidence[row]]


def labels_coverage(layers: Mapping[str, Labels]) -> dict[str, Any]:
    """``Labels.coverage`` per layer, and over all of them (``"all"``; its median confidence pools the units)."""
    per_layer = {layer: labels.coverage() for layer, labels in layers.items()}
    valid = sum(entry["valid_units"] for entry in per_layer.values())
    shown = sum(entry["labelled"] for entry in per_layer.values())
    confidences = [labels.confidence[labels.labelled, 0] for labels in layers.values() if labels.confidence is not None]
    pooled = torch.cat(confidences) if confidences else torch.empty(0)
    total = {"valid_units": valid, "labelled": shown, "coverage": shown / valid if valid else None,
             "median_confidence": float(pooled.median()) if len(pooled) else None}  # fmt: skip
    return {"all": total, "layers": per_layer}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _stored_vocabulary(stored: dict) -> Vocabulary:
    """The vocabulary ``labels.json`` records, checked to be of the form ``LabelStore.replace`` writes."""
    vocabulary = stored["vocabulary"]
    texts = [vocabulary["name"], *vocabulary["concepts"], *vocabulary["categories"]]
    numbers = (stored["threshold"] is None or _number(stored["threshold"])) and _number(stored.get("min_confidence", MIN_CONFIDENCE))
    if not all(isinstance(text, str) for text in texts) or not numbers:
        raise ValueError("the vocabulary's name, concepts and categories are texts, the threshold a number or null, min_confidence a number")
    return Vocabulary(vocabulary["name"], tuple(vocabulary["concepts"]), tuple(vocabulary["categories"]))


def _check_one_labelling(derived: LensStore, stored: dict, vocab: Vocabulary, arrays: dict[str, dict[str, torch.Tensor]]) -> None:
    """Refuse labels whose layer files are not of the labelling ``labels.json`` records (its id, where it records
    one; concept indices within its vocabulary): one layer's concepts read by another labelling's vocabulary would
    name the wrong concepts."""
    for layer, stored_arrays in arrays.items():
        name = layer_file(layer, "labels")
        written_by = derived.read_metadata(name).get("labelling") if "labelling" in stored else None
        concepts = stored_arrays["concepts"]
        if written_by != stored.get("labelling") or (concepts.numel() and int(concepts.max()) >= len(vocab.concepts)):
            raise SemlensError(
                f"the labels stored in {derived.root} are damaged: {name} is not of the labelling labels.json records (a labelling was "
                "cut short); label again (`semlens label LENS`, Lens.label())"
            )


class LabelStore:
    """A Lens's labels (``Lens.labels``): stored on disk, read once and held for this process (``Lens.label``
    replaces them), and what they say about each unit and layer."""

    def __repr__(self) -> str:
        """Outside a notebook: whose labels these are and how many units show one."""
        if self.read() is None:
            return "LabelStore(no labels stored: results show the default vocabulary's; Lens.label() stores labels)"
        total = self.coverage()["all"]
        return (f"LabelStore(vocabulary {self.vocabulary.name!r} by {self.method}: {total['labelled']} of {total['valid_units']} "
                f"valid units show a concept)")  # fmt: skip

    def __init__(self, lens: Lens) -> None:
        self.lens = lens
        self._held: StoredLabels | None = None
        self._defaulted = False  # whether the default vocabulary's labels were tried for display (``_to_show``)

    def read(self) -> StoredLabels | None:
        """The labels ``Lens.label`` made in this process, else those stored with the Lens (read once), else None."""
        derived = self.lens.embedding.derived
        if self._held is None and derived.path(LABELS).is_file():
            stored, vocab = derived.read_json(LABELS, lambda stored: (stored, _stored_vocabulary(stored)))
            arrays = {layer: derived.read_tensors(layer_file(layer, "labels")) for layer in self.lens.layers}
            _check_one_labelling(derived, stored, vocab, arrays)
            method = stored.get("method", FALLBACK_METHOD)  # labels stored before there were methods
            min_confidence = stored.get("min_confidence", MIN_CONFIDENCE)
            self._held = (
                vocab,
                {
                    layer: Labels(
                        a["concepts"], a["scores"], stored["threshold"], self.lens.arrays.valid(layer), method, a.get("alignments"),
                        a.get("confidence"), min_confidence,  # labels stored before confidences: the threshold alone
                    )  # fmt: skip
                    for layer, a in arrays.items()
                },
            )
        return self._held

    def replace(self, vocab: Vocabulary, results: dict[str, Labels], templates: str | list[str], save: bool) -> None:
        """Hold new labels for this process and, with ``save``, store them for the other tools."""
        if save and results:
            derived, labelling = self.lens.embedding.derived, uuid.uuid4().hex
            derived.remove(LABELS)  # first: a labelling cut short leaves no labels, never one layer's labels read by another's vocabulary
            for layer, labels in results.items():
                gate = {} if labels.alignments is None else {"alignments": labels.alignments}
                derived.write_tensors(
                    layer_file(layer, "labels"), {"concepts": labels.concepts, "scores": labels.scores, "confidence": labels.confidence, **gate},
                    {"labelling": labelling},
                )  # fmt: skip
            first = next(iter(results.values()))
            derived.write_json(
                LABELS,
                {"vocabulary": vocab.to_dict(), "threshold": first.threshold, "min_confidence": first.min_confidence, "templates": templates,
                 "method": first.method, "labelling": labelling},
            )  # fmt: skip
        self._held = (vocab, results)

    @property
    def default_method(self) -> str:
        """The method ``label`` uses unless told: ``responses`` where the build kept the units' crop responses
        (``Lens.arrays.has_responses``), else ``centred`` (a Lens built before them, or another embedding space)."""
        return DEFAULT_METHOD if self.lens.arrays.has_responses else FALLBACK_METHOD

    @property
    def method(self) -> str | None:
        """The method of the stored labels, or None before ``label`` ran."""
        stored = self.read()
        return None if stored is None else next(iter(stored[1].values())).method

    @property
    def vocabulary(self) -> Vocabulary | None:
        """The vocabulary of the stored labels, or None before ``label`` ran."""
        stored = self.read()
        return None if stored is None else stored[0]

    def ensure(self, save: bool = False) -> bool:
        """Label with the default vocabulary (``SpaceView.default_vocabulary``) where there are no labels yet and the space embeds texts (what the
        explorer, the report and the commands that show labels do first), held in memory unless ``save``: asking a
        Lens questions writes nothing into it (a received one above all); whether there are labels now."""
        if self.vocabulary is None and self.lens.embedding.embeds_text:
            self.lens.label(save=save)
        return self.vocabulary is not None

    def of(self, layer: str) -> Labels | None:
        """The stored labels of a layer, or None before ``label`` ran."""
        self.lens.units(layer)  # a clear error for an unknown layer
        stored = self.read()
        return None if stored is None else stored[1][layer]

    def _to_show(self) -> None:
        """Where the Lens has no labels yet, the default vocabulary's, held in memory (nothing is written), as the
        command line, the explorer and the report label it before they show labels: a notebook's first search showed
        "no concept" for every unit. Where that cannot be done (a received Lens whose foundation model is not at hand),
        labels stay unshown, said once."""
        if self._defaulted or self._held is not None:
            return
        self._defaulted = True
        try:
            self.ensure()
        except SemlensError as error:
            warn_caller(f"no labels shown (label the Lens to show them): {quoted(error)}")

    def shown(self, layer: str) -> list[str | None]:
        """Each unit's stored label as every face shows it: None where it shows no concept. A Lens not labelled yet
        shows the default vocabulary's labels (``_to_show``). A tied unit shows the label of the unit whose crops it
        shares (its examples are those crops)."""
        self._to_show()
        labels = self.of(layer)
        if labels is None:
            return [None] * len(self.lens.units(layer))
        concepts = self.vocabulary.concepts
        own = [concepts[concept] if shown else None for concept, shown in zip(labels.concepts[:, 0].tolist(), labels.labelled.tolist())]
        tied = self.lens.arrays.tied(layer)
        if not bool(tied.any()):
            return own
        by = shown_by(self.lens)[layer].tolist()
        return [own[by[row]] if is_tied else label for row, (label, is_tied) in enumerate(zip(own, tied.tolist()))]

    def label_of(self, unit: str) -> str | None:
        """A unit's label as ``shown``, read for one unit."""
        layer, row = self.lens.units.index(unit)
        self._to_show()
        labels = self.of(layer)
        if labels is None:
            return None
        if bool(self.lens.arrays.tied(layer)[row]):
            row = int(shown_by(self.lens)[layer][row])
        return self.vocabulary.concepts[int(labels.concepts[row, 0])] if bool(labels.labelled[row]) else None

    def confidence_of(self, unit: str) -> float | None:
        """The confidence of a unit's stored label (robust z against its layer, ``analysis.label``), None before
        ``label`` ran or for labels stored before confidences."""
        layer, row = self.lens.units.index(unit)
        labels = self.of(layer)
        return None if labels is None else _confidences(labels, row)[0]

    def coverage(self) -> dict[str, Any] | None:
        """How many valid units show a concept, per layer and in all, with the median confidence (None before ``label``)."""
        stored = self.read()
        return None if stored is None else labels_coverage(stored[1])

    def candidates(self, unit: str) -> list[tuple[str, float, float | None]]:
        """A unit's best concepts with their alignments and confidences, best first (empty before ``label`` ran)."""
        layer, row = self.lens.units.index(unit)
        labels = self.of(layer)
        if labels is None:
            return []
        concepts = self.vocabulary.concepts
        return [(concepts[int(c)], float(a), z) for c, a, z in zip(labels.concepts[row], labels.candidate_alignments[row], _confidences(labels, row))]

    def dissect(self, method: str | None = None) -> Dissection:
        """Units per label category per layer (from the stored labels, else the default vocabulary's: ``_to_show``);
        with ``method``, an error unless the labels were made by it (never another method's counts in silence)."""
        self._to_show()
        if self.vocabulary is None:
            self.lens.embedding.require_text("dissection (it counts units by their labels)")
            raise SemlensError(f"this Lens has no labels yet: label it first ({asked('lens.label()', 'semlens label LENS')})")
        if method is not None and check_method(method) != self.method:
            raise SemlensError(
                f"this Lens's labels were made by the {self.method!r} method, not {method!r}: label it so first "
                f"({asked(f'lens.label(method={method!r})', f'semlens label LENS --method {method}')})"
            )
        categories = self.vocabulary.category_names()
        return Dissection({layer: dissect(self.of(layer), categories, self.vocabulary.categories) for layer in self.lens.layers})

    def category_units(self, layer: str, category: str) -> list[str]:
        """The units behind one bar of ``dissect``: a layer's units labelled in ``category`` (or "unlabelled")."""
        self.lens.units(layer)  # a clear error for an unknown layer
        counts = self.dissect()[layer]
        if category not in counts:
            raise SemlensError(f"unknown category {category!r}; the categories are {', '.join(counts)}")
        owners = unit_categories(self.of(layer), self.vocabulary.categories)
        return [f"{layer}/{name}" for name, owner in zip(self.lens.units(layer), owners) if owner == category]

    def vocabulary_or(self, vocabulary: Vocabulary | str | Path | Sequence[str] | None) -> Vocabulary:
        """The given vocabulary, else the stored labels' one, else the default (``SpaceView.default_vocabulary``)."""
        if vocabulary is None:
            return self.vocabulary or self.lens.embedding.default_vocabulary
        return vocabulary if isinstance(vocabulary, Vocabulary) else load_vocabulary(vocabulary)


class Dissection(HtmlResult, dict):
    """What ``LabelStore.dissect`` returns: per layer, how many units show a label of each concept category (and how
    many are "unlabelled", "inactive or tied"), as a dict that draws itself in a notebook as a table of layers by categories."""


def label(
    lens: Lens,
    vocabulary: Vocabulary | str | Path | Sequence[str] | None = None,
    threshold: float | None = None,
    templates: str | list[str] = "label",
    top: int = 3,
    save: bool = True,
    examples: str = "activation",
    method: str | None = None,
    min_confidence: float = MIN_CONFIDENCE,
) -> Labelling:
    """Label every unit with its best concepts of ``vocabulary`` (None: ``SpaceView.default_vocabulary``, the
    foundation model's own concepts where it names them, else the built-in vocabulary) by ``method`` (``analysis.labelling_methods.METHODS``; None: the
    default, ``responses`` where the Lens has them, else ``centred``: ``LabelStore.default_method``); stored with
    the Lens, with the method, for the other tools (``save=False``: kept in this process only).
    Each valid unit shows its best concept with its confidence (robust z against its layer's other units,
    ``analysis.label``), and "no concept" where that is under ``min_confidence``; ``threshold`` adds a floor on
    the raw alignment (the paper's 0.025 for CLIP, ``analysis.label.PAPER_THRESHOLD``; None: none).
    ``examples="relevance"`` labels the relevance examples' theta and only returns the labels: the stored
    ones, which the other tools show, are the activation examples'. A view in another space (``Lens.in_space``)
    keeps labels of its own."""
    lens.embedding.require_text("labelling")
    method = lens.labels.default_method if method is None else check_method(method)
    vocab = lens.embedding.default_vocabulary if vocabulary is None else vocabulary if isinstance(vocabulary, Vocabulary) else load_vocabulary(vocabulary)
    results = labels_of(lens, vocab, method, templates, top, examples, threshold, min_confidence)
    if examples == "activation":
        lens.labels.replace(vocab, results, templates, save)
    return Labelling(results, {layer: lens.units(layer) for layer in lens.layers}, vocab)


def labels_of(
    lens: Lens, vocab: Vocabulary, method: str, templates: str | list[str] = "label", top: int = 3, examples: str = "activation",
    threshold: float | None = None, min_confidence: float = MIN_CONFIDENCE, layers: list[str] | None = None,
) -> dict[str, Labels]:
    """The labels of ``vocab`` by ``method`` of ``layers`` (default: all; confidences are measured against every
    layer's units all the same), as ``label`` makes them, neither stored nor held: what another tool asks of a
    vocabulary (``compare``, ``names_by_responses``) leaves the labels every face shows as they are."""
    concepts = lens.embedding.probes.concepts(vocab.concepts, templates)
    null = lens.embedding.probes.null(templates)
    prior = prior_sets(lens) if method == "clip-dissect" else None
    aligned = {layer: alignment(lens.examples.theta(layer, examples), concepts, null) for layer in lens.layers}
    confidence = _label_confidence(lens, aligned, examples)
    gate = {"threshold": threshold, "min_confidence": min_confidence}
    return {
        layer: label_layer(lens, layer, method, concepts, null, top, prior, examples, confidence[layer], aligned[layer], **gate)
        for layer in (layers or lens.layers)
    }


def _label_confidence(lens: Lens, aligned: dict[str, torch.Tensor], examples: str = "activation") -> dict[str, torch.Tensor]:
    """Per layer, each unit's confidence in each concept (``analysis.label.label_confidence``) against its layer's
    valid units, or against every layer's where it has fewer than ``MIN_NULL_UNITS``."""
    valid = {layer: lens.examples.valid(layer, examples) for layer in aligned}
    pooled = torch.cat([aligned[layer][valid[layer]] for layer in aligned])
    return {
        layer: label_confidence(scores, scores[valid[layer]] if int(valid[layer].sum()) >= MIN_NULL_UNITS else pooled)
        for layer, scores in aligned.items()
    }


def label_layer(
    lens: Lens,
    layer: str,
    method: str,
    concepts: torch.Tensor,
    null: torch.Tensor,
    top: int,
    prior: torch.Tensor | None,
    examples: str = "activation",
    confidence: torch.Tensor | None = None,
    aligned: torch.Tensor | None = None,
    threshold: float | None = None,
    min_confidence: float = MIN_CONFIDENCE,
) -> Labels:
    """One layer's labels by ``method``, gated by the units' confidences ``[U, C]`` (None: ranked only);
    ``aligned``: the units' alignments with the concepts where already computed (the alignment methods' scores)."""
    theta, valid = lens.examples.theta(layer, examples), lens.examples.valid(layer, examples)
    aligned = alignment(theta, concepts, null) if aligned is None else aligned
    if method in ALIGNMENT_METHODS:  # theta alone: the example embeddings stay unread
        scores = alignment_method_scores(method, aligned, valid)
    elif method == "responses":
        scores = response_scores(alignment_method_scores("centred", aligned, valid), lens.arrays.partial_effects(layer, concept_directions(concepts, null)))
    else:
        embeddings, samples = lens.examples.embeddings(layer, examples), lens.examples.samples(layer, examples)
        scores = method_scores(method, theta, embeddings, samples, valid, concepts, null, prior)
    return rank_concepts(scores, None if method == "alignment" else aligned, confidence, threshold, top, valid, method, min_confidence)


def names_by_responses(lens: Lens, layers: list[str], concepts: list[str]) -> list[str | None] | None:
    """Each unit's best concept by the ``responses`` labelling method among the audit's (or the search's) text
    ``concepts`` and ``naming_candidates``, where its confidence passes the bar its label would (``MIN_CONFIDENCE``),
    for the units of ``layers`` in order; None where the Lens kept no crop responses (``has_responses``): the
    alignment rule alone judges then. The candidates hold the default vocabulary whatever the last ``label`` call
    used: with the last vocabulary alone, the same audit of a random model flagged 0 %, 61 % or 55 % of the class's
    relevance after labels with the built-in vocabulary, nine words or two, and named units whose best concept set
    them apart from nothing (confidence about 0)."""
    if not lens.arrays.has_responses or not concepts:
        return None
    candidates = naming_candidates(lens, concepts)
    vocab = Vocabulary("candidates", tuple(candidates), ("candidates",) * len(candidates))
    found: list[str | None] = []
    for best in labels_of(lens, vocab, "responses", top=1, layers=layers).values():
        found += [candidates[int(concept)] if shown else None for concept, shown in zip(best.concepts[:, 0].tolist(), best.labelled.tolist())]
    return found


def naming_candidates(lens: Lens, concepts: list[str]) -> list[str]:
    """What ``names_by_responses`` ranks a unit's crop responses among: the given ``concepts``, then the default
    vocabulary (``SpaceView.default_vocabulary``), then the stored labels' (each concept once, by its lower case)."""
    stored = lens.labels.vocabulary
    pool = [*concepts, *lens.embedding.default_vocabulary.concepts, *(stored.concepts if stored is not None else ())]
    first: dict[str, str] = {}
    for concept in pool:
        first.setdefault(concept.lower(), concept)
    return list(first.values())


def naming_description(lens: Lens) -> str:
    """``naming_candidates`` as the faces name them, besides the audit's own concepts."""
    default, stored = lens.embedding.default_vocabulary, lens.labels.vocabulary
    owner = "the built-in vocabulary" if default.name == "builtin" else f"the foundation model's vocabulary {default.name!r}"
    text = f"{owner} ({len(default.concepts)} concepts)"
    if stored is not None and stored.name != default.name:
        text += f" and the labels' vocabulary {stored.name!r} ({len(stored.concepts)})"
    return text


@per_lens
def shown_by(lens: Lens) -> dict[str, torch.Tensor]:
    """Per layer, each unit's row of the unit whose examples (and label) it shows: for a tied unit the earlier unit
    with the same crops (by the first crop rule's boxes, as ``Lens.arrays.tied``), else its own; -1 for an inactive one."""
    from ..analysis.validity import first_with_the_same_crops
    from ..store.slots import first_rule_crops

    crops = first_rule_crops({layer: lens.arrays.read(layer, "embed")["crop_index"] for layer in lens.layers}, {layer: lens.arrays.read(layer, "topk") for layer in lens.layers})
    return {layer: first_with_the_same_crops(crops[layer], lens.arrays.inactive(layer)) for layer in lens.layers}
