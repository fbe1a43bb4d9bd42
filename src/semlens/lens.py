"""A Lens: a built Lens directory opened for questions, arrays read lazily on first use."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from .errors import SemlensError
from .store import LensStore, layer_file
from .units import unit_names

STAGES = ("collect", "embed")


@dataclass(frozen=True)
class ConceptExample:
    """One of a unit's top samples: its score, its crop box in the model's input view, its source."""

    rank: int
    sample: int
    score: float
    box: tuple[int, int, int, int]
    source: str
    label: int | None


class Lens:
    """A model's units embedded in a foundation model's space, with their concept examples.

    Units are addressed as ``"layer/index"`` (``"layer/index-"`` for the negative half of a signed
    layer). Open with :meth:`Lens.open`; nothing but the manifest is read until asked for.
    """

    def __init__(self, store: LensStore, manifest: dict[str, Any]) -> None:
        self.store, self.manifest = store, manifest
        self._arrays: dict[str, dict[str, torch.Tensor]] = {}

    @classmethod
    def open(cls, path: str | Path) -> Lens:
        store = LensStore(path)
        manifest = store.read_manifest()
        pending = [stage for stage in STAGES if not manifest["stages"].get(stage, {}).get("complete")]
        if pending:
            raise SemlensError(
                f"the Lens at {store.root} is incomplete (stage {', '.join(pending)} not finished); "
                "run the same `semlens run` again to resume it"
            )
        return cls(store, manifest)

    # -- what is in it --------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self.store.root

    @property
    def layers(self) -> list[str]:
        return list(self.manifest["layers"])

    @property
    def k(self) -> int:
        return self.manifest["identity"]["collect"]["k"]

    @property
    def foundation_id(self) -> str:
        return self.manifest["foundation"]["id"]

    def units(self, layer: str) -> list[str]:
        info = self._layer(layer)
        return unit_names(info["base_units"], info["unit_names"] == "signed")

    def unit_index(self, unit: str) -> tuple[str, int]:
        """``"layer/name"`` to (layer, row index); a clear error for unknown layers and units."""
        layer, sep, name = unit.rpartition("/")
        if not sep:
            raise SemlensError(f"unit {unit!r} is not of the form layer/index (e.g. {self.layers[0]}/0)")
        names = self.units(layer)
        try:
            return layer, names.index(name)
        except ValueError:
            raise SemlensError(f"layer {layer!r} has no unit {name!r}; its units are {names[0]}..{names[-1]}") from None

    def _layer(self, layer: str) -> dict[str, Any]:
        try:
            return self.manifest["layers"][layer]
        except KeyError:
            raise SemlensError(f"this Lens has no layer {layer!r}; its layers: {', '.join(self.layers)}") from None

    # -- arrays ---------------------------------------------------------------------------------

    def _read(self, layer: str, kind: str) -> dict[str, torch.Tensor]:
        self._layer(layer)
        key = f"{layer}.{kind}"
        if key not in self._arrays:
            self._arrays[key] = self.store.read_tensors(layer_file(layer, kind))
        return self._arrays[key]

    def scores(self, layer: str) -> torch.Tensor:
        """Top-k scores ``[U, k]`` (best first; -inf in empty slots)."""
        return self._read(layer, "topk")["scores"]

    def samples(self, layer: str) -> torch.Tensor:
        """Sample ids of the top-k ``[U, k]`` (-1 in empty slots)."""
        return self._read(layer, "topk")["ids"]

    def maps(self, layer: str) -> torch.Tensor | None:
        """Activation maps of the top-k ``[U, k, h, w]``, or None for non-spatial layers."""
        return self._read(layer, "topk").get("maps")

    def inactive(self, layer: str) -> torch.Tensor:
        """True for units whose top-k scores are all equal: their examples say nothing."""
        return self._read(layer, "topk")["inactive"]

    def boxes(self, layer: str) -> torch.Tensor:
        """Crop boxes ``[U, k, 4]`` (x0, y0, x1, y1) in the model's input view."""
        return self._read(layer, "embed")["boxes"]

    def theta(self, layer: str) -> torch.Tensor:
        """Each unit's semantic embedding ``[U, d]``: the mean of its concept examples' embeddings."""
        return self._read(layer, "embed")["theta"]

    @cached_property
    def _crops(self) -> dict[str, torch.Tensor]:
        return self.store.read_tensors("crops.safetensors")

    def example_embeddings(self, layer: str) -> torch.Tensor:
        """Per-example embeddings ``[U, k, d]`` (float32; NaN rows in empty slots)."""
        index = self._read(layer, "embed")["crop_index"]
        embeddings = self._crops["embeddings"].float()[index.clamp_min(0)]
        embeddings[index < 0] = float("nan")
        return embeddings

    @cached_property
    def _sample_table(self) -> dict[int, tuple[str, int | None]]:
        table = self.store.read_json("samples.json")
        return {index: (path, label) for index, path, label in zip(table["ids"], table["paths"], table["labels"])}

    def concept_examples(self, unit: str) -> list[ConceptExample]:
        """A unit's concept examples, best first."""
        layer, row = self.unit_index(unit)
        scores, ids, boxes = self.scores(layer)[row], self.samples(layer)[row], self.boxes(layer)[row]
        examples = []
        for rank, (score, sample, box) in enumerate(zip(scores.tolist(), ids.tolist(), boxes.tolist())):
            if sample >= 0:
                source, label = self._sample_table[sample]
                examples.append(ConceptExample(rank, sample, score, tuple(box), source, label))
        return examples

    @property
    def data_root(self) -> Path | None:
        root = self.store.read_json("samples.json")["root"]
        return Path(root) if root else None

    def failures(self) -> list[dict[str, Any]]:
        """Samples that failed to decode during collection (skipped)."""
        return self.store.read_json("failures.json")

    def __repr__(self) -> str:
        units = sum(layer["units"] for layer in self.manifest["layers"].values())
        return f"Lens({str(self.path)!r}, layers={len(self.layers)}, units={units}, foundation={self.foundation_id!r})"
