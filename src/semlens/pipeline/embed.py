"""From top-k samples to concept-example embeddings: crop, deduplicate, embed each crop once.

Many units share samples (and, without cropping, whole images), so the (sample, box) pairs of all
units of all layers are deduplicated first; the foundation model sees each distinct crop exactly once,
and each sample image is decoded once for all of its crops. A masked crop depends on its unit's
heatmap too, so it is a row of its own, keyed by (layer, unit, slot).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from safetensors import safe_open

from .._util.devices import one_thread
from ..data.base import ImageData
from ..foundation.base import Pixels, cast_floating
from ..store.slots import rule_slots, theta_key
from .collect import EMPTY_ID
from .crops import masked_crop


@dataclass(frozen=True)
class HeatSource:
    """Where a layer's heatmaps ``[U, k, h, w]`` lie in the Lens being built (file and key): the masked
    view reads each crop's map from there in the loader workers, so memory stays one span's maps."""

    file: str
    key: str
    shift: tuple[float, float] = (0.0, 0.0)  # where the maps' cells sit off the even grid (activation maps)


@dataclass
class CropTable:
    """Distinct crops ``rows`` ``[M, 5]`` (sample, x0, y0, x1, y1), sorted by sample.

    ``index[layer]`` maps each (unit, slot) to its row (``-1`` for an empty slot). With masked crops,
    ``masks`` ``[M, 3]`` names each row's heatmap (position in ``sources``, unit, slot; ``-1`` for a
    row shown unmasked).
    """

    rows: torch.Tensor
    index: dict[str, torch.Tensor]
    masks: torch.Tensor | None = None
    sources: tuple[HeatSource, ...] = ()

    @property
    def samples(self) -> torch.Tensor:
        return self.rows[:, 0]

    @property
    def boxes(self) -> torch.Tensor:
        return self.rows[:, 1:]


def plan_crops(
    samples: dict[str, torch.Tensor], boxes: dict[str, torch.Tensor], masked: dict[str, tuple[HeatSource, torch.Tensor]] | None = None
) -> CropTable:
    """Deduplicate the (sample, box) pairs of every layer; ``samples[l]`` is ``[U, k]``, ``boxes[l]`` ``[U, k, 4]``.

    ``masked[l]`` (the layer's heatmaps and which slots ``[U, k]`` are faded by them) makes those slots
    rows of their own; the other slots share rows as before.
    """
    masked = masked or {}
    sources = tuple(dict.fromkeys(source for source, _ in masked.values()))
    flat = []
    for layer, ids in samples.items():
        units, k = ids.shape
        mask = torch.full((units, k, 3), -1, dtype=torch.int64)
        if layer in masked:
            source, faded = masked[layer]
            unit, slot = torch.meshgrid(torch.arange(units), torch.arange(k), indexing="ij")
            mask[faded] = torch.stack([torch.full_like(unit, sources.index(source)), unit, slot], dim=-1)[faded]
        flat.append(torch.cat([ids.reshape(-1, 1), boxes[layer].reshape(-1, 4), mask.reshape(-1, 3)], dim=1))
    everything = torch.cat(flat) if flat else torch.empty(0, 8, dtype=torch.int64)
    valid = everything[:, 0] != EMPTY_ID
    rows, inverse = torch.unique(everything[valid], dim=0, return_inverse=True)  # sorted by sample first
    rows_of_all = torch.full((everything.shape[0],), -1, dtype=torch.int64)
    rows_of_all[valid] = inverse
    index, start = {}, 0
    for layer, ids in samples.items():
        index[layer] = rows_of_all[start : start + ids.numel()].reshape(ids.shape)
        start += ids.numel()
    return CropTable(rows[:, :5], index, rows[:, 5:] if sources else None, sources)


def cut_crops(
    rows: torch.Tensor, load_view: Callable[[int], Image.Image], heat: Sequence[torch.Tensor | None] | None = None
) -> Iterator[Image.Image]:
    """Crop images for consecutive table rows, decoding each sample once; a row with a heatmap in
    ``heat`` is faded by it (the masked view)."""
    current, view = None, None
    for position, (sample, x0, y0, x1, y1) in enumerate(rows.tolist()):
        if sample != current:
            current, view = sample, load_view(sample)
        row_heat = None if heat is None else heat[position]
        yield view.crop((x0, y0, x1, y1)) if row_heat is None else masked_crop(view, (x0, y0, x1, y1), *row_heat)


def read_heatmaps(root: str, sources: Sequence[HeatSource], masks: torch.Tensor) -> list[tuple[torch.Tensor, tuple[float, float]] | None]:
    """The heatmap of each row of ``masks`` ``[M, 3]`` (source, unit, slot; None where unmasked) and its source's
    shift, each read alone off the disk (files under ``root``)."""
    found: list[tuple[torch.Tensor, tuple[float, float]] | None] = [None] * masks.shape[0]
    for position, source in enumerate(sources):
        wanted = (masks[:, 0] == position).nonzero().flatten().tolist()
        if not wanted:
            continue
        with safe_open(f"{root}/{source.file}", framework="pt") as handle:
            array = handle.get_slice(source.key)
            for row in wanted:
                unit, slot = masks[row, 1:].tolist()
                found[row] = (array[unit : unit + 1, slot : slot + 1][0, 0], source.shift)
    return found


def rule_thetas(embeddings: torch.Tensor, index: torch.Tensor, k: int, rules: list[str]) -> dict[str, torch.Tensor]:
    """Each crop rule's theta of a layer (``index`` ``[U, V·k]`` into ``embeddings``), by ``theta_key``."""
    return {theta_key(rules, rule): mean_embeddings(embeddings, rule_slots(index, k, rule)) for rule in range(len(rules))}


def mean_embeddings(embeddings: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """theta per unit: the mean of its examples' embeddings (``index`` ``[U, k]``, -1 = empty)."""
    valid = (index >= 0).unsqueeze(-1).float()
    gathered = embeddings[index.clamp_min(0)] * valid
    return gathered.sum(dim=1) / valid.sum(dim=1).clamp_min(1)


def chunks(total: int, size: int, start: int = 0) -> Iterable[tuple[int, int]]:
    for begin in range(start, total, size):
        yield begin, min(begin + size, total)


class CropChunks(torch.utils.data.Dataset):
    """Spans of crop-table rows as the foundation model's input batches (``batch_size`` crops each),
    so that DataLoader workers decode, cut (and fade, for masked rows, reading their heatmaps from the
    Lens at ``root``) and preprocess the next spans while the foundation model embeds this one (the
    model, CPU or GPU, then waits less on PIL). ``dtype``: the foundation model's, where its tower runs in
    half precision: the workers hand batches over in it, half the bytes of float32 through shared and
    pinned memory, which capped the hand-over below a GPU tower's pace (benchmarks/embedding.py --loader)."""

    def __init__(
        self,
        table: CropTable,
        spans: list[tuple[int, int]],
        data: ImageData,
        view: Callable[[Image.Image], Image.Image],
        preprocess: Callable[[Sequence[Image.Image]], Pixels],
        batch_size: int,
        root: str = "",
        dtype: torch.dtype | None = None,
    ) -> None:
        self.rows, self.masks, self.sources, self.root = table.rows, table.masks, table.sources, root
        self.spans, self.data, self.view = spans, data, view
        self.preprocess, self.batch_size, self.dtype = preprocess, batch_size, dtype

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, position: int) -> list[Pixels]:
        begin, end = self.spans[position]
        heat = None if self.masks is None else read_heatmaps(self.root, self.sources, self.masks[begin:end])
        crops = list(cut_crops(self.rows[begin:end], self._load_view, heat))
        with one_thread():
            batches = [self.preprocess(crops[start : start + self.batch_size]) for start in range(0, len(crops), self.batch_size)]
            return batches if self.dtype is None else [cast_floating(batch, self.dtype) for batch in batches]

    def _load_view(self, index: int) -> Image.Image:
        return self.view(self.data.load(index))
