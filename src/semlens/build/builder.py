"""Building a Lens: model + layers + probe data + foundation model -> a Lens directory.

Two stages, each skipped when its inputs are unchanged and resumed when it was interrupted:

1. ``collect``: one pass of the model over the data with hooks on every chosen layer, keeping the
   top-k samples (and their activation maps) per unit; checkpointed every few seconds.
2. ``embed``: crop every unit's top samples, deduplicate the crops across all units, embed each
   distinct crop once with the foundation model (in checkpointed chunks), average to theta.

The manifest records what each stage was computed from; reusing a directory built from other inputs
is an error that names what changed.
"""

from __future__ import annotations

import json
import os
import platform
import time
from itertools import chain
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from .collect import EMPTY_ID, Collector, TopK
from .crops import CROP_MODES, boxes_from_maps, full_boxes
from ..data import ImageData, load_data
from ..data.base import DecodingDataset, collate_decoded
from .._util.devices import autocast_dtype, check_precision, pick_device
from .embed import CropChunks, CropTable, chunks, mean_embeddings, plan_crops
from .._util.errors import DataError, SemlensError, StaleLensError
from .._util.fingerprint import hash_json
from ..foundation import FoundationModel, load_foundation_model
from ..model.loading import LoadedModel, class_mapping, load_model
from .parallel import Ranks, Shard, connect
from .._util.progress import progress_bar
from ..lens.store import FORMAT, FORMAT_VERSION, LensStore, layer_file
from ..model.units import LayerSpec, resolve_module
from .._util.tomlfiles import read_toml

COLLECT_PARTIAL = "collect.partial.safetensors"  # of a single process; ranks add their rank
#: crop=auto computes CRP heatmaps on a CPU only up to this many (unit, example) pairs
CPU_RELEVANCE_PAIRS = 4096
EMBED_PARTIAL = "embed.partial"


@dataclass
class BuildConfig:
    """Everything a Lens is built from; also the schema of ``semlens run --config FILE.toml``."""

    model: str
    layers: list[str]
    data: str
    foundation: str = "conse"
    k: int = 30
    pool: str = "mean"
    crop: str = "auto"
    crop_threshold: float = 0.01
    class_relevance: bool = True
    relevance_data: str | None = None
    relevance_batch_size: int = 16
    max_map_side: int = 32
    batch_size: int = 32
    embed_batch_size: int = 64
    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None
    checkpoint_seconds: float = 30.0
    shard: str | None = None

    def __post_init__(self) -> None:
        if not self.layers:
            raise SemlensError("no layers given; name at least one (see `semlens layers MODEL`)")
        if self.crop not in CROP_MODES:
            raise SemlensError(f"crop={self.crop!r} is not one of {', '.join(CROP_MODES)}")
        if self.k < 1 or self.batch_size < 1 or self.embed_batch_size < 1:
            raise SemlensError("k, batch_size and embed_batch_size must be positive integers")
        check_precision(self.precision)
        if self.shard is not None:
            Shard.parse(self.shard)

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> BuildConfig:
        """Read a TOML file whose keys are this class's fields; ``overrides`` (not None) win."""
        values = read_toml(path, "config")
        known = {item.name for item in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise SemlensError(f"config {path}: unknown keys {', '.join(sorted(unknown))}; valid: {', '.join(sorted(known))}")
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)


@dataclass
class LayerSummary:
    name: str
    units: int
    inactive_units: int
    output: str


