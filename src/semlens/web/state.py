"""The Lenses one explorer serves: found by index or name, each with its thumbnails and remembered results.

Request threads share these objects. What a Lens sets up on first use (the foundation model and its
probe cache, stored labels) is made once under a lock; slow results (maps, measures, comparisons,
graphs) are computed once per key, even when several requests ask for them at the same time.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .._util.errors import AskedInEachFace, SemlensError
from ..lens.examples import ConceptExample
from ..lens.lens import Lens
from ..model.imagenet import shown_class
from ..report.html import images_missing
from ..store.files import LensFileError
from ..store.trust import display_spec
from .thumbnails import ThumbnailCache

THUMBNAILS = 4  # concept examples shown next to a unit in lists
REMEMBERED = 64  # results kept per Lens
#: an absolute path in a message (after the served Lenses' folders are named): cut to its last part for clients
ABSOLUTE_PATH = re.compile(r"(?<![\w.~/-])(?:~/|/(?!/))(?:[^\s'\"/,;()<>\[\]]+/)*(?P<last>[^\s'\"/,;()<>\[\]]+)")


class NotFound(SemlensError):
    """A Lens, layer, unit or example that a request names does not exist (HTTP 404)."""


class Served:
    """One Lens as the explorer serves it; ``damaged`` says why it cannot answer (it could not be opened: then
    ``lens`` is None), or what was found damaged in it since (it answers what it can)."""

    def __init__(self, id: int, name: str, lens: Lens | None, path: Path, damaged: str | None = None) -> None:
        self.id, self.name, self.lens, self.path, self.damaged = id, name, lens, path, damaged
        self.thumbnails = ThumbnailCache(lens) if lens is not None else None
        self._setup = threading.RLock()
        self._guard = threading.Lock()
        self._computing: dict[Hashable, threading.Lock] = {}
        self._results: OrderedDict[Hashable, Any] = OrderedDict()

    # -- set-up shared by request threads -------------------------------------------------------

    def labelled(self, space: str | None = None, method: str | None = None) -> Lens:
        """The Lens (in embedding space ``space``) with labels: labelled with the default vocabulary first when it
        has none, and labelled again (its vocabulary) when ``method`` is not the labels' method (kept in memory: a
        request never writes into a Lens)."""
        with self._setup:
            lens = self.lens.in_space(space)
            if lens.labels.vocabulary is None:
                self.ready(space)
            if method is not None and lens.labels.vocabulary is not None and lens.labels.method != method:
                stored = lens.labels.of(lens.layers[0])
                lens.label(lens.labels.vocabulary, stored.threshold, save=False, method=method, min_confidence=stored.min_confidence)
        return lens

    def ready(self, space: str | None = None) -> Lens:
        """The Lens (in embedding space ``space``) labelled (where its foundation model embeds texts) and with its
        probe encoder loaded, ready for probes: one encoder (and one writer of its cache) for all threads."""
        with self._setup:
            lens = self.lens.in_space(space)
            lens.embedding.probes  # noqa: B018 (a cached property: loads the foundation model once)
            lens.labels.ensure()  # a space of images only: no labels
        return lens

    @cached_property
    def images_missing(self) -> str | None:
        """Why the concept examples' images cannot be shown (the probe data out of reach: a received Lens served
        without it, a moved folder), or None; asked once: the pages then show the examples' sources instead of
        requesting every thumbnail (about 80 failed requests a page before)."""
        missing = images_missing(self.lens)
        return None if missing is None else said(missing)

    def remember(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per key (concurrent askers wait for the first); failures are not remembered."""
        with self._guard:
            if key in self._results:
                self._results.move_to_end(key)
                return self._results[key]
            lock = self._computing.setdefault(key, threading.Lock())
        with lock:
            with self._guard:
                if key in self._results:
                    return self._results[key]
            result = compute()
            with self._guard:
                self._results[key] = result
                while len(self._results) > REMEMBERED:
                    self._results.popitem(last=False)
                self._computing.pop(key, None)
            return result

    # -- names from requests --------------------------------------------------------------------

    def layer(self, layer: str) -> str:
        if layer not in self.lens.layers:
            raise NotFound(f"Lens {self.name} has no layer {layer!r}; its layers: {', '.join(self.lens.layers)}")
        return layer

    def unit(self, layer: str, name: str) -> tuple[str, int]:
        """``layer/name`` and its row, or NotFound naming the valid units."""
        try:
            return f"{self.layer(layer)}/{name}", self.lens.units.index(f"{layer}/{name}")[1]
        except NotFound:
            raise
        except SemlensError as error:
            raise NotFound(said(error)) from None

    def example(self, unit: str, rank: int, examples: str = "activation") -> ConceptExample:
        """The unit's concept example of ``rank`` in a set (``activation`` or ``relevance``)."""
        examples = self.lens.examples.concept_examples(unit, by=examples)
        for example in examples:
            if example.rank == rank:
                return example
        raise NotFound(
            f"unit {unit} has no concept example of rank {rank}; its ranks: {', '.join(str(e.rank) for e in examples)}"
        )

    # -- what pages show -------------------------------------------------------------------------

    def has_heatmaps(self, unit: str, examples: str = "activation") -> bool:
        """Whether the unit's examples of a set were cut from heatmaps (relevance or activation), not whole images."""
        return self.lens.examples.heatmaps(unit.rpartition("/")[0], examples) is not None

    def relevance_examples(self, unit: str) -> list[ConceptExample] | None:
        """The unit's concept examples by relevance, or None where its Lens or layer has none."""
        if not self.lens.examples.has_relevance_in(unit.rpartition("/")[0]):
            return None
        return self.lens.examples.concept_examples(unit, by="relevance")

    def example_url(self, unit: str, rank: int, kind: str = "thumbnail", examples: str = "activation") -> str:
        layer, _, name = unit.rpartition("/")
        query = "" if examples == "activation" else f"?examples={examples}"
        path = f"/api/lenses/{self.id}/layers/{quote(layer, safe='')}/units/{quote(name, safe='')}/examples/{rank}"
        return f"{path}/{kind}{query}"

    def ref(self, unit: str, examples: str = "activation") -> dict[str, Any]:
        """A unit with its label and first thumbnails of a set of examples (the ``UnitRef`` shape)."""
        layer, row = self.lens.units.index(unit)
        ranks = [example.rank for example in self.lens.examples.concept_examples(unit, by=examples)[:THUMBNAILS]]
        return {
            "lens": self.id, "unit": unit, "layer": layer, "index": row, "label": self.lens.labels.label_of(unit),
            "label_confidence": self.lens.labels.confidence_of(unit),
            "thumbnails": [] if self.images_missing else [self.example_url(unit, rank, examples=examples) for rank in ranks],
        }  # fmt: skip

    def info(self) -> dict[str, Any]:
        """The ``LensInfo`` shape (a Lens that could not be opened: its name and why)."""
        if self.lens is None:
            return {"id": self.id, "name": self.name, "model": "", "data": "", "samples": 0, "foundation": "", "k": 0, "layers": [],
                    "classes": [], "labelled": False, "class_relevance": False, "damaged": self.damaged}  # fmt: skip
        lens, identity = self.lens, self.lens.manifest["identity"]
        relevance = lens.arrays.class_relevance(lens.layers[-1])
        return {"damaged": self.damaged,
            "id": self.id, "name": self.name,
            "model": display_spec(identity["model"]["spec"]), "data": display_spec(identity["data"]["spec"]),
            "samples": identity["data"]["samples"], "foundation": lens.embedding.foundation_id, "k": lens.examples.k,
            "layers": [
                {"name": name, "units": info["units"], "signed": info["unit_names"] == "signed", "sae": info.get("sae")}
                for name, info in lens.manifest["layers"].items()
            ],
            "classes": lens.classes or [], "class_titles": [shown_class(name) for name in lens.classes or []], "seen_classes": [] if relevance is None else relevance["seen_classes"].tolist(),
            "labelled": lens.labels.vocabulary is not None, "label_coverage": lens.labels.coverage(),
            "class_relevance": relevance is not None,
            "relevance_examples": lens.examples.has_relevance,
            "spaces": [space.name for space in lens.embedding.spaces if space.complete],
            "images": self.images_missing,
        }  # fmt: skip


