"""From top-k samples to concept-example embeddings: crop, deduplicate, embed each crop once.

Many units share samples (and, without cropping, whole images), so the (sample, box) pairs of all
units of all layers are deduplicated first; the foundation model sees each distinct crop exactly once,
and each sample image is decoded once for all of its crops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from .._util.devices import one_thread
from ..data.base import ImageData
from ..foundation.base import Pixels
from .collect import EMPTY_ID


@dataclass
class CropTable:
    """Distinct crops ``rows`` ``[M, 5]`` (sample, x0, y0, x1, y1), sorted by sample.

    ``index[layer]`` maps each (unit, slot) to its row (``-1`` for an empty slot).
    """

    rows: torch.Tensor
    index: dict[str, torch.Tensor]

    @property
    def samples(self) -> torch.Tensor:
        return self.rows[:, 0]

    @property
    def boxes(self) -> torch.Tensor:
        return self.rows[:, 1:]


def plan_crops(samples: dict[str, torch.Tensor], boxes: dict[str, torch.Tensor]) -> CropTable:
    """Deduplicate the (sample, box) pairs of every layer; ``samples[l]`` is ``[U, k]``, ``boxes[l]`` ``[U, k, 4]``."""
    flat = []
    for layer, ids in samples.items():
        flat.append(torch.cat([ids.reshape(-1, 1), boxes[layer].reshape(-1, 4)], dim=1))
    everything = torch.cat(flat) if flat else torch.empty(0, 5, dtype=torch.int64)
    valid = everything[:, 0] != EMPTY_ID
    rows, inverse = torch.unique(everything[valid], dim=0, return_inverse=True)  # sorted by sample first
    rows_of_all = torch.full((everything.shape[0],), -1, dtype=torch.int64)
    rows_of_all[valid] = inverse
    index, start = {}, 0
    for layer, ids in samples.items():
        index[layer] = rows_of_all[start : start + ids.numel()].reshape(ids.shape)
        start += ids.numel()
    return CropTable(rows, index)


def cut_crops(rows: torch.Tensor, load_view: Callable[[int], Image.Image]) -> Iterator[Image.Image]:
    """Crop images for consecutive table rows, decoding each sample once."""
    current, view = None, None
    for sample, x0, y0, x1, y1 in rows.tolist():
        if sample != current:
            current, view = sample, load_view(sample)
        yield view.crop((x0, y0, x1, y1))


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
    so that DataLoader workers decode, cut and preprocess the next spans while the foundation model
    embeds this one (the model, CPU or GPU, then waits less on PIL)."""

    def __init__(
        self,
        rows: torch.Tensor,
        spans: list[tuple[int, int]],
        data: ImageData,
        view: Callable[[Image.Image], Image.Image],
        preprocess: Callable[[Sequence[Image.Image]], Pixels],
        batch_size: int,
    ) -> None:
        self.rows, self.spans, self.data, self.view = rows, spans, data, view
        self.preprocess, self.batch_size = preprocess, batch_size

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, position: int) -> list[Pixels]:
        begin, end = self.spans[position]
        crops = list(cut_crops(self.rows[begin:end], self._load_view))
        with one_thread():
            return [
                self.preprocess(crops[start : start + self.batch_size])
                for start in range(0, len(crops), self.batch_size)
            ]

    def _load_view(self, index: int) -> Image.Image:
        return self.view(self.data.load(index))
