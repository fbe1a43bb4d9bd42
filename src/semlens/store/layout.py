"""The shapes a Lens's arrays must have, as its manifest implies them, checked when the Lens is opened.

Hashes prove that files are what the manifest records, not that the manifest and its files agree with each
other: a Lens forged with other shapes and the hashes and sizes to match would reach the readers and crash
them with an error about tensors. Every array file's header is read at open (a few bytes each) and each array's
shape compared with the layout: ``U`` a layer's units, ``B`` its channels (``base_units``: a signed layer's
class relevance and relevance examples are per channel), ``k`` the examples per unit, ``d`` the embedding
space's dimensions, ``S`` a unit's example slots (``k``, or one box per crop rule each: ``V·k``), ``M`` and
``N`` the rows of the two crop tables; other letters need only agree within their file.
"""

from __future__ import annotations

from typing import Any

from safetensors import safe_open

from .files import CROPS, RELEVANCE_CROPS, RESPONSES, RESPONSES_FILE, LensStore, layer_file, space_file
from .slots import crop_rules

Shape = tuple[str | int, ...]
#: each kind of layer file: its arrays' shapes by key (``theta`` stands for every ``theta.<rule>`` too)
LAYER_ARRAYS: dict[str, dict[str, Shape]] = {
    "topk": {"ids": ("U", "k"), "scores": ("U", "k"), "inactive": ("U",), "maps": ("U", "k", "h", "w")},
    "embed": {"crop_index": ("U", "S"), "boxes": ("U", "S", 4), "theta": ("U", "d"), "tied": ("U",)},
    "crops": {"heat": ("U", "k", "h", "w")},
    RESPONSES: {"cross": ("U", "d")},
    "relevance": {
        "count": ("K",), "max_share": ("B", "K"), "mean_share": ("B", "K"),
        "seen_classes": ("C",), "top_samples": ("C", "B", "m"), "top_shares": ("C", "B", "m"),
    },  # fmt: skip
    "relevance_topk": {"ids": ("B", "k"), "scores": ("B", "k"), "inactive": ("B",)},
    "relevance_embed": {"crop_index": ("B", "S"), "boxes": ("B", "S", 4), "theta": ("B", "d"), "tied": ("B",)},
    "relevance_heat": {"heat": ("B", "k", "h", "w")},
}
#: the Lens-wide files
LENS_ARRAYS: dict[str, dict[str, Shape]] = {
    CROPS: {"samples": ("M",), "boxes": ("M", 4), "embeddings": ("M", "d")},
    RELEVANCE_CROPS: {"samples": ("N",), "boxes": ("N", 4), "embeddings": ("N", "d")},
    RESPONSES_FILE: {"scatter": ("d", "d")},
}


def check_layout(store: LensStore, manifest: dict[str, Any]) -> None:
    """Every array of the Lens (in each of its embedding spaces) has the shape its manifest implies; else one
    ``DamagedLensError`` naming the file, the array, its shape and the shape the layout needs."""
    k = _count(store, _dig(manifest, "identity", "collect", "k"), "identity.collect.k")
    rules = len(crop_rules(_dig(manifest, "identity", "embed", "crop_rule") or "peak"))
    spaces = {None: manifest.get("foundation", {}), **manifest.get("spaces", {})}
    rows: dict[str, int] = {}  # the crop tables' rows (and the default space's width where unrecorded), from its files
    for space, record in spaces.items():
        record = record if isinstance(record, dict) else {}
        if space is not None and "dim" not in record:
            continue  # an extra space not embedded yet: it has no files either
        dim = {"d": _count(store, record["dim"], "foundation.dim" if space is None else f"spaces.{space}.dim")} if "dim" in record else {}
        sizes = {"k": k, **dim}
        where = (lambda name: name) if space is None else (lambda name, space=space: space_file(space, name))
        for name, arrays in (LENS_ARRAYS if space is None else {CROPS: {"embeddings": ("M", "d")}}).items():
            _check_file(store, where(name), arrays, {**rows, **sizes}, rows if space is None else {})  # a space's own width wins
        for layer, info in manifest["layers"].items():
            units = _count(store, _dig(info, "units"), f"layers.{layer}.units")
            base = _count(store, _dig(info, "base_units") or units, f"layers.{layer}.base_units")
            layer_sizes = {**rows, **sizes, "U": units, "B": base, "S": (k, rules * k)}
            kinds = LAYER_ARRAYS if space is None else {"embed": {"theta": ("U", "d")}}
            for kind, arrays in kinds.items():
                _check_file(store, where(layer_file(layer, kind)), arrays, layer_sizes)


def _dig(value: Any, *keys: str) -> Any:
    """``value[key][key]...``, or None where a level is missing or not a table (a manifest may come from anyone)."""
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _count(store: LensStore, value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise store.damaged("manifest.json", f"its {what} is {value!r}, where semlens writes a positive whole number")
    return value


def _check_file(store: LensStore, name: str, arrays: dict[str, Shape], sizes: dict[str, Any], found: dict[str, int] | None = None) -> None:
    """The arrays of file ``name`` (if it is there) against ``arrays``; sizes named by upper-case letters missing from
    ``sizes`` are bound by their first array, and recorded in ``found`` where given (the crop tables' rows, and the
    embeddings' width where the manifest records none)."""
    if not store.path(name).is_file():
        return
    bound = dict(sizes)
    with store.reading(name), safe_open(str(store.path(name)), framework="pt") as handle:
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    for key, shape in shapes.items():
        pattern = arrays.get("theta" if key.startswith("theta.") else key)
        if pattern is not None:
            _check_shape(store, name, key, shape, pattern, bound)
    if found is not None:
        found.update({symbol: value for symbol, value in bound.items() if symbol in ("M", "N", "d")})


def _check_shape(store: LensStore, name: str, key: str, shape: tuple[int, ...], pattern: Shape, bound: dict[str, Any]) -> None:
    """One array's shape against its pattern; a size a letter stands for is bound by its first use."""
    fits = len(shape) == len(pattern)
    for size, symbol in zip(shape, pattern) if fits else ():
        expected = symbol if isinstance(symbol, int) else bound.get(symbol)
        if expected is None or (isinstance(expected, tuple) and size in expected):
            bound[symbol] = size
        elif size != expected:
            fits = False
            break
    if not fits:
        needed = ", ".join(_needed(symbol, bound) for symbol in pattern)
        raise store.damaged(name, f"its array {key!r} has shape [{', '.join(map(str, shape))}], where this Lens's manifest needs [{needed}]")


def _needed(symbol: str | int, bound: dict[str, Any]) -> str:
    value = symbol if isinstance(symbol, int) else bound.get(symbol, symbol)
    return " or ".join(map(str, value)) if isinstance(value, tuple) else str(value)