@dataclass
class BuildSummary:
    """What ``build_lens`` did, for the CLI's closing table and ``--json``."""

    path: str
    samples: int
    failed: int
    layers: list[LayerSummary] = field(default_factory=list)
    example_slots: int = 0
    distinct_crops: int = 0
    stages: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LensBuilder:
    """Runs the stages of one build; ``build_lens`` is the one-call entry point.

    Under ``torchrun`` every rank runs it: each collects its block of the samples and embeds its
    block of the distinct crops, results are merged exactly across ranks, and rank 0 writes the Lens.
    With ``config.shard`` (``"i/n"``) it runs the collect stage on that shard only, for ``semlens merge``.
    """

    def __init__(self, config: BuildConfig, out: str | Path, overwrite: bool = False, progress: bool = True) -> None:
        connect()
        self.ranks = Ranks()
        self.config, self.progress = config, progress and self.ranks.is_main
        self.store = LensStore(out)
        self.device = self.ranks.place(pick_device(config.device))
        self.autocast = autocast_dtype(config.precision, self.device)
        self.shard = Shard.parse(config.shard) if config.shard else None
        self.model: LoadedModel = load_model(config.model)
        self.data: ImageData = load_data(config.data)
        self.specs = [LayerSpec.parse(text, config.pool) for text in config.layers]
        for spec in self.specs:
            resolve_module(self.model.module, spec.name)
        self.rows = (self.shard or Shard()).split(range(len(self.data)), config.batch_size)
        if self.shard and not self.rows:
            batches = -(-len(self.data) // config.batch_size)
            raise SemlensError(f"shard {self.shard} holds no samples: the data makes only {batches} batches; use at most {batches} shards")
        self.identity = json.loads(json.dumps(self._identity()))  # compare as stored: tuples become lists
        self._relevance = None
        self.manifest = self.ranks.on_main(lambda: self._open_manifest(overwrite))

    # -- identity and manifest ------------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        config = self.config
        identity = {
            "model": {"spec": self.model.spec, "fingerprint": self.model.fingerprint},
            "data": {"spec": self.data.spec, "fingerprint": self.data.fingerprint(), "samples": len(self.data)},
            "layers": [spec.fingerprint_fields() for spec in self.specs],
            "preprocessing": asdict(self.model.preprocessing),
            "collect": {"k": config.k, "max_map_side": config.max_map_side},
            "embed": {"foundation": config.foundation, "crop": config.crop, "crop_threshold": config.crop_threshold},
            "relevance": {"enabled": config.class_relevance, "data": config.relevance_data},
        }
        if self.autocast is not None:  # float32 adds nothing, so Lenses built before this setting stay valid
            identity["collect"]["autocast"] = str(self.autocast).removeprefix("torch.")
        if self.shard is not None:
            identity["shard"] = {"index": self.shard.index, "count": self.shard.count, "samples": [self.rows.start, self.rows.stop]}
        return identity

    def _open_manifest(self, overwrite: bool) -> dict[str, Any]:
        if overwrite:
            self.store.clear()
        if self.store.has_manifest():
            manifest = self.store.read_manifest()
            changed = [key for key, value in self.identity.items() if manifest["identity"].get(key) != value]
            if changed:
                details = "; ".join(
                    f"{key}: was {manifest['identity'].get(key)}, now {self.identity[key]}" for key in changed
                )
                raise StaleLensError(
                    f"the Lens at {self.store.root} was built from other inputs ({details}). "
                    "Use another output directory, or --overwrite to rebuild it."
                )
            return manifest
        if self.store.root.exists() and any(self.store.root.iterdir()):
            raise SemlensError(f"{self.store.root} exists, is not empty and is not a Lens; choose another output directory")
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": {"semlens": __version__, "torch": torch.__version__, "python": platform.python_version()},
            "identity": self.identity,
            "settings": asdict(self.config),
            "classes": self.data.classes,
            "model_classes": self.model.classes,
            "layers": {},
            "stages": {},
        }
        self.store.write_manifest(manifest)
        return manifest

    def _stage_key(self, stage: str) -> str:
        parts = ["model", "data", "layers", "preprocessing", "collect", *(["shard"] if self.shard else [])]
        parts += {"collect": [], "embed": ["embed"], "relevance": ["relevance"]}[stage]
        return hash_json({part: self.identity[part] for part in parts})

    def stage_done(self, stage: str) -> bool:
        record = self.manifest["stages"].get(stage, {})
        return record.get("complete", False) and record.get("fingerprint") == self._stage_key(stage)

    def _finish_stage(self, stage: str, seconds: float, **info: Any) -> None:
        self.manifest["stages"][stage] = {"fingerprint": self._stage_key(stage), "complete": True, "seconds": round(seconds, 3), **info}
        self.store.write_manifest(self.manifest)

    # -- stage 1: collect -----------------------------------------------------------------------

    def collect(self) -> None:
        if self.stage_done("collect"):
            return
        started = time.perf_counter()
        rows = self.ranks.shard.split(self.rows, self.config.batch_size)  # this rank's whole batches
        key = hash_json([self._stage_key("collect"), rows.start, rows.stop])
        checkpoint = COLLECT_PARTIAL if self.ranks.world == 1 else f"collect.partial.rank{self.ranks.rank}of{self.ranks.world}.safetensors"
        state, next_index, failures = self._load_collect_checkpoint(checkpoint, key, rows.start)
        model = self.model.module.to(self.device).eval()
        loader = self._image_loader(self.data, range(next_index, rows.stop), self.config.batch_size)
        last_save = time.monotonic()
        with Collector(model, self.specs, self.config.k, self.config.max_map_side, state, self.autocast) as collector:
            with progress_bar("collect", len(rows), self.progress, completed=next_index - rows.start) as advance:
                for pixels, ids, failed in loader:
                    if pixels is not None:
                        collector.update(self._model_input(pixels), ids.to(self.device))
                    failures.extend(failed)
                    next_index += len(ids) + len(failed)
                    advance(len(ids) + len(failed))
                    if time.monotonic() - last_save >= self.config.checkpoint_seconds and next_index < rows.stop:
                        self._save_collect_checkpoint(checkpoint, key, collector.results, next_index, failures)
                        last_save = time.monotonic()
            results = self.ranks.merge_topk({name: topk.to("cpu") for name, topk in collector.results.items()})
        failures = sorted(chain.from_iterable(self.ranks.gather_objects(failures)))
        seconds = time.perf_counter() - started
        self.manifest = self.ranks.on_main(lambda: self.finish_collect(results, failures, seconds, ranks=self.ranks.world))

    def finish_collect(self, results: dict[str, TopK], failures: list, seconds: float, **info: Any) -> dict[str, Any]:
        """Store the collect stage's results (from this run, or merged from shards) and mark it done."""
        self._write_collect_results(results, failures)
        for checkpoint in self.store.root.glob("collect.partial*"):  # every rank's, of any earlier world size
            checkpoint.unlink()
        self._finish_stage("collect", seconds, failed=len(failures), **info)
        return self.manifest

    def _image_loader(self, data: ImageData, indices: range, batch_size: int) -> torch.utils.data.DataLoader:
        """Batches ``(uint8 views or None, ids, failures)`` of ``data[indices]``, decoded by worker processes;
        :meth:`_model_input` turns a batch into the model's input."""
        return torch.utils.data.DataLoader(
            DecodingDataset(data, self.model.preprocessing.pixels, indices),
            batch_size=batch_size,
            num_workers=self._workers(),
            collate_fn=collate_decoded,
            pin_memory=self.device.type == "cuda",
        )

    def _model_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """A loaded uint8 batch on the device, normalised there (4x fewer bytes to move than float32)."""
        return self.model.preprocessing.normalise_pixels(pixels.to(self.device, non_blocking=True))

    def _workers(self) -> int:
        """Data loader processes: the cores a rank may use, less one for the model, at most 4."""
        if self.config.workers is not None:
            return self.config.workers
        return min(4, max(0, (os.cpu_count() or 1) // self.ranks.world - 1))

    def _save_collect_checkpoint(self, name: str, key: str, results: dict[str, TopK], next_index: int, failures: list) -> None:
        tensors: dict[str, torch.Tensor] = {}
        for position, spec in enumerate(self.specs):
            if spec.name in results:
                tensors.update(results[spec.name].state(prefix=f"{position}."))
        metadata = {"fingerprint": key, "next_index": str(next_index), "failures": json.dumps(failures)}
        self.store.write_tensors(name, tensors, metadata)

    def _load_collect_checkpoint(self, name: str, key: str, start: int) -> tuple[dict[str, TopK], int, list]:
        if not self.store.path(name).is_file():
            return {}, start, []
        metadata = self.store.read_metadata(name)
        if metadata.get("fingerprint") != key:
            self.store.remove(name)  # progress of other inputs or another split: useless, never mixed in
            return {}, start, []
        tensors = self.store.read_tensors(name)
        state = {}
        for position, spec in enumerate(self.specs):
            if f"{position}.scores" in tensors:
                state[spec.name] = TopK.from_state(tensors, prefix=f"{position}.").to(self.device)
        failures = [tuple(item) for item in json.loads(metadata["failures"])]
        return state, int(metadata["next_index"]), failures

    def _write_collect_results(self, results: dict[str, TopK], failures: list) -> None:
        if len(failures) == len(self.rows):
            examples = "; ".join(error for _, error in failures[:3])
            raise DataError(f"none of the {len(self.rows)} samples of {self.data.spec} could be decoded ({examples})")
        self.store.write_json("failures.json", [{"sample": index, "error": error} for index, error in failures])
        for spec in self.specs:
            topk = results[spec.name]
            # a unit whose k kept scores are all equal never told samples apart: its examples are arbitrary
            inactive = topk.scores[:, 0] == topk.scores[:, -1]
            self.store.write_tensors(layer_file(spec.name, "topk"), {**topk.state(), "inactive": inactive})
            base_units = topk.units // 2 if spec.signed else topk.units
            self.manifest["layers"][spec.name] = {
                "units": topk.units,
                "unit_names": "signed" if spec.signed else "index",
                "base_units": base_units,
                "output": "spatial" if topk.maps is not None else "vector",
                "map_shape": None if topk.maps is None else list(topk.maps.shape[2:]),
                "inactive_units": int(inactive.sum()),
                "spec": asdict(spec),
            }
        referenced = torch.unique(torch.cat([results[spec.name].ids.reshape(-1) for spec in self.specs]))
        referenced = [index for index in referenced.tolist() if index != EMPTY_ID]
        self.store.write_json(
            "samples.json",
            {
                "root": str(getattr(self.data, "root", "")),
                "ids": referenced,
                "paths": [self.data.describe(index) for index in referenced],
                "labels": [self.data.label(index) for index in referenced],
            },
        )

    # -- stage 2: embed -------------------------------------------------------------------------

    def embed(self) -> None:
        if self.stage_done("embed"):
            return
        started = time.perf_counter()
        foundation = load_foundation_model(self.config.foundation, device=self.device)
        foundation.batch_size = self.config.embed_batch_size
        recorded = self.manifest.get("foundation", {}).get("id")
        if recorded and recorded != foundation.id:
            raise StaleLensError(
                f"foundation model {self.config.foundation} now has id {foundation.id}, but this Lens was "
                f"embedded with {recorded} (its weights changed); use another directory or --overwrite"
            )
        self.manifest["foundation"] = {"spec": self.config.foundation, "id": foundation.id, "dim": foundation.dim}
        self.ranks.on_main(lambda: self.store.write_manifest(self.manifest))
        table = self._plan()
        embeddings = self._embed_table(foundation, table)
        self.manifest = self.ranks.on_main(lambda: self._store_embeddings(table, embeddings, started))

    def _store_embeddings(self, table: CropTable, embeddings: torch.Tensor, started: float) -> dict[str, Any]:
        self.store.write_tensors(
            "crops.safetensors",
            {"samples": table.samples, "boxes": table.boxes, "embeddings": embeddings.half()},
        )
        for spec in self.specs:
            index = table.index[spec.name]
            theta = mean_embeddings(embeddings, index)
            boxes = torch.where((index >= 0)[..., None], table.boxes[index.clamp_min(0)], -1)
            self.store.write_tensors(layer_file(spec.name, "embed"), {"crop_index": index, "boxes": boxes, "theta": theta})
        self.store.remove(EMBED_PARTIAL)
        slots = sum(int((index >= 0).sum()) for index in table.index.values())
        self._finish_stage("embed", time.perf_counter() - started, example_slots=slots, distinct_crops=table.rows.shape[0])
        return self.manifest

    def _plan(self) -> CropTable:
        samples, boxes = {}, {}
        for spec in self.specs:
            stored = self.store.read_tensors(layer_file(spec.name, "topk"))
            samples[spec.name] = stored["ids"]
            boxes[spec.name] = self._layer_boxes(spec, stored)
        return plan_crops(samples, boxes)

    def _crop_mode(self, spec: LayerSpec, has_maps: bool) -> tuple[str, str]:
        """The crop mode a layer gets, and why (auto picks relevance where LRP supports it)."""
        mode = self.config.crop
        if mode in ("auto", "relevance"):
            report = self.relevance_support()
            problem = None if report.supported else report.reason
            if problem is None and spec.sae:
                problem = "CRP through a sparse autoencoder is not supported"
            pairs = sum(self.manifest["layers"][other.name]["units"] for other in self.specs) * self.config.k
            if problem is None and mode == "auto" and self.device.type != "cuda" and pairs > CPU_RELEVANCE_PAIRS:
                problem = f"{pairs} unit-example pairs are too many backward passes on a CPU; pass crop=relevance to insist"
            if problem is None:
                return "relevance", report.reason
            if mode == "relevance":
                raise SemlensError(f"crop=relevance is not possible for layer {spec.name}: {problem}; use crop=activation")
            mode, why = "activation", f"relevance not possible ({problem})"
            return (mode, why) if has_maps else ("none", why + "; no activation map either")
        if mode == "activation" and not has_maps:
            return "none", "the layer has no spatial map"
        return mode, "as asked"

    def _layer_boxes(self, spec: LayerSpec, stored: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, maps, inactive = stored["ids"], stored.get("maps"), stored["inactive"]
        size = self.model.preprocessing.input_size
        mode, why = self._crop_mode(spec, maps is not None)
        self.manifest["layers"][spec.name]["crop"] = {"mode": mode, "why": why}
        if mode == "relevance":
            layer_boxes = self._relevance_boxes(spec, ids)
        elif mode == "activation":
            layer_boxes = boxes_from_maps(maps.reshape(-1, *maps.shape[2:]), (size, size), self.config.crop_threshold)
            layer_boxes = layer_boxes.reshape(*ids.shape, 4)
        else:
            layer_boxes = full_boxes(ids.numel(), (size, size)).reshape(*ids.shape, 4)
        layer_boxes[inactive] = full_boxes(1, (size, size))  # arbitrary examples: no crop to trust
        return layer_boxes

    def relevance_support(self):
        """Whether LRP/CRP can explain this model (checked once, recorded in the manifest)."""
        if self._relevance is None:
            from ..relevance.lrp import RelevanceModel

            size = self.model.preprocessing.input_size
            probe = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))  # zeros explain nothing
            self._relevance = RelevanceModel(self.model.module.to(self.device), probe.to(self.device))
            report = self._relevance.check()
            self.manifest["relevance_support"] = {"supported": report.supported, "reason": report.reason}
        return self._relevance.check()

    def _relevance_boxes(self, spec: LayerSpec, ids: torch.Tensor) -> torch.Tensor:
        """CRP crop boxes ``[U, k, 4]``: each unit's heatmap on each of its samples, many pairs per backward
        pass, split into blocks of whole batches across ranks; stored per layer so that an interrupted
        run does not redo finished layers."""
        from ..relevance.lrp import crp_heatmaps

        name = layer_file(spec.name, "crops")
        key = self._stage_key("embed")
        if self.store.path(name).is_file() and self.store.read_metadata(name).get("fingerprint") == key:
            return self.store.read_tensors(name)["boxes"]
        size = self.model.preprocessing.input_size
        units, k = ids.shape
        base = self.manifest["layers"][spec.name]["base_units"]
        unit_of = torch.arange(units).repeat_interleave(k)
        flat_ids = ids.reshape(-1)
        valid = (flat_ids != EMPTY_ID).nonzero().flatten()
        order = valid[torch.argsort(flat_ids[valid], stable=True)]  # by sample: each image decoded once per batch
        batch = self.config.relevance_batch_size
        mine = self.ranks.shard.split(range(len(order)), batch)
        found = torch.empty(len(mine), 4, dtype=torch.int64)
        with self._relevance.attributing() as modified, progress_bar(f"relevance crops {spec.name}", len(mine), self.progress) as advance:
            for begin, end in chunks(mine.stop, batch, mine.start):
                positions = order[begin:end]
                samples = flat_ids[positions].tolist()
                views = {sample: self.model.preprocessing(self.data.load(sample)) for sample in set(samples)}
                inputs = torch.stack([views[sample] for sample in samples]).to(self.device)
                channels = unit_of[positions] % base
                signs = torch.where(unit_of[positions] >= base, -1.0, 1.0)
                heat = crp_heatmaps(modified, inputs, spec.name, channels.to(self.device), signs.to(self.device), spec.pick)
                found[begin - mine.start : end - mine.start] = boxes_from_maps(heat.detach().cpu(), (size, size), self.config.crop_threshold)
                advance(len(positions))
        boxes = full_boxes(units * k, (size, size))
        boxes[order] = self.ranks.concat(found)
        boxes = boxes.reshape(units, k, 4)
        self.ranks.on_main(lambda: self.store.write_tensors(name, {"boxes": boxes}, {"fingerprint": key}))
        return boxes

    def _embed_table(self, foundation: FoundationModel, table: CropTable) -> torch.Tensor:
        """Embed all distinct crops in checkpointed chunks, each rank its block of chunks, while data
        loader workers decode and cut the next chunks; a resumed run skips finished chunks."""
        partial = f"{EMBED_PARTIAL}/{self._stage_key('embed')}-{foundation.id.replace('/', '_').replace(':', '_')}"
        spans = list(chunks(table.rows.shape[0], self.config.embed_batch_size * 4))
        mine = [spans[position] for position in self.ranks.shard.split(range(len(spans)))]
        done = {
            begin: self.store.read_tensors(f"{partial}/{begin:09d}.safetensors")["embeddings"]
            for begin, _ in mine
            if self.store.path(f"{partial}/{begin:09d}.safetensors").is_file()
        }
        pending = [span for span in mine if span[0] not in done]
        in_workers = preprocess_in_workers(self.device)
        crops = CropChunks(
            table.rows, pending, self.data, self.model.preprocessing.view,
            foundation.image_preprocessor if in_workers else list, foundation.batch_size,
        )  # fmt: skip
        loader = torch.utils.data.DataLoader(
            crops, batch_size=None, num_workers=min(self._workers(), len(pending)), pin_memory=self.device.type == "cuda"
        )
        total = sum(end - begin for begin, end in mine)
        with progress_bar("embed", total, self.progress, completed=total - sum(end - begin for begin, end in pending)) as advance:
            for (begin, end), batches in zip(pending, loader):
                pixels = batches if in_workers else [foundation.preprocess(crops) for crops in batches]
                part = torch.cat([foundation.embed_pixels(batch) for batch in pixels])
                self.store.write_tensors(f"{partial}/{begin:09d}.safetensors", {"embeddings": part})
                done[begin] = part
                advance(end - begin)
        local = torch.cat([torch.empty(0, foundation.dim), *(done[begin] for begin, _ in mine)])
        return self.ranks.concat(local)

    # -- stage 3: class relevance ----------------------------------------------------------------

    def relevance(self) -> None:
        """Per unit and class: max and mean LRP relevance share over a labelled (or predicted) test set.

        Only rank 0 computes it (the other ranks are done): its float64 sums, split across ranks, would
        be added in another order and differ in the last bits from a single-process run.
        """
        if not self.config.class_relevance or self.stage_done("relevance") or not self.ranks.is_main:
            return
        started = time.perf_counter()
        report = self.relevance_support()
        if not report.supported:
            self._finish_stage("relevance", 0.0, skipped=f"LRP does not support this model: {report.reason}")
            return
        from .class_relevance import ClassRelevance, relevance_shares
        from ..relevance.lrp import unit_relevance

        data = load_data(self.config.relevance_data) if self.config.relevance_data else self.data
        mapping, targets_from = class_mapping(self.model, data)
        layers = [spec for spec in self.specs if not spec.sae]
        loader = self._image_loader(data, range(len(data)), self.config.relevance_batch_size)
        stats: dict[str, ClassRelevance] = {}
        with self._relevance.attributing() as modified, progress_bar("class relevance", len(data), self.progress) as advance:
            for pixels, ids, failed in loader:
                advance(len(ids) + len(failed))
                if pixels is None:
                    continue
                pixels = self._model_input(pixels)
                if mapping is None:
                    with torch.no_grad():
                        targets = self.model.module(pixels).argmax(dim=1)
                else:
                    targets = torch.tensor([mapping[data.label(index)] for index in ids.tolist()], device=self.device)
                outputs, relevance = unit_relevance(modified, pixels, targets, [spec.name for spec in layers], {s.name: s.pick for s in layers})
                for spec in layers:
                    shares = relevance_shares(relevance[spec.name])
                    stats.setdefault(spec.name, ClassRelevance(shares.shape[1], outputs.shape[1])).update(shares, targets, ids)
        for name, accumulator in stats.items():
            self.store.write_tensors(layer_file(name, "relevance"), accumulator.state())
        self.manifest["relevance"] = {"data": data.spec, "targets": targets_from, "layers": list(stats)}
        self._finish_stage("relevance", time.perf_counter() - started)

    # -- all ------------------------------------------------------------------------------------

    def run(self) -> BuildSummary:
        """Every stage; only the collect stage for a shard (``semlens merge`` runs the others)."""
        for stage in ("collect",) if self.shard else ("collect", "embed", "relevance"):
            getattr(self, stage)()
        return self.summary()

    def summary(self) -> BuildSummary:
        stages = self.manifest["stages"]
        summary = BuildSummary(
            path=str(self.store.root),
            samples=len(self.data),
            failed=stages.get("collect", {}).get("failed", 0),
            example_slots=stages.get("embed", {}).get("example_slots", 0),
            distinct_crops=stages.get("embed", {}).get("distinct_crops", 0),
            stages={name: "done" if record.get("complete") else "pending" for name, record in stages.items()},
            seconds={name: record.get("seconds", 0.0) for name, record in stages.items()},
        )
        for name, layer in self.manifest["layers"].items():
            summary.layers.append(LayerSummary(name, layer["units"], layer["inactive_units"], layer["output"]))
        return summary


def preprocess_in_workers(device: torch.device) -> bool:
    """Whether data-loader workers run the foundation model's preprocessing as well as cutting crops.

    With the foundation model on a GPU they do, or the GPU would wait on the main process's PIL
    work. On a CPU they only cut: preprocessing beside the model's threads slows them more than it
    saves (benchmarks/embedding.py). The embeddings are the same either way.
    """
    return device.type == "cuda"


def build_lens(config: BuildConfig, out: str | Path, overwrite: bool = False, progress: bool = True):
    """Build (or resume, or reuse) the Lens at ``out`` and return it opened."""
    from ..lens.lens import Lens

    LensBuilder(config, out, overwrite=overwrite, progress=progress).run()
    return Lens.open(out)

