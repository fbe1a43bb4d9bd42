"""A Lens: a built Lens directory opened for questions, arrays read lazily on first use."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._util.display import HtmlResult
from .._util.errors import SemlensError, StaleLensError
from ..store.files import LensStore
from ..store.layout import check_layout
from ..store.spaces import DEFAULT, check_space_name
from ..store.trust import LensAccess, is_trusted
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
from .units import LensUnits

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import nn

    from ..data import ImageData
    from ..foundation import FoundationModel
    from ..model.loading import LoadedModel

STAGES = ("collect", "embed")


class Lens(HtmlResult):
    """A model's units embedded in a foundation model's space, with their concept examples.

    Units are addressed as ``"layer/index"`` (``"layer/index-"`` for the negative half of a signed
    layer). Open with :meth:`Lens.open`; nothing but the manifest is read until asked for. The Lens opens
    itself, keeps its views in other embedding spaces (``in_space``) and holds what it reads: ``units``
    (its layers' units and the model's classes), ``arrays``, ``examples``, ``labels``, ``embedding`` (its
    space and the Lens's other spaces) and ``sources`` (what it names outside itself, the model among them). Each
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
    def units(self) -> LensUnits:
        """Its layers' units and the model's classes: ``lens.units(layer)`` names a layer's units,
        ``lens.units.index("layer/3")`` finds one: ``semlens.lens.units.LensUnits``."""
        return LensUnits(self)

    @cached_property
    def examples(self) -> ExampleSets:
        """Its units' concept examples, by activation or by relevance: their arrays by layer, and each unit's
        read back as records and images: ``semlens.lens.example_sets``."""
        return ExampleSets(self)

    # -- its questions: each a function of its own module, taking the Lens ----------------------

    search = _search.search
    search_similar = _search.search_similar
    label = _labels.label
    overview = _measures.overview
    measures = _measures.measures
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
    def classes(self) -> list[str] | None:
        """The model's class names (None when it has none; where it has none but as many outputs as the class relevance
        data has classes, that data's, the order its labels were mapped to the outputs by)."""
        return self.manifest.get("model_classes")

    # -- its embedding spaces (semlens.lens.spaces) ---------------------------------------------

    _default_view: Lens | None = None  # a view's Lens in the default space, which keeps the views

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

    def _space_key(self, space: str | None) -> str | None:
        """``space`` checked: None for the default space, else the name of a complete, current extra space."""
        if space is None or space in (DEFAULT, self.embedding.default_name):
            return None
        extra = self.manifest.get("spaces", {})
        if space not in extra:
            names = ", ".join([f"{self.embedding.default_name} (or {DEFAULT})", *(name for name in extra)])
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

    def __repr__(self) -> str:
        units = sum(layer["units"] for layer in self.manifest["layers"].values())
        return f"Lens({str(self.path)!r}, layers={len(self.layers)}, units={units}, foundation={self.embedding.foundation_id!r})"
