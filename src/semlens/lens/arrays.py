"""A Lens's per-layer arrays (top-k, crop boxes, theta, class relevance), each file read on first use and
kept: the part of ``Lens`` that reads what the build stored per unit."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING

import torch

from .._util.errors import SemlensError
from ..analysis.responses import partial_effects
from ..store.files import RESPONSES, RESPONSES_FILE, layer_file, space_file
from ..store.slots import crop_rules, mean_of_examples, recorded_shift, rule_slots, slot_embeddings, theta_key

if TYPE_CHECKING:
    from .lens import Lens


#: the crop rules search ranks units by, the first a Lens was built with among others (``crop_rule="peak+active"``);
#: every other question reads the first rule's boxes. Measured on the concept worlds' Lenses (see docs/record.md, Crop
#: views): the artefact's true units in the top 5 for its name, 11 of 15 from the share boxes against 7 from the
#: peak boxes and 9 from their mean, while labels are best from the peak boxes; then 36 against the share boxes'
#: 31 from the active boxes (where units fire) over 16 worlds with true artefact units
SEARCH_RULES = ("active", "share")


class LensArrays:
    """A Lens's per-layer arrays (``Lens.arrays``), from ``Lens.store``, for the layers ``Lens`` checks; in the
    Lens's embedding space (``Lens.in_space``), whose views share the files read so far."""

    def __init__(self, lens: Lens, files: dict[str, dict[str, torch.Tensor]] | None = None) -> None:
        self.lens = lens
        #: the array files read so far, by ``layer.kind`` (a Lens-wide file by its name; another space's with its name first)
        self.files: dict[str, dict[str, torch.Tensor]] = {} if files is None else files
        self._theta: dict[tuple[str, int], torch.Tensor] = {}  # by (layer, crop rule), read or computed so far

    def _read_cached(self, key: str, name: str) -> dict[str, torch.Tensor]:
        """The array file ``name`` of the store, read on first use and kept under ``key``."""
        if key not in self.files:
            self.files[key] = self.lens.store.read_tensors(name)
        return self.files[key]

    def read(self, layer: str, kind: str) -> dict[str, torch.Tensor]:
        """The layer's array file of ``kind`` (``topk``, ``embed``, ``crops``, ...), read on first use and kept."""
        self.lens.units.record(layer)
        return self._read_cached(f"{layer}.{kind}", layer_file(layer, kind))

    def scores(self, layer: str) -> torch.Tensor:
        """Top-k scores ``[U, k]`` (best first; -inf in empty slots)."""
        return self.read(layer, "topk")["scores"]

    def samples(self, layer: str) -> torch.Tensor:
        """Sample ids of the top-k ``[U, k]`` (-1 in empty slots)."""
        return self.read(layer, "topk")["ids"]

    def maps(self, layer: str) -> torch.Tensor | None:
        """Activation maps of the top-k ``[U, k, h, w]``, or None for non-spatial layers."""
        return self.read(layer, "topk").get("maps")

    @property
    def has_responses(self) -> bool:
        """Whether the build kept the units' responses to the Lens's crops (``build.response_stage``), in the
        space they were taken in (the default one; another space's crop embeddings differ)."""
        record = self.lens.manifest.get("stages", {}).get(RESPONSES, {})
        return self.lens.space is None and record.get("complete", False) and "skipped" not in record

    def partial_effects(self, layer: str, directions: torch.Tensor) -> torch.Tensor:
        """Each concept's partial effect ``[U, C]`` on each unit's activation over the Lens's crops
        (``analysis.responses.partial_effects``), for concept ``directions`` ``[C, d]``."""
        return partial_effects(self.crop_responses(layer), self.response_scatter, directions)

    def crop_responses(self, layer: str) -> torch.Tensor:
        """Per unit, its activation's centred cross-moment with the Lens's crop embeddings ``[U, d]``
        (``analysis.responses.ResponseMoments.cross``)."""
        self._require_responses()
        return self.read(layer, RESPONSES)["cross"]

    @property
    def response_scatter(self) -> torch.Tensor:
        """The Lens's crop embeddings' centred scatter ``[d, d]`` (``ResponseMoments.scatter``)."""
        self._require_responses()
        return self._read_cached(RESPONSES_FILE, RESPONSES_FILE)["scatter"]

    def _require_responses(self) -> None:
        if not self.has_responses:
            raise SemlensError(
                "this Lens has no crop responses (built before semlens kept them, or in another embedding space): "
                "build it again with `semlens run`, or label with --method centred"
            )

    def inactive(self, layer: str) -> torch.Tensor:
        """True for units that never fired or whose top-k scores are all equal: their examples are arbitrary."""
        return self.read(layer, "topk")["inactive"]

    def tied(self, layer: str) -> torch.Tensor:
        """True for units whose examples are the same crops as an earlier unit's (so is their theta), by the boxes
        of the first crop rule, which the other questions read (search ranks the same units)."""
        stored = self.read(layer, "embed")
        return stored["tied"] if "tied" in stored and self.stored_by_rule(stored) else self._first_rule_ties[layer]

    def stored_by_rule(self, stored: dict[str, torch.Tensor]) -> bool:
        """Whether a layer's embed file holds the first rule's ties and each rule's theta: always with one crop
        rule; with several, only from builds that stored each rule's theta (earlier ones stored the ties and
        the mean over every box)."""
        return len(self.crop_rules) == 1 or theta_key(self.crop_rules, len(self.crop_rules) - 1) in stored

    @cached_property
    def _first_rule_ties(self) -> dict[str, torch.Tensor]:
        """Ties found as the build finds them, for Lenses built before they were recorded, or before they were
        recorded by the first of several crop rules."""
        from ..store.slots import first_rule_ties

        return first_rule_ties({layer: self.read(layer, "embed")["crop_index"] for layer in self.lens.layers}, {layer: self.read(layer, "topk") for layer in self.lens.layers})

    def valid(self, layer: str) -> torch.Tensor:
        """True for units with examples of their own: neither inactive nor tied. Search, labels, the map,
        measures, audits, graphs and comparisons leave the others out."""
        return ~(self.inactive(layer) | self.tied(layer))

    def heatmaps(self, layer: str) -> torch.Tensor | None:
        """The maps each example's crop box was cut from ``[U, k, h, w]``: CRP relevance (pooled) for relevance
        crops, the activation maps for activation crops; None where examples are whole images."""
        mode = self.lens.units.record(layer).get("crop", {}).get("mode")
        if mode == "relevance":
            return self.read(layer, "crops").get("heat")
        return self.maps(layer) if mode == "activation" else None

    def map_shift(self, layer: str) -> tuple[float, float] | None:
        """Where the layer's map cells sit off the even grid, in input pixels, as measured at the build
        (``model.receptive``); None for layers without maps and Lenses built before it was measured."""
        return recorded_shift(self.lens.units.record(layer), unmeasured=None)

    def map_locality(self, layer: str) -> float | None:
        """How much a cell of the layer's map draws on its own place in the input, as measured at the build
        (``model.receptive.MapPlacement``); None for layers without maps, where it could not be measured, and for
        Lenses built before it was."""
        value = self.lens.units.record(layer).get("map_locality")
        return None if value is None else float(value)

    def heatmap_shift(self, layer: str, examples: str = "activation") -> tuple[float, float]:
        """Where the cells of ``Lens.examples.heatmaps(layer, examples)`` sit off the even grid, in input pixels: the
        layer's ``map_shift`` for activation maps, none for relevance heatmaps (computed at the input) and for
        Lenses built before it was measured (their boxes were cut on the even grid)."""
        if examples != "activation" or self.lens.units.record(layer).get("crop", {}).get("mode") != "activation":
            return (0.0, 0.0)
        return recorded_shift(self.lens.units.record(layer))

    @property
    def crop_rules(self) -> list[str]:
        """The crop rules the examples' boxes were cut by, each example one box per rule (``crop_rule="peak+share"``)."""
        return crop_rules(self.lens.manifest["identity"]["embed"].get("crop_rule", "peak"))

    @property
    def search_rule(self) -> str:
        """The crop rule whose theta search ranks by: the first of ``SEARCH_RULES`` the Lens was built with, else its first."""
        return next((rule for rule in SEARCH_RULES if rule in self.crop_rules), self.crop_rules[0])

    def rule_index(self, rule: str | None) -> int:
        """The position of ``rule`` among the Lens's crop rules (None: the first, which answers by default)."""
        if rule is None:
            return 0
        if rule not in self.crop_rules:
            raise SemlensError(f"crop rule {rule!r} is not one this Lens was built with; its rules: {', '.join(self.crop_rules)}")
        return self.crop_rules.index(rule)

    def boxes(self, layer: str, rule: str | None = None) -> torch.Tensor:
        """Crop boxes ``[U, k, 4]`` (x0, y0, x1, y1) in the model's input view, by the crop rule ``rule`` (default:
        the first; see ``crop_rules``)."""
        return rule_slots(self.read(layer, "embed")["boxes"], self.samples(layer).shape[1], self.rule_index(rule))

    def theta(self, layer: str, rule: str | None = None) -> torch.Tensor:
        """Each unit's semantic embedding ``[U, d]``: the mean of its concept examples' embeddings (in this
        Lens's embedding space: see ``Lens.in_space``), their boxes cut by crop rule ``rule`` (default: the
        first). The build stores each rule's (``theta_key``); Lenses built with joined rules before it did
        stored the mean over every box, and theirs is computed from the stored crop embeddings."""
        key = (layer, self.rule_index(rule))
        if key not in self._theta:
            stored = self.read(layer, "embed") if self.lens.space is None else self._space_embed(layer)
            self._theta[key] = self.theta_by_rule(stored, rule, lambda: self.example_embeddings(layer, rule))
        return self._theta[key]

    def _space_embed(self, layer: str) -> dict[str, torch.Tensor]:
        """A layer's theta file in this (extra) space: ``theta`` and, built with several crop rules, ``theta.<rule>``."""
        self.lens.units.record(layer)
        return self._read_cached(f"{self.lens.space}:{layer}.embed", space_file(self.lens.space, layer_file(layer, "embed")))

    def theta_by_rule(self, stored: dict[str, torch.Tensor], rule: str | None, embeddings: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Crop rule ``rule``'s theta from an embed file ``stored``, where it holds each rule's, else the mean of
        the rule's example ``embeddings`` (Lenses built with joined rules before each rule's theta was stored)."""
        if self.stored_by_rule(stored):
            return stored[theta_key(self.crop_rules, self.rule_index(rule))]
        return mean_of_examples(embeddings())

    def example_embeddings(self, layer: str, rule: str | None = None) -> torch.Tensor:
        """Per-example embeddings ``[U, k, d]`` (float32; NaN rows in empty slots) of the boxes cut by crop rule
        ``rule`` (default: the first), read from the float16 crop table on disk: only this layer's rows, so
        memory follows the layer, not the data set."""
        index = rule_slots(self.read(layer, "embed")["crop_index"], self.samples(layer).shape[1], self.rule_index(rule))
        return slot_embeddings(lambda rows: self.lens.store.read_rows(self.lens.embedding.crops_file, "embeddings", rows), index)

    def all_units(self, layers: list[str] | None = None, rule: str | None = None) -> tuple[list[str], torch.Tensor]:
        """Names and theta (by crop rule ``rule``, default the first) of the valid units (``valid``) of the given
        (default: all) layers, in layer order."""
        chosen = self.lens.units.checked(layers)
        names = [f"{layer}/{name}" for layer in chosen for name, ok in zip(self.lens.units(layer), self.valid(layer).tolist()) if ok]
        return names, torch.cat([self.theta(layer, rule)[self.valid(layer)] for layer in chosen])

    def class_relevance(self, layer: str) -> dict[str, torch.Tensor] | None:
        """Per unit and class: ``max_share`` and ``mean_share`` ``[U, K]`` of the layer's relevance, ``count``
        ``[K]``, and ``top_samples``/``top_shares`` ``[K_seen, U, m]`` for ``seen_classes``; None if not computed.
        The negative copy of a signed unit shares its channel's relevance."""
        info = self.lens.units.record(layer)
        if not self.lens.store.path(layer_file(layer, "relevance")).is_file():
            return None
        arrays = self.read(layer, "relevance")
        if info["unit_names"] != "signed":
            return arrays
        doubled = {name: torch.cat([arrays[name], arrays[name]]) for name in ("max_share", "mean_share")}
        doubled.update({name: torch.cat([arrays[name], arrays[name]], dim=1) for name in ("top_samples", "top_shares")})
        return {**arrays, **doubled}


def recorded_placements(arrays: LensArrays, layers: list[str]) -> tuple[dict[str, tuple[float, float]], dict[str, float]]:
    """The map shifts and localities a Lens's build recorded for ``layers``, each where it did (what a concept test's
    location needs; the rest it measures)."""
    shifts = {layer: shift for layer in layers if (shift := arrays.map_shift(layer)) is not None}
    return shifts, {layer: locality for layer in layers if (locality := arrays.map_locality(layer)) is not None}
