"""What every stage of a build shares: the settings, the Lens directory and its manifest, the loaded
model and data, the device and the ranks, and the stages' fingerprints."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .._util.devices import quiet_worker
from .._util.fingerprint import hash_json
from ..data import ImageData
from ..data.base import DecodingDataset, collate_decoded
from ..foundation import FoundationModel
from ..model.loading import LoadedModel
from ..model.units import LayerSpec
from ..store.files import LensStore
from .config import BuildConfig
from .parallel import Ranks, Shard

if TYPE_CHECKING:
    from ..relevance.lrp import RelevanceModel, SupportReport


@dataclass
class BuildContext:
    """The inputs of one build and the manifest the stages extend.

    ``rows`` are the samples of this build (all, or the shard's); ``identity`` is what the Lens is
    built from, as stored in the manifest; ``progress`` is already False on every rank but 0.
    """

    config: BuildConfig
    store: LensStore
    ranks: Ranks
    device: torch.device
    autocast: torch.dtype | None
    shard: Shard | None
    model: LoadedModel
    data: ImageData
    specs: list[LayerSpec]
    rows: range
    progress: bool
    identity: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    relevance: RelevanceModel | None = None
    foundation: FoundationModel | None = None  # the foundation model, where it was given as an object (else loaded by its spec)

    # -- stages in the manifest -------------------------------------------------------------------

    def stage_key(self, stage: str) -> str:
        """The fingerprint of the identity parts that ``stage`` ("collect", "embed", "responses", "relevance", "examples") reads."""
        parts = ["model", "data", "layers", "preprocessing", "collect", *(["shard"] if self.shard else [])]
        parts += {"collect": [], "embed": ["embed"], "responses": ["embed"], "relevance": ["relevance"], "examples": ["embed", "relevance"]}[stage]
        return hash_json({part: self.identity[part] for part in parts})

    def stage_done(self, stage: str) -> bool:
        record = self.manifest["stages"].get(stage, {})
        return record.get("complete", False) and record.get("fingerprint") == self.stage_key(stage)

    def finish_stage(self, stage: str, seconds: float, **info: Any) -> None:
        self.manifest["stages"][stage] = {"fingerprint": self.stage_key(stage), "complete": True, "seconds": round(seconds, 3), **info}
        self.store.write_manifest(self.manifest)

    # -- feeding the model ------------------------------------------------------------------------

    def image_loader(self, data: ImageData, indices: Sequence[int], batch_size: int) -> torch.utils.data.DataLoader:
        """Batches ``(uint8 views or None, ids, failures)`` of ``data[indices]``, decoded by worker processes;
        :meth:`model_input` turns a batch into the model's input."""
        return torch.utils.data.DataLoader(
            DecodingDataset(data, self.model.preprocessing.pixels, indices),
            batch_size=batch_size,
            num_workers=self.workers(),
            collate_fn=collate_decoded,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=quiet_worker,
        )

    def model_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """A loaded uint8 batch on the device, normalised there (4x fewer bytes to move than float32)."""
        return self.model.preprocessing.normalise_pixels(pixels.to(self.device, non_blocking=True))

    def workers(self) -> int:
        """Data loader processes: the cores a rank may use, less one for the model, at most 4 (8 on a GPU)."""
        return default_workers(self.device, self.ranks.world) if self.config.workers is None else self.config.workers

    # -- LRP ------------------------------------------------------------------------------------

    def relevance_support(self) -> SupportReport:
        """Whether LRP/CRP can explain this model (checked once, recorded in the manifest); after it,
        :attr:`relevance` holds the model prepared for attribution."""
        if self.relevance is None:
            from ..relevance.lrp import RelevanceModel

            size = self.model.preprocessing.input_size
            probe = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))  # zeros explain nothing
            self.relevance = RelevanceModel(self.model.module.to(self.device), probe.to(self.device), rule=self.config.lrp_rule)
            report = self.relevance.check()
            self.manifest["relevance_support"] = {"supported": report.supported, "reason": report.reason}
        return self.relevance.check()


def default_workers(device: torch.device, ranks: int = 1) -> int:
    """Data loader processes of one of ``ranks`` processes: the cores it may use, less one for the model, at
    most 4 where the model runs on the CPU (more would compete with its threads) and 8 where it runs on a
    GPU, which then waits on the workers' decoding and cutting (an H200 with 16 cores embedded 4 538 crops
    in 0.74x the time with 8 workers as with 4, with 15 no faster than with 8; benchmarks/embedding.py)."""
    most = 8 if device.type == "cuda" else 4
    return min(most, max(0, (os.cpu_count() or 1) // ranks - 1))
