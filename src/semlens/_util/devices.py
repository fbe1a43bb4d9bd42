"""Where and in which precision models run: CUDA when present, reduced precision there."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch

from .errors import SemlensError

T = TypeVar("T")


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
    convolutional image ``tower`` without transformer blocks (``half_safe``), else bfloat16 (float16 on GPUs
    without it).

    Half precision halves a GPU's memory and time; which half trades range against mantissa.
    Transformer towers (CLIP, SigLIP, DINOv2 ViTs, text encoders) carry a few activations orders of
    magnitude above the rest, and products of them in attention and MLPs can pass float16's 65504,
    turning an embedding into inf/NaN; bfloat16 keeps float32's range. That holds for a ViT behind a
    convolutional stem (MobileCLIP-B) and for hybrids whose last stages attend (MobileCLIP-S, FastViT) too.
    Batch-normalised CNNs have no such outliers (EfficientNet-Lite's ReLU6 clips its activations at 6), and
    there bfloat16's 8-bit mantissa costs what float16's 11 bits do not: conse's theta in bfloat16 reaches a
    cosine of only 0.98 with float32's, in float16 0.999 (the worst unit; benchmarks/embedding.py, on the
    CPU). The CPU keeps float32: results stay bit for bit reproducible there.
    """
    if device.type != "cuda":
        return torch.float32
    if tower is not None and half_safe(tower):
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def convolutional(module: torch.nn.Module) -> bool:
    """More than one 2-d convolution: a CNN or a hybrid, not a ViT whose patch embedding is its only one."""
    return sum(isinstance(part, torch.nn.Conv2d) for part in module.modules()) > 1


def attention_layers(module: torch.nn.Module) -> int:
    """The attention layers in ``module``: torch's ``MultiheadAttention`` and every module whose class is named
    an attention (timm's ``Attention``, transformers' ``CLIPAttention``, open_clip's ``AttentionPool2d``), each
    counted once with the attention modules it holds."""
    if isinstance(module, torch.nn.MultiheadAttention) or "attention" in type(module).__name__.lower():
        return 1
    return sum(attention_layers(child) for child in module.children())


def half_safe(tower: torch.nn.Module) -> bool:
    """A convolutional tower with at most one attention layer (a CLIP ResNet's attention pool over its last
    map), so without transformer blocks: float16 keeps its range there (``inference_dtype``)."""
    return convolutional(tower) and attention_layers(tower) <= 1


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
    when asked for). Its ranking is not float32's, so that pass only picks candidates, which are then
    re-scored in float32 with TF32 off (``build.collect.rescore``): the stored top-k is float32's on
    every device and precision. The CPU keeps float32 (autocast rarely pays there, and results stay
    bit for bit reproducible).
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
    back to activation crops. The collection pass and its re-scoring need it too: top-k by TF32 scores is
    not float32's. The CPU has no TF32: there this changes nothing.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def relevance_pixels(device: torch.device) -> int:
    """Input pixels one relevance pass holds by default: 16 inputs of 224 px on a CPU, where larger passes
    cost little less per pair (benchmarks/crops.py). On a GPU a pass of 16 waits on kernel launches (an
    H200 took 1.43 ms a pair at 16 and 0.34 at 256, ResNet-18 at 224 px; 128 a pass took a ResNet-50 build's
    embed stage from 200 to 93 s), so a GPU gets 2 inputs of 224 px per GiB of its memory, from 16 to 128:
    128 from 64 GiB up, 32 on 16 GiB. That sizing is a guess at what fits, not a measurement:
    ``ShrinkingBatch`` halves a pass that does not."""
    if device.type != "cuda":
        return 16 * 224 * 224
    gib = torch.cuda.get_device_properties(device).total_memory / 2**30
    return int(min(128, max(16, 2 * gib))) * 224 * 224


class ShrinkingBatch:
    """Rows per pass that halve whenever the GPU runs out of memory, and stay halved for later passes.

    The relevance passes are sized by a guess at what the card holds (``relevance_pixels``); a pass that
    does not fit is split and done again, so that a build does not stop where a smaller pass would fit.
    ``asked`` and ``rows`` say what was asked and what ran.
    """

    def __init__(self, rows: int, release: Callable[[], None] = lambda: None) -> None:
        self.asked = self.rows = rows
        self.release = release  # drops what a failed pass left behind (RelevanceModel.release)

    @property
    def shrunk(self) -> dict[str, int] | None:
        """``{"asked": .., "used": ..}`` where passes ran smaller than asked, for the manifest; else None (the
        results are the same, so a resumed build that reuses them needs no such record)."""
        return {"asked": self.asked, "used": self.rows} if self.rows < self.asked else None

    def parts(self, total: int, step: Callable[[int, int], T]) -> Iterator[tuple[int, int, T]]:
        """``(begin, end, step(begin, end))`` over ``range(total)`` in parts of at most ``rows`` rows."""
        begin = 0
        while begin < total:
            end = min(total, begin + self.rows)
            try:
                result = step(begin, end)
            except torch.OutOfMemoryError as error:
                if end - begin == 1:
                    raise SemlensError(
                        f"the device ran out of memory on a relevance pass of one input ({what_torch_said(error)}); "
                        "free the GPU, or build with --device cpu"
                    ) from error
                self.rows = (end - begin) // 2
            else:
                yield begin, end, result
                begin = end
                continue
            self.release()  # outside the except block: the traceback and its frames' tensors are gone by now
            gc.collect()
            torch.cuda.empty_cache()


def what_torch_said(error: torch.OutOfMemoryError) -> str:
    """The first two sentences of torch's out-of-memory message (how much it tried to allocate)."""
    return ". ".join(str(error).split(". ")[:2])


@contextmanager
def out_of_memory_advice(stage: str, advice: str) -> Iterator[None]:
    """The GPU running out of memory in a build stage, as an error that says what to lower: a traceback
    deep inside the model would not."""
    try:
        yield
    except torch.OutOfMemoryError as error:
        raise SemlensError(
            f"the device ran out of memory in the {stage} stage ({what_torch_said(error)}); {advice}, and run the same "
            "command again: the build resumes where it stopped"
        ) from error
