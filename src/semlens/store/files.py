"""The Lens directory on disk: a JSON manifest plus safetensors arrays, written atomically.

Layout::

    manifest.json                 versions, fingerprints, layers, settings, stage status
    samples.json                  the samples that appear as concept examples (paths, labels)
    failures.json                 images that failed to decode or were too small (skipped, counted)
    layers/<layer>.topk.safetensors   per unit: top-k scores, sample ids, activation maps
    layers/<layer>.embed.safetensors  per unit: crop boxes, rows into crops, theta
    crops.safetensors             every distinct (sample, box) crop and its embedding (float16, read by rows)
    layers/<layer>.relevance_topk / .relevance_embed / .relevance_heat   the same for relevance examples
    relevance_crops.safetensors   their crops not in crops.safetensors (rows counted on past its end)
    spaces/<name>/...             an extra embedding space: the same crops embedded by another foundation
                                  model (crops.safetensors: embeddings; layers/<layer>.embed: theta)

Every file is written to a temporary name and renamed into place, so a killed run never leaves a
half-written file behind; partial progress lives in ``*.partial*`` files that a resumed run reads.
No pickle anywhere. The manifest records each array file's size and SHA-256 (``arrays``) when the
build ends; a Lens opened for questions checks the sizes at once and each file's hash before its
first read, so a damaged or altered file gets one clear error instead of wrong answers. What a Lens
may make semlens load or read beyond its own files is decided in ``trust.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .._util.errors import SemlensError, asked
from .._util.fingerprint import hash_file

FORMAT = "semlens-lens"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CROPS = "crops.safetensors"
RELEVANCE_CROPS = "relevance_crops.safetensors"
SPACES = "spaces"  # the folder of the extra embedding spaces (one foundation model each)
RESPONSES = "responses"  # the build stage and each layer's file of its units' responses to the Lens's crops
RESPONSES_FILE = "responses.safetensors"  # the crops' embedding scatter the responses are regressed with
CONCEPTS = "concepts"  # the folder of the concepts shown to the Lens (semlens.lens.concepts), written after the build
#: arrays that index others (sample ids, crop rows, boxes, counts) and per-unit flags, by their key in any file:
#: a Lens holding one in another dtype is damaged (or made to crash the readers, which would index with floats)
INDEX_ARRAYS = ("ids", "samples", "boxes", "crop_index", "concepts", "count", "seen_classes", "top_samples")
FLAG_ARRAYS = ("inactive", "tied")
#: the one metadata key of the array files semlens writes: safetensors writes a file's metadata table in an order
#: drawn at random for each file, so its keys are packed into one JSON text, and identical builds write identical bytes
PACKED_METADATA = "semlens"


#: what semlens writes in a Lens, by name at its top level (``fnmatch`` patterns): ``--overwrite`` deletes these and
#: nothing else. Folders are semlens's when every file in them (at any depth) matches ``OWN_NESTED``; temporary
#: files of ``atomic_write`` (``.NAME.tmp-PID``) match both
OWN_TOP = (MANIFEST, "samples.json", "failures.json", "labels.json", "*.safetensors", "*.partial*", ".*.tmp-*", "layers", SPACES, RESPONSES, "index", CONCEPTS)
OWN_NESTED = ("*.safetensors", "*.json", "*.faiss", ".*.tmp-*")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through ``write(temporary_path)``, flush to disk, then rename over ``path``. The file gets the
    permissions the user's umask gives a new file (the safetensors writer makes its files private to their owner,
    and a Lens is read by others: by ``semlens serve`` under another account, by colleagues)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        temporary.unlink(missing_ok=True)
        temporary.touch()
        usual = stat.S_IMODE(temporary.stat().st_mode)
        write(temporary)
        os.chmod(temporary, usual)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


class LensFileError(SemlensError):
    """A file of a Lens that cannot be used; ``lens`` is the Lens's folder (the explorer marks that Lens, not its neighbours)."""

    def __init__(self, message: str, lens: Path | None = None) -> None:
        super().__init__(message)
        self.lens = lens


class DamagedLensError(LensFileError):
    """An array file of a Lens is missing, truncated or not what the build wrote."""


class UnreadableLensError(LensFileError):
    """A file of a Lens that this user has no permission to read."""


