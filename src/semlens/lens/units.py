"""A Lens's units: its layers' unit names and rows, what each layer's units are (channels, SAE features, signed
halves, channels last), the model's classes as output indices, and the LRP rule relevance flowed by.

``lens.units(layer)`` names a layer's units; ``lens.units.index("layer/3")`` finds one. Everything here is read
from the manifest: nothing loads the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._util.errors import SemlensError
from ..model.imagenet import model_class_index
from ..model.loading import NAME_OUTPUTS
from ..model.units import unit_names

if TYPE_CHECKING:
    from ..interventions.effects import UnitToTest
    from ..model.units import LayerSpec
    from .lens import Lens


class LensUnits:
    """The units a Lens was built on, addressed as ``"layer/index"`` (``"layer/index-"`` for the negative half of a
    signed layer), and the model's classes (``Lens.units``)."""

    def __init__(self, lens: Lens) -> None:
        self.lens = lens

    def __call__(self, layer: str) -> list[str]:
        """A layer's unit names, in row order: channel indices, ``i`` and ``i-`` for a signed layer's two copies."""
        info = self.record(layer)
        return unit_names(info["base_units"], info["unit_names"] == "signed")

    def record(self, layer: str) -> dict[str, Any]:
        """What the manifest records of ``layer`` (its spec, unit count, crop and example records); a clear error
        listing the layers for an unknown one."""
        try:
            return self.lens.manifest["layers"][layer]
        except KeyError:
            raise SemlensError(f"this Lens has no layer {layer!r}; its layers: {', '.join(self.lens.layers)}") from None

    def checked(self, layers: list[str] | None) -> list[str]:
        """The given layers (each checked), or all layers when None."""
        for layer in layers or []:
            self.record(layer)
        return list(layers) if layers else self.lens.layers

    def index(self, unit: str) -> tuple[str, int]:
        """``"layer/name"`` to (layer, row index); a clear error for unknown layers and units."""
        layer, sep, name = unit.rpartition("/")
        if not sep:
            raise SemlensError(f"unit {unit!r} is not of the form layer/index (e.g. {self.lens.layers[0]}/0)")
        names = self(layer)
        try:
            return layer, names.index(name)
        except ValueError:
            raise SemlensError(f"layer {layer!r} has no unit {name!r}; its units are {names[0]}..{names[-1]}") from None

    def channels(self, units: list[str]) -> dict[str, list[int]]:
        """Units (``layer/index``, ``layer/index-``) as channels (SAE features for SAE layers) per layer, for pruning."""
        grouped: dict[str, list[int]] = {}
        for unit in units:
            layer, row = self.index(unit)
            grouped.setdefault(layer, []).append(row % self.record(layer)["base_units"])
        return {layer: sorted(set(members)) for layer, members in grouped.items()}

    def to_test(self, unit: str, specs: dict[str, LayerSpec]) -> UnitToTest:
        """``unit`` as the concept test takes it: its layer's spec (of ``specs``), its row and its channel."""
        from ..interventions.effects import UnitToTest

        layer, row = self.index(unit)
        return UnitToTest(unit, specs[layer], row, row % self.record(layer)["base_units"])

    def channels_last(self, layers: list[str]) -> list[str]:
        """Those of ``layers`` read channels last (maps N,H,W,C: ``LayerSpec.channels_last``): relevance,
        explanations, graphs and projections take their channels on the last dimension."""
        return [layer for layer in layers if self.record(layer)["spec"].get("channels_last")]

    def sae(self, layer: str) -> dict[str, Any] | None:
        """The SAE a layer's units are the features of (architecture, d_in, d_sae, k, format, hook_name), or None."""
        return self.record(layer).get("sae")

    @property
    def lrp_rule(self) -> str:
        """The convolutions' LRP rule the Lens was built with (``BuildConfig.lrp_rule``), which its explanations
        and attribution graphs use too; a name this semlens does not know (a newer one's, or an altered Lens) is refused."""
        from ..relevance.choices import LRP_RULE_NAMES

        rule = self.lens.manifest["identity"]["relevance"].get("lrp_rule", "zplus")
        if rule not in LRP_RULE_NAMES:
            raise SemlensError(f"this Lens was built with the LRP rule {rule!r}, which this semlens does not know ({', '.join(LRP_RULE_NAMES)})")
        return rule

    def class_index(self, name: str | int) -> int:
        """A class given by name (case-insensitive; or the WordNet id of an ImageNet class) or index, as the
        model's output index."""
        classes = self.lens.classes
        if isinstance(name, int) or str(name).isdecimal():
            index = int(name)
            if classes and not 0 <= index < len(classes):
                raise SemlensError(f"class index {index} is out of range: this model has {len(classes)} classes")
            return index
        found = model_class_index(str(name), classes or [])
        if found is not None:
            return found
        shown = self._shown_classes()
        if str(name).casefold() in {str(data_class).casefold() for data_class in self.lens.manifest.get("classes") or []}:
            raise SemlensError(
                f"{name!r} is a class of the probe data, not of the model: its images were explained by the classes the model "
                f"predicts for them; give a class of the model{f' (the data shows {shown})' if shown else ''}"
            )
        hint = f"e.g. {shown or ', '.join((classes or [])[:5])}" if classes else f"this model has no class names: give its output index, or name its outputs ({NAME_OUTPUTS}) and build again"
        raise SemlensError(f"unknown class {name!r}; give a class index or a class name ({hint})")

    def _shown_classes(self, most: int = 8) -> str:
        """The model's classes the class-relevance data holds samples of, by name, at most ``most`` ("" if unknown)."""
        relevance = self.lens.arrays.class_relevance(self.lens.layers[-1]) if self.lens.classes else None
        if relevance is None or "seen_classes" not in relevance:
            return ""
        return named_classes(self.lens.classes, relevance["seen_classes"].tolist(), most)


def named_classes(classes: list[str] | None, indices: list[int], most: int = 8) -> str:
    """Classes by name (by index where the model has no names), at most ``most`` of them, as errors list them."""
    named = [classes[index] if classes and index < len(classes) else str(index) for index in indices[:most]]
    return ", ".join(named) + (f", ... ({len(indices) - most} more)" if len(indices) > most else "")
