"""Content fingerprints: they decide whether a stored stage can be reused or is stale."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

DIGEST_CHARS = 16


def hash_json(value: Any) -> str:
    """Fingerprint of a JSON-serialisable value, independent of key order."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_CHARS]


def hash_module_weights(module: torch.nn.Module) -> str:
    """Fingerprint of a module's parameters and buffers (names, dtypes, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:DIGEST_CHARS]


def hash_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Fingerprint of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()[:DIGEST_CHARS]
