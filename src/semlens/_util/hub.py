"""Loading from the Hugging Face hub or a ``save_pretrained`` folder, as classifiers (``hf:`` model specs) and
foundation models (``hf:`` foundation specs) both do."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TypeVar

from .errors import SpecError, one_line

T = TypeVar("T")


def hub_source(name_or_path: str) -> str:
    """An existing local directory, else the name as a hub id; a path that does not exist fails here.

    Without this check a mistyped path reaches the hub client and fails with a confusing
    "repo id must be in the form namespace/repo_name".
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise SpecError(f"hf:{name_or_path} is a file; give a directory written by save_pretrained or a hub id")
        return str(path)
    if path.is_absolute() or name_or_path.startswith((".", "~")) or "\\" in name_or_path:
        raise SpecError(
            f"hf:{name_or_path}: no such directory; give a directory written by save_pretrained or a hub id "
            "such as openai/clip-vit-base-patch32"
        )
    return name_or_path


def load_pretrained(loader: Callable[..., T], source: str, name_or_path: str, what: str, **options: Any) -> T:
    """Call a ``from_pretrained`` loader, turning its download and file errors into one clear message."""
    try:
        return loader(source, **options)
    except (OSError, ValueError, ImportError) as error:
        hint = ""
        if isinstance(error, ImportError) or "sentencepiece" in str(error).lower():
            hint = " (original SigLIP tokenizers need `pip install sentencepiece protobuf`)"
        raise SpecError(
            f"cannot load {what} for hf:{name_or_path}: {one_line(error)}{hint}. A hub id needs the network on first "
            "use (or HF_HOME holding a cached copy); a local directory must hold what save_pretrained writes"
        ) from error


def silence_transformers_progress() -> None:
    """transformers draws a bar per weight file loaded; semlens draws its own bars for long work."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
