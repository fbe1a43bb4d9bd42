"""A Lens's per-layer arrays (top-k, crop boxes, theta, class relevance), each file read on first use and
kept: the part of ``Lens`` that reads what the build stored per unit."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

import torch

from .store import layer_file

if TYPE_CHECKING:
    from .lens import Lens


def mean_over_rules(per_slot: torch.Tensor, k: int) -> torch.Tensor:
    """Per-slot crop values ``[U, V·k, ...]`` as one per example ``[U, k, ...]``: their mean over the V crop
    rules a Lens was built with (rule ``v``'s box of example ``s`` is slot ``v·k + s``)."""
    return per_slot.unflatten(1, (-1, k)).mean(dim=1)


class LensArrays:
    """Part of ``Lens``: its per-layer arrays, from ``Lens.store``, for the layers ``Lens`` checks."""

    @cached_property
    def _array_files(self) -> dict[str, dict[str, torch.Tensor]]:
        """The array files read so far, by ``layer.kind``."""
        return {}

    def _read(self: Lens, layer: str, kind: str) -> dict[str, torch.Tensor]:
        self._layer(layer)
        key = f"{layer}.{kind}"
        if key not in self._array_files:
            self._array_files[key] = self.store.read_tensors(layer_file(layer, kind))
        return self._array_files[key]

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
        """True for units that never fired or whose top-k scores are all equal: their examples are arbitrary."""
        return self._read(layer, "topk")["inactive"]

    def tied(self, layer: str) -> torch.Tensor:
        """True for units whose examples are the same crops as an earlier unit's (so is their theta)."""
        stored = self._read(layer, "embed")
        return stored["tied"] if "tied" in stored else self._tied_without_record[layer]

    @cached_property
    def _tied_without_record(self: Lens) -> dict[str, torch.Tensor]:
        """Ties of a Lens built before they were recorded, found as the build finds them."""
        from ..analysis.validity import tied_units

        return tied_units(
            {layer: self._read(layer, "embed")["crop_index"] for layer in self.layers},
            {layer: self.inactive(layer) for layer in self.layers},
        )

    def valid(self, layer: str) -> torch.Tensor:
        """True for units with examples of their own: neither inactive nor tied. Search, labels, the map,
        measures, audits, graphs and comparisons leave the others out."""
        return ~(self.inactive(layer) | self.tied(layer))

    def heatmaps(self: Lens, layer: str) -> torch.Tensor | None:
        """The maps each example's crop box was cut from ``[U, k, h, w]``: CRP relevance (pooled) for relevance
        crops, the activation maps for activation crops; None where examples are whole images."""
        mode = self._layer(layer).get("crop", {}).get("mode")
        if mode == "relevance":
            return self._read(layer, "crops").get("heat")
        return self.maps(layer) if mode == "activation" else None

    def boxes(self, layer: str) -> torch.Tensor:
        """Crop boxes ``[U, k, 4]`` (x0, y0, x1, y1) in the model's input view; by the first crop rule where the
        Lens was built with several (``crop_rule="peak+share"``: the others' follow in the stored array)."""
        return self._read(layer, "embed")["boxes"][:, : self.samples(layer).shape[1]]

    def theta(self: Lens, layer: str) -> torch.Tensor:
        """Each unit's semantic embedding ``[U, d]``: the mean of its concept examples' embeddings (in this
        Lens's embedding space: see ``Lens.in_space``)."""
        return self._read(layer, "embed")["theta"] if self.space is None else self._space_theta(layer)

    def example_embeddings(self: Lens, layer: str) -> torch.Tensor:
        """Per-example embeddings ``[U, k, d]`` (float32; NaN rows in empty slots), read from the float16
        crop table on disk: only this layer's rows, so memory follows the layer, not the data set. With
        several crop rules, an example's embedding is the mean of its boxes' (their mean over k is theta)."""
        index = self._read(layer, "embed")["crop_index"]
        embeddings = self.store.read_rows(self.crops_file, "embeddings", index.clamp_min(0)).float()
        embeddings[index < 0] = float("nan")
        return mean_over_rules(embeddings, self.samples(layer).shape[1])

    def all_units(self: Lens, layers: list[str] | None = None) -> tuple[list[str], torch.Tensor]:
        """Names and theta of the valid units (``valid``) of the given (default: all) layers, in layer order."""
        chosen = self.checked_layers(layers)
        names = [f"{layer}/{name}" for layer in chosen for name, ok in zip(self.units(layer), self.valid(layer).tolist()) if ok]
        return names, torch.cat([self.theta(layer)[self.valid(layer)] for layer in chosen])

    def class_relevance(self: Lens, layer: str) -> dict[str, torch.Tensor] | None:
        """Per unit and class: ``max_share`` and ``mean_share`` ``[U, K]`` of the layer's relevance, ``count``
        ``[K]``, and ``top_samples``/``top_shares`` ``[K_seen, U, m]`` for ``seen_classes``; None if not computed.
        The negative copy of a signed unit shares its channel's relevance."""
        info = self._layer(layer)
        if not self.store.path(layer_file(layer, "relevance")).is_file():
            return None
        arrays = self._read(layer, "relevance")
        if info["unit_names"] != "signed":
            return arrays
        doubled = {name: torch.cat([arrays[name], arrays[name]]) for name in ("max_share", "mean_share")}
        doubled.update({name: torch.cat([arrays[name], arrays[name]], dim=1) for name in ("top_samples", "top_shares")})
        return {**arrays, **doubled}
