"""Module functions of a Lens computed once per Lens (each view its own), as ``functools.cached_property`` is
for methods: the questions live in modules of their own and keep what they compute on the Lens they ask."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

T = TypeVar("T")


def per_lens(compute: Callable[[Any], T]) -> Callable[[Any], T]:
    """``compute(lens)`` once per Lens, kept in the Lens's own dict (so that a Lens's views each compute their own)."""
    key = f"_per_lens:{compute.__module__}.{compute.__qualname__}"

    @wraps(compute)
    def remembered(lens: Any) -> T:
        if key not in lens.__dict__:
            lens.__dict__[key] = compute(lens)
        return lens.__dict__[key]

    return remembered
