"""Embedding spaces: one Lens, its concept examples embedded by several foundation models.

The build's foundation model gives the *default* space (``manifest["foundation"]``, theta in
``layers/<layer>.embed``, as every Lens has it). ``semlens embed`` (``semlens.pipeline.spaces``) embeds the
same crops with another model into a space of its own under ``spaces/<name>/``, recorded in
``manifest["spaces"]``. ``Lens.in_space(name)`` is the Lens seen in one space: its theta, example
embeddings, foundation model, probes, labels and search index are that space's; everything else (units,
concept examples, class relevance) is shared: ask the view any question.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .._util.cache import cache_dir
from .._util.errors import SemlensError, TextNotSupportedError, asked
from .._util.fingerprint import hash_json
from ..analysis.alignment import alignment
from ..analysis.spaces import SIMILARITY_UNITS, SpaceComparison, label_agreement, ranking_agreement, structure_agreement
from ..analysis.vocabulary import Vocabulary, load_vocabulary
from ..store.files import LensStore, space_file
from ..store.spaces import EmbeddingSpace, space_name
from ..store.trust import lens_key
from .labels import labels_of

if TYPE_CHECKING:
    from ..foundation import FoundationModel
    from .lens import Lens
    from .probes import ProbeEncoder

LABEL_TOP = 3  # concepts per unit whose overlap compare_spaces reports


def writable(folder: Path) -> bool:
    """Whether this process may write into ``folder`` (else a Lens's labels go to the user cache)."""
    return os.access(folder, os.W_OK)


class SpaceView:
    """The embedding space a Lens or one of its views answers in (``Lens.embedding``): what the manifest records
    of it, its foundation model and probes, the files of its embeddings, and where its search index and labels go."""

    def __init__(self, lens: Lens) -> None:
        self.lens = lens

    @property
    def record(self) -> dict[str, Any]:
        """What the manifest records of this view's space: spec, foundation model id, dim, dtype (and, for an
        extra space, its fingerprint and the fingerprint of the crops it embedded)."""
        lens = self.lens
        return lens.manifest["foundation"] if lens.space is None else lens.manifest["spaces"][lens.space]

    @property
    def foundation_id(self) -> str:
        """The id (name and weights hash) of the foundation model of this space."""
        return self.record["id"]

    @property
    def foundation(self) -> FoundationModel:
        """The foundation model of this space (the user's, else the trusted recorded one; id checked)."""
        return self.lens.sources.space_foundation(self.lens.space)

    @property
    def default_vocabulary(self) -> Vocabulary:
        """What labels are made of unless told: the foundation model's own concepts where it names them
        (``FoundationModel.vocabulary``: a model of one domain), else the built-in vocabulary. With the concept
        world's model, the built-in words labelled rings "mane" and "guitar", confidently."""
        return self.foundation.vocabulary or load_vocabulary(None)

    @property
    def embeds_text(self) -> bool:
        """Whether this space's foundation model embeds texts: labels, text search and the map's concept names need it."""
        return self.foundation.supports_text

    def require_text(self, what: str) -> None:
        """Refuse ``what`` (something made of a vocabulary's texts) in a space of images only, saying what would do."""
        if not self.embeds_text:
            raise TextNotSupportedError(
                f"{what} needs texts embedded, and this Lens's foundation model {self.foundation_id} embeds images only; "
                "add a space of a text-image model to the Lens (`semlens embed LENS --foundation SPEC`, e.g. "
                f"hf:openai/clip-vit-base-patch32 or conse) and ask in it ({asked('lens.in_space(NAME)', '--space NAME')})"
            )

    @cached_property
    def probes(self) -> ProbeEncoder:
        """Probe encoder with an on-disk cache per foundation model in the user cache (not in this Lens)."""
        from .probes import ProbeEncoder, probe_cache_path

        return ProbeEncoder(self.foundation, probe_cache_path(self.foundation_id))

    @property
    def fingerprint(self) -> str:
        """What this space's embeddings were computed from (it keys the search index)."""
        lens = self.lens
        return lens.manifest["stages"]["embed"]["fingerprint"] if lens.space is None else self.record["fingerprint"]

    @cached_property
    def cache(self) -> LensStore:
        """This space's folder in the Lens's user cache (its search index; the default space's holds the explorer's
        thumbnails too): caches never write into a Lens, so reading one changes nothing in it. Keyed by what the Lens
        follows and by its arrays' hashes: a look-alike Lens (same build id, other examples) gets a folder of its own."""
        manifest = self.lens.manifest
        return self._own(LensStore(cache_dir("lenses", hash_json([lens_key(manifest), manifest.get("arrays")]))))

    @property
    def default_name(self) -> str:
        """The name of the Lens's default space (its foundation model's spec made a name; ``"default"`` names it too)."""
        return space_name(self.lens.manifest["foundation"]["spec"])

    @property
    def spaces(self) -> list[EmbeddingSpace]:
        """All the Lens's embedding spaces: the default space first, then the extra ones in the order they were added."""
        manifest = self.lens.manifest
        found = [EmbeddingSpace(self.default_name, manifest["foundation"]["spec"], manifest["foundation"]["id"],
                                manifest["foundation"]["dim"], True, True)]  # fmt: skip
        for name, record in manifest.get("spaces", {}).items():
            found.append(EmbeddingSpace(name, record["spec"], record.get("id", ""), record.get("dim", 0), False, record.get("complete", False)))
        return found

    @property
    def crops_file(self) -> str:
        """The file whose ``embeddings`` rows are this space's embeddings of the Lens's distinct crops."""
        return "crops.safetensors" if self.lens.space is None else space_file(self.lens.space, "crops.safetensors")

    @cached_property
    def derived(self) -> LensStore:
        """Where labels are stored: the Lens itself when it is writable, else its folder in the user cache,
        so that a read-only Lens answers everything; an extra embedding space's in its ``spaces/<name>/``."""
        return self._own(self.lens.store) if writable(self.lens.store.root) else self.cache

    def _own(self, root: LensStore) -> LensStore:
        """``root`` for the default space; an extra space's folder of its own in it (``spaces/<name>/``)."""
        return root if self.lens.space is None else LensStore(root.path(space_file(self.lens.space, "")))


def forget_view(lens: Lens, space: str) -> None:
    """Forget the view of ``space`` and its arrays read so far (the space was embedded again)."""
    home = lens.in_space(None)
    home._views.pop(space, None)
    for key in [key for key in home.arrays.files if key.startswith(f"{space}:")]:
        del home.arrays.files[key]


def compare_spaces(
    lens: Lens,
    a: str | None = None,
    b: str | None = None,
    vocabulary: Vocabulary | str | Path | Sequence[str] | None = None,
    queries: list[str] | None = None,
    top: int = 10,
    layers: list[str] | None = None,
) -> SpaceComparison:
    """How far two embedding spaces of this Lens agree on its valid units: their labels from ``vocabulary``
    (default: the stored labels', else the built-in one), their search rankings for ``queries`` (default:
    the vocabulary's concepts) and their layout (linear CKA, correlation of unit-unit similarities)."""
    if top < 1:
        raise SemlensError(f"top={top} must be a positive number of units")
    first, second = lens.in_space(a), lens.in_space(b)
    units, theta_a = first.arrays.all_units(layers)
    _, theta_b = second.arrays.all_units(layers)
    names = [first.space or lens.embedding.default_name, second.space or lens.embedding.default_name]
    result = SpaceComparison(names[0], names[1], len(units), structure_agreement(theta_a, theta_b, SIMILARITY_UNITS))
    mute = [name for name, view in zip(names, (first, second)) if not view.embedding.foundation.supports_text]
    if mute:
        result.notes.append(f"no labels or search compared: the foundation model of {', '.join(mute)} embeds no text")
        return result
    vocab = lens.labels.vocabulary_or(vocabulary)
    asked = list(queries) if queries else list(vocab.concepts)
    if not asked or any(not query.strip() for query in asked):
        raise SemlensError("give at least one query, and no empty ones")
    result.labels = label_agreement(_top_concepts(first, layers, vocab), _top_concepts(second, layers, vocab))
    search_a, search_b = first.arrays.all_units(layers, first.arrays.search_rule)[1], second.arrays.all_units(layers, second.arrays.search_rule)[1]
    result.search = ranking_agreement(asked, _query_scores(first, search_a, asked), _query_scores(second, search_b, asked), top)
    return result


def _top_concepts(lens: Lens, layers: list[str] | None, vocabulary: Vocabulary) -> torch.Tensor:
    """Each valid unit's best ``LABEL_TOP`` concepts ``[U, LABEL_TOP]`` in this space (``all_units``' order), as
    ``label`` ranks them by the space's default method."""
    found = labels_of(lens, vocabulary, lens.labels.default_method, top=LABEL_TOP)
    return torch.cat([found[layer].concepts[lens.arrays.valid(layer)] for layer in lens.units.checked(layers)])


def _query_scores(lens: Lens, theta: torch.Tensor, queries: list[str]) -> torch.Tensor:
    """Each query's alignment with every unit ``[Q, U]`` in this space, as ``search`` scores them."""
    return alignment(theta, lens.embedding.probes.concepts(queries, "search"), lens.embedding.probes.null("search")).T