def said(error: BaseException) -> str:
    """An error as the explorer says it: what to pass in the command line's words, as `semlens serve` started it."""
    return error.on_the_command_line() if isinstance(error, AskedInEachFace) else str(error)


class Explorer:
    """The served Lenses, addressed by index (``0``) or directory name (``world.lens``). Each fails alone: one that
    cannot be opened (``opener`` raises a SemlensError) is served as damaged, listed with why, and its neighbours answer."""

    def __init__(self, lenses: Sequence[Lens | str | Path], opener: Callable[[Path], Lens] = Lens.open) -> None:
        if not lenses:
            raise SemlensError("give at least one Lens to serve")
        names: list[str] = []
        self.served = []
        for index, given in enumerate(lenses):
            path = given.path if isinstance(given, Lens) else Path(given).expanduser().resolve()
            name, copy = path.name, 2
            while name in names:
                name, copy = f"{path.name}-{copy}", copy + 1
            names.append(name)
            self.served.append(Served(index, name, None, path))
            try:
                lens = given if isinstance(given, Lens) else opener(path)
            except SemlensError as error:
                self.served[-1].damaged = self.public(said(error))
                continue
            self.served[-1] = Served(index, name, lens, path)
        if all(served.lens is None for served in self.served):
            raise SemlensError("no Lens to serve can be opened: " + "; ".join(f"{served.name}: {served.damaged}" for served in self.served))

    def public(self, text: str) -> str:
        """``text`` as a client may read it: each served Lens's folder called by its name, every other absolute path
        cut to its last part; where the Lenses, the data and the caches lie on this machine is not shown."""
        for served in sorted(self.served, key=lambda served: len(str(served.path)), reverse=True):
            text = text.replace(str(served.path), served.name)
        return ABSOLUTE_PATH.sub(lambda match: match["last"], text)

    def found_damaged(self, error: LensFileError) -> None:
        """Mark the Lens an error was found in as damaged (the list of Lenses shows it; similar units skip it)."""
        for served in self.served:
            if served.path == error.lens:
                served.damaged = self.public(said(error))

    def get(self, key: str) -> Served:
        for served in self.served:
            if key in (str(served.id), served.name):
                if served.lens is None:
                    raise SemlensError(f"Lens {served.name} cannot be opened: {served.damaged}")
                return served
        loaded = ", ".join(f"{served.id} ({served.name})" for served in self.served)
        raise NotFound(f"no Lens {key!r} is served; give its index or name: {loaded}")
