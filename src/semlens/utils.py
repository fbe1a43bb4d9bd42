"""Small helpers shared by several registries."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from .errors import SemlensError, SpecError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def import_object(path: str, kind: str) -> Any:
    """Import ``package.module:attribute`` (the ``py:`` spec form) with a clear error."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise SpecError(f"py:{path} is not of the form py:package.module:factory (the {kind} factory)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise SpecError(f"py:{path}: cannot import module {module_name!r} ({error}); is it on PYTHONPATH?") from error
    try:
        return getattr(module, attribute)
    except AttributeError as error:
        public = sorted(name for name in vars(module) if not name.startswith("_"))
        raise SpecError(f"py:{path}: module {module_name!r} has no {attribute!r}; it has: {', '.join(public)}") from error


def import_optional(module_name: str, extra: str, needed_for: str) -> Any:
    """Import a module of an optional extra, or fail saying which extra to install."""
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise SpecError(f"{needed_for} needs {module_name}: pip install 'semlens[{extra}]' ({error})") from error


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """Parse TOML text; a syntax error names its source."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SemlensError(f"cannot parse {source}: {error}") from error


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """Read a TOML file (``what`` names it in errors: "config", "vocabulary", ...)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise SemlensError(f"cannot read {what} {path}: {error}") from error
    return parse_toml(text, f"{what} {path}")