class LensStore:
    """Reads and writes the files of one Lens directory.

    ``expected`` maps array files to the ``{"bytes", "sha256"}`` recorded at build time; a file listed
    there is checked once, before its first read.
    """

    def __init__(self, root: str | Path, expected: dict[str, dict[str, Any]] | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        self.expected = expected or {}
        self._verified: set[str] = set()

    def path(self, name: str) -> Path:
        """The file ``name`` of this Lens, relative to its root. Names come from manifests others may have written:
        one that would leave the root (absolute, with a ``..`` part, or through a symbolic link in the Lens that
        points out of it) is refused, never followed."""
        relative = Path(name) if isinstance(name, str) else None
        if relative is None or relative.is_absolute() or relative.anchor or ".." in relative.parts:
            raise DamagedLensError(f"the Lens at {self.root} names a file outside itself ({name!r}); it was tampered with or damaged", self.root)
        path = self.root / relative
        if not path.resolve().is_relative_to(self.root):
            raise DamagedLensError(f"the Lens at {self.root} links {name!r} to a file outside itself; it was tampered with or damaged", self.root)
        return path

    def has_manifest(self) -> bool:
        return self.path(MANIFEST).is_file()

    def read_manifest(self) -> dict[str, Any]:
        try:
            with self.reading(MANIFEST):
                manifest = json.loads(self.path(MANIFEST).read_text(encoding="utf-8"))
        except DamagedLensError:
            if self.root.is_file():
                raise SemlensError(f"{self.root} is a file, not a Lens directory") from None
            if not self.path(MANIFEST).exists():
                raise SemlensError(f"{self.root} is not a Lens directory (no {MANIFEST}); build one with `semlens run`") from None
            raise
        except (json.JSONDecodeError, UnicodeDecodeError):
            manifest = None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise SemlensError(f"{self.root / MANIFEST} is not a semlens Lens manifest")
        if manifest.get("format_version", 0) > FORMAT_VERSION:
            raise SemlensError(
                f"Lens at {self.root} has format version {manifest['format_version']}, newer than this semlens "
                f"reads ({FORMAT_VERSION}); upgrade semlens"
            )
        malformed = [key for key in ("identity", "stages", "layers", "foundation", "spaces", "arrays") if not isinstance(manifest.get(key, {}), dict)]
        if malformed:
            raise DamagedLensError(f"{self.root / MANIFEST} is damaged: its {', '.join(malformed)} should be tables", self.root)
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self.write_json(MANIFEST, manifest)

    def write_json(self, name: str, value: Any) -> None:
        text = json.dumps(value, indent=1, sort_keys=False)
        atomic_write(self.path(name), lambda temporary: temporary.write_text(text, encoding="utf-8"))

    def read_json(self, name: str, parse: Callable[[Any], Any] | None = None) -> Any:
        """A JSON file of this Lens, through ``parse`` where given: a file that is not JSON, or not of the form
        ``parse`` reads (a KeyError, TypeError or ValueError), is reported as a damaged Lens, naming the file."""
        try:
            with self.reading(name):
                value = json.loads(self.path(name).read_text(encoding="utf-8"))
            return value if parse is None else parse(value)
        except (UnicodeDecodeError, KeyError, TypeError, ValueError) as error:  # json's JSONDecodeError is a ValueError
            raise self.damaged(name, f"it is not the JSON semlens writes ({type(error).__name__}: {error})") from None

    def write_tensors(self, name: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
        contiguous = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
        packed = None if metadata is None else {PACKED_METADATA: json.dumps(metadata, sort_keys=True)}
        atomic_write(self.path(name), lambda temporary: save_file(contiguous, str(temporary), metadata=packed))

    def read_tensors(self, name: str) -> dict[str, torch.Tensor]:
        self.verify(name)
        with self.reading(name):
            tensors = load_file(str(self.path(name)))
        for key, tensor in tensors.items():
            self._check_dtype(name, key, tensor.dtype)
        return tensors

    def record_arrays(self) -> dict[str, dict[str, Any]]:
        """Size and SHA-256 of every array file the build wrote (for the manifest's ``arrays``); labels and concepts
        shown to the Lens are left out because ``label`` and ``audit`` write them after the build."""
        names = sorted(
            name
            for name in (path.relative_to(self.root).as_posix() for path in self.root.rglob("*.safetensors"))
            if ".labels." not in name and "partial" not in name and not name.startswith(f"{CONCEPTS}/")
        )
        return {name: self.array_record(name) for name in names}

    def array_record(self, name: str) -> dict[str, Any]:
        """What the manifest's ``arrays`` records of one file: its size and SHA-256."""
        return {"bytes": self.path(name).stat().st_size, "sha256": hash_file(self.path(name))}

    def check_sizes(self) -> None:
        """Every recorded array file is there with its recorded size (cheap: catches truncation at open)."""
        for name, record in self.expected.items():
            path = self.path(name)
            if not path.is_file():
                raise self.damaged(name, "the file is missing")
            if path.stat().st_size != record["bytes"]:
                raise self.damaged(name, f"{path.stat().st_size} bytes, {record['bytes']} recorded")

    def verify(self, name: str) -> None:
        """Check a recorded file's hash once per store (files not recorded, e.g. labels, are not checked)."""
        record = self.expected.get(name)
        if record is None or name in self._verified:
            return
        if not self.path(name).is_file():
            raise self.damaged(name, "the file is missing")
        with self.reading(name):
            found = hash_file(self.path(name))
        if found != record["sha256"]:
            raise self.damaged(name, "its content is not what the build wrote (SHA-256 differs)")
        self._verified.add(name)

    def _check_dtype(self, name: str, key: str, dtype: torch.dtype) -> None:
        """Index arrays are integers, flags booleans, every other array floating point (``INDEX_ARRAYS``)."""
        short = key.rpartition(".")[2]  # a checkpoint's "0.ids" is an "ids"
        expected = "integer" if short in INDEX_ARRAYS else "bool" if short in FLAG_ARRAYS else "floating point"
        found = "bool" if dtype == torch.bool else "floating point" if dtype.is_floating_point else "integer"
        if found != expected:
            raise self.damaged(name, f"its array {key!r} holds {str(dtype).removeprefix('torch.')}, where semlens writes {expected} values")

    @contextmanager
    def reading(self, name: str) -> Iterator[None]:
        """Reading the file ``name``: a file this user may not read is said so (one line, what to do); one that
        cannot be read otherwise (missing, truncated, not safetensors) is damage."""
        try:
            yield
        except PermissionError:
            raise UnreadableLensError(
                f"the Lens at {self.root} cannot be read by this user: {name}: permission denied. Its owner can make it "
                "readable (chmod -R a+rX on the Lens), or copy it to a folder of yours",
                self.root,
            ) from None
        except (SafetensorError, OSError) as error:
            raise self.damaged(name, str(error)) from None

    def damaged(self, name: str, reason: str) -> DamagedLensError:
        return DamagedLensError(
            f"the Lens at {self.root} is damaged: {name}: {reason}. Copy it again from its source or rebuild it "
            f"with the same build ({asked('build_lens(..., overwrite=True)', 'semlens run ... --overwrite')})",
            self.root,
        )

    def read_rows(self, name: str, key: str, rows: torch.Tensor) -> torch.Tensor:
        """``array[rows]`` of one stored array, reading only those rows off the disk (``rows`` of any
        shape): a layer's examples come out of a crop table built for millions of samples."""
        self.verify(name)
        wanted, inverse = torch.unique(rows.reshape(-1), return_inverse=True)
        runs = torch.tensor_split(wanted, (wanted.diff() != 1).nonzero().flatten() + 1) if wanted.numel() else []
        with self.reading(name), safe_open(str(self.path(name)), framework="pt") as handle:
            array = handle.get_slice(key)
            parts = [array[0:0]] + [array[int(run[0]) : int(run[-1]) + 1] for run in runs]
        self._check_dtype(name, key, parts[0].dtype)
        return torch.cat(parts)[inverse].reshape(*rows.shape, *parts[0].shape[1:])

    def rows(self, name: str, key: str) -> int:
        """The length of one stored array, read off its header."""
        self.verify(name)
        with self.reading(name), safe_open(str(self.path(name)), framework="pt") as handle:
            return handle.get_slice(key).get_shape()[0]

    def read_array(self, name: str, key: str) -> torch.Tensor:
        """One array of a stored file, without reading the file's others."""
        self.verify(name)
        with self.reading(name), safe_open(str(self.path(name)), framework="pt") as handle:
            tensor = handle.get_tensor(key)
        self._check_dtype(name, key, tensor.dtype)
        return tensor

    def read_metadata(self, name: str) -> dict[str, str]:
        """The metadata ``write_tensors`` stored with a file (files of older Lenses hold it unpacked)."""
        self.verify(name)
        with self.reading(name), safe_open(str(self.path(name)), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if PACKED_METADATA not in metadata:
            return metadata
        try:
            unpacked = json.loads(metadata[PACKED_METADATA])
        except ValueError:
            unpacked = None
        if not isinstance(unpacked, dict) or not all(isinstance(value, str) for value in unpacked.values()):
            raise self.damaged(name, "its metadata is not what semlens writes")
        return unpacked

    def read_checkpoint(self, name: str, key: str) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
        """A resume checkpoint's arrays and metadata where it was taken for ``key`` (its ``fingerprint``); None where
        there is none, or it holds progress of other inputs or another split, which is removed, never mixed in."""
        if not self.path(name).is_file():
            return None
        metadata = self.read_metadata(name)
        if metadata.get("fingerprint") != key:
            self.remove(name)
            return None
        return self.read_tensors(name), metadata

    def remove(self, name: str) -> None:
        target = self.path(name)
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)

    def clear(self) -> None:
        """Delete what semlens wrote in a Lens directory (``--overwrite``), the folder itself kept. Anything else there
        (no semlens manifest, or a file semlens does not write: ``OWN_TOP``) makes it refuse, deleting nothing: the
        files may be a user's, and a folder with them left in would not take a new Lens either."""
        self.check_folder()
        entries = sorted(self.root.iterdir()) if self.root.exists() else []
        if not entries:
            return
        if not self.path(MANIFEST).is_file():
            raise SemlensError(f"{self.root} is not empty and holds no Lens manifest; refusing to delete anything in it")
        try:
            self.read_manifest()
        except SemlensError as error:
            raise SemlensError(f"refusing to delete anything in {self.root}: it is not a Lens semlens can read ({error})") from None
        foreign = [name for entry in entries for name in foreign_files(entry, self.root)]
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise SemlensError(
                f"the Lens at {self.root} holds files semlens does not write ({shown}); {asked('overwrite=True', '--overwrite')} deletes a Lens only when "
                "nothing else is in its folder, so nothing was deleted: move them out, or choose another output directory"
            )
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def check_folder(self) -> None:
        """A Lens is a folder: a file in its place is refused."""
        if self.root.exists() and not self.root.is_dir():
            raise SemlensError(f"{self.root} is a file, not a folder; give a folder for the Lens (a new one, or a Lens to resume)")


def foreign_files(entry: Path, root: Path) -> list[str]:
    """The files (relative to ``root``) at or below ``entry``, a top-level entry of a Lens, that semlens does not
    write there (``OWN_TOP``, ``OWN_NESTED``); a link is never semlens's."""
    own = (not entry.is_symlink()) and any(fnmatch(entry.name, pattern) for pattern in OWN_TOP)
    if not own or not entry.is_dir():
        return [] if own else [entry.relative_to(root).as_posix()]
    found = []
    for path in sorted(entry.rglob("*")):
        if path.is_symlink() or (path.is_file() and not any(fnmatch(path.name, pattern) for pattern in OWN_NESTED)):
            found.append(path.relative_to(root).as_posix())
    return found


def safe_name(layer: str) -> str:
    """A layer name with only characters safe in file names (module paths mostly are already)."""
    return "".join(char if char.isalnum() or char in "._-" else "_" for char in layer)


def layer_file(layer: str, kind: str) -> str:
    """File name of a layer's arrays."""
    return f"layers/{safe_name(layer)}.{kind}.safetensors"


def read_crop_embeddings(store: LensStore, rows: torch.Tensor) -> torch.Tensor:
    """Embeddings (float16) of crop rows ``rows`` (any shape, none empty): rows of ``crops.safetensors``, and past
    its end rows of ``relevance_crops.safetensors`` (the relevance examples' crops that are no activation example's)."""
    count = store.rows(CROPS, "embeddings")
    first = rows < count
    found = store.read_rows(CROPS, "embeddings", rows.masked_fill(~first, 0))
    if not first.all():
        found[~first] = store.read_rows(RELEVANCE_CROPS, "embeddings", rows[~first] - count)
    return found
def space_file(space: str, name: str) -> str:
    """File ``name`` (laid out as in the Lens root) of an extra embedding space: ``spaces/<space>/<name>``."""
    return f"{SPACES}/{space}/{name}"
