"""Where and in which precision models run: CUDA when present, half precision there."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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


PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise SemlensError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The reduced precision the model's forward pass runs in while collecting, or None for float32.

    ``auto`` is bfloat16 autocast on CUDA GPUs that support it: about twice the speed, and bfloat16
    has float32's range, so no activation overflows (float16 can, giving inf scores; it is used only
    when asked for). Top-k stays exact for the scores the model computes in that precision; samples
    whose scores differ by less than bfloat16 resolves may swap places with a float32 run, which is
    why the precision is part of the Lens's identity. The CPU keeps float32 (autocast rarely pays
    there, and results stay bit for bit reproducible).
    """
    check_precision(precision)
    if precision == "auto":
        fast = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if fast else None
    return None if precision == "float32" else getattr(torch, precision)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run per-image preprocessing on one thread: it is many small tensor operations, and on several
    threads each one waits for the others (30-50 ms per image on a busy 2-core machine for open_clip's
    transforms, against 1-2 ms on one thread; benchmarks/reference.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
