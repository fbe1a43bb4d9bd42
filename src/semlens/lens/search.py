"""Search: units ranked by alignment with a text or image probe (and, where the Lens kept its crop responses,
by how their activation follows the probe: ``RANKINGS``), by how much the model's own activation rises on
concept images (``rank="model"``: the audit's concept test; for a text, the images of the concept it names that the
Lens was shown: ``semlens.lens.concepts``), or by similarity to another unit; all valid units
(``Lens.arrays.valid``) stacked once, with an approximate index from ``INDEX_MIN_UNITS`` units on (see
semlens.lens.index)."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import torch
from PIL import Image

from .._util.display import HtmlResult, made_by
from .._util.errors import SemlensError, asked, quoted, warn_caller
from ..data.base import decoded, spread
from ..interventions.drawn import SYNONYMS, DrawnConcept, drawn_concept, named_concept
from .arrays import recorded_placements
from .concepts import recall
from .index import UnitTable, open_index, probe_direction, top_positions
from .labels import names_by_responses
from .probes import composited, image_probe, transparent
from .remembered import per_lens

if TYPE_CHECKING:
    from ..model.loading import LoadedModel
    from ..model.preprocess import Preprocessing
    from .lens import Lens

#: how a probe ranks units: "named" (the default), as "both" but with the units a text probe names first (see
#: ``NAMED_AMONG``); "both", the lower of alignment and response, each standardised over the units (where the Lens
#: has no crop responses, alignment alone); "alignment" alone (the paper's Eq. 4); or "model", for image probes:
#: the model's own response, how much pasting the images over the Lens's probe images raises each unit (its
#: activation AUC, the audit's concept test: ``interventions.effects.activation_aucs``), which finds the units
#: of a concept the foundation model cannot see in their examples (a frame, a small artefact of an early layer)
RANKINGS = ("named", "both", "alignment", "model")
#: "named" lifts, among this many of the best units by "both", those whose best concept by their crop responses,
#: among the probe's texts and the Lens's label vocabulary, is one of the texts: the audit's name for a unit
#: (``Lens.audit``), so that search and audit agree on the units that carry a concept. Where an artefact sits on
#: a class's objects, the class's units follow the artefact's likeness over the crops more closely than its own
#: early-layer detectors do, but their best concept is the class (docs/quality.md "Search by name")
NAMED_AMONG = 100
#: probe images an image probe with transparent parts is seen over (``probe_backgrounds``); measured on the demo
#: world's watermark (benchmarks/image_probes.py): 4, 8, 16 and 32 give mean average precision 0.11, 0.45, 0.74, 0.61
PROBE_BACKGROUNDS = 16
#: ranked by default by the model's response to a concept semlens draws, the units the text names ("named") come
#: first, in its order, where the drawings raise them this much (activation AUC): where the foundation model sees
#: the concept in their examples and the model agrees. Measured (true artefact units in the top 5): the demo's
#: watermark 3 -> 4, natural photos with ConSE, which names no such unit, 17 -> 17 (docs/explanation/ask.md)
NAMED_RAISED = 0.6
#: ranked by the model's response to overlays, the units that fire where they are pasted come first among this many
#: of the best by AUC (``_located_first``; the location test runs on those the overlays raise)
LOCATED_AMONG = 40


@dataclass(frozen=True)
class SearchHit:
    """A unit found by a probe: its alignment (``score``; ranked by the model, its activation AUC on the concept
    images), label (if labelled), best concept examples and ``response``: the correlation of its activation over
    the Lens's crops with their alignment to the probe (None where the Lens kept no crop responses, and ranked
    by the model)."""

    unit: str
    layer: str
    index: int
    score: float = field(metadata={"description": "Alignment with the probe (search; ranked by the model, the activation AUC on the concept images), or cosine similarity (similar units)."})
    label: str | None
    examples: list[str]
    response: float | None = field(default=None, metadata={
        "description": "Search: the correlation of the unit's activation over the Lens's crops with their alignment to the probe (None without crop responses)."
    })  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class SearchResults(HtmlResult, list):
    """What ``Lens.search`` and ``Lens.search_similar`` return: the ``SearchHit``s, best first, as a list that
    draws itself in a notebook (a table with the units' concept examples of the example set ``by``)."""

    def __init__(
        self, hits: Iterable[SearchHit] = (), by: str = "activation", rank: str | None = None, concept: str | None = None, drawn: str | None = None
    ) -> None:  # fmt: skip
        super().__init__(hits)
        self.by, self.rank = by, rank  # rank: the ranking that ordered them (RANKINGS; None: similarity to a unit)
        self.concept = concept  # ranked by the images of this concept shown to the Lens (semlens.lens.concepts) or drawn, where a text named it
        self.drawn = drawn  # what semlens drew of the concept, in words (interventions.drawn), where it drew it
        self.named_first = False  # ranked by the model, the units the text names (as "named" does) first where it raises them
        self.located_first = False  # ranked by the model, those of the LOCATED_AMONG best that fire where the concept is pasted first
        self.detectors_first = False  # ranked by the model, the units an audit found detect the concept first
        self.note: str | None = None  # what a reader should know of the hits as a whole (no unit aligns with the text more than with nothing)

    def to_dict(self) -> list[dict[str, Any]]:
        return [hit.to_dict() for hit in self]

    def ranking(self) -> str:
        """How the hits were ordered, in words: the first line of the repr and the note under a notebook's table."""
        if self.rank is None:
            return "by similarity to the unit"
        if self.rank == "model":
            firsts = [
                phrase
                for phrase, applies in (
                    ("the units an audit found detect it", self.detectors_first),
                    ("the units whose best concept by their crop responses is the query, where it raises them", self.named_first),
                    (f"those of the {LOCATED_AMONG} best that fire where it is pasted", self.located_first),
                )
                if applies
            ]
            first = f"; first {', then '.join(firsts)}" if firsts else ""
            return f"by how much pasting {self.pasted()} into the Lens's probe images raises each unit in the model (score: activation AUC){first}"
        if self.rank == "alignment" or all(hit.response is None for hit in self):
            return "by alignment with the probe"
        named = ", units whose best concept by their crop responses is the query first" if self.rank == "named" else ""
        return f"by alignment with the probe and response together (the lesser of the two, each standardised over the units: neither column alone orders them){named}"

    def pasted(self) -> str:
        """What a ranking by the model pasted, in words: a concept the Lens was shown, one semlens drew, or the probe."""
        if self.drawn:
            return self.drawn
        return f"the images of {self.concept!r} shown to the Lens (an audit's pasted artefact)" if self.concept else "the image probe"

    def __repr__(self) -> str:
        """Outside a notebook: how the units were ranked, the note, and a line per unit (a list's repr was every field)."""
        rank = "" if self.rank is None else f" (rank={self.rank!r})"
        score = "activation AUC" if self.rank == "model" else "score"
        lines = [f"SearchResults: {len(self)} units ranked {self.ranking()}{rank}; examples by {self.by}" + (f"; {self.note}" if self.note else "")]
        lines += [
            f"  {hit.unit}: {score} {hit.score:.4f}" + ("" if hit.response is None else f", response {hit.response:.3f}") + f", label {hit.label or '(no concept)'}"
            for hit in self
        ]
        return "\n".join(lines)


def probe(
    lens: Lens,
    text: str | list[str] | None = None,
    images: list[str | Path | Image.Image] = (),
    templates: str | list[str] = "search",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A probe ``[d]`` and its null (None for image-only probes): texts and images (files or decoded) averaged."""
    texts = [text] if isinstance(text, str) else list(text or [])
    if any(not isinstance(item, str) or not item.strip() for item in texts):
        raise SemlensError(f"search text {texts!r}: give words to search for (an empty text ranks nothing)")
    if not texts and not images:
        raise SemlensError("give a text query, an image probe, or both")
    parts = []
    if texts:
        parts.append(lens.embedding.probes.query(texts, templates))
    if images:
        parts.append(lens.embedding.probes.images(images, lambda: probe_backgrounds(lens)))
    null = lens.embedding.probes.null(templates) if texts else None
    return torch.stack(parts).mean(dim=0), null


@per_lens
def probe_backgrounds(lens: Lens) -> list[Image.Image]:
    """What an image probe with transparent parts is seen over: the model's views of ``PROBE_BACKGROUNDS`` probe
    images spread evenly over the probe data (an artefact where this Lens's units met it); none (neutral gray)
    where the probe data cannot be read. On the demo world a watermark overlay so ranks a true watermark
    unit first or second (mean average precision of its 9 true units 0.74), over gray 8th (0.27), with its
    alpha dropped (black) 46th (0.08): benchmarks/image_probes.py."""
    from ..model.preprocess import Preprocessing

    try:
        data = lens.sources.probe_data
    except SemlensError:
        return []
    preprocessing = Preprocessing(**lens.manifest["identity"]["preprocessing"])
    return [view for _, view in decoded(data, spread(len(data), PROBE_BACKGROUNDS), preprocessing.view)]


def search(
    lens: Lens,
    text: str | list[str] | None = None,
    images: list[str | Path | Image.Image] = (),
    layers: list[str] | None = None,
    top: int = 10,
    templates: str | list[str] = "search",
    examples: str = "activation",
    rank: str | None = None,
) -> SearchResults:
    """Units of all (or the given) layers ranked by a text and/or image probe, by ``rank`` (``RANKINGS``; None: the
    default, ``_default_ranking``; ``SearchResults.rank`` says which ranked them); ``examples``: whose theta, the
    activation examples' or the relevance examples' (see ``Lens.examples.theta``). A text naming a concept the Lens
    was shown (an audit's pasted artefact: ``semlens.lens.concepts``) is ranked as its images would be, by default
    and with ``rank="model"`` (``SearchResults.concept`` names it); else a text naming a concept semlens draws (a
    watermark, a frame, a logo, a ruler, a colour cast: ``interventions.drawn``) by the model's response to its
    drawings, where the model loads (``SearchResults.drawn`` says what was drawn), by default with the units the
    text names (as "named" lifts them) first where the drawings raise them (``NAMED_RAISED``)."""
    if rank not in (None, *RANKINGS):
        raise SemlensError(f"rank={rank!r}: rank by one of {', '.join(RANKINGS)}")
    chosen = lens.units.checked(layers)
    images = [image_probe(image) for image in images]  # decoded once: the default ranking looks at them too
    texts = [text] if isinstance(text, str) else list(text or [])
    shown = recall(lens, texts) if texts and not images and rank in (None, "model") else None  # a text naming a concept shown to the Lens
    drawn = texts[0] if len(texts) == 1 and not images and not shown and rank in (None, "model") and _draws(texts[0]) else None
    model = None  # the model under study, where the default ranking loaded it
    by_default = rank is None
    if rank is None:
        rank, model = _default_ranking(lens, None if shown or drawn else text, shown.images if shown else images, drawn)
    if rank == "model":
        if shown and shown.drawn:  # semlens's drawings an audit tested: drawn again in their colour, as a drawn search
            named = _named_units(lens, shown.name, chosen, examples) if by_default else []
            found = _rank_by_model(lens, [], chosen, top, examples, model, shown.name, shown.detectors, f"{shown.drawn} {shown.name}", named)
            found.drawn = f"{found.drawn}, the colour an audit tested"
            return found
        if shown:
            return _rank_by_model(lens, shown.images, chosen, top, examples, model, shown.name, shown.detectors)
        if drawn:
            named = _named_units(lens, drawn, chosen, examples) if by_default else []
            return _rank_by_model(lens, [], chosen, top, examples, model, drawn=drawn, named=named)
        if text or not images:
            raise SemlensError(
                "rank='model' ranks units by the model's response to concept images: give images and no text, the name of a "
                "concept the Lens was shown (an audit's pasted artefact, semlens.lens.concepts.remember) or of one semlens draws "
                f"({', '.join(SYNONYMS)}); texts rank by named, both or alignment"
            )
        return _rank_by_model(lens, images, chosen, top, examples, model)
    probe_vector, null = probe(lens, text, images, templates)
    hits = _rank(lens, probe_vector, null, chosen, top, examples=examples, rank=rank, names=texts)
    best = max((hit.score for hit in hits), default=None)
    if texts and not images and best is not None and best <= 0:
        hits.note = (
            f"no unit shown aligns with {' + '.join(map(repr, texts))} more than with an empty prompt (best alignment {best:.3f}): "
            "the foundation model may not know the concept, or no unit shows it"
        )
    return hits


def _default_ranking(lens: Lens, text: str | list[str] | None, images: list[Image.Image], drawn: str | None = None) -> tuple[str, LoadedModel | None]:
    """The ranking a search gets by default, with the model it loaded to know: "model" for a probe of overlays only
    (images with transparent parts: a concept to paste, as the audit's concept test pastes it) or a text ``drawn``
    naming a concept semlens draws, where the model under study and the probe images load, else "named". Measured
    on overlays of artefacts (true units in the top 5, model against named): the demo's watermark 4 against 3, the
    world ResNet's patch 4.0, 3.0, 2.7, 2.0 against 0, 0, 3.0, 2.7, a frame on natural photos 3.7 against 0
    (docs/explanation/ask.md); opaque images and other texts keep "named"."""
    if not drawn and (text or not images or not all(map(transparent, images))):
        return RANKINGS[0], None
    try:
        model = lens.sources.model()
    except SemlensError as error:  # a received Lens without its model, or one built from an object: the foundation model's view
        pasted = f"the {_draws(drawn)} semlens draws" if drawn else "the concept's images"
        warn_caller(f"ranked by name and alignment, not by the model's response to {pasted}, which needs the model under study: {quoted(error)}")
        return RANKINGS[0], None
    return ("model", model) if probe_backgrounds(lens) else (RANKINGS[0], None)


def _rank_by_model(
    lens: Lens, images: list[Image.Image], layers: list[str], top: int, examples: str, model: LoadedModel | None = None,
    concept: str | None = None, detectors: list[str] = (), drawn: str | None = None, named: list[tuple[str, int]] = (),
) -> SearchResults:  # fmt: skip
    """The ``top`` units of ``layers`` by their activation AUC (``activation_aucs``, as the audit's concept test
    measures it) on the concept images (``_concept_views``) against the probe images they were pasted into, those of
    the ``LOCATED_AMONG`` best that fire where overlays are pasted first (``_located_first``), and before them the
    ``detectors`` an audit's concept test found (``Audit.detectors``: search names what the audit found); inactive
    units (never fired on the probe data) are never ranked, tied ones are (their response is their own, their examples
    another unit's: on the photos' planted judge a true logo unit among them, docs/quality.md), ties in AUC go to the
    earlier layer, lower unit. Needs the model
    (``model``, where it is loaded already); ``concept``: the name of the concept shown to the Lens whose images
    these are; ``drawn``: a text naming a concept semlens draws, pasted in its variants instead of ``images`` (a
    unit scored by the variant that raises it most), with the units the text ``named`` (layer, row) that the
    drawings raise (``NAMED_RAISED``) first."""
    from ..interventions.effects import variant_aucs

    if top < 1:
        raise SemlensError(f"top={top}: ask for at least one unit")
    if model is None:
        try:
            model = lens.sources.model()
        except SemlensError as error:
            raise SemlensError(f"ranking by the model's response needs the model under study: {quoted(error)}") from error
    views = _drawn_views(lens, drawn) if drawn else _concept_views(lens, images, model.preprocessing)
    specs = lens.sources.layer_specs(layers)
    by_variant = variant_aucs(model, views.backgrounds, views.shown, list(specs.values()), views.groups or [len(views.shown)])
    aucs = {layer: variant.amax(dim=0) for layer, variant in by_variant.items()}  # each unit by the variant that raises it most
    scores = torch.cat([aucs[layer].masked_fill(lens.arrays.inactive(layer), float("-inf")) for layer in layers])
    owners = [(layer, row) for layer in layers for row in range(len(lens.units(layer)))]
    rows = top_positions(scores, min(max(top, LOCATED_AMONG), int(scores.isfinite().sum()))).tolist()
    if views.regions is not None:
        rows = _located_first(lens, model, views, rows, owners, aucs, specs)
    row_of = {owner: row for row, owner in enumerate(owners)}
    rows = _first(rows, [row_of[unit] for unit in named if scores[row_of[unit]] >= NAMED_RAISED])  # in the text's order
    detected = {lens.units.index(unit) for unit in detectors}
    rows = _first(rows, sorted((row for row, owner in enumerate(owners) if owner in detected and scores[row].isfinite()), key=lambda row: -float(scores[row])))
    hits = [_search_hit(lens, *owners[row], float(scores[row]), examples) for row in rows[:top]]
    found = SearchResults(hits, by=examples, rank="model", concept=concept or (views.drawn.name if views.drawn else None), drawn=views.drawn and views.drawn.describe())
    found.named_first, found.located_first, found.detectors_first = bool(named), views.regions is not None, bool(detectors)
    if views.drawn and len(views.drawn.variants) > 1 and hits:
        colours = list(views.drawn.variants)
        best = [colours[int(by_variant[hit.layer][:, hit.index].argmax())] for hit in hits]
        found.note = (
            f"the colour that raises each unit most: {', '.join(best)}; a model learns one colour, so where you know it, "
            f"name it (e.g. {f'{best[0]} {views.drawn.name}'!r}) to rank by that colour alone"
        )
    return made_by(found, lens)


def _first(rows: list[int], first: list[int]) -> list[int]:
    """``first``, then the rest of ``rows``."""
    placed = set(first)
    return first + [row for row in rows if row not in placed]


def _named_units(lens: Lens, text: str, layers: list[str], examples: str) -> list[tuple[str, int]]:
    """The units (layer, row) the "named" ranking of ``text`` (a concept semlens draws) lifts, in its order: among the
    ``NAMED_AMONG`` best by "both", those whose best concept by their crop responses is the text or the name of the
    concept it names ("picture frame": "frame"; none where the Lens kept no crop responses). Its other synonyms are
    left out: as candidate names they take units from the concept's own (the demo's watermark: 4 true units of the
    top 5 named "watermark", 3 with "text", "caption", ... beside it)."""
    if not lens.arrays.has_responses:
        return []
    table = _table_of(lens, layers, examples)
    probe_vector, null = probe(lens, text)
    rows, _ = table.top(probe_vector, null, NAMED_AMONG, by_response=True)
    names = list(dict.fromkeys([text, named_concept(text)[0]]))
    return [table.locate(row) for row, named in zip(rows.tolist(), _named(lens, table, rows, names).tolist()) if named]


def _located_first(
    lens: Lens, model: LoadedModel, views: ConceptViews, rows: list[int], owners: list[tuple[str, int]], aucs: dict[str, torch.Tensor], specs: dict
) -> list[int]:  # fmt: skip
    """``rows`` (best first) with the units the overlays raise (AUC >= ``CONFIRM_AUC``) that fire where they are
    pasted first, located as the audit's concept test locates a unit (``location_test``): a concept the class relies
    on also raises the class's units downstream of it, which fire on the class's objects instead. Measured on the
    concept worlds' held-out shape worlds (true patch units in the top 5 for its shown images): world CNN 2 -> 3,
    world ResNet 13 -> 16; on the natural photos with a planted artefact 29 -> 29 (docs/quality.md)."""
    from ..interventions.effects import CONFIRM_AUC, location_test

    raised = [owners[row] for row in rows if float(aucs[owners[row][0]][owners[row][1]]) >= CONFIRM_AUC]
    units = [lens.units.to_test(f"{layer}/{lens.units(layer)[row]}", specs) for layer, row in raised]
    shifts, localities = recorded_placements(lens.arrays, list(specs))
    placed = location_test(model, views.paired, views.shown, views.regions, units, [], aucs, shifts=shifts, localities=localities) if units else {}

    def located(row: int) -> bool:
        layer, index = owners[row]
        if index not in placed.get(layer, {}):
            return False  # not raised, or a layer without maps (a head)
        iou, bar, precision, precision_bar = placed[layer][index]
        return iou >= bar or (precision_bar is not None and precision >= precision_bar)

    return sorted(rows, key=lambda row: not located(row))  # stable: each group keeps its AUC order


@dataclass(frozen=True)
class ConceptViews:
    """What ranking by the model compares: the Lens's probe backgrounds, the concept images as the model sees them,
    and where every image is an overlay, each shown image's background (``paired``) and where the overlay is on it
    (``regions`` ``[N, H, W]``; both None where an image is opaque); where semlens drew the concept (``drawn``),
    the sizes of the runs of ``shown`` that are its variants (``groups``)."""

    backgrounds: list[Image.Image]
    shown: list[Image.Image]
    paired: list[Image.Image] | None
    regions: torch.Tensor | None
    groups: tuple[int, ...] = ()
    drawn: DrawnConcept | None = None


def _concept_views(lens: Lens, images: list[Image.Image], preprocessing: Preprocessing) -> ConceptViews:
    """The model's views without and with a concept: the Lens's probe backgrounds (``probe_backgrounds``), and
    each image over them where it has transparent parts (an overlay, seen as the model sees an image of its size,
    as ``probe`` pastes it for the foundation model), else the image itself."""
    backgrounds = _readable_backgrounds(lens)
    shown: list[Image.Image] = []
    regions: list[torch.Tensor] = []  # one per shown image where the image is an overlay
    for image in images:
        if transparent(image):
            overlay = preprocessing.view(image)
            overlay.putalpha(preprocessing.view(image.getchannel("A")).getchannel(0))
            shown += composited(overlay, lambda: backgrounds)
            regions += [torch.from_numpy(np.asarray(overlay.getchannel("A")) > 0)] * len(backgrounds)
        else:
            shown.append(preprocessing.view(image))
    if len(regions) < len(shown):  # an opaque image among them: nothing to locate
        return ConceptViews(backgrounds, shown, None, None)
    return ConceptViews(backgrounds, shown, backgrounds * len(images), torch.stack(regions))


def _drawn_views(lens: Lens, text: str) -> ConceptViews:
    """The model's views of the Lens's probe backgrounds without and with the concept ``text`` names drawn by semlens
    (``interventions.drawn``): each variant pasted into every background, its placements in turn."""
    backgrounds = _readable_backgrounds(lens)
    concept = drawn_concept(text, backgrounds[0].size)
    pasted = [(variant[index % len(variant)], background) for variant in concept.variants.values() for index, background in enumerate(backgrounds)]
    regions = [artefact.region(*background.size) for artefact, background in pasted]
    located = all(region is not None for region in regions)  # a tint covers the whole view: nowhere to locate
    return ConceptViews(
        backgrounds, [artefact.apply(background) for artefact, background in pasted], [background for _, background in pasted] if located else None,
        torch.stack(regions) if located else None, (len(backgrounds),) * len(concept.variants), concept,
    )  # fmt: skip


def _readable_backgrounds(lens: Lens) -> list[Image.Image]:
    """``probe_backgrounds``, or an error that says to give the probe data where none can be read."""
    backgrounds = probe_backgrounds(lens)
    if not backgrounds:
        raise SemlensError(f"ranking by the model's response compares the concept images with the Lens's probe images, which cannot be read: give the probe data ({asked('data=...', '--probe-data')})")
    return backgrounds


def _draws(text: str) -> str | None:
    """The concept semlens draws that ``text`` names, in the plural ("frames"), or None."""
    named = named_concept(text)
    return f"{named[0]}s" if named else None


def search_similar(lens: Lens, source: Lens, unit: str, top: int = 10) -> SearchResults:
    """Units of this Lens most similar to ``unit`` of ``source`` (this Lens or another one)."""
    if source.embedding.foundation_id != lens.embedding.foundation_id:
        raise SemlensError("units of Lenses embedded by different foundation models cannot be compared")
    layer, row = source.units.index(unit)
    return _rank(lens, source.arrays.theta(layer, source.arrays.search_rule)[row], None, lens.layers, top, exclude=(layer, row) if source is lens else None, rank=None)


def _rank(
    lens: Lens,
    probe: torch.Tensor,
    null: torch.Tensor | None,
    layers: list[str],
    top: int,
    exclude: tuple[str, int] | None = None,
    examples: str = "activation",
    rank: str | None = RANKINGS[0],
    names: list[str] = (),
) -> SearchResults:
    """The ``top`` units of ``layers`` by ``probe``, ranked by ``rank`` (``RANKINGS``; None: by similarity to
    another unit's theta, without responses; ``names``: the probe's texts, which "named" lifts the units of);
    ties go to the earlier layer, lower unit."""
    if top < 1:
        raise SemlensError(f"top={top}: ask for at least one unit")
    table = _table_of(lens, layers, examples)
    naming = rank == "named" and bool(names) and lens.arrays.has_responses
    rows, scores = table.top(probe, null, max(top + 1, NAMED_AMONG) if naming else top + 1, by_response=rank in ("named", "both"))
    if naming:
        first = torch.argsort((~_named(lens, table, rows, names)).int(), stable=True)
        rows, scores = rows[first][: top + 1], scores[first][: top + 1]
    responses = [None] * len(rows)
    if table.responses is not None and rank is not None:
        responses = table.correlations(probe_direction(probe, null), rows).tolist()
    found = [(table.locate(row), score, response) for row, score, response in zip(rows.tolist(), scores.tolist(), responses)]
    hits = [_search_hit(lens, *owner, score, examples, response) for owner, score, response in found if owner != exclude]
    return made_by(SearchResults(hits[:top], by=examples, rank=rank), lens)


def _named(lens: Lens, table: UnitTable, rows: torch.Tensor, names: list[str]) -> torch.Tensor:
    """Which stacked ``rows`` ``[n]`` of ``table`` are named by one of ``names``: their best concept by their crop
    responses, among ``names`` and the Lens's label vocabulary, as the audit names them (``names_by_responses``)."""
    owners = [table.locate(row) for row in rows.tolist()]
    layers = list(dict.fromkeys(layer for layer, _ in owners))
    best = names_by_responses(lens, layers, names)
    starts = dict(zip(layers, accumulate([0] + [len(lens.units(layer)) for layer in layers])))
    return torch.tensor([best[starts[layer] + row] in names for layer, row in owners], dtype=torch.bool)


def _table_of(lens: Lens, layers: list[str], examples: str) -> UnitTable:
    """The stacked units of ``layers`` by ``examples``: every layer's by activation held once per Lens, else made."""
    return _search_table(lens) if layers == lens.layers and examples == "activation" else _unit_table(lens, layers, examples)


@per_lens
def _search_table(lens: Lens) -> UnitTable:
    """All units stacked for search, with an index from ``INDEX_MIN_UNITS`` units on (see semlens.lens.index)."""
    table = _unit_table(lens, lens.layers)
    table.index = open_index(lens.embedding.cache, table, f"{lens.embedding.fingerprint}:{lens.arrays.search_rule}")
    return table


def _unit_table(lens: Lens, layers: list[str], examples: str = "activation") -> UnitTable:
    """The layers' units as one table, each unit's theta by the search rule (``Lens.arrays.search_rule``); units
    without examples of their own (``Lens.arrays.valid``, by the first rule as everywhere) are never ranked."""
    theta = {layer: lens.examples.theta(layer, examples, lens.arrays.search_rule) for layer in layers}
    excluded = {layer: ~lens.examples.valid(layer, examples) for layer in layers}
    if not lens.arrays.has_responses:
        return UnitTable.stack(theta, excluded)
    return UnitTable.stack(theta, excluded, {layer: lens.arrays.crop_responses(layer) for layer in layers}, lens.arrays.response_scatter)


def _search_hit(lens: Lens, layer: str, row: int, score: float, examples: str = "activation", response: float | None = None) -> SearchHit:
    unit = f"{layer}/{lens.units(layer)[row]}"
    sources = [example.source for example in lens.examples.concept_examples(unit, by=examples)[:3]]
    return SearchHit(unit, layer, row, score, lens.labels.label_of(unit), sources, response)
