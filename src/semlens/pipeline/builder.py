"""Building a Lens: model + layers + probe data + foundation model -> a Lens directory.

The stages run in order, each skipped when its inputs are unchanged and resumed when it was
interrupted: ``collect`` (:mod:`.collect_stage`), ``embed`` (:mod:`.embed_stage`, which embeds the
crops that :mod:`.crop_stage` cuts), ``responses`` (:mod:`.response_stage`: the units' activations on
those crops, for labels) and ``relevance`` (:mod:`.class_relevance_stage`).

The manifest records what each stage was computed from; reusing a directory built from other inputs
is an error that names what changed.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from .. import __version__
from .._util.allocator import freed_memory_kept
from .._util.devices import autocast_dtype, inference_dtype, out_of_memory_advice, pick_device
from .._util.errors import SemlensError, StaleLensError, asked, warn_caller
from ..data import ImageData, load_data
from ..foundation import FOUNDATION_MODELS, FoundationModel
from ..model.loading import LoadedModel, load_model
from ..model.logits import example_batch
from ..model.units import LayerSpec, resolve_module
from ..store.build_lock import BuildLock
from ..store.files import FORMAT, FORMAT_VERSION, LensStore
from ..store.slots import crop_rules
from ..store.trust import LensAccess, new_build_id, remember_trusted
from .class_relevance_stage import ClassRelevanceStage
from .collect import TopK
from .collect_stage import CollectStage
from .config import BuildConfig, BuildSummary, LayerSummary
from .context import BuildContext
from .crop_stage import CropStage
from .crops import RULE_SETTINGS
from .embed_stage import EmbedStage, crop_source
from .parallel import Ranks, Shard, connect
from .relevance_examples_stage import RelevanceExamplesStage
from .response_stage import ResponseStage
from .spaces import SpaceStage

if TYPE_CHECKING:
    from ..lens.lens import Lens
    from ..relevance.lrp import SupportReport


class Stage(Protocol):
    """A step of the build that skips itself when its record in the manifest is up to date."""

    name: str

    def run(self) -> None: ...


class LensBuilder:
    """Opens the Lens directory (new, or checked to be built from the same inputs), runs the stages of
    one build and sums them up; ``build_lens`` is the one-call entry point.

    Under ``torchrun`` every rank runs it: each collects its block of the samples and embeds its
    block of the distinct crops, results are merged exactly across ranks, and rank 0 writes the Lens.
    With ``config.shard`` (``"i/n"``) it runs the collect stage on that shard only, for ``semlens merge``.
    """

    def __init__(self, config: BuildConfig, out: str | Path, overwrite: bool = False, progress: bool = True) -> None:
        given = config  # with the objects a notebook handed over, if any
        self.joined_group = connect()  # a torchrun rank that made its process group (and leaves it)
        self.ranks = Ranks()
        self.store = LensStore(out)
        self.store.check_folder()  # before the model and data load: a file in the Lens's place fails at once
        self.lock = BuildLock(self.store.root)
        device = self.ranks.place(pick_device(config.device))
        autocast = autocast_dtype(config.precision, device)
        shard = Shard.parse(config.shard) if config.shard else None
        foundation = config.foundation if isinstance(config.foundation, FoundationModel) else None  # one given as an object
        config = config.recorded()  # objects by their specs from here on: the manifest records these
        for spec in [config.foundation, *config.extra_foundations]:
            FOUNDATION_MODELS.split(spec)  # an unknown form fails now, listing the valid ones, not after the collection pass
        model: LoadedModel = load_model(given.model)
        data: ImageData = load_data(given.data)
        if len(data) == 0:
            raise SemlensError(f"the data {config.data} has no samples: give a folder with images (or a data spec that yields some)")
        self.specs = parse_layers(config.layers, config.pool)
        for spec in self.specs:
            resolve_module(model.module, spec.name)
        self.k_asked = config.k
        if config.k > len(data):  # said once, with the other fallbacks (``fallbacks``: the summary, `semlens run`)
            config = replace(config, k=len(data))  # a slot no sample can fill would still be cropped and embedded
        self.config = config
        rows = (shard or Shard()).split(range(len(data)), config.batch_size)
        if shard and not rows:
            batches = -(-len(data) // config.batch_size)
            raise SemlensError(f"shard {shard} holds no samples: the data makes only {batches} batches; use at most {batches} shards")
        self.context = BuildContext(
            config, self.store, self.ranks, device, autocast, shard, model, data, self.specs, rows, progress and self.ranks.is_main,
            foundation=foundation,
        )
        self.context.identity = json.loads(json.dumps(self._identity()))  # compare as stored: tuples become lists
        if self.ranks.is_main:  # rank 0 writes the Lens
            self.lock.acquire()
        try:  # a failed start gives the folder back at once (a notebook's last traceback would hold the builder)
            self.context.manifest = self.ranks.on_main(lambda: self._open_manifest(overwrite))
            self.collect_stage = CollectStage(self.context)
            self.embed_stage = EmbedStage(self.context, CropStage(self.context))
            self.stages: list[Stage] = [self.collect_stage]
            if shard is None:  # a shard runs only the collect stage; `semlens merge` runs the others
                spaces = [SpaceStage(self.context, crop_source(self.context), foundation, None, config.embed_precision, config.embed_batch_size)
                          for foundation in given.extra_foundations]  # fmt: skip  (objects as given: each embeds its space)
                self.stages += [self.embed_stage, ResponseStage(self.context), *spaces, ClassRelevanceStage(self.context), RelevanceExamplesStage(self.context)]
        except BaseException:
            self.lock.release()
            raise

    @property
    def identity(self) -> dict[str, Any]:
        return self.context.identity

    @property
    def manifest(self) -> dict[str, Any]:
        return self.context.manifest

    # -- identity and manifest ------------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        context, config = self.context, self.config
        identity = {
            "model": {"spec": context.model.spec, "fingerprint": context.model.fingerprint},
            "data": {"spec": context.data.spec, "fingerprint": context.data.fingerprint(), "samples": len(context.data)},
            "layers": [spec.fingerprint_fields() for spec in self.specs],
            "preprocessing": asdict(context.model.preprocessing),
            "collect": {"k": config.k, "max_map_side": config.max_map_side},
            "embed": {"foundation": config.foundation, "crop": config.crop, "crop_threshold": config.crop_threshold},
            "relevance": {"enabled": config.class_relevance, "data": config.relevance_data},
        }
        if config.relevance_examples:  # left out when off, so Lenses built before this setting stay valid
            identity["relevance"]["examples"] = True
        if config.crop_rule != "peak":  # the paper's rule adds nothing, so Lenses built before this setting stay valid
            identity["embed"]["crop_rule"] = config.crop_rule
            for rule in crop_rules(config.crop_rule):
                if rule in RULE_SETTINGS:
                    identity["embed"][RULE_SETTINGS[rule]] = getattr(config, RULE_SETTINGS[rule])
        if config.crop_grid:  # likewise boxes to the pixel, as Lenses were cut before the grid
            identity["embed"]["crop_grid"] = config.crop_grid
        if config.crop_view != "box":  # likewise the plain box view
            identity["embed"]["crop_view"] = config.crop_view
        if config.lrp_rule != "zplus":  # likewise the default rule: crops and class relevance read the rule
            identity["embed"]["lrp_rule"] = identity["relevance"]["lrp_rule"] = config.lrp_rule
        if config.crp_focus != "unit":  # likewise the paper's CRP: the crops' heatmaps read it
            identity["embed"]["crp_focus"] = config.crp_focus
        if context.foundation is not None:  # an object is recorded as memory:CLASS: its id tells one from another
            identity["embed"]["foundation_id"] = context.foundation.id
        if context.autocast is not None:  # float32 adds nothing, so Lenses built before this setting stay valid
            identity["collect"]["autocast"] = str(context.autocast).removeprefix("torch.")
            # re-scored in float32: Lenses built before ranked the reduced precision's scores, and are not resumed
            identity["collect"]["topk"] = "float32"
        precision = config.embed_precision
        if precision == "auto" and inference_dtype(context.device) == torch.float32:
            precision = "float32"
        if precision != "float32":  # likewise; "auto" on a GPU: the backend's half (inference_dtype)
            identity["embed"]["precision"] = precision
        if context.shard is not None:
            shard, rows = context.shard, context.rows
            identity["shard"] = {"index": shard.index, "count": shard.count, "samples": [rows.start, rows.stop]}
        return identity

    def _open_manifest(self, overwrite: bool) -> dict[str, Any]:
        if overwrite:
            self.store.clear()
        if self.store.has_manifest():
            manifest = self.store.read_manifest()
            changed = changed_settings(manifest["identity"], self.identity)
            if changed:
                details = "; ".join(f"{key}: was {was!r}, now {now!r}" for key, was, now in changed)
                raise StaleLensError(
                    f"the Lens at {self.store.root} was built from other inputs ({details}). "
                    f"Use another output directory, or rebuild it ({asked('overwrite=True', '--overwrite')})."
                )
            return manifest
        if self.store.root.exists() and any(self.store.root.iterdir()):
            raise SemlensError(f"{self.store.root} exists, is not empty and is not a Lens; choose another output directory")
        twice = second_normalisation(self.context.model)  # checked once, for a new Lens: a resumed one has it recorded
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "build_id": new_build_id(),
            "versions": {"semlens": __version__, "torch": torch.__version__, "python": platform.python_version()},
            "identity": self.identity,
            "settings": asdict(self.config),
            **({"k_asked": self.k_asked} if self.k_asked != self.config.k else {}),  # lowered to the data's size
            **({"preprocessing_warning": twice} if twice else {}),
            "classes": self.context.data.classes,
            "model_classes": self.context.model.classes,
            "layers": {},
            "stages": {},
        }
        self.store.write_manifest(manifest)
        return manifest

    def stage_done(self, stage: str) -> bool:
        return self.context.stage_done(stage)

    def relevance_support(self) -> SupportReport:
        return self.context.relevance_support()

    # -- stages ---------------------------------------------------------------------------------

    def collect(self) -> None:
        self.collect_stage.run()

    def finish_collect(self, results: dict[str, TopK], failures: list, seconds: float, **info: Any) -> dict[str, Any]:
        """Store collect results merged from shards (``semlens merge``) and mark the stage done."""
        return self.collect_stage.finish(results, failures, seconds, **info)

    def embed(self) -> None:
        self.embed_stage.run()

    def run(self) -> BuildSummary:
        """Every stage in order, each keeping freed memory for reuse and giving it back when done
        (``freed_memory_kept``: a stage's loader workers are forked from a process that holds only what it needs);
        then the summary."""
        reused = [stage.name for stage in self.stages if self.stage_done(stage.name)]
        try:
            for stage in self.stages:
                with freed_memory_kept(), out_of_memory_advice(stage.name, self._memory_advice(stage.name)):
                    stage.run()
            if self.context.shard is None and self.ranks.is_main:
                self._seal()
            elif self.ranks.is_main:  # a shard built here: `semlens merge` may follow its specs (store.trust)
                remember_trusted(self.manifest)
        finally:
            self.lock.release()
        summary = self.summary()
        summary.reused = reused
        self.ranks.finish(leave=self.joined_group)
        return summary

    def _memory_advice(self, stage: str) -> str:
        """What to lower when ``stage`` runs out of GPU memory. Relevance passes halve by themselves, so what
        runs out in the examples stage is its foundation model, as in the embed stage; in class relevance,
        the prediction pass over a whole loader batch."""
        config = self.config
        if stage == "collect":
            return f"give a smaller --batch-size (now {config.batch_size})"
        if stage == "relevance":
            return "free the GPU, or give a smaller relevance_batch_size in a config file"
        return f"give a smaller --embed-batch-size (now {config.embed_batch_size}; the foundation model runs on that many crops at once)"

    def _seal(self) -> None:
        """Record the array files' sizes and hashes in the manifest and trust the Lens on this machine:
        it was built from this user's own specs (see ``semlens.store.trust``)."""
        self.manifest.setdefault("build_id", new_build_id())  # a Lens built before build ids
        self.manifest["arrays"] = self.store.record_arrays()
        self.store.write_manifest(self.manifest)
        remember_trusted(self.manifest)

    def summary(self) -> BuildSummary:
        stages = self.manifest["stages"]
        summary = BuildSummary(
            path=str(self.store.root),
            samples=len(self.context.data),
            failed=stages.get("collect", {}).get("failed", 0),
            example_slots=stages.get("embed", {}).get("example_slots", 0),
            distinct_crops=stages.get("embed", {}).get("distinct_crops", 0),
            stages={name: "done" if record.get("complete") else "pending" for name, record in stages.items()},
            seconds={name: record.get("seconds", 0.0) for name, record in stages.items()},
            parts={name: record["parts"] for name, record in stages.items() if record.get("parts")},
            k=self.manifest["identity"]["collect"]["k"],
        )
        for name, layer in self.manifest["layers"].items():
            summary.layers.append(
                LayerSummary(name, layer["units"], layer["inactive_units"], layer.get("tied_units", 0), layer["output"], layer["spec"].get("pool", "mean"))
            )
        summary.fallbacks = fallbacks(self.manifest)
        return summary


def changed_settings(was: Any, now: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Where two recorded identities differ, by dotted key (``collect.k``), with the two values."""
    if not (isinstance(was, dict) and isinstance(now, dict)):
        return [] if was == now else [(prefix, was, now)]
    return [change for key in {**was, **now} for change in changed_settings(was.get(key), now.get(key), f"{prefix}{'.' if prefix else ''}{key}")]


def fallbacks(manifest: dict[str, Any]) -> list[str]:
    """What the build did instead of what was asked, as recorded in the manifest: crop modes other than the
    one asked for (``auto`` asks for relevance), map cells left on the even grid where their placement could
    not be measured, relevance passes made smaller when the GPU ran out of memory, an embedding that could not
    be compiled, a skipped class-relevance stage, labels the class relevance could not use, and k lowered to the
    number of samples."""
    asked = manifest["identity"]["embed"]["crop"]
    wanted = "relevance" if asked == "auto" else asked
    found = []
    if "k_asked" in manifest:
        k, failed = manifest["identity"]["collect"]["k"], manifest["stages"].get("collect", {}).get("failed", 0)
        unread = f", {failed} of them unreadable (skipped): each unit has at most {max(k - failed, 0)} examples" if failed else ""
        found.append(f"k = {k} instead of {manifest['k_asked']}: the data has only {k} samples{unread}")
    if manifest.get("preprocessing_warning"):
        found.append(manifest["preprocessing_warning"])
    for name, layer in manifest["layers"].items():
        crop = layer.get("crop")
        if crop and crop["mode"] != wanted:
            found.append(f"layer {name}: {examples_of(crop['mode'])} instead of {examples_of(wanted)} ({crop['why']})")
        if layer.get("map_shift_failed"):
            found.append(f"layer {name}: map cells taken on the even grid, their placement not measured ({layer['map_shift_failed']})")
        for what, record in (("relevance crops", crop), ("relevance examples", layer.get("relevance_examples"))):
            found += smaller_passes(f"layer {name}: {what} in", "pairs", (record or {}).get("pairs_per_pass"))
    found += smaller_passes("class relevance in", "images", manifest["stages"].get("relevance", {}).get("images_per_pass"))
    if manifest["stages"].get("embed", {}).get("compile_fallback"):
        found.append(manifest["stages"]["embed"]["compile_fallback"])
    skipped = manifest["stages"].get("relevance", {}).get("skipped")
    if skipped:
        found.append(f"no class relevance ({skipped}): audits and attribution graphs need it")
    if manifest.get("relevance", {}).get("warning"):
        found.append(manifest["relevance"]["warning"])
    skipped = manifest["stages"].get("examples", {}).get("skipped")
    if skipped:
        found.append(f"no relevance examples ({skipped})")
    return found


def examples_of(crop_mode: str) -> str:
    """What a crop mode embeds, in words: "relevance crops", "activation crops", "whole images" (mode none)."""
    return "whole images" if crop_mode == "none" else f"{crop_mode} crops"


def second_normalisation(model: LoadedModel) -> str | None:
    """Where the model normalises its input itself (its first module ``(x - mean) / std``, as notebooks wrap a
    network) and its preprocessing normalises it too, what to change: it would see its inputs normalised twice."""
    from ..relevance.lrp import normalising_module

    preprocessing = model.preprocessing
    if all(value == 0 for value in preprocessing.mean) and all(value == 1 for value in preprocessing.std):
        return None
    name = normalising_module(model.module, example_batch(model.module, preprocessing.input_size))
    if name is None:
        return None
    mean, std = (tuple(round(value, 3) for value in values) for values in (preprocessing.mean, preprocessing.std))
    return (
        f"the model normalises its input itself (its first module, {name!r}) and its preprocessing does too (mean {mean}, "
        f"std {std}): it sees its inputs normalised twice. Give preprocessing=Preprocessing(input_size=..., resize=..., "
        "mean=(0, 0, 0), std=(1, 1, 1)) if that is not what it expects"
    )


def smaller_passes(what: str, rows: str, passes: dict[str, int] | None) -> list[str]:
    """The fallback line for relevance passes that ran smaller than asked (``ShrinkingBatch.shrunk``), if they did."""
    if not passes:
        return []
    why = passes.get("why", "the GPU ran out of memory")  # records before the memory budget name no cause: out of memory
    return [f"{what} passes of {passes['used']} {rows} instead of {passes['asked']}: {why} (slower, same heatmaps)"]


def parse_layers(texts: list[str], pool: str) -> list[LayerSpec]:
    """Layer specs, one per module: the same module twice (e.g. with other options) would silently keep
    only one of them, so it is refused with both spellings named."""
    specs = [LayerSpec.parse(text, pool) for text in texts]
    first: dict[str, str] = {}
    for text, spec in zip(texts, specs):
        if spec.name in first:
            raise SemlensError(
                f"layer {spec.name!r} is given twice ({first[spec.name]!r} and {text!r}); give each module once, "
                "with all its options in one spec (NAME:key=value,...)"
            )
        first[spec.name] = text
    return specs


def build_lens(
    config: BuildConfig | None = None, out: str | Path | None = None, overwrite: bool = False, progress: bool = True, **settings: Any
) -> Lens:
    """Build (or resume, or reuse) the Lens at ``out`` and return it opened (a :class:`~semlens.lens.lens.Lens`;
    imported here, at the call, as the one way up from this layer). Give a :class:`BuildConfig`, or its
    settings as keywords: ``build_lens(model=net, layers=["layer4"], data=images, foundation=clip, out="my.lens")``.

    The returned Lens holds the objects given in memory (model, data, foundation models) to answer with; a Lens
    records only their class and fingerprints, so opened again later it asks for them (``model=``,
    ``foundation=``, ``extra_foundations=``; the same ``build_lens`` call reuses the built Lens with all of them)."""
    from ..lens.lens import Lens

    if out is None:
        raise SemlensError("build_lens needs out=, the directory to write the Lens to (e.g. out='my.lens')")
    if config is not None and settings:
        raise SemlensError(f"give a BuildConfig or its settings as keywords, not both (got config and {', '.join(sorted(settings))})")
    config = config or BuildConfig.from_settings(settings, "build_lens got unknown settings")
    summary = LensBuilder(config, out, overwrite=overwrite, progress=progress).run()
    failed = [line for line in [summary.failure_warning()] if line]
    notes = failed + summary.fallbacks + summary.unit_warnings()  # `semlens run` prints them; a notebook sees them as warnings
    if notes and set(summary.reused) >= set(summary.stages):  # a cell run again: once, said as what the Lens holds
        warn_caller(f"the Lens at {out} was complete already (nothing computed again); as it was built: " + "; ".join(notes))
    else:
        for line in notes:
            warn_caller(line)
    lens = Lens.open(out)
    given = {"model": config.model, "data": config.data, "foundation": config.foundation}
    objects = {name: value for name, value in given.items() if not isinstance(value, str)}
    extra = tuple(foundation for foundation in config.extra_foundations if not isinstance(foundation, str))
    return Lens(lens.store, lens.manifest, LensAccess(**objects, extra_foundations=extra)) if objects or extra else lens
