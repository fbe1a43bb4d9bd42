"""Where semlens keeps models it trains itself (the concept world's classifier and foundation model).

``SEMLENS_CACHE`` overrides the default ``~/.cache/semlens``. Entries are named by a hash of
everything that determines them, so a changed config trains anew instead of reusing a stale model.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("SEMLENS_CACHE") or Path.home() / ".cache" / "semlens")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def trained_path(kind: str, key: str) -> Path:
    """Where the weights named ``key`` live: bundled with semlens (the default world's models, trained by
    this code and shipped so that the demo's first run loads instead of training), else in the cache."""
    bundled = Path(__file__).parents[1] / "assets" / "trained" / kind / f"{key}.safetensors"
    return bundled if bundled.is_file() else cache_dir(kind) / f"{key}.safetensors"
