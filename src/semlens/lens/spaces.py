"""Embedding spaces: one Lens, its concept examples embedded by several foundation models.

The build's foundation model gives the *default* space (``manifest["foundation"]``, theta in
``layers/<layer>.embed``, as every Lens has it). ``semlens embed`` (``semlens.pipeline.spaces``) embeds the
same crops with another model into a space of its own under ``spaces/<name>/``, recorded in
``manifest["spaces"]``. ``Lens.in_space(name)`` is the Lens seen in one space: its theta, example
embeddings, foundation model, probes, labels and search index are that space's; everything else (units,
concept examples, class relevance) is shared: ask the view any question.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .._util.errors import SemlensError, StaleLensError
from ..analysis.alignment import alignment
from ..analysis.label import label_units
from ..analysis.spaces import SIMILARITY_UNITS, SpaceComparison, label_agreement, ranking_agreement, structure_agreement
from ..analysis.vocabulary import Vocabulary
from ..store.files import LensStore, layer_file, space_file
from ..store.spaces import DEFAULT, EmbeddingSpace, space_name

if TYPE_CHECKING:
    from .lens import Lens

LABEL_TOP = 3  # concepts per unit whose overlap compare_spaces reports


class LensSpaces:
    """Part of ``Lens``: its embedding spaces, the Lens seen in one of them, and the comparison of two."""

    space: str | None = None  # None: the default space (set by ``Lens.__init__`` for a view)
    _default_view: Lens | None = None  # a view's Lens in the default space, which keeps the views

    @property
    def default_space(self: Lens) -> str:
        """The default space's name (its foundation model's spec made a name; ``"default"`` names it too)."""
        return space_name(self.manifest["foundation"]["spec"])

    @property
    def space_record(self: Lens) -> dict[str, Any]:
        """What the manifest records of this view's space: spec, foundation model id, dim, dtype (and, for an
        extra space, its fingerprint and the fingerprint of the crops it embedded)."""
        return self.manifest["foundation"] if self.space is None else self.manifest["spaces"][self.space]

    @property
    def spaces(self: Lens) -> list[EmbeddingSpace]:
        """The default space first, then the extra ones in the order they were added."""
        found = [EmbeddingSpace(self.default_space, self.manifest["foundation"]["spec"], self.manifest["foundation"]["id"],
                                self.manifest["foundation"]["dim"], True, True)]  # fmt: skip
        for name, record in self.manifest.get("spaces", {}).items():
            found.append(EmbeddingSpace(name, record["spec"], record.get("id", ""), record.get("dim", 0), False, record.get("complete", False)))
        return found

    def in_space(self: Lens, space: str | None) -> Lens:
        """This Lens seen in embedding space ``space`` (None, ``"default"`` or the default's name: this Lens's
        default space); views are made once and share the arrays read so far."""
        name = self._space_key(space)
        home = self._default_view or self
        if name is None:
            return home
        if name not in home._views:
            view = type(home)(home.store, home.manifest, home.access, name)
            view._array_files = home._array_files  # the same crops: top-k, boxes and ties are shared
            view._default_view = home
            home._views[name] = view
        return home._views[name]

    @cached_property
    def _views(self) -> dict[str, Lens]:
        return {}

    def forget_view(self: Lens, space: str) -> None:
        """Forget the view of ``space`` and its arrays read so far (the space was embedded again)."""
        home = self._default_view or self
        home._views.pop(space, None)
        for key in [key for key in home._array_files if key.startswith(f"{space}:")]:
            del home._array_files[key]

    def _space_key(self: Lens, space: str | None) -> str | None:
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

    # -- the arrays of an extra space (read by ``LensArrays``) and what is derived from them -------------

    @property
    def space_fingerprint(self: Lens) -> str:
        """What this space's embeddings were computed from (it keys the search index)."""
        return self.manifest["stages"]["embed"]["fingerprint"] if self.space is None else self.space_record["fingerprint"]

    @property
    def space_cache(self: Lens) -> LensStore:
        """This space's folder in the Lens's user cache (its search index)."""
        return self.cache if self.space is None else LensStore(self.cache.path(space_file(self.space, "")))

    @property
    def crops_file(self: Lens) -> str:
        """The file whose ``embeddings`` rows are this space's embeddings of the Lens's distinct crops."""
        return "crops.safetensors" if self.space is None else space_file(self.space, "crops.safetensors")

    def _space_embed(self: Lens, layer: str) -> dict[str, torch.Tensor]:
        """A layer's theta file in this (extra) space: ``theta`` and, built with several crop rules, ``theta.<rule>``."""
        self._layer(layer)
        return self._read_cached(f"{self.space}:{layer}.embed", space_file(self.space, layer_file(layer, "embed")))

    # -- comparing two spaces ------------------------------------------------------------------------

    def compare_spaces(
        self: Lens,
        a: str | None = None,
        b: str | None = None,
        vocabulary: Vocabulary | str | Path | None = None,
        queries: list[str] | None = None,
        top: int = 10,
        layers: list[str] | None = None,
    ) -> SpaceComparison:
        """How far two embedding spaces of this Lens agree on its valid units: their labels from ``vocabulary``
        (default: the stored labels', else the built-in one), their search rankings for ``queries`` (default:
        the vocabulary's concepts) and their layout (linear CKA, correlation of unit-unit similarities)."""
        if top < 1:
            raise SemlensError(f"top={top} must be a positive number of units")
        first, second = self.in_space(a), self.in_space(b)
        units, theta_a = first.all_units(layers)
        _, theta_b = second.all_units(layers)
        names = [first.space or self.default_space, second.space or self.default_space]
        result = SpaceComparison(names[0], names[1], len(units), structure_agreement(theta_a, theta_b, SIMILARITY_UNITS))
        mute = [name for name, view in zip(names, (first, second)) if not view.foundation.supports_text]
        if mute:
            result.notes.append(f"no labels or search compared: the foundation model of {', '.join(mute)} embeds no text")
            return result
        vocab = self.vocabulary_or(vocabulary)
        asked = list(queries) if queries else list(vocab.concepts)
        if not asked or any(not query.strip() for query in asked):
            raise SemlensError("give at least one query, and no empty ones")
        result.labels = label_agreement(first._top_concepts(theta_a, vocab), second._top_concepts(theta_b, vocab))
        search_a, search_b = first.all_units(layers, first.search_rule)[1], second.all_units(layers, second.search_rule)[1]
        result.search = ranking_agreement(asked, first._query_scores(search_a, asked), second._query_scores(search_b, asked), top)
        return result

    def _top_concepts(self: Lens, theta: torch.Tensor, vocabulary: Vocabulary) -> torch.Tensor:
        """Each unit's best ``LABEL_TOP`` concepts ``[U, LABEL_TOP]`` in this space, as ``label`` ranks them."""
        concepts = self.probes.concepts(vocabulary.concepts, "label")
        return label_units(theta, concepts, self.probes.null("label"), top=LABEL_TOP).concepts

    def _query_scores(self: Lens, theta: torch.Tensor, queries: list[str]) -> torch.Tensor:
        """Each query's alignment with every unit ``[Q, U]`` in this space, as ``search`` scores them."""
        return alignment(theta, self.probes.concepts(queries, "search"), self.probes.null("search")).T
