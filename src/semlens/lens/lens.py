"""A Lens: a built Lens directory opened for questions, arrays read lazily on first use."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from .._util.cache import cache_dir
from .._util.errors import SemlensError
from ..analysis.label import DEFAULT_THRESHOLD, Labels
from ..analysis.vocabulary import Vocabulary
from ..model.units import unit_names
from . import questions
from .labels import Labelling, LensLabels
from .search import LensSearch, SearchHit
from .sources import LensSources
from .store import LensStore, layer_file
from .trust import LensAccess, is_trusted, lens_key

if TYPE_CHECKING:
    from ..analysis.audit import AlignmentRule, Audit
    from ..analysis.compare import Comparison
    from ..analysis.interventions import ConceptImages
    from ..analysis.overview import OverviewMap
    from ..data import ImageData
    from ..foundation import FoundationModel
    from ..model.loading import LoadedModel
    from ..relevance.graph import AttributionGraph

STAGES = ("collect", "embed")


def writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


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

    def __init__(self, store: LensStore, manifest: dict[str, Any], access: LensAccess | None = None) -> None:
        self.store, self.manifest = store, manifest
        self.access = access or LensAccess()
        self.trusted = self.access.trust or is_trusted(manifest)
        self._arrays: dict[str, dict[str, torch.Tensor]] = {}

    @classmethod
    def open(
        cls,
        path: str | Path,
        trust: bool = False,
        data: str | Path | None = None,
        foundation: str | None = None,
        model: str | None = None,
    ) -> Lens:
        """Open a built Lens. It never runs code or reads files that its own files name unless it is trusted
        (``trust=True``, or built on this machine: see ``semlens.lens.trust``); ``data`` (a folder or a data
        spec), ``foundation`` and ``model`` (specs) name them instead, as the user's own choice."""
        manifest = LensStore(path).read_manifest()
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
        return cls(store, manifest, LensAccess(trust, None if data is None else str(data), foundation, model))

    @cached_property
    def cache(self) -> LensStore:
        """This Lens's folder in the user cache (the search index, the explorer's thumbnails): caches never
        write into a Lens, so reading one changes nothing in it."""
        return LensStore(cache_dir("lenses", lens_key(self.manifest)))

    @cached_property
    def derived(self) -> LensStore:
        """Where labels are stored: the Lens itself when it is writable, else its folder in the user cache,
        so that a read-only Lens answers everything."""
        return self.store if writable(self.store.root) else self.cache

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
        """True for units that never fired or whose top-k scores are all equal: their examples are arbitrary."""
        return self._read(layer, "topk")["inactive"]

    def tied(self, layer: str) -> torch.Tensor:
        """True for units whose examples are the same crops as an earlier unit's (so is their theta)."""
        stored = self._read(layer, "embed")
        return stored["tied"] if "tied" in stored else self._tied_without_record[layer]

    @cached_property
    def _tied_without_record(self) -> dict[str, torch.Tensor]:
        """Ties of a Lens built before they were recorded, found as the build finds them."""
        from ..analysis.validity import tied_units

        return tied_units({layer: self._read(layer, "embed")["crop_index"] for layer in self.layers}, {layer: self.inactive(layer) for layer in self.layers})

    def valid(self, layer: str) -> torch.Tensor:
        """True for units with examples of their own: neither inactive nor tied. Search, labels, the map,
        measures, audits, graphs and comparisons leave the others out."""
        return ~(self.inactive(layer) | self.tied(layer))

    def heatmaps(self, layer: str) -> torch.Tensor | None:
        """The maps each example's crop box was cut from ``[U, k, h, w]``: CRP relevance (pooled) for relevance
        crops, the activation maps for activation crops; None where examples are whole images."""
        mode = self._layer(layer).get("crop", {}).get("mode")
        if mode == "relevance":
            return self._read(layer, "crops").get("heat")
        return self.maps(layer) if mode == "activation" else None

    def boxes(self, layer: str) -> torch.Tensor:
        """Crop boxes ``[U, k, 4]`` (x0, y0, x1, y1) in the model's input view."""
        return self._read(layer, "embed")["boxes"]

    def theta(self, layer: str) -> torch.Tensor:
        """Each unit's semantic embedding ``[U, d]``: the mean of its concept examples' embeddings."""
        return self._read(layer, "embed")["theta"]

    def example_embeddings(self, layer: str) -> torch.Tensor:
        """Per-example embeddings ``[U, k, d]`` (float32; NaN rows in empty slots), read from the float16
        crop table on disk: only this layer's rows, so memory follows the layer, not the data set."""
        index = self._read(layer, "embed")["crop_index"]
        embeddings = self.store.read_rows("crops.safetensors", "embeddings", index.clamp_min(0)).float()
        embeddings[index < 0] = float("nan")
        return embeddings

    @cached_property
    def sample_table(self) -> dict[int, tuple[str, int | None]]:
        table = self.store.read_json("samples.json")
        return {index: (path, label) for index, path, label in zip(table["ids"], table["paths"], table["labels"])}

    def concept_examples(self, unit: str) -> list[ConceptExample]:
        """A unit's concept examples, best first."""
        layer, row = self.unit_index(unit)
        scores, ids, boxes = self.scores(layer)[row], self.samples(layer)[row], self.boxes(layer)[row]
        examples = []
        for rank, (score, sample, box) in enumerate(zip(scores.tolist(), ids.tolist(), boxes.tolist())):
            if sample >= 0 and box[0] >= 0:  # not an empty slot, nor one kept by chance (no crop: see arbitrary_slots)
                source, label = self.sample_table[sample]
                examples.append(ConceptExample(rank, sample, score, tuple(box), source, label))
        return examples

    @cached_property
    def sources(self) -> LensSources:
        return LensSources(self.manifest, self.access, self.trusted)

    @property
    def probe_data(self) -> ImageData:
        """The probe data: what the user named, else (trusted Lenses only) the spec recorded at build time;
        checked against the recorded fingerprint, so that a changed folder shows no wrong images."""
        return self.sources.probe_data

    def example_image(self, example: ConceptExample, crop: bool = True) -> Image.Image:
        """A concept example as the model saw it (its input view), cropped to its box unless ``crop=False``."""
        from ..model.preprocess import Preprocessing

        view = Preprocessing(**self.manifest["identity"]["preprocessing"]).view(self.probe_data.load(example.sample))
        return view.crop(example.box) if crop else view

    def failures(self) -> list[dict[str, Any]]:
        """Samples that failed to decode during collection (skipped)."""
        return self.store.read_json("failures.json")

    # -- the foundation model and probes ------------------------------------------------------

    @property
    def foundation(self) -> FoundationModel:
        """The foundation model the Lens was embedded with (the user's, else the trusted recorded one; id checked)."""
        return self.sources.foundation

    @cached_property
    def probes(self):
        """Probe encoder with an on-disk cache per foundation model in the user cache (not in this Lens)."""
        from .probes import ProbeEncoder, probe_cache_path

        return ProbeEncoder(self.foundation, probe_cache_path(self.foundation_id))

    def checked_layers(self, layers: list[str] | None) -> list[str]:
        """The given layers (each checked), or all layers when None."""
        for layer in layers or []:
            self._layer(layer)
        return list(layers) if layers else self.layers

    @cached_property
    def _search(self) -> LensSearch:
        return LensSearch(self)

    def probe(
        self, text: str | list[str] | None = None, images: list[str | Path | Image.Image] = (), templates: str | list[str] = "search"
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A probe ``[d]`` and its null (None for image-only probes): texts and images (files or decoded) averaged."""
        return self._search.probe(text, images, templates)

    def search(
        self,
        text: str | list[str] | None = None,
        images: list[str | Path | Image.Image] = (),
        layers: list[str] | None = None,
        top: int = 10,
        templates: str | list[str] = "search",
    ) -> list[SearchHit]:
        """Units of all (or the given) layers ranked by alignment with a text and/or image probe."""
        return self._search.search(text, images, layers, top, templates)

    def search_similar(self, source: Lens, unit: str, top: int = 10) -> list[SearchHit]:
        """Units of this Lens most similar to ``unit`` of ``source`` (this Lens or another one)."""
        return self._search.search_similar(source, unit, top)

    # -- labels (stored by semlens.lens.labels) -------------------------------------------------

    @cached_property
    def label_store(self) -> LensLabels:
        return LensLabels(self)

    def label(
        self,
        vocabulary: Vocabulary | str | Path | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        templates: str | list[str] = "label",
        top: int = 3,
        save: bool = True,
    ) -> Labelling:
        """Label every unit with its best concepts; stored with the Lens for the other tools (``save=False``:
        kept in this process only)."""
        return self.label_store.label(vocabulary, threshold, templates, top, save)

    @property
    def vocabulary(self) -> Vocabulary | None:
        """The vocabulary of the stored labels, or None before ``label`` ran."""
        return self.label_store.vocabulary

    def labels(self, layer: str) -> Labels | None:
        """The stored labels of a layer, or None before ``label`` ran."""
        return self.label_store.labels(layer)

    def label_of(self, unit: str) -> str | None:
        """A unit's stored label, or None when unlabelled (or before ``label`` ran)."""
        return self.label_store.label_of(unit)

    def label_candidates(self, unit: str) -> list[tuple[str, float]]:
        """A unit's best concepts with their alignments, best first (empty before ``label`` ran)."""
        return self.label_store.candidates(unit)

    def category_units(self, layer: str, category: str) -> list[str]:
        """The units behind one bar of ``dissect``: a layer's units labelled in ``category`` (or "unlabelled")."""
        return self.label_store.category_units(layer, category)

    def dissect(self) -> dict[str, dict[str, int]]:
        """Units per label category per layer (from the stored labels; run ``label`` first)."""
        return self.label_store.dissect()

    def vocabulary_or(self, vocabulary: Vocabulary | str | Path | None) -> Vocabulary:
        """The given vocabulary, else the stored labels' one, else the built-in one."""
        return self.label_store.vocabulary_or(vocabulary)

    # -- maps, measures, comparisons (semlens.lens.questions) ----------------------------------

    def overview(self, layers: list[str] | None = None, clusters: int | None = None, seed: int = 0) -> OverviewMap:
        """UMAP map of the units of the given (default: all) layers, k-means clusters named by their two
        best labels, units coloured by the category they align with best (see analysis.overview)."""
        return questions.overview(self, layers, clusters, seed)

    def all_units(self, layers: list[str] | None = None) -> tuple[list[str], torch.Tensor]:
        """Names and theta of the valid units (``valid``) of the given (default: all) layers, in layer order."""
        chosen = self.checked_layers(layers)
        names = [f"{layer}/{name}" for layer in chosen for name, ok in zip(self.units(layer), self.valid(layer).tolist()) if ok]
        return names, torch.cat([self.theta(layer)[self.valid(layer)] for layer in chosen])

    def compare(self, other: Lens, vocabulary: Vocabulary | str | Path | None = None) -> Comparison:
        """S_{M->N} / S_{N->M} per layer pair, best matches, and shared and unique concepts."""
        return questions.compare(self, other, vocabulary)

    def measures(self, layer: str) -> dict[str, torch.Tensor]:
        """Per unit: clarity, polysemanticity (Eq. 7, 10) and redundancy within the layer (Eq. 9)."""
        return questions.measures(self, layer)

    def similarity(self, unit: str, other_unit: str, other: Lens | None = None) -> float:
        """Cosine similarity of two units' theta (Eq. 8), in this Lens or across two Lenses."""
        return questions.similarity(self, unit, other_unit, other or self)

    # -- relevance, audits and the model ----------------------------------------------------------

    @property
    def classes(self) -> list[str] | None:
        """The model's class names (None when it has none)."""
        return self.manifest.get("model_classes")

    def class_index(self, name: str | int) -> int:
        """A class given by name (case-insensitive) or index, as the model's output index."""
        return questions.class_index(self.classes, name)

    def class_relevance(self, layer: str) -> dict[str, torch.Tensor] | None:
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

    def relevant_classes(self, unit: str, top: int = 5) -> list[tuple[str, int, float, float]]:
        """The classes a unit matters most for, as (name, index, max share, mean share), highest mean share
        first; classes never seen in the class-relevance data are left out, and all of them without it."""
        return questions.relevant_classes(self, unit, top)

    def audit(
        self,
        class_name: str | int,
        valid: list[str] = (),
        spurious: list[str] = (),
        valid_images: list[str | Path] = (),
        spurious_images: list[str | Path] = (),
        cut: float | None = None,
        layers: list[str] | None = None,
        templates: str | list[str] = "audit",
        rule: AlignmentRule | None = None,
        concept: ConceptImages | None = None,
    ) -> Audit:
        """Audit one class: verdicts for its relevant units (each alignment judged against its layer's null by
        ``rule``) and the class's relevance by verdict. With ``concept`` (images without and with the spurious
        concept), also the concept test of the flagged units and the class's reliance on the concept (needs
        the model)."""
        return questions.audit(self, class_name, valid, spurious, valid_images, spurious_images, cut, layers, templates, rule, concept)

    def audit_classes(
        self, spurious: list[str], cut: float | None = None, spurious_images: list[str | Path] = (), rule: AlignmentRule | None = None
    ) -> list[Audit]:
        """Audit every class seen in the class-relevance data, each with its own name as the valid concept;
        returns the audits ranked by spurious-or-both share (highest first)."""
        return questions.audit_classes(self, spurious, cut, list(spurious_images), rule)

    def attribution_graph(
        self, class_name: str | int, layers: list[str] | None = None, cut: float | None = None, samples: int = 32
    ) -> AttributionGraph:
        """The concepts behind a class between two or more layers (lowest first): relevant units grouped by
        label (threshold 0.01, "?" when unlabelled), edges weighted by CRP relevance conditioned on the
        upper group. Computed on the class's samples with the highest relevance (from class relevance);
        needs labels, the model and the probe data."""
        return questions.attribution_graph(self, class_name, layers, cut, samples)

    def model(self) -> LoadedModel:
        """The model under study: the one the user named (``model=``, ``--model``), else (trusted Lenses only)
        reloaded from its recorded spec; checked against the recorded weights either way."""
        return self.sources.model()

    def sae_files(self, layers: list[str]) -> dict[str, str]:
        """The SAE file of each of ``layers`` that is read through one (trusted Lenses only; hash checked)."""
        return self.sources.sae_files(layers)

    def channels(self, units: list[str]) -> dict[str, list[int]]:
        """Units (``layer/index``, ``layer/index-``) as channels (SAE features for SAE layers) per layer, for pruning."""
        return questions.channels(self, units)

    def __repr__(self) -> str:
        units = sum(layer["units"] for layer in self.manifest["layers"].values())
        return f"Lens({str(self.path)!r}, layers={len(self.layers)}, units={units}, foundation={self.foundation_id!r})"
