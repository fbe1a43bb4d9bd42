"""Where and in which precision models run: CUDA when present, half precision there."""

from __future__ import annotations

import torch

from .errors import SemlensError


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or ``"auto"`` picks CUDA when available, else the CPU; anything else is checked."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise SemlensError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from error
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise SemlensError(f"device {device!r} asked for, but CUDA is not available here; use cpu or auto")
    return chosen


def inference_dtype(device: torch.device) -> torch.dtype:
    """Half precision on GPUs (fast, and embeddings tolerate it), full precision on the CPU."""
    return torch.float16 if device.type == "cuda" else torch.float32
