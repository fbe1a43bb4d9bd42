"""Where and in which precision models run: CUDA when present, reduced precision there."""

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


def inference_dtype(device: torch.device, tower: torch.nn.Module | None = None) -> torch.dtype:
    """The dtype a foundation model runs in by default: float32 on the CPU; on a GPU float16 for a
    convolutional image ``tower``, else bfloat16 (float16 on GPUs without it).

    Half precision halves a GPU's memory and time; which half trades range against mantissa.
    Transformer towers (CLIP, SigLIP, DINOv2 ViTs, text encoders) carry a few activations orders of
    magnitude above the rest, and products of them in attention and MLPs can pass float16's 65504,
    turning an embedding into inf/NaN; bfloat16 keeps float32's range. Batch-normalised CNNs have no
    such outliers (EfficientNet-Lite's ReLU6 clips its activations at 6), and there bfloat16's 8-bit
    mantissa costs what float16's 11 bits do not: conse's theta in bfloat16 reaches a cosine of only
    0.98 with float32's, in float16 0.999 (the worst unit; benchmarks/embedding.py, on the CPU). The
    CPU keeps float32: results stay bit for bit reproducible there.
    """
    if device.type != "cuda":
        return torch.float32
    if tower is not None and convolutional(tower):
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def convolutional(module: torch.nn.Module) -> bool:
    """More than one 2-d convolution: a CNN, not a ViT whose patch embedding is its only one."""
    return sum(isinstance(part, torch.nn.Conv2d) for part in module.modules()) > 1


PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def check_precision(precision: str, name: str = "precision") -> None:
    if precision not in PRECISIONS:
        raise SemlensError(f"{name}={precision!r} is not one of {', '.join(PRECISIONS)}")


def embed_dtype(precision: str) -> torch.dtype | None:
    """The dtype ``embed_precision`` asks the foundation model for; None for ``auto``, the backend's own
    choice (:func:`inference_dtype`). Half precisions work on the CPU too."""
    check_precision(precision, "embed_precision")
    return None if precision == "auto" else getattr(torch, precision)


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


@contextmanager
def strict_float32() -> Iterator[None]:
    """Float32 convolutions and matrix products on CUDA, not TF32.

    PyTorch runs cuDNN's float32 convolutions in TF32 (a 10-bit mantissa) on Ampere and newer GPUs by
    default. LRP needs float32 proper: its check compares the canonized model (batch norms merged into
    convolutions) with the model to 1e-4 of the output, and on an H100 with TF32 a random ResNet-18
    differed by 3e-4 there (benchmarks/crops.py), so every model failed the check and the build fell
    back to activation crops. The CPU has no TF32: there this changes nothing.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
