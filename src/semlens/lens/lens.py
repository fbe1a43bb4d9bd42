"""A Lens: a built Lens directory opened for questions, arrays read lazily on first use."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .._util.cache import cache_dir
from .._util.errors import SemlensError
from ..analysis.alignment import alignment
from ..analysis.label import DEFAULT_THRESHOLD, Labels, dissect, label_units, unit_categories
from ..analysis.vocabulary import Vocabulary, load_vocabulary
from ..model.units import unit_names
from .index import UnitTable, open_index
from .store import LensStore, layer_file
from .trust import check_spec, is_trusted, lens_key

LABELS = "labels.json"

STAGES = ("collect", "embed")


@dataclass(frozen=True)
class LensAccess:
    """What the user allows or names when opening a Lens (see ``semlens.lens.trust``)."""

    trust: bool = False
    data: str | None = None  # a folder or a data spec
    foundation: str | None = None

    def data_spec(self) -> str | None:
        if self.data is None:
            return None
        return self.data if ":" in self.data and not Path(self.data).exists() else f"folder:{self.data}"


@dataclass(frozen=True)
class ConceptExample:
    """One of a unit's top samples: its score, its crop box in the model's input view, its source."""

    rank: int
    sample: int
    score: float
    box: tuple[int, int, int, int]
    source: str
    label: int | None


@dataclass(frozen=True)
class SearchHit:
    """A unit found by a probe: its alignment, label (if labelled) and best concept examples."""

    unit: str
    layer: str
    index: int
    score: float
    label: str | None
    examples: list[str]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


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
    def open(cls, path: str | Path, trust: bool = False, data: str | Path | None = None, foundation: str | None = None) -> Lens:
        """Open a built Lens. It never runs code or reads files that its own files name unless it is trusted
        (``trust=True``, or built on this machine: see ``semlens.lens.trust``); ``data`` (a folder or a data
        spec) and ``foundation`` (a spec) name them instead, as the user's own choice."""
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
        return cls(store, manifest, LensAccess(trust, None if data is None else str(data), foundation))

    @cached_property
    def derived(self) -> LensStore:
        """Where results derived after the build (labels, the search index) are kept: the Lens itself when
        it is writable, else a user-cache folder of this Lens, so that a read-only Lens answers everything."""
        if os.access(self.store.root, os.W_OK):
            return self.store
        return LensStore(cache_dir("lenses", lens_key(self.manifest)))

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
            store = self.derived if kind == "labels" else self.store
            self._arrays[key] = store.read_tensors(layer_file(layer, kind))
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

    def example_embeddings(self, layer: str) -> torch.Tensor:
        """Per-example embeddings ``[U, k, d]`` (float32; NaN rows in empty slots), read from the float16
        crop table on disk: only this layer's rows, so memory follows the layer, not the data set."""
        index = self._read(layer, "embed")["crop_index"]
        embeddings = self.store.read_rows("crops.safetensors", "embeddings", index.clamp_min(0)).float()
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

    @cached_property
    def _data(self):
        """The probe data: what the user named, else (trusted Lenses only) the spec recorded at build time;
        checked against the recorded fingerprint, so that a changed folder shows no wrong images."""
        from ..data import load_data

        recorded = self.manifest["identity"]["data"]
        spec = self.access.data_spec() or check_spec(recorded["spec"], "probe data", self.trusted, "data=FOLDER, --data FOLDER")
        data = load_data(spec)
        if data.fingerprint() != recorded["fingerprint"]:
            raise SemlensError(
                f"the probe data {spec} is not what this Lens was built from (fingerprint {data.fingerprint()}, "
                f"recorded {recorded['fingerprint']}): its concept examples would show the wrong images. "
                "Give the data the Lens was built from (data=..., --data)"
            )
        return data

    def example_image(self, example: ConceptExample, crop: bool = True) -> Image.Image:
        """A concept example as the model saw it (its input view), cropped to its box unless ``crop=False``."""
        from ..model.preprocess import Preprocessing

        view = Preprocessing(**self.manifest["identity"]["preprocessing"]).view(self._data.load(example.sample))
        return view.crop(example.box) if crop else view

    def failures(self) -> list[dict[str, Any]]:
        """Samples that failed to decode during collection (skipped)."""
        return self.store.read_json("failures.json")

    # -- the foundation model and probes ------------------------------------------------------

    @cached_property
    def foundation(self):
        """The foundation model the Lens was embedded with (loaded on first use, id checked)."""
        from ..foundation import shared_foundation_model

        recorded = self.manifest["foundation"]
        spec = self.access.foundation or check_spec(recorded["spec"], "foundation model", self.trusted, "foundation=SPEC, --foundation")
        model = shared_foundation_model(spec)
        if model.id != recorded["id"]:
            raise SemlensError(
                f"foundation model {spec} now loads as {model.id}, but this Lens was embedded with "
                f"{recorded['id']}; its weights changed, so probes would not match the stored embeddings"
            )
        return model

    @cached_property
    def probes(self):
        """Probe encoder with an on-disk cache per foundation model in the user cache (not in this Lens)."""
        from .probes import ProbeEncoder, probe_cache_path

        return ProbeEncoder(self.foundation, probe_cache_path(self.foundation_id))

    def _layers(self, layers: list[str] | None) -> list[str]:
        for layer in layers or []:
            self._layer(layer)
        return list(layers) if layers else self.layers

    def probe(
        self,
        text: str | list[str] | None = None,
        images: list[str | Path | Image.Image] = (),
        templates: str | list[str] = "search",
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A probe ``[d]`` and its null (None for image-only probes): texts and images (files or decoded) averaged."""
        texts = [text] if isinstance(text, str) else list(text or [])
        if not texts and not images:
            raise SemlensError("give a text query, an image probe, or both")
        parts = []
        if texts:
            parts.append(self.probes.query(texts, templates))
        if images:
            parts.append(self.probes.images(images))
        null = self.probes.null(templates) if texts else None
        return torch.stack(parts).mean(dim=0), null

    def search(
        self,
        text: str | list[str] | None = None,
        images: list[str | Path | Image.Image] = (),
        layers: list[str] | None = None,
        top: int = 10,
        templates: str | list[str] = "search",
    ) -> list[SearchHit]:
        """Units of all (or the given) layers ranked by alignment with a text and/or image probe."""
        probe, null = self.probe(text, images, templates)
        return self._rank(probe, null, self._layers(layers), top)

    def search_similar(self, source: Lens, unit: str, top: int = 10) -> list[SearchHit]:
        """Units of this Lens most similar to ``unit`` of ``source`` (this Lens or another one)."""
        if source.foundation_id != self.foundation_id:
            raise SemlensError("units of Lenses embedded by different foundation models cannot be compared")
        layer, row = source.unit_index(unit)
        return self._rank(source.theta(layer)[row], None, self.layers, top, exclude=(layer, row) if source is self else None)

    def _rank(
        self, probe: torch.Tensor, null: torch.Tensor | None, layers: list[str], top: int, exclude: tuple[str, int] | None = None
    ) -> list[SearchHit]:
        """The ``top`` units of ``layers`` by alignment with ``probe``; ties go to the earlier layer, lower unit."""
        table = self._units if layers == self.layers else UnitTable.stack({layer: self.theta(layer) for layer in layers})
        rows, scores = table.top(probe, null, top + 1)
        found = [(table.locate(row), score) for row, score in zip(rows.tolist(), scores.tolist())]
        return [self._hit(*owner, score) for owner, score in found if owner != exclude][:top]

    @cached_property
    def _units(self) -> UnitTable:
        """All units stacked for search, with an index from ``INDEX_MIN_UNITS`` units on (see semlens.lens.index)."""
        table = UnitTable.stack({layer: self.theta(layer) for layer in self.layers})
        table.index = open_index(self.derived, table, self.manifest["stages"]["embed"]["fingerprint"])
        return table

    def _hit(self, layer: str, row: int, score: float) -> SearchHit:
        unit = f"{layer}/{self.units(layer)[row]}"
        sources = [example.source for example in self.concept_examples(unit)[:3]]
        return SearchHit(unit, layer, row, score, self.label_of(unit), sources)

    # -- labels ---------------------------------------------------------------------------------

    def label(
        self,
        vocabulary: Vocabulary | str | Path | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        templates: str | list[str] = "label",
        top: int = 3,
    ) -> dict[str, Labels]:
        """Label every unit with its best concepts; stored in the Lens for the other tools."""
        vocab = vocabulary if isinstance(vocabulary, Vocabulary) else load_vocabulary(vocabulary)
        concepts = self.probes.concepts(vocab.concepts, templates)
        null = self.probes.null(templates)
        results = {}
        for layer in self.layers:
            labels = label_units(self.theta(layer), concepts, null, threshold, top)
            self.derived.write_tensors(layer_file(layer, "labels"), {"concepts": labels.concepts, "scores": labels.scores})
            self._arrays.pop(f"{layer}.labels", None)
            results[layer] = labels
        self.derived.write_json(LABELS, {"vocabulary": vocab.to_dict(), "threshold": threshold, "templates": templates})
        self.__dict__.pop("vocabulary", None)
        return results

    @cached_property
    def vocabulary(self) -> Vocabulary | None:
        """The vocabulary of the stored labels, or None before ``label`` ran."""
        if not self.derived.path(LABELS).is_file():
            return None
        stored = self.derived.read_json(LABELS)["vocabulary"]
        return Vocabulary(stored["name"], tuple(stored["concepts"]), tuple(stored["categories"]))

    def labels(self, layer: str) -> Labels | None:
        """The stored labels of a layer, or None before ``label`` ran."""
        if self.vocabulary is None:
            return None
        arrays = self._read(layer, "labels")
        return Labels(arrays["concepts"], arrays["scores"], self.derived.read_json(LABELS)["threshold"])

    def label_of(self, unit: str) -> str | None:
        """A unit's stored label, or None when unlabelled (or before ``label`` ran)."""
        layer, row = self.unit_index(unit)
        labels = self.labels(layer)
        if labels is None or not bool(labels.labelled[row]):
            return None
        return self.vocabulary.concepts[int(labels.concepts[row, 0])]

    def label_candidates(self, unit: str) -> list[tuple[str, float]]:
        """A unit's best concepts with their alignments, best first, the label's runner-ups included
        (empty before ``label`` ran)."""
        layer, row = self.unit_index(unit)
        labels = self.labels(layer)
        if labels is None:
            return []
        return [(self.vocabulary.concepts[int(c)], float(a)) for c, a in zip(labels.concepts[row], labels.scores[row])]

    def category_units(self, layer: str, category: str) -> list[str]:
        """The units behind one bar of ``dissect``: a layer's units labelled in ``category`` (or "unlabelled")."""
        self._layer(layer)
        counts = self.dissect()[layer]
        if category not in counts:
            raise SemlensError(f"unknown category {category!r}; the categories are {', '.join(counts)}")
        owners = unit_categories(self.labels(layer), self.vocabulary.categories)
        return [f"{layer}/{name}" for name, owner in zip(self.units(layer), owners) if owner == category]

    def dissect(self) -> dict[str, dict[str, int]]:
        """Units per label category per layer (from the stored labels; run ``label`` first)."""
        if self.vocabulary is None:
            raise SemlensError("this Lens has no labels yet: run `semlens label LENS` (or Lens.label()) first")
        categories = self.vocabulary.category_names()
        return {layer: dissect(self.labels(layer), categories, self.vocabulary.categories) for layer in self.layers}

    def overview(self, layers: list[str] | None = None, clusters: int | None = None, seed: int = 0):
        """UMAP map of the units of the given (default: all) layers, k-means clusters named by their two
        best labels, units coloured by the category they align with best (see analysis.overview)."""
        from ..analysis.overview import build_overview

        chosen = self._layers(layers)
        vocabulary = self._vocabulary_or(None)
        concepts = self.probes.concepts(vocabulary.concepts, "label")
        categories = vocabulary.category_names()
        members = torch.tensor([categories.index(category) for category in vocabulary.categories])
        category_probes = torch.stack([concepts[members == index].mean(dim=0) for index in range(len(categories))])
        units = [f"{layer}/{name}" for layer in chosen for name in self.units(layer)]
        theta = torch.cat([self.theta(layer) for layer in chosen])
        null = self.probes.null("label")
        return build_overview(units, theta, concepts, list(vocabulary.concepts), category_probes, categories, null, clusters, seed)

    # -- comparing and measuring --------------------------------------------------------------

    def all_units(self, layers: list[str] | None = None) -> tuple[list[str], torch.Tensor]:
        """Unit names and their theta over the given (default: all) layers, in layer order."""
        chosen = self._layers(layers)
        names = [f"{layer}/{name}" for layer in chosen for name in self.units(layer)]
        return names, torch.cat([self.theta(layer) for layer in chosen])

    def concept_labels(self, vocabulary: Vocabulary) -> set[str]:
        """The set of labels this Lens's units get from ``vocabulary`` (not stored)."""
        concepts = self.probes.concepts(vocabulary.concepts, "label")
        found = set()
        for layer in self.layers:
            labels = label_units(self.theta(layer), concepts, self.probes.null("label"))
            found |= {vocabulary.concepts[index] for index in labels.concepts[labels.labelled, 0].tolist()}
        return found

    def compare(self, other: Lens, vocabulary: Vocabulary | str | Path | None = None):
        """S_{M->N} / S_{N->M} per layer pair, best matches, and shared and unique concepts."""
        from ..analysis.compare import Comparison, best_matches, concept_sets, overlap_matrices

        if self.foundation_id != other.foundation_id:
            raise SemlensError(
                f"cannot compare Lenses embedded by different foundation models ({self.foundation_id} vs "
                f"{other.foundation_id}); rebuild one of them with the other's foundation model"
            )
        a_to_b, b_to_a = overlap_matrices(
            {layer: self.theta(layer) for layer in self.layers}, {layer: other.theta(layer) for layer in other.layers}
        )
        units_a, theta_a = self.all_units()
        units_b, theta_b = other.all_units()
        vocab = self._vocabulary_or(vocabulary)
        shared, only_a, only_b = concept_sets(self.concept_labels(vocab), other.concept_labels(vocab))
        return Comparison(self.layers, other.layers, a_to_b, b_to_a, best_matches(units_a, theta_a, units_b, theta_b), shared, only_a, only_b)

    def _vocabulary_or(self, vocabulary: Vocabulary | str | Path | None) -> Vocabulary:
        """The given vocabulary, else the stored labels' one, else the built-in one."""
        if isinstance(vocabulary, Vocabulary):
            return vocabulary
        if vocabulary is None and self.vocabulary is not None:
            return self.vocabulary
        return load_vocabulary(vocabulary)

    def measures(self, layer: str) -> dict[str, torch.Tensor]:
        """Per unit: clarity, polysemanticity (Eq. 7, 10) and redundancy within the layer (Eq. 9)."""
        from ..analysis.measures import clarity, polysemanticity, redundancy

        examples = self.example_embeddings(layer)
        return {
            "clarity": clarity(examples),
            "polysemanticity": polysemanticity(examples),
            "redundancy": redundancy(self.theta(layer)),
        }

    def similarity(self, unit: str, other_unit: str, other: Lens | None = None) -> float:
        """Cosine similarity of two units' theta (Eq. 8), in this Lens or across two Lenses."""
        other = other or self
        if other.foundation_id != self.foundation_id:
            raise SemlensError("units of Lenses embedded by different foundation models cannot be compared")
        layer, row = self.unit_index(unit)
        other_layer, other_row = other.unit_index(other_unit)
        return float(alignment(self.theta(layer)[row : row + 1], other.theta(other_layer)[other_row : other_row + 1], None))

    # -- relevance and audits -------------------------------------------------------------------

    @property
    def classes(self) -> list[str] | None:
        """The model's class names (None when it has none)."""
        return self.manifest.get("model_classes")

    def class_index(self, name: str | int) -> int:
        """A class given by name (case-insensitive) or index, as the model's output index."""
        if isinstance(name, int) or str(name).isdecimal():
            index = int(name)
            if self.classes and not 0 <= index < len(self.classes):
                raise SemlensError(f"class index {index} is out of range: this model has {len(self.classes)} classes")
            return index
        names = [candidate.lower() for candidate in self.classes or []]
        if str(name).lower() in names:
            return names.index(str(name).lower())
        hint = f"e.g. {', '.join((self.classes or [])[:5])}" if self.classes else "this model has no class names"
        raise SemlensError(f"unknown class {name!r}; give a class index or a class name ({hint})")

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
        layer, row = self.unit_index(unit)
        relevance = self.class_relevance(layer)
        if relevance is None:
            return []
        mean = relevance["mean_share"][row]
        order = torch.argsort(mean.nan_to_num(float("-inf")), descending=True, stable=True)
        chosen = order[~mean[order].isnan()][:top].tolist()
        names = self.classes or [str(index) for index in range(mean.numel())]
        return [(names[i], i, float(relevance["max_share"][row, i]), float(mean[i])) for i in chosen]

    def _alignments(self, concepts: list[str], images: list[str | Path], templates: str | list[str]) -> list[torch.Tensor]:
        """Per probe (each text concept, each image), the alignment of every unit of every layer ``[U_all]``."""
        theta = torch.cat([self.theta(layer) for layer in self.layers])
        results = []
        if concepts:
            embedded = self.probes.concepts(concepts, templates)
            results += list(alignment(theta, embedded, self.probes.null(templates)).T)
        for image in images:
            results.append(alignment(theta, self.probes.images([image])[None], None)[:, 0])
        return results

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
    ):
        """Audit one class: verdicts for its relevant units and the class's relevance by verdict."""
        from ..analysis.audit import AUDIT_CUT, audit_units

        if not (valid or valid_images) or not (spurious or spurious_images):
            raise SemlensError("an audit needs at least one valid and one spurious concept (text or image)")
        index = self.class_index(class_name)
        chosen = self._layers(layers)
        missing = [layer for layer in chosen if self.class_relevance(layer) is None]
        if missing:
            reason = self.manifest["stages"].get("relevance", {}).get("skipped", "class relevance was not computed")
            raise SemlensError(f"no class relevance for layer(s) {', '.join(missing)} ({reason}); rebuild with class relevance on")
        units = [f"{layer}/{name}" for layer in chosen for name in self.units(layer)]
        owners = [layer in chosen for layer in self.layers for _ in self.units(layer)]
        keep = torch.tensor(owners)
        a_valid = torch.stack(self._alignments(list(valid), list(valid_images), templates)).amax(dim=0)[keep]
        a_spur = torch.stack(self._alignments(list(spurious), list(spurious_images), templates)).amax(dim=0)[keep]
        max_share = torch.cat([self.class_relevance(layer)["max_share"][:, index] for layer in chosen])
        mean_share = torch.cat([self.class_relevance(layer)["mean_share"][:, index] for layer in chosen])
        name = self.classes[index] if self.classes else str(index)
        result = audit_units(
            name, units, max_share, mean_share, a_valid, a_spur,
            list(valid) + [str(p) for p in valid_images], list(spurious) + [str(p) for p in spurious_images],
            AUDIT_CUT if cut is None else cut,
        )  # fmt: skip
        for audited in result.units:
            audited.examples = [example.source for example in self.concept_examples(audited.unit)[:3]]
        return result

    def audit_classes(self, spurious: list[str], cut: float | None = None, spurious_images: list[str | Path] = ()) -> list:
        """Audit every class seen in the class-relevance data, each with its own name as the valid concept;
        returns the audits ranked by spurious share (highest first)."""
        if not self.classes:
            raise SemlensError("auditing all classes needs class names (this model has none); audit one class with --valid")
        seen = self.class_relevance(self.layers[-1])
        if seen is None:
            raise SemlensError("no class relevance in this Lens; rebuild with class relevance on")
        audits = [
            self.audit(int(index), [self.classes[int(index)]], spurious, spurious_images=spurious_images, cut=cut)
            for index in seen["seen_classes"].tolist()
        ]
        return sorted(audits, key=lambda audit: -audit.shares["spurious"])

    def model(self):
        """The model under study, reloaded from its spec and checked against the recorded weights."""
        from ..model.loading import load_model

        recorded = self.manifest["identity"]["model"]
        model = load_model(check_spec(recorded["spec"], "model", self.trusted, "trust=True, --trust"))
        if model.fingerprint != recorded["fingerprint"]:
            raise SemlensError(
                f"model {recorded['spec']} now has weights {model.fingerprint}, but this Lens was built from "
                f"{recorded['fingerprint']}; tests of its findings would test another model"
            )
        return model

    def attribution_graph(
        self, class_name: str | int, layers: list[str] | None = None, cut: float | None = None, samples: int = 32
    ):
        """The concepts behind a class between two or more layers (lowest first): relevant units grouped by
        label (threshold 0.01, "?" when unlabelled), edges weighted by CRP relevance conditioned on the
        upper group. Computed on the class's samples with the highest relevance (from class relevance)."""
        from ..relevance.graph import (
            GRAPH_CUT,
            AttributionGraph,
            Node,
            conditional_relevance,
            edges_between,
            group_units,
        )
        from ..relevance.lrp import RelevanceModel, unit_relevance

        cut = GRAPH_CUT if cut is None else cut
        chosen = self._layers(layers)
        if len(chosen) < 2:
            raise SemlensError("an attribution graph needs at least two layers")
        if any(self._layer(layer)["unit_names"] == "signed" or self._layer(layer)["spec"].get("sae") for layer in chosen):
            raise SemlensError("attribution graphs need plain layers (not signed, not SAE)")
        index = self.class_index(class_name)
        relevance = self.class_relevance(chosen[-1])
        if relevance is None:
            raise SemlensError("no class relevance in this Lens; rebuild with class relevance on")
        seen = relevance["seen_classes"].tolist()
        if index not in seen:
            raise SemlensError(f"class {class_name} has no samples in the class-relevance data")
        ids = relevance["top_samples"][seen.index(index)].flatten()
        ids = [int(i) for i in torch.unique(ids[ids >= 0])][:samples]
        model = self.model()
        inputs = torch.stack([model.preprocessing(self._data.load(i)) for i in ids])
        targets = torch.full((len(ids),), index)
        lrp = RelevanceModel(model.module, inputs[:2])
        if not lrp.check().supported:
            raise SemlensError(f"LRP does not support this model: {lrp.check().reason}")
        if self.vocabulary is None:
            self.label()
        labels = {layer: self._graph_labels(layer) for layer in chosen}
        units = {layer: [f"{layer}/{name}" for name in self.units(layer)] for layer in chosen}
        graph = AttributionGraph(self.classes[index] if self.classes else str(index))
        with lrp.attributing() as modified:
            _, plain = unit_relevance(modified, inputs, targets, chosen)
            shares = {layer: (plain[layer] / plain[layer].abs().sum(1, keepdim=True).clamp_min(1e-12)).mean(0) for layer in chosen}
            groups = {layer: group_units(layer, units[layer], shares[layer], labels[layer], cut) for layer in chosen}
            for layer in chosen:
                for label, members in groups[layer].items():
                    graph.nodes.append(Node(f"{layer}:{label}", layer, label, [units[layer][i] for i in members], float(shares[layer][members].sum())))
            for lower, upper in zip(chosen, chosen[1:]):
                flows = {}
                for label, members in groups[upper].items():
                    keep = torch.zeros(len(units[upper]), dtype=torch.bool)
                    keep[members] = True
                    flows[label] = conditional_relevance(modified, inputs, targets, upper, lower, keep).mean(0)
                total = float(plain[lower].mean(0).abs().sum())
                for source, target, weight in edges_between(groups[upper], groups[lower], flows, total):
                    graph.edges.append({"source": f"{upper}:{source}", "target": f"{lower}:{target}", "weight": weight})
        return graph

    def _graph_labels(self, layer: str, threshold: float = 0.01) -> list[str | None]:
        """Labels for attribution graphs: the paper's lower threshold of 0.01."""
        labels = self.labels(layer)
        return [
            self.vocabulary.concepts[int(concept)] if float(score) >= threshold else None
            for concept, score in zip(labels.concepts[:, 0], labels.scores[:, 0])
        ]

    def channels(self, units: list[str]) -> dict[str, list[int]]:
        """Units (``layer/index``, ``layer/index-``) as channels per layer, for pruning."""
        grouped: dict[str, list[int]] = {}
        for unit in units:
            layer, row = self.unit_index(unit)
            grouped.setdefault(layer, []).append(row % self._layer(layer)["base_units"])
        return {layer: sorted(set(channels)) for layer, channels in grouped.items()}

    def __repr__(self) -> str:
        units = sum(layer["units"] for layer in self.manifest["layers"].values())
        return f"Lens({str(self.path)!r}, layers={len(self.layers)}, units={units}, foundation={self.foundation_id!r})"
