"""A Lens: a built Lens directory opened for questions, arrays read lazily on first use."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._util.cache import cache_dir
from .._util.errors import SemlensError, StaleLensError
from .._util.fingerprint import hash_json
from ..model.imagenet import model_class_index
from ..model.units import unit_names
from ..store.files import LensStore
from ..store.layout import check_layout
from ..store.spaces import DEFAULT, EmbeddingSpace, check_space_name, space_name
from ..store.trust import LensAccess, is_trusted, lens_key
from .arrays import LensArrays
from .example_sets import ExampleSets
from . import audits as _audits
from . import clusters as _clusters
from . import correction as _correction
from . import explain as _explain
from . import labels as _labels
from . import measures as _measures
from . import search as _search
from . import spaces as _spaces
from .spaces import SpaceView
from .labels import LabelStore
from .sources import LensSources

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import nn

    from ..data import ImageData
    from ..foundation import FoundationModel
    from ..model.loading import LoadedModel
    from .examples import ConceptExample

STAGES = ("collect", "embed")


class Lens:
    """A model's units embedded in a foundation model's space, with their concept examples.

    Units are addressed as ``"layer/index"`` (``"layer/index-"`` for the negative half of a signed
    layer). Open with :meth:`Lens.open`; nothing but the manifest is read until asked for. The Lens opens
    itself, names its units and classes, keeps its views in other embedding spaces (``in_space``) and holds
    what it reads: ``arrays``, ``examples``, ``labels``, ``embedding`` (its space) and ``sources``. Each
    question is a function of its own module taking the Lens (``semlens.lens.search.search(lens, ...)``),
    carried as a method (``lens.search(...)``).
    """

    def __init__(self, store: LensStore, manifest: dict[str, Any], access: LensAccess | None = None, space: str | None = None) -> None:
        self.store, self.manifest, self.space = store, manifest, space  # space: see Lens.in_space
        self.access = access or LensAccess()
        self.trusted = self.access.trust or is_trusted(manifest)

    @classmethod
    def open(
        cls,
        path: str | Path,
        trust: bool = False,
        data: str | Path | ImageData | Sequence | None = None,
        foundation: str | FoundationModel | tuple | None = None,
        model: str | nn.Module | LoadedModel | None = None,
        extra_foundations: Sequence[FoundationModel | tuple] = (),
    ) -> Lens:
        """Open a built Lens. It never runs code or reads files that its own files name unless it is trusted
        (``trust=True``, or built on this machine: see ``semlens.store.trust``); ``data`` (a folder or a data
        spec), ``foundation`` and ``model`` (specs) name them instead, as the user's own choice, or give them as
        the objects a Lens built from objects asks for (a list or dataset of images, a foundation model as
        ``build_lens`` takes it, an ``nn.Module``, which gets the preprocessing the Lens was built with; in
        ``extra_foundations``, those of the spaces a build made from objects); each is checked by its fingerprint."""
        from ..foundation import foundation_object

        if foundation is not None and not isinstance(foundation, str):
            foundation = foundation_object(foundation)
        extra = tuple(foundation_object(given, "extra_foundations") for given in extra_foundations)
        manifest = LensStore(path).read_manifest()
        for space in manifest.get("spaces", {}):
            check_space_name(space)  # each names a folder of the Lens: none may lead out of it
        store = LensStore(path, manifest.get("arrays"))
        store.check_sizes()
        shard = manifest["identity"].get("shard")
        if shard is not None:
            raise SemlensError(
                f"{store.root} is shard {shard['index']}/{shard['count']} of a Lens, not a Lens; "
                "combine all shards with `semlens merge OUT PART...`"
            )
        pending = [stage for stage in STAGES if not manifest["stages"].get(stage, {}).get("complete")]
        if pending:
            raise SemlensError(
                f"the Lens at {store.root} is incomplete (stage {', '.join(pending)} not finished); "
                "run the same `semlens run` again to resume it"
            )
        check_layout(store, manifest)
        return cls(store, manifest, LensAccess(trust, str(data) if isinstance(data, Path) else data, foundation, model, extra))

    @cached_property
    def cache(self) -> LensStore:
        """This Lens's folder in the user cache (the search index, the explorer's thumbnails): caches never
        write into a Lens, so reading one changes nothing in it. Keyed by what the Lens follows and by its
        arrays' hashes: a look-alike Lens (same build id, other examples) gets a folder of its own."""
        return LensStore(cache_dir("lenses", hash_json([lens_key(self.manifest), self.manifest.get("arrays")])))

    @cached_property
    def arrays(self) -> LensArrays:
        """Its per-layer arrays (top-k scores and samples, crop boxes, theta, which units are valid, class
        relevance, ...), each file read on first use: ``semlens.lens.arrays``."""
        return LensArrays(self)

    @cached_property
    def labels(self) -> LabelStore:
        """Its labels, what ``label`` made (stored with the Lens, or kept in this process), and what they say
        about each unit and layer: ``semlens.lens.labels.LabelStore``."""
        return LabelStore(self)

    @cached_property
    def examples(self) -> ExampleSets:
        """Its units' concept examples, by activation or by relevance: their arrays by layer, and each unit's
        read back as records and images: ``semlens.lens.example_sets``."""
        return ExampleSets(self)

    def concept_examples(self, unit: str, by: str = "activation") -> list[ConceptExample]:
        """A unit's concept examples, best first (``ExampleSets.concept_examples``)."""
        return self.examples.concept_examples(unit, by)

    # -- its questions: each a function of its own module, taking the Lens ----------------------

    search = _search.search
    search_similar = _search.search_similar
    label = _labels.label
    label_of = _labels.label_of
    overview = _measures.overview
    measures = _measures.measures
    similarity = _measures.similarity
    compare = _measures.compare
    concept_clusters = _clusters.concept_clusters
    relevant_units = _audits.relevant_units
    audit = _audits.audit
    audit_classes = _audits.audit_classes
    attribution_graph = _audits.attribution_graph
    explain = _explain.explain
    correct = _correction.correct
    compare_spaces = _spaces.compare_spaces

    # -- what is in it --------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The Lens directory."""
        return self.store.root

    @property
    def layers(self) -> list[str]:
        """The layers the Lens was built on, in the order given to the build."""
        return list(self.manifest["layers"])

    @property
    def k(self) -> int:
        """Concept examples kept per unit (after lowering to the data's size)."""
        return self.manifest["identity"]["collect"]["k"]

    @property
    def lrp_rule(self) -> str:
        """The convolutions' LRP rule the Lens was built with (``BuildConfig.lrp_rule``), which its explanations
        and attribution graphs use too; a name this semlens does not know (a newer one's, or an altered Lens) is refused."""
        from ..relevance.rules import LRP_RULE_NAMES

        rule = self.manifest["identity"]["relevance"].get("lrp_rule", "zplus")
        if rule not in LRP_RULE_NAMES:
            raise SemlensError(f"this Lens was built with the LRP rule {rule!r}, which this semlens does not know ({', '.join(LRP_RULE_NAMES)})")
        return rule

    @property
    def classes(self) -> list[str] | None:
        """The model's class names (None when it has none)."""
        return self.manifest.get("model_classes")

    def units(self, layer: str) -> list[str]:
        """A layer's unit names, in row order: channel indices, ``i`` and ``i-`` for a signed layer's two copies."""
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

    def class_index(self, name: str | int) -> int:
        """A class given by name (case-insensitive; or the WordNet id of an ImageNet class) or index, as the
        model's output index."""
        classes = self.classes
        if isinstance(name, int) or str(name).isdecimal():
            index = int(name)
            if classes and not 0 <= index < len(classes):
                raise SemlensError(f"class index {index} is out of range: this model has {len(classes)} classes")
            return index
        found = model_class_index(str(name), classes or [])
        if found is not None:
            return found
        hint = f"e.g. {', '.join((classes or [])[:5])}" if classes else "this model has no class names"
        raise SemlensError(f"unknown class {name!r}; give a class index or a class name ({hint})")

    def channels(self, units: list[str]) -> dict[str, list[int]]:
        """Units (``layer/index``, ``layer/index-``) as channels (SAE features for SAE layers) per layer, for pruning."""
        grouped: dict[str, list[int]] = {}
        for unit in units:
            layer, row = self.unit_index(unit)
            grouped.setdefault(layer, []).append(row % self._layer(layer)["base_units"])
        return {layer: sorted(set(members)) for layer, members in grouped.items()}

    def channels_last(self, layers: list[str]) -> list[str]:
        """Those of ``layers`` read channels last (maps N,H,W,C: ``LayerSpec.channels_last``): relevance,
        explanations, graphs and projections take their channels on the last dimension."""
        return [layer for layer in layers if self._layer(layer)["spec"].get("channels_last")]

    def sae(self, layer: str) -> dict[str, Any] | None:
        """The SAE a layer's units are the features of (architecture, d_in, d_sae, k, format, hook_name), or None."""
        return self._layer(layer).get("sae")

    def checked_layers(self, layers: list[str] | None) -> list[str]:
        """The given layers (each checked), or all layers when None."""
        for layer in layers or []:
            self._layer(layer)
        return list(layers) if layers else self.layers

    def _layer(self, layer: str) -> dict[str, Any]:
        try:
            return self.manifest["layers"][layer]
        except KeyError:
            raise SemlensError(f"this Lens has no layer {layer!r}; its layers: {', '.join(self.layers)}") from None

    # -- its embedding spaces (semlens.lens.spaces) ---------------------------------------------

    _default_view: Lens | None = None  # a view's Lens in the default space, which keeps the views

    @property
    def default_space(self) -> str:
        """The default space's name (its foundation model's spec made a name; ``"default"`` names it too)."""
        return space_name(self.manifest["foundation"]["spec"])

    @property
    def spaces(self) -> list[EmbeddingSpace]:
        """The default space first, then the extra ones in the order they were added."""
        found = [EmbeddingSpace(self.default_space, self.manifest["foundation"]["spec"], self.manifest["foundation"]["id"],
                                self.manifest["foundation"]["dim"], True, True)]  # fmt: skip
        for name, record in self.manifest.get("spaces", {}).items():
            found.append(EmbeddingSpace(name, record["spec"], record.get("id", ""), record.get("dim", 0), False, record.get("complete", False)))
        return found

    def in_space(self, space: str | None) -> Lens:
        """This Lens seen in embedding space ``space`` (None, ``"default"`` or the default's name: this Lens's
        default space); views are made once and share the arrays read so far."""
        name = self._space_key(space)
        home = self._default_view or self
        if name is None:
            return home
        if name not in home._views:
            view = type(home)(home.store, home.manifest, home.access, name)
            view.arrays.files = home.arrays.files  # the same crops: top-k, boxes and ties are shared
            view._default_view = home
            home._views[name] = view
        return home._views[name]

    @cached_property
    def _views(self) -> dict[str, Lens]:
        return {}

    def forget_view(self, space: str) -> None:
        """Forget the view of ``space`` and its arrays read so far (the space was embedded again)."""
        home = self._default_view or self
        home._views.pop(space, None)
        for key in [key for key in home.arrays.files if key.startswith(f"{space}:")]:
            del home.arrays.files[key]

    def _space_key(self, space: str | None) -> str | None:
        """``space`` checked: None for the default space, else the name of a complete, current extra space."""
        if space is None or space in (DEFAULT, self.default_space):
            return None
        extra = self.manifest.get("spaces", {})
        if space not in extra:
            names = ", ".join([f"{self.default_space} (or {DEFAULT})", *(name for name in extra)])
            raise SemlensError(f"the Lens at {self.path} has no embedding space {space!r}; its spaces: {names} (add one with `semlens embed`)")
        record = extra[space]
        if not record.get("complete"):
            raise SemlensError(f"embedding space {space!r} is unfinished; run the same `semlens embed` again to resume it")
        if record["crops"] != self.manifest["stages"]["embed"]["fingerprint"]:
            raise StaleLensError(
                f"embedding space {space!r} embedded other crops than this Lens now has (it was built again since); "
                f"embed it again with `semlens embed LENS --foundation {record['spec']} --name {space} --overwrite`"
            )
        return space

    # -- what it names outside itself (semlens.lens.sources) ------------------------------------

    @cached_property
    def sources(self) -> LensSources:
        """What it names outside itself (probe data, foundation models, model, SAE files), loaded only as its
        trust allows: ``semlens.lens.sources``."""
        return LensSources(self.manifest, self.access, self.trusted)

    @cached_property
    def embedding(self) -> SpaceView:
        """The embedding space this Lens (or view: ``in_space``) answers in: its record, foundation model,
        probes, files and caches: ``semlens.lens.spaces.SpaceView``."""
        return SpaceView(self)

    def model(self) -> LoadedModel:
        """The model under study: the one the user named (``model=``, ``--model``), else (trusted Lenses only)
        reloaded from its recorded spec; checked against the recorded weights either way."""
        return self.sources.model()

    def __repr__(self) -> str:
        units = sum(layer["units"] for layer in self.manifest["layers"].values())
        return f"Lens({str(self.path)!r}, layers={len(self.layers)}, units={units}, foundation={self.embedding.foundation_id!r})"
