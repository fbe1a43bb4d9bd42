"""The embed stage: every distinct crop of the crop stage embedded once by the foundation model (in
checkpointed chunks), the embeddings stored by rows and averaged per unit to theta."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from .._util.devices import embed_dtype, quiet_worker
from .._util.errors import StaleLensError
from .._util.progress import progress_bar
from ..data import ImageData
from ..foundation import FoundationModel, load_foundation_model
from ..store.files import LensStore, layer_file
from ..store.slots import crop_rules, first_rule_ties
from .context import BuildContext
from .crop_stage import CropStage
from .embed import CropChunks, CropTable, chunks, rule_thetas
from .parallel import Ranks

EMBED_PARTIAL = "embed.partial"


def preprocess_in_workers(device: torch.device) -> bool:
    """Whether data-loader workers run the foundation model's preprocessing as well as cutting crops.

    With the foundation model on a GPU they do, or the GPU would wait on the main process's PIL
    work. On a CPU they only cut: preprocessing beside the model's threads slows them more than it
    saves (benchmarks/embedding.py). The embeddings are the same either way.
    """
    return device.type == "cuda"


class EmbedStage:
    """Inputs: the crop table of :class:`CropStage` and the foundation model. Outputs:
    ``crops.safetensors`` (every distinct crop and its float16 embedding), ``layers/<layer>.embed``
    (crop rows, boxes and theta per unit) and the foundation model's id in the manifest. Resume: done
    when the stage's fingerprint is unchanged; an interrupted run reuses the chunks embedded under
    ``embed.partial/`` with the same fingerprint and foundation model id. A foundation model whose id
    changed since the Lens was embedded makes it stale.

    The fingerprint holds ``embed_precision`` unless it is float32 (as ``auto`` is on the CPU): another
    precision gives other embeddings (conse's theta in float16 reaches a cosine of 0.999 with float32's,
    in bfloat16 0.98), so a Lens built in one is not resumed in another; the dtype the model ran in is
    recorded with its id and keys the embedded chunks. The record's ``parts`` say where the stage's seconds went:
    ``heatmaps`` (CRP passes, or reading stored heatmaps), ``boxes``, ``embedding`` (cutting and embedding the
    distinct crops; the rest is loading the foundation model and storing). ``embed_channels_last`` and ``embed_compile``
    are left out: they compute the same function, theta differing by float rounding (max abs diff
    < 1e-4, tests/unit/test_embed_options.py), so a build may resume with them switched. The stage
    record says which speed-ups ran, and why compiling was given up if it was."""

    name = "embed"

    def __init__(self, context: BuildContext, crops: CropStage) -> None:
        self.context, self.crops = context, crops

    def run(self) -> None:
        context = self.context
        if context.stage_done(self.name):
            return
        started = time.perf_counter()
        config = context.config
        foundation = context.foundation or load_foundation_model(config.foundation, device=context.device, dtype=embed_dtype(config.embed_precision))
        foundation.batch_size = config.embed_batch_size
        foundation.speed_up(config.embed_channels_last, config.embed_compile)
        recorded = context.manifest.get("foundation", {}).get("id")
        if recorded and recorded != foundation.id:
            raise StaleLensError(
                f"foundation model {context.config.foundation} now has id {foundation.id}, but this Lens was "
                f"embedded with {recorded} (its weights changed); use another directory or --overwrite"
            )
        dtype = str(foundation.dtype).removeprefix("torch.")
        context.manifest["foundation"] = {"spec": config.foundation, "id": foundation.id, "dim": foundation.dim, "dtype": dtype}
        context.ranks.on_main(lambda: context.store.write_manifest(context.manifest))
        table = self.crops.run()
        embedding = time.perf_counter()
        embeddings = self._embed_table(foundation, table)
        parts = {**self.crops.seconds, "embedding": time.perf_counter() - embedding}
        compiled = config.embed_compile and not foundation.compile_fallback
        record: dict[str, Any] = {"channels_last": foundation.channels_last, "compiled": compiled, "parts": {name: round(value, 3) for name, value in parts.items()}}
        if foundation.compile_fallback:
            record["compile_fallback"] = foundation.compile_fallback
        context.manifest = context.ranks.on_main(lambda: self._store(table, embeddings, started, record))

    def _store(self, table: CropTable, embeddings: torch.Tensor, started: float, record: dict[str, Any]) -> dict[str, Any]:
        store = self.context.store
        topk = {spec.name: store.read_tensors(layer_file(spec.name, "topk")) for spec in self.context.specs}
        tied = first_rule_ties(table.index, topk)
        store.write_tensors(
            "crops.safetensors",
            {"samples": table.samples, "boxes": table.boxes, "embeddings": embeddings.half()},
        )
        rules = crop_rules(self.context.config.crop_rule)
        for spec in self.context.specs:
            index = table.index[spec.name]
            thetas = rule_thetas(embeddings, index, topk[spec.name]["ids"].shape[1], rules)
            boxes = torch.where((index >= 0)[..., None], table.boxes[index.clamp_min(0)], -1)
            store.write_tensors(
                layer_file(spec.name, "embed"), {"crop_index": index, "boxes": boxes, **thetas, "tied": tied[spec.name]}
            )
            self.context.manifest["layers"][spec.name]["tied_units"] = int(tied[spec.name].sum())
        store.remove(EMBED_PARTIAL)
        slots = sum(int((index >= 0).sum()) for index in table.index.values())
        self.context.finish_stage(
            self.name, time.perf_counter() - started, example_slots=slots, distinct_crops=table.rows.shape[0], **record
        )
        return self.context.manifest

    def _embed_table(self, foundation: FoundationModel, table: CropTable) -> torch.Tensor:
        """Embed all distinct crops, each rank its block of chunks; a resumed run skips finished chunks."""
        context = self.context
        model = f"{foundation.id.replace('/', '_').replace(':', '_')}-{context.manifest['foundation']['dtype']}"
        partial = f"{EMBED_PARTIAL}/{context.stage_key(self.name)}-{model}"
        return embed_crops(foundation, table, crop_source(context), partial)


@dataclass(frozen=True)
class CropSource:
    """Where :func:`embed_crops` reads the crops from (the Lens being embedded, its probe data and the
    model's input view) and how it runs (device, loader workers, progress bar, ranks)."""

    store: LensStore
    data: ImageData
    view: Callable[[Image.Image], Image.Image]
    device: torch.device
    workers: int
    progress: bool
    ranks: Ranks


def crop_source(context: BuildContext) -> CropSource:
    """The crops of the Lens a build is making, as :func:`embed_crops` reads them."""
    return CropSource(
        context.store, context.data, context.model.preprocessing.view, context.device, context.workers(), context.progress, context.ranks
    )


def embed_crops(foundation: FoundationModel, table: CropTable, source: CropSource, partial: str) -> torch.Tensor:
    """The embeddings ``[M, d]`` of all rows of ``table``, in checkpointed chunks of the foundation model's
    batches kept under ``partial`` (a resumed run skips finished chunks), each rank its block of chunks,
    while data loader workers decode and cut the next chunks."""
    store, device, ranks = source.store, source.device, source.ranks
    spans = list(chunks(table.rows.shape[0], foundation.batch_size * 4))
    mine = [spans[position] for position in ranks.shard.split(range(len(spans)))]
    done = {
        begin: store.read_tensors(f"{partial}/{begin:09d}.safetensors")["embeddings"]
        for begin, _ in mine
        if store.path(f"{partial}/{begin:09d}.safetensors").is_file()
    }
    pending = [span for span in mine if span[0] not in done]
    in_workers = preprocess_in_workers(device)
    crops = CropChunks(
        table, pending, source.data, source.view,
        foundation.image_preprocessor if in_workers else list, foundation.batch_size, str(store.root),
        foundation.dtype if in_workers else None,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(
        crops, batch_size=None, num_workers=min(source.workers, len(pending)), pin_memory=device.type == "cuda",
        worker_init_fn=quiet_worker,
    )
    total = sum(end - begin for begin, end in mine)
    with progress_bar("embed", total, source.progress, completed=total - sum(end - begin for begin, end in pending)) as advance:
        for (begin, end), batches in zip(pending, loader):
            pixels = batches if in_workers else [foundation.preprocess(crops) for crops in batches]
            part = torch.cat([foundation.embed_pixels(batch) for batch in pixels])
            store.write_tensors(f"{partial}/{begin:09d}.safetensors", {"embeddings": part})
            done[begin] = part
            advance(end - begin)
    local = torch.cat([torch.empty(0, foundation.dim), *(done[begin] for begin, _ in mine)])
    return ranks.concat(local)
