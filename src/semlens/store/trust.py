"""The trust model: what a Lens may make semlens do on its own, and how a user grants more.

A Lens directory can come from anyone. Its manifest names the model, the probe data and the
foundation model it was built from as spec strings, and some spec forms run code (``py:``) or read
files on this machine (a local folder or weights file). Opening, searching, serving or reporting a
Lens therefore never follows such a spec by itself: it loads only *inert* specs (a hub name, a
built-in model) unless the Lens is trusted. A Lens is trusted when

- the call says so (``Lens.open(path, trust=True)``, ``--trust`` on the command line), or
- it was built on this machine by this user: the builder records the Lens's build id (a random
  nonce in its manifest) in the user's trust file, outside any Lens, so a Lens cannot vouch for
  itself; ``semlens trust LENS`` adds one by hand.

The user can always name the model, data or foundation model themselves instead (``data=``,
``foundation=``, ``--data``, ``--foundation``): what the user names is trusted like any command line.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._util.cache import cache_dir
from .._util.errors import SemlensError, asked
from .._util.fingerprint import hash_json
from .._util.specs import folder_or_spec, split_spec
from .files import atomic_write

if TYPE_CHECKING:
    from ..data import ImageData
    from ..foundation import FoundationModel
    from ..model.loading import LoadedModel

TRUST_FILE = "trusted-lenses.json"
FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".toml", ".json", ".npz")


@dataclass(frozen=True)
class LensAccess:
    """What the user allows or names when opening a Lens: trust, or the data, foundation model and model
    to use instead of the specs the Lens records."""

    trust: bool = False
    data: str | ImageData | None = None  # a folder or a data spec, or the data itself (``build_lens`` with objects)
    foundation: str | FoundationModel | None = None
    model: str | LoadedModel | None = None
    extra_foundations: tuple[FoundationModel, ...] = ()  # the foundation models of spaces a build made from objects

    def data_spec(self) -> str | ImageData | None:
        if not isinstance(self.data, str):
            return self.data
        return folder_or_spec(self.data)


class UntrustedSpecError(SemlensError):
    """A Lens names code or local files, and nobody said to trust it."""


def new_build_id() -> str:
    """The nonce that identifies one build of a Lens in the user's trust file."""
    return secrets.token_hex(16)


def _entries(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def followed_specs(manifest: dict[str, Any]) -> dict[str, Any]:
    """Everything a trusted Lens makes semlens follow: the model and data specs (in its identity), the
    foundation model's and each extra space's spec, each layer's spec (an SAE file it names), and the build
    settings (``semlens merge`` builds from a shard's: its model, data, foundation models, a Lens to take
    heatmaps from)."""
    return {
        "identity": manifest.get("identity"),
        "settings": manifest.get("settings"),
        "foundation": _entries(manifest.get("foundation")).get("spec"),
        "spaces": {name: _entries(record).get("spec") for name, record in _entries(manifest.get("spaces")).items()},
        "layers": {name: _entries(info).get("spec") for name, info in _entries(manifest.get("layers")).items()},
    }


def lens_key(manifest: dict[str, Any]) -> str:
    """What the trust file records of a Lens: its build id with every spec it makes semlens follow
    (``followed_specs``), so that a copy with one spec changed is another Lens, trusted by nobody (older
    Lenses have no build id and are never found there)."""
    return hash_json([manifest.get("build_id"), followed_specs(manifest)])


def _trust_path() -> Path:
    return cache_dir("trust") / TRUST_FILE


def trusted_keys() -> set[str]:
    path = _trust_path()
    try:
        return set(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return set()


def remember_trusted(manifest: dict[str, Any]) -> None:
    """Record a Lens as trusted by this user (the builder does it for the Lenses it builds)."""
    keys = sorted(trusted_keys() | {lens_key(manifest)})
    atomic_write(_trust_path(), lambda temporary: temporary.write_text(json.dumps(keys), encoding="utf-8"))


def trusted_text(manifest: dict[str, Any]) -> str:
    """The specs a user trusts with a Lens, in words (``semlens trust`` prints them)."""
    specs = followed_specs(manifest)
    identity = _entries(specs["identity"])
    parts = [f"model {_entries(identity.get('model')).get('spec')}", f"data {_entries(identity.get('data')).get('spec')}",
             f"foundation model {specs['foundation']}"]  # fmt: skip
    parts += [f"space {name}: {spec}" for name, spec in specs["spaces"].items()]
    parts += [f"layer {name}: SAE {spec['sae']}" for name, spec in specs["layers"].items() if isinstance(spec, dict) and spec.get("sae")]
    return ", ".join(parts)


def is_trusted(manifest: dict[str, Any]) -> bool:
    return manifest.get("build_id") is not None and lens_key(manifest) in trusted_keys()


def _looks_like_path(text: str) -> bool:
    if not text:
        return False
    if text.startswith(("/", "~", ".", "\\")) or text.lower().endswith(FILE_SUFFIXES):
        return True
    try:
        return Path(text).expanduser().exists()
    except (OSError, ValueError):
        return True


def spec_risk(spec: str) -> str | None:
    """Why following ``spec`` is more than loading a named, published model (None when it is inert):
    ``py:`` imports and runs code, and a local path makes semlens read files on this machine. The spec is split
    as the loaders split it (``split_spec``: a leading space must not hide a ``py:``)."""
    form, rest = split_spec(spec)
    if form == "py":
        return "imports and runs Python code"
    if form == "folder":
        return "reads a folder on this machine"
    if form == "corrected":
        return "reads a correction file on this machine"
    parts = rest.split(":")
    if form == "hf":
        parts = [rest]  # a hub id has one slash; a local save_pretrained folder is a path
    if any(_looks_like_path(part) for part in parts):
        return "reads files on this machine"
    return None


def display_spec(spec: str) -> str:
    """``spec`` with each local path cut to its last component after "…/", for pages others may see (the explorer):
    where a Lens was built says nothing about it, and it may say something about its author. The "…/" says a path
    was cut: ``folder:/etc`` read as ``folder:etc``, a folder next to the server's."""
    form, rest = split_spec(spec)
    if spec_risk(spec) is None or form == "py":
        return spec
    parts = [_last_component(part) if _looks_like_path(part) else part for part in ([rest] if form == "hf" else rest.split(":"))]
    return f"{form}:{':'.join(parts)}"


def display_source(name: str) -> str:
    """A probe sample's name for pages others may see: a name inside the data (``star/0001.png``) as it is; an
    absolute path, or one that climbs out (``..``), cut to its last component as ``display_spec`` cuts paths (a
    list of files names them absolutely, and a tampered Lens may name ``/etc/passwd``, which nothing reads)."""
    path = name.replace("\\", "/")
    outside = path.startswith(("/", "~")) or ".." in path.split("/") or (len(path) > 1 and path[1] == ":")
    return _last_component(path) if outside else name


def _last_component(path: str) -> str:
    name = Path(path).name
    return path if name == path else f"…/{name}" if name else "/"


def check_spec(spec: str, what: str, trusted: bool, option: str) -> str:
    """``spec`` when it may be followed; else an error that says why and what the user can do."""
    risk = None if trusted else spec_risk(spec)
    if risk is not None:
        raise UntrustedSpecError(
            f"this Lens names its {what} as {spec!r}, which {risk}; a Lens this user's trust file does not list "
            f"(received from someone else, or built by an earlier semlens, which recorded fewer of its specs there) never does that "
            f"by itself. Name the {what} yourself ({option}) or, if you trust this Lens, pass {asked('trust=True', '--trust')}, or trust "
            "it from now on with `semlens trust LENS`"
        )
    return spec
