"""Reading TOML files (configs, vocabularies, worlds) with errors that name the file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .errors import SemlensError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


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
