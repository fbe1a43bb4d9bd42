"""A unit's two sets of concept examples: its top-k samples by activation (always there) and by relevance for
the model's output (zennit-crp's relevance-based reference sampling; built with ``relevance_examples``).
``Lens.examples`` hands the analyses the arrays of either set (scores, samples, boxes, theta, example
embeddings and which units have examples of their own) and reads a unit's examples back as records and
images, joining them with the Lens's sample table and probe data."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from .._util.errors import SemlensError
from ..store.files import layer_file, read_crop_embeddings
from ..store.slots import rule_slots, slot_embeddings
from .examples import ConceptExample

if TYPE_CHECKING:
    from .lens import Lens

EXAMPLE_SETS = ("activation", "relevance")


def check_example_set(examples: str) -> str:
    if examples not in EXAMPLE_SETS:
        raise SemlensError(f"examples={examples!r} is not one of {', '.join(EXAMPLE_SETS)}")
    return examples


class ExampleSets:
    """A Lens's concept examples (``Lens.examples``): the arrays of its activation or relevance examples by layer
    (scores, samples, boxes, heatmaps, theta, example embeddings, which units have examples of their own),
    read back as records (``concept_examples``) and as the images the model saw."""

    def __init__(self, lens: Lens) -> None:
        self.lens = lens

    @property
    def has_relevance(self) -> bool:
        """Whether the Lens was built with relevance examples (``relevance_examples``) and they were made."""
        record = self.lens.manifest["stages"].get("examples", {})
        return bool(record.get("complete")) and "skipped" not in record

    def has_relevance_in(self, layer: str) -> bool:
        """Whether ``layer``'s units have relevance examples (none in a Lens built without them, nor in SAE layers)."""
        self.lens.units.record(layer)
        return self.has_relevance and self.lens.store.path(layer_file(layer, "relevance_topk")).is_file()

    def _relevance_file(self, layer: str, kind: str) -> dict[str, torch.Tensor]:
        """A layer's relevance-example arrays (``relevance_topk`` or ``relevance_embed``), the negative half of a
        signed layer a copy of the positive one (a channel's relevance is one), marked tied; clear errors
        where the Lens has none."""
        self.lens.units.record(layer)
        if kind == "relevance_embed" and self.lens.space is not None:
            raise SemlensError(
                f"relevance examples are embedded in the Lens's default space only, not in {self.lens.space!r}; "
                "use examples='activation' there, or the default space"
            )
        if not self.has_relevance:
            skipped = self.lens.manifest["stages"].get("examples", {}).get("skipped")
            if self.lens.manifest["identity"]["relevance"].get("examples") and not skipped:
                raise SemlensError("this Lens's relevance examples are unfinished: run the same `semlens run` again to resume it")
            why = f"they could not be computed ({skipped})" if skipped else "it was built without them"
            raise SemlensError(
                f"this Lens has no relevance examples: {why}. Rebuild it with `semlens run ... --relevance-examples "
                "--overwrite` (Python: BuildConfig(relevance_examples=True)), or use examples='activation'"
            )
        if not self.lens.store.path(layer_file(layer, kind)).is_file():
            raise SemlensError(f"layer {layer} has no relevance examples (CRP through a sparse autoencoder is not supported)")
        arrays = self.lens.arrays.read(layer, kind)
        if kind == "relevance_embed" and not self.lens.arrays.stored_by_rule(arrays):
            arrays = {**arrays, "tied": self._first_rule_ties[layer]}  # built before they were by the first rule
        if self.lens.units.record(layer)["unit_names"] != "signed":
            return arrays
        doubled = {name: torch.cat([tensor, tensor]) for name, tensor in arrays.items()}
        if "tied" in arrays:
            doubled["tied"] = torch.cat([arrays["tied"], torch.ones_like(arrays["tied"])])
        return doubled

    @cached_property
    def _first_rule_ties(self) -> dict[str, torch.Tensor]:
        """The relevance examples' ties found as the build finds them (see ``Lens._first_rule_ties``), for joined
        Lenses built before they were recorded by the first crop rule (earlier builds tied by every box)."""
        from ..store.slots import first_rule_ties

        layers = [layer for layer in self.lens.layers if self.has_relevance_in(layer)]
        return first_rule_ties({layer: self.lens.arrays.read(layer, "relevance_embed")["crop_index"] for layer in layers}, {layer: self.lens.arrays.read(layer, "relevance_topk") for layer in layers})

    def _set_array(
        self, layer: str, examples: str, activation: Callable[[str], torch.Tensor], kind: str, key: str
    ) -> torch.Tensor:
        """``activation(layer)`` for the activation examples, else the relevance examples' array ``key`` of ``kind``."""
        if check_example_set(examples) == "activation":
            return activation(layer)
        return self._relevance_file(layer, kind)[key]

    def scores(self, layer: str, examples: str = "activation") -> torch.Tensor:
        """Scores ``[U, k]`` of a set, best first: activations, or relevance shares of the sample's class."""
        return self._set_array(layer, examples, self.lens.arrays.scores, "relevance_topk", "scores")

    def samples(self, layer: str, examples: str = "activation") -> torch.Tensor:
        """Sample ids ``[U, k]`` of a set (-1 in empty slots)."""
        return self._set_array(layer, examples, self.lens.arrays.samples, "relevance_topk", "ids")

    def boxes(self, layer: str, examples: str = "activation", rule: str | None = None) -> torch.Tensor:
        """Crop boxes ``[U, k, 4]`` of a set (-1 where a slot has no crop), by crop rule ``rule`` (default: the
        first; see ``Lens.arrays.boxes``)."""
        boxes = self._set_array(layer, examples, lambda name: self.lens.arrays.read(name, "embed")["boxes"], "relevance_embed", "boxes")
        return rule_slots(boxes, self.samples(layer, examples).shape[1], self.lens.arrays.rule_index(rule))

    def heatmaps(self, layer: str, examples: str = "activation") -> torch.Tensor | None:
        """The maps ``[U, k, h, w]`` a set's crops were cut from (see ``Lens.arrays.heatmaps``): for relevance examples
        their CRP heatmaps (``relevance_heat``, the format of the activation crops' ``heat``); None where a set's
        examples are whole images."""
        if check_example_set(examples) == "activation":
            return self.lens.arrays.heatmaps(layer)
        self._relevance_file(layer, "relevance_topk")  # clear errors where the Lens or layer has none
        if self.lens.units.record(layer).get("relevance_examples", {}).get("crop") != "relevance":
            return None
        return self._relevance_file(layer, "relevance_heat")["heat"]

    def theta(self, layer: str, examples: str = "activation", rule: str | None = None) -> torch.Tensor:
        """Each unit's theta ``[U, d]`` from a set: the mean of its examples' embeddings, their boxes cut by crop
        rule ``rule`` (default: the first; see ``Lens.arrays.theta``)."""
        if check_example_set(examples) == "activation":
            return self.lens.arrays.theta(layer, rule)
        stored = self._relevance_file(layer, "relevance_embed")
        return self.lens.arrays.theta_by_rule(stored, rule, lambda: self.embeddings(layer, examples, rule))

    def valid(self, layer: str, examples: str = "activation") -> torch.Tensor:
        """Units with examples of their own in a set (neither inactive nor tied; see ``Lens.arrays.valid``)."""
        if check_example_set(examples) == "activation":
            return self.lens.arrays.valid(layer)
        return ~(self._relevance_file(layer, "relevance_topk")["inactive"] | self._relevance_file(layer, "relevance_embed")["tied"])

    def embeddings(self, layer: str, examples: str = "activation", rule: str | None = None) -> torch.Tensor:
        """Per-example embeddings ``[U, k, d]`` of a set (float32, NaN rows in empty slots), of the boxes cut by
        crop rule ``rule`` (default: the first)."""
        if check_example_set(examples) == "activation":
            return self.lens.arrays.example_embeddings(layer, rule)
        k = self.samples(layer, examples).shape[1]
        index = rule_slots(self._relevance_file(layer, "relevance_embed")["crop_index"], k, self.lens.arrays.rule_index(rule))
        return slot_embeddings(partial(read_crop_embeddings, self.lens.store), index)

    @cached_property
    def sample_table(self) -> dict[int, tuple[str, int | None]]:
        """Each probe sample's source and label by id (``samples.json``), read once."""
        def parse(table: dict) -> dict[int, tuple[str, int | None]]:
            return {int(index): (str(path), label) for index, path, label in zip(table["ids"], table["paths"], table["labels"], strict=True)}

        return self.lens.store.read_json("samples.json", parse)

    @property
    def k(self) -> int:
        """Concept examples kept per unit (after lowering to the data's size)."""
        return self.lens.manifest["identity"]["collect"]["k"]

    def concept_examples(self, unit: str, by: str = "activation") -> list[ConceptExample]:
        """A unit's concept examples, best first: its top samples by ``"activation"``, or by ``"relevance"`` for
        the model's output on the sample's class (scores are then relevance shares; Lenses built with
        ``relevance_examples``)."""
        layer, row = self.lens.units.index(unit)
        scores, ids = self.scores(layer, by)[row], self.samples(layer, by)[row]
        boxes = self.boxes(layer, by)[row]
        examples = []
        for rank, (score, sample, box) in enumerate(zip(scores.tolist(), ids.tolist(), boxes.tolist())):
            if sample >= 0 and box[0] >= 0:  # not an empty slot, nor one kept by chance (no crop: see arbitrary_slots)
                source, label = self.sample_table[sample]
                examples.append(ConceptExample(rank, sample, score, tuple(box), source, label))
        return examples

    def image(self, example: ConceptExample, crop: bool = True) -> Image.Image:
        """A concept example as the model saw it (its input view), cropped to its box unless ``crop=False``."""
        from ..model.preprocess import Preprocessing

        view = Preprocessing(**self.lens.manifest["identity"]["preprocessing"]).view(self.lens.sources.probe_data.load(example.sample))
        return view.crop(example.box) if crop else view

    def failures(self) -> list[dict[str, Any]]:
        """Samples that failed to decode, or were under ``MIN_SIDE`` pixels a side, during collection (skipped)."""
        return self.lens.store.read_json("failures.json", lambda items: [{"sample": int(item["sample"]), "error": str(item["error"])} for item in items])
