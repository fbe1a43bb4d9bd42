"""The names of a Lens's embedding spaces (``manifest["spaces"]``, files under ``spaces/<name>/``): what the
build that adds a space and the Lens that reads one agree on."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .._util.errors import SemlensError
from .trust import display_spec

DEFAULT = "default"  # the name that always means the build's own space


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def space_name(spec: str) -> str:
    """The name a space gets from its foundation model's spec when none is given: the spec with local paths cut
    to their last part and other characters than letters, digits, ``._-`` made dashes."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", display_spec(spec)).strip("-._")[:64]
    return name or "space"


def check_space_name(name: str) -> str:
    if name == DEFAULT or not NAME.fullmatch(name):
        raise SemlensError(
            f"space name {name!r} is not valid: use up to 64 letters, digits, '.', '_' or '-', starting with a letter or "
            f"digit, and not {DEFAULT!r} (the build's own space)"
        )
    return name


@dataclass(frozen=True)
class EmbeddingSpace:
    """One embedding space of a Lens, as ``semlens spaces`` lists it."""

    name: str
    spec: str
    foundation_id: str
    dim: int
    default: bool
    complete: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
