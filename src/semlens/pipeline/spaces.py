"""Embedding spaces: a built Lens's distinct crops embedded by one more foundation model.

Collection and crops are the expensive, model-bound part of a build; the foundation model only sees the
crops. So another foundation model is added to a Lens by embedding the crops it already has, read back
from its stored top-k, boxes and heatmaps: the same crops, boxes and views as its first embedding, checked
row for row against them. The new space is stored under ``spaces/<name>/`` with its own fingerprint;
the default space stays where it is, so the Lens opens as before (see ``semlens.lens.spaces``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from .._util.devices import embed_dtype, inference_dtype, pick_device
from .._util.errors import SemlensError, StaleLensError, asked
from .._util.fingerprint import hash_json
from ..foundation import (
    FoundationModel,
    foundation_name,
    foundation_object,
    foundation_spec,
    load_foundation_model,
    space_name_of,
)
from ..model.preprocess import Preprocessing
from ..store.files import LensStore, layer_file, space_file
from ..store.slots import crop_rules, recorded_shift
from ..store.spaces import DEFAULT, EmbeddingSpace, check_space_name, space_name
from ..store.trust import is_trusted, remember_trusted
from .context import default_workers
from .crop_stage import faded_slots, heat_source, slot_samples
from .embed import CropTable, HeatSource, plan_crops, rule_thetas
from .embed_stage import CropSource, embed_crops
from .parallel import Ranks

if TYPE_CHECKING:
    from ..lens.lens import Lens

PARTIAL = "embed.partial"


class HasManifest(Protocol):
    """What holds a Lens's manifest while a space is added to it: a build's context, or an opened Lens."""

    manifest: dict[str, Any]


def stored_crop_table(store: LensStore, manifest: dict[str, Any]) -> CropTable:
    """The distinct crops of a built Lens, planned again from its stored top-k, boxes and heatmaps exactly as
    its embed stage planned them, and checked against the rows it embedded (``crops.safetensors``)."""
    masked_view = manifest["identity"]["embed"].get("crop_view") == "masked"
    samples, boxes, masked, index = {}, {}, {}, {}
    for layer, info in manifest["layers"].items():
        topk = store.read_tensors(layer_file(layer, "topk"))
        embedded = store.read_tensors(layer_file(layer, "embed"))
        boxes[layer], index[layer] = embedded["boxes"], embedded["crop_index"]
        samples[layer] = slot_samples(topk, boxes[layer])
        source: HeatSource | None = heat_source(layer, info.get("crop", {}).get("mode", "none"), recorded_shift(info))
        if masked_view and source is not None:
            heat = store.read_array(source.file, source.key)
            masked[layer] = (source, faded_slots(heat, topk["inactive"]))
    table = plan_crops(samples, boxes, masked)
    same = torch.equal(table.samples, store.read_array("crops.safetensors", "samples")) and torch.equal(
        table.boxes, store.read_array("crops.safetensors", "boxes")
    )
    if not same or any(not torch.equal(table.index[layer], index[layer]) for layer in index):
        raise SemlensError(
            f"the crops of the Lens at {store.root} cannot be planned again as its build planned them (it was made by "
            "another semlens version, or its files changed): rebuild it with `semlens run --foundation A --foundation B`"
        )
    return table


def space_precision(precision: str, device: torch.device) -> str:
    """``precision`` as a space's fingerprint holds it: ``auto`` is float32 where the device computes in it."""
    return "float32" if precision == "auto" and inference_dtype(device) == torch.float32 else precision


