"""Merging shards: the collect stages of ``semlens run --shard i/n`` jobs, combined into one Lens.

A job array on a cluster runs the expensive pass over the data as ``n`` independent jobs; each
writes a partial Lens holding its shard's top-k. ``merge_shards`` checks that the parts belong
together (same inputs, every shard exactly once), merges their top-k exactly with the associative
:meth:`TopK.merge`, and runs the remaining stages (embed, class relevance) on the result.
"""

from __future__ import annotations

import time
from functools import reduce
from pathlib import Path
from typing import Any

from .._util.errors import SemlensError, asked
from ..store.files import LensStore, layer_file
from ..store.trust import UntrustedSpecError, is_trusted
from .builder import LensBuilder
from .collect import TopK
from .config import BuildConfig, BuildSummary


def _shard_manifest(store: LensStore) -> dict[str, Any]:
    """A part's manifest, checked to be a finished shard."""
    manifest = store.read_manifest()
    shard = manifest["identity"].get("shard")
    if shard is None:
        raise SemlensError(f"{store.root} is not a shard (it was built without --shard); merge takes `semlens run --shard i/n` outputs")
    if not manifest["stages"].get("collect", {}).get("complete"):
        raise SemlensError(
            f"shard {shard['index']}/{shard['count']} at {store.root} is unfinished; run its `semlens run --shard` again to resume it"
        )
    return manifest


def _common_identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a shard was built from, less which shard it is: equal for all shards of one build."""
    return {key: value for key, value in manifest["identity"].items() if key != "shard"}


def _differences(first: dict[str, Any], second: dict[str, Any]) -> list[str]:
    return sorted(key for key in first.keys() | second.keys() if first.get(key) != second.get(key))


def _check_parts(stores: list[LensStore], manifests: list[dict[str, Any]]) -> None:
    """Same inputs in every part, and each of the n shards exactly once."""
    first = _common_identity(manifests[0])
    for store, manifest in zip(stores[1:], manifests[1:]):
        changed = _differences(first, _common_identity(manifest))
        if changed:
            raise SemlensError(
                f"{store.root} was built from other inputs than {stores[0].root} ({', '.join(changed)} differ); "
                "merge only shards of one build"
            )
    counts = {manifest["identity"]["shard"]["count"] for manifest in manifests}
    if len(counts) > 1:
        raise SemlensError(f"the parts split the data into different numbers of shards ({', '.join(map(str, sorted(counts)))})")
    count = counts.pop()
    owners: dict[int, list[str]] = {}
    for store, manifest in zip(stores, manifests):
        owners.setdefault(manifest["identity"]["shard"]["index"], []).append(str(store.root))
    twice = {index: paths for index, paths in owners.items() if len(paths) > 1}
    if twice:
        index, paths = min(twice.items())
        raise SemlensError(f"shard {index}/{count} is given more than once ({', '.join(paths)})")
    missing = [f"{index}/{count}" for index in range(count) if index not in owners]
    if missing:
        raise SemlensError(f"shard(s) {', '.join(missing)} missing: every shard 0/{count} ... {count - 1}/{count} is needed once")
    spans = sorted(tuple(manifest["identity"]["shard"]["samples"]) for manifest in manifests)
    bounds = [0, *(bound for span in spans for bound in span), manifests[0]["identity"]["data"]["samples"]]
    if bounds[0::2] != bounds[1::2]:  # each span starts where the previous ended, the last ends at the total
        raise SemlensError(
            f"the shards' samples {', '.join(f'{start}..{stop - 1}' for start, stop in spans)} do not cover the data "
            "exactly once: build every shard with the same --batch-size"
        )


def merge_shards(
    parts: list[str | Path], out: str | Path, overwrite: bool = False, progress: bool = True, trust: bool = False, **settings: Any
) -> BuildSummary:
    """Merge the shard Lenses ``parts`` into the Lens ``out`` and finish its remaining stages.

    Merging loads the model, data and foundation models the shards record, so the shards must be trusted:
    built on this machine, or ``trust`` (``--trust``) for shards from elsewhere (``semlens.store.trust``).
    ``settings`` (not None) override the parts' recorded build settings that do not change the
    result, such as ``device``, ``workers`` or ``embed_batch_size``.
    """
    if not parts:
        raise SemlensError("give the shard Lenses to merge")
    stores = [LensStore(part) for part in parts]
    manifests = [_shard_manifest(store) for store in stores]
    untrusted = [str(store.root) for store, manifest in zip(stores, manifests) if not is_trusted(manifest)]
    if untrusted and not trust:
        raise UntrustedSpecError(
            f"merging follows the specs the shards record (model, data, foundation models), and {', '.join(untrusted)} "
            f"was not built on this machine; if you trust its builder, pass {asked('trust=True', '--trust')}"
        )
    _check_parts(stores, manifests)
    recorded = {**manifests[0]["settings"], "shard": None}
    config = BuildConfig(**{**recorded, **{key: value for key, value in settings.items() if value is not None}})
    fresh = overwrite or not LensStore(out).has_manifest()
    builder = LensBuilder(config, out, overwrite=overwrite, progress=progress)
    changed = _differences(_common_identity(manifests[0]), builder.identity)
    if changed:
        if fresh:
            builder.store.clear()  # leave no empty Lens behind that a corrected merge would find stale
        raise SemlensError(
            f"the shards were built from inputs that differ here ({', '.join(changed)}): the model, data or settings "
            "changed since, or this machine resolves them differently (e.g. the precision on another device)"
        )
    if not builder.stage_done("collect"):
        started = time.perf_counter()
        results = {
            spec.name: reduce(TopK.merge, [TopK.from_state(store.read_tensors(layer_file(spec.name, "topk"))) for store in stores])
            for spec in builder.specs
        }
        failures = sorted((item["sample"], item["error"]) for store in stores for item in store.read_json("failures.json"))
        seconds = sum(manifest["stages"]["collect"]["seconds"] for manifest in manifests) + time.perf_counter() - started
        builder.finish_collect(results, failures, seconds, shards=len(stores))
    return builder.run()
