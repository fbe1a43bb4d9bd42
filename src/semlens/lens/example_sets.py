"""A unit's two sets of concept examples: its top-k samples by activation (always there) and by relevance for
the model's output (zennit-crp's relevance-based reference sampling; built with ``relevance_examples``).
The part of ``Lens`` that hands the analyses the arrays of either set: scores, samples, boxes, theta,
example embeddings and which units have examples of their own."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property, partial
from typing import TYPE_CHECKING

import torch

from .._util.errors import SemlensError
from ..store.files import layer_file, read_crop_embeddings
from ..store.slots import rule_slots, slot_embeddings

if TYPE_CHECKING:
    from .lens import Lens

EXAMPLE_SETS = ("activation", "relevance")


def check_example_set(examples: str) -> str:
    if examples not in EXAMPLE_SETS:
        raise SemlensError(f"examples={examples!r} is not one of {', '.join(EXAMPLE_SETS)}")
    return examples


class LensExampleSets:
    """Part of ``Lens``: the arrays of its activation or relevance examples, by layer."""

    @property
    def has_relevance_examples(self: Lens) -> bool:
        """Whether the Lens was built with relevance examples (``relevance_examples``) and they were made."""
        record = self.manifest["stages"].get("examples", {})
        return bool(record.get("complete")) and "skipped" not in record

    def has_relevance_examples_in(self: Lens, layer: str) -> bool:
        """Whether ``layer``'s units have relevance examples (none in a Lens built without them, nor in SAE layers)."""
        self._layer(layer)
        return self.has_relevance_examples and self.store.path(layer_file(layer, "relevance_topk")).is_file()

    def _relevance_file(self: Lens, layer: str, kind: str) -> dict[str, torch.Tensor]:
        """A layer's relevance-example arrays (``relevance_topk`` or ``relevance_embed``), the negative half of a
        signed layer a copy of the positive one (a channel's relevance is one), marked tied; clear errors
        where the Lens has none."""
        self._layer(layer)
        if kind == "relevance_embed" and self.space is not None:
            raise SemlensError(
                f"relevance examples are embedded in the Lens's default space only, not in {self.space!r}; "
                "use examples='activation' there, or the default space"
            )
        if not self.has_relevance_examples:
            skipped = self.manifest["stages"].get("examples", {}).get("skipped")
            if self.manifest["identity"]["relevance"].get("examples") and not skipped:
                raise SemlensError("this Lens's relevance examples are unfinished: run the same `semlens run` again to resume it")
            why = f"they could not be computed ({skipped})" if skipped else "it was built without them"
            raise SemlensError(
                f"this Lens has no relevance examples: {why}. Rebuild it with `semlens run ... --relevance-examples "
                "--overwrite` (Python: BuildConfig(relevance_examples=True)), or use examples='activation'"
            )
        if not self.store.path(layer_file(layer, kind)).is_file():
            raise SemlensError(f"layer {layer} has no relevance examples (CRP through a sparse autoencoder is not supported)")
        arrays = self._read(layer, kind)
        if kind == "relevance_embed" and not self._stored_by_rule(arrays):
            arrays = {**arrays, "tied": self._first_rule_relevance_ties[layer]}  # built before they were by the first rule
        if self._layer(layer)["unit_names"] != "signed":
            return arrays
        doubled = {name: torch.cat([tensor, tensor]) for name, tensor in arrays.items()}
        if "tied" in arrays:
            doubled["tied"] = torch.cat([arrays["tied"], torch.ones_like(arrays["tied"])])
        return doubled

    @cached_property
    def _first_rule_relevance_ties(self: Lens) -> dict[str, torch.Tensor]:
        """The relevance examples' ties found as the build finds them (see ``Lens._first_rule_ties``), for joined
        Lenses built before they were recorded by the first crop rule (earlier builds tied by every box)."""
        from ..store.slots import first_rule_ties

        layers = [layer for layer in self.layers if self.has_relevance_examples_in(layer)]
        return first_rule_ties({layer: self._read(layer, "relevance_embed")["crop_index"] for layer in layers}, {layer: self._read(layer, "relevance_topk") for layer in layers})

    def _set_array(
        self: Lens, layer: str, examples: str, activation: Callable[[str], torch.Tensor], kind: str, key: str
    ) -> torch.Tensor:
        """``activation(layer)`` for the activation examples, else the relevance examples' array ``key`` of ``kind``."""
        if check_example_set(examples) == "activation":
            return activation(layer)
        return self._relevance_file(layer, kind)[key]

    def example_scores(self: Lens, layer: str, examples: str = "activation") -> torch.Tensor:
        """Scores ``[U, k]`` of a set, best first: activations, or relevance shares of the sample's class."""
        return self._set_array(layer, examples, self.scores, "relevance_topk", "scores")

    def example_samples(self: Lens, layer: str, examples: str = "activation") -> torch.Tensor:
        """Sample ids ``[U, k]`` of a set (-1 in empty slots)."""
        return self._set_array(layer, examples, self.samples, "relevance_topk", "ids")

    def example_boxes(self: Lens, layer: str, examples: str = "activation", rule: str | None = None) -> torch.Tensor:
        """Crop boxes ``[U, k, 4]`` of a set (-1 where a slot has no crop), by crop rule ``rule`` (default: the
        first; see ``Lens.boxes``)."""
        boxes = self._set_array(layer, examples, lambda name: self._read(name, "embed")["boxes"], "relevance_embed", "boxes")
        return rule_slots(boxes, self.example_samples(layer, examples).shape[1], self.rule_index(rule))

    def example_heatmaps(self: Lens, layer: str, examples: str = "activation") -> torch.Tensor | None:
        """The maps ``[U, k, h, w]`` a set's crops were cut from (see ``Lens.heatmaps``): for relevance examples
        their CRP heatmaps (``relevance_heat``, the format of the activation crops' ``heat``); None where a set's
        examples are whole images."""
        if check_example_set(examples) == "activation":
            return self.heatmaps(layer)
        self._relevance_file(layer, "relevance_topk")  # clear errors where the Lens or layer has none
        if self._layer(layer).get("relevance_examples", {}).get("crop") != "relevance":
            return None
        return self._relevance_file(layer, "relevance_heat")["heat"]

    def theta_of(self: Lens, layer: str, examples: str = "activation", rule: str | None = None) -> torch.Tensor:
        """Each unit's theta ``[U, d]`` from a set: the mean of its examples' embeddings, their boxes cut by crop
        rule ``rule`` (default: the first; see ``Lens.theta``)."""
        if check_example_set(examples) == "activation":
            return self.theta(layer, rule)
        stored = self._relevance_file(layer, "relevance_embed")
        return self._theta_by_rule(stored, rule, lambda: self.example_embeddings_of(layer, examples, rule))

    def valid_of(self: Lens, layer: str, examples: str = "activation") -> torch.Tensor:
        """Units with examples of their own in a set (neither inactive nor tied; see ``Lens.valid``)."""
        if check_example_set(examples) == "activation":
            return self.valid(layer)
        return ~(self._relevance_file(layer, "relevance_topk")["inactive"] | self._relevance_file(layer, "relevance_embed")["tied"])

    def example_embeddings_of(self: Lens, layer: str, examples: str = "activation", rule: str | None = None) -> torch.Tensor:
        """Per-example embeddings ``[U, k, d]`` of a set (float32, NaN rows in empty slots), of the boxes cut by
        crop rule ``rule`` (default: the first)."""
        if check_example_set(examples) == "activation":
            return self.example_embeddings(layer, rule)
        k = self.example_samples(layer, examples).shape[1]
        index = rule_slots(self._relevance_file(layer, "relevance_embed")["crop_index"], k, self.rule_index(rule))
        return slot_embeddings(partial(read_crop_embeddings, self.store), index)
