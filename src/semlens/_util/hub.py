"""Loading from the Hugging Face hub or a ``save_pretrained`` folder, as classifiers (``hf:`` model specs) and
foundation models (``hf:`` foundation specs) both do."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import urlparse

from .errors import SpecError, one_line

T = TypeVar("T")

#: seconds to wait for the hub's host before taking it as unreachable
REACH_SECONDS = 3.0
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


@cache
def hub_reachable() -> bool:
    """Whether the Hugging Face hub's host (``HF_ENDPOINT``'s, at its port, else huggingface.co) answers a connection within
    REACH_SECONDS; True behind a proxy, where a direct connection says nothing. Asked once per process."""
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return True
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=REACH_SECONDS).close()
    except OSError:
        return False
    return True


@contextmanager
def offline_unless_reachable(downloads: bool = True) -> Iterator[None]:
    """Hub downloads inside run in the hub client's offline mode where its host cannot be reached: weights cached
    before load, and missing ones fail at once, instead of after about a minute of retries (measured here: 50 s
    for `semlens layers timm:resnet50` without the network, 6 s with this). ``downloads``: False where what runs
    inside fetches nothing (random weights, a local file or folder): the host is not asked then."""
    try:
        from huggingface_hub import constants
    except ImportError:  # no hub client installed: nothing to download through
        yield
        return
    if not downloads or constants.HF_HUB_OFFLINE or hub_reachable():
        yield
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


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
        with offline_unless_reachable(downloads=not Path(source).is_dir()):
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