class SpaceStage:
    """Inputs: a built Lens (its crops, as :func:`stored_crop_table` reads them) and a foundation model spec.
    Outputs: ``spaces/<name>/crops.safetensors`` (the float16 embedding of every distinct crop, rows as in
    the Lens's ``crops.safetensors``), ``spaces/<name>/layers/<layer>.embed`` (theta) and the space's record
    in ``manifest["spaces"]``. Resume: done when the record is complete with the same fingerprint (the
    crops, the spec and the precision); an interrupted run reuses the chunks embedded under
    ``spaces/<name>/embed.partial/`` for the same fingerprint and foundation model id. A complete space of
    that name from another spec is refused unless ``overwrite``."""

    name = "space"

    def __init__(
        self,
        owner: HasManifest,
        source: CropSource,
        foundation: str | FoundationModel,
        space: str | None = None,
        precision: str = "auto",
        batch_size: int = 64,
        overwrite: bool = False,
    ) -> None:
        self.owner, self.source, self.foundation, self.spec = owner, source, foundation, foundation_spec(foundation)
        self.space = check_space_name(space or space_name_of(foundation))
        self.precision, self.batch_size, self.overwrite = precision, batch_size, overwrite

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest of the Lens as its owner holds it now (a build's stages replace theirs)."""
        return self.owner.manifest

    @property
    def fingerprint(self) -> str:
        crops = self.manifest["stages"]["embed"]["fingerprint"]
        return hash_json({"crops": crops, "foundation": foundation_name(self.foundation), "precision": space_precision(self.precision, self.source.device)})

    def done(self) -> bool:
        record = self.manifest.get("spaces", {}).get(self.space, {})
        return record.get("complete", False) and record.get("fingerprint") == self.fingerprint

    def run(self) -> None:
        default = self.manifest["foundation"]["spec"]
        if self.space == space_name(default):
            raise SemlensError(f"space name {self.space!r} is the default space's (foundation model {default}); give the new space another name ({asked('name=', '--name')})")
        if self.done() and not self.overwrite:
            return
        started = time.perf_counter()
        record = self.manifest.get("spaces", {}).get(self.space)
        if record is not None and (self.overwrite or record.get("fingerprint") != self.fingerprint):
            if record.get("complete") and not self.overwrite:
                raise StaleLensError(
                    f"this Lens's space {self.space!r} holds {record['spec']} embedded from other inputs; choose another "
                    f"name ({asked('name=', '--name')}) or embed it again ({asked('overwrite=True', '--overwrite')})"
                )
            self._on_main(self._forget)
        foundation = load_foundation_model(self.foundation, device=self.source.device, dtype=embed_dtype(self.precision))
        foundation.batch_size = self.batch_size
        foundation.speed_up()
        self._check_new(foundation)
        dtype = str(foundation.dtype).removeprefix("torch.")
        self.manifest.setdefault("spaces", {})[self.space] = {
            "spec": self.spec, "id": foundation.id, "dim": foundation.dim, "dtype": dtype, "fingerprint": self.fingerprint,
            "crops": self.manifest["stages"]["embed"]["fingerprint"], "complete": False,
        }  # fmt: skip
        self._on_main(lambda: self.source.store.write_manifest(self.manifest))
        table = stored_crop_table(self.source.store, self.manifest)
        model = f"{foundation.id.replace('/', '_').replace(':', '_')}-{dtype}"
        partial = space_file(self.space, f"{PARTIAL}/{self.fingerprint}-{model}")
        embeddings = embed_crops(foundation, table, self.source, partial)
        self._on_main(lambda: self._store(table, embeddings, time.perf_counter() - started))

    def _forget(self) -> None:
        """Drop this space's record, its files' records and then its files (a crash in between leaves no
        record of a missing file)."""
        prefix = space_file(self.space, "")
        del self.manifest["spaces"][self.space]
        for name in [name for name in self.manifest.get("arrays", {}) if name.startswith(prefix)]:
            del self.manifest["arrays"][name]
        self.source.store.write_manifest(self.manifest)
        self.source.store.remove(prefix)

    def _check_new(self, foundation: FoundationModel) -> None:
        """Refuse a foundation model that another space of this Lens already has (same id)."""
        for name, record in [(DEFAULT, self.manifest["foundation"]), *self.manifest.get("spaces", {}).items()]:
            if name != self.space and record.get("id") == foundation.id:
                raise SemlensError(f"foundation model {self.spec} ({foundation.id}) is already this Lens's space {name!r}")

    def _store(self, table: CropTable, embeddings: torch.Tensor, seconds: float) -> None:
        store = self.source.store
        written = [space_file(self.space, "crops.safetensors")]
        store.write_tensors(written[0], {"embeddings": embeddings.half()})
        rules = crop_rules(self.manifest["identity"]["embed"].get("crop_rule", "peak"))
        for layer, index in table.index.items():
            written.append(space_file(self.space, layer_file(layer, "embed")))
            store.write_tensors(written[-1], rule_thetas(embeddings, index, self.manifest["identity"]["collect"]["k"], rules))
        store.remove(space_file(self.space, PARTIAL))
        if "arrays" in self.manifest:  # a sealed Lens: its new files are checked like the others
            self.manifest["arrays"].update({name: store.array_record(name) for name in written})
        self.manifest["spaces"][self.space].update(complete=True, seconds=round(seconds, 3), distinct_crops=int(table.rows.shape[0]))
        store.write_manifest(self.manifest)

    def _on_main(self, work: Any) -> Any:
        return self.source.ranks.on_main(work)


def add_space(
    lens: Lens | str | Path,
    foundation: str | FoundationModel | tuple,
    name: str | None = None,
    precision: str = "auto",
    batch_size: int = 64,
    device: str = "auto",
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> EmbeddingSpace:
    """Embed a built Lens's crops with one more foundation model (a spec, or an object as ``build_lens`` takes it), as
    the embedding space ``name`` (default: made from the spec, or an object's id), without collecting or cropping again; an interrupted run resumes. Needs the Lens's probe
    data (the user's ``data=``, else its recorded spec where the trust model allows: ``semlens.store.trust``).
    Returns the new space; ``Lens.in_space(name)`` and every analysis's ``space=`` then use it."""
    from ..lens.lens import Lens
    from ..lens.spaces import forget_view, writable

    foundation = foundation if isinstance(foundation, str) else foundation_object(foundation)
    opened = lens if isinstance(lens, Lens) else Lens.open(lens)
    if not writable(opened.path):
        raise SemlensError(f"the Lens at {opened.path} is read-only: copy it somewhere writable to add a space to it")
    view = Preprocessing(**opened.manifest["identity"]["preprocessing"]).view
    torch_device = pick_device(device)
    workers = default_workers(torch_device) if workers is None else workers
    source = CropSource(opened.store, opened.sources.probe_data, view, torch_device, workers, progress, Ranks())
    trusted_here = is_trusted(opened.manifest)
    stage = SpaceStage(opened, source, foundation, name, precision, batch_size, overwrite)
    stage.run()
    if trusted_here:  # the new space's spec is the user's own: the Lens stays trusted with it
        remember_trusted(opened.manifest)
    forget_view(opened, stage.space)
    return next(space for space in opened.embedding.spaces if space.name == stage.space)
