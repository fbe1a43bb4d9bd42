"""Where and in which precision models run: CUDA when present, reduced precision there."""

from __future__ import annotations

import gc
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

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
    128 from 64 GiB up, 32 on 16 GiB. That is what a pass is asked to hold; ``ShrinkingBatch`` keeps it within
    a memory budget (``pass_memory``), from the memory per row the first pass measures, and halves a pass that
    does not fit."""
    if device.type != "cuda":
        return 16 * 224 * 224
    gib = torch.cuda.get_device_properties(device).total_memory / 2**30
    return int(min(128, max(16, 2 * gib))) * 224 * 224


#: GPU memory the relevance passes may hold at their peak by default (the model and the inputs held included), whatever
#: the card: the passes are sized by what a row of the model and layer takes (measured on the first pass), not by the
#: card's size, so a build runs the same way on a 24 GB card as on an 80 GB one (BuildConfig.relevance_memory_gib)
RELEVANCE_MEMORY_GIB = 8.0
#: rows of the first relevance pass on a GPU, whose peak memory sizes the passes after it
MEASURING_ROWS = 2
#: the most a pass may grow over the last measured one: a row may cost more in a large pass than a small one shows
#: (the measuring pass holds 2), and an estimate from a pass 4 times smaller errs less than one from 2 rows
GROWTH = 4
#: the share of the GPU's free memory a budget may take where the card holds less than the budget asked
FREE_SHARE = 0.9


class PassMemory:
    """A GPU memory budget for relevance passes and the meter that reads what a pass held (``pass_memory``).

    ``start`` is called before a pass and returns the bytes held then; ``peak`` after it, the most held meanwhile.
    ``why`` says why the budget is under what was asked (a card with less free memory), else None."""

    def __init__(self, budget: int, start: Callable[[], int], peak: Callable[[], int], why: str | None = None) -> None:
        self.budget, self.why = budget, why
        self._start, self._peak = start, peak
        self.base = self.highest = 0

    def start(self) -> None:
        self.base = self._start()

    def rows_that_fit(self, rows: int) -> tuple[int, bool]:
        """The rows a pass may hold within the budget, from the last pass of ``rows`` rows (its peak over the bytes
        held before it, per row: a pass's fixed cost counts as rows', so the estimate errs small), and whether
        that pass stayed within the budget. Where what is held before a pass (the model, the inputs) leaves less
        than a quarter of the budget, a pass may still grow by that quarter: passes of one row would crawl."""
        peak = self._peak()
        self.highest = max(self.highest, peak)
        per_row = max(peak - self.base, 1) / rows
        room = max(self.budget - self.base, self.budget // 4)
        return max(1, int(room // per_row)), peak <= self.budget


def pass_memory(device: torch.device, gib: float = RELEVANCE_MEMORY_GIB) -> PassMemory | None:
    """The relevance passes' memory budget on a GPU (``gib``, or FREE_SHARE of what the card has free where
    that is less); None elsewhere: a CPU's passes are sized by input pixels alone (``relevance_pixels``)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    held = torch.cuda.memory_allocated(device)
    free += torch.cuda.memory_reserved(device) - held  # blocks torch's allocator keeps cached are free to it
    budget, room, why = int(gib * 2**30), held + int(FREE_SHARE * free), None
    if room < budget:
        budget, why = room, f"the GPU had {room / 2**30:.1f} GiB for them, under the {gib:g} GiB asked"

    def start() -> int:
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)

    return PassMemory(budget, start, lambda: torch.cuda.max_memory_allocated(device), why)


class ShrinkingBatch:
    """Rows per relevance pass: within a GPU memory budget where one is given, halved whenever the GPU runs out
    of memory (and kept so for later passes).

    The passes are asked for by input pixels (``relevance_pixels``). With a ``memory`` budget (``pass_memory``)
    the first pass runs MEASURING_ROWS rows, and every full pass after it as many as its measured peak per row
    lets fit in the budget, at most those asked and GROWTH times the last. A pass that does not fit is split and done again, so that a
    build does not stop where a smaller pass would fit. ``asked`` and ``rows`` say what was asked and what ran.
    """

    def __init__(self, rows: int, release: Callable[[], None] = lambda: None, memory: PassMemory | None = None) -> None:
        self.asked = self.rows = self.ceiling = rows  # ceiling: the most rows known to fit (halved on out of memory)
        self.release = release  # drops what the last pass left behind, failed or not (RelevanceModel.release)
        self.memory = memory
        self.out_of_memory = False
        self.measured = memory is None
        self.largest = 0  # the most rows a pass held

    @property
    def shrunk(self) -> dict[str, Any] | None:
        """``{"asked": .., "used": .., "why": ..}`` where passes ran smaller than asked because the GPU ran out of
        memory or had less free than the budget asked, for the manifest; else None (the results are the same, so
        a resumed build that reuses them needs no such record). Passes the default budget keeps smaller are the
        design, not a fallback: ``memory_used`` records them."""
        if self.rows >= self.asked:
            return None
        if self.out_of_memory:
            return {"asked": self.asked, "used": self.rows, "why": "the GPU ran out of memory"}
        if self.memory is not None and self.memory.why:
            return {"asked": self.asked, "used": self.rows, "why": self.memory.why}
        return None

    @property
    def memory_used(self) -> dict[str, Any] | None:
        """With a budget, after the passes: ``{"budget_gib", "peak_gib", "rows"}`` (the highest peak of any pass and
        the most rows a pass held), for the manifest; else None."""
        if self.memory is None or not self.memory.highest:
            return None
        return {"budget_gib": round(self.memory.budget / 2**30, 2), "peak_gib": round(self.memory.highest / 2**30, 2), "rows": self.largest}

    def parts(self, total: int, step: Callable[[int, int], T]) -> Iterator[tuple[int, int, T]]:
        """``(begin, end, step(begin, end))`` over ``range(total)`` in parts of at most ``rows`` rows."""
        begin = 0
        while begin < total:
            planned = self.rows if self.measured else min(self.rows, MEASURING_ROWS)
            end = min(total, begin + planned)
            try:
                if self.memory is not None:
                    self.release()  # the last pass's layer inputs, which the meter would count as the model's
                    self.memory.start()
                result = step(begin, end)
            except torch.OutOfMemoryError as error:
                if end - begin == 1:
                    raise SemlensError(
                        f"the device ran out of memory on a relevance pass of one input ({what_torch_said(error)}); "
                        "free the GPU, or build with --device cpu"
                    ) from error
                self.rows = self.ceiling = (end - begin) // 2
                self.out_of_memory = True
            else:
                self.largest = max(self.largest, end - begin)
                self._fit(end - begin, planned)
                yield begin, end, result
                begin = end
                continue
            self.release()  # outside the except block: the traceback and its frames' tensors are gone by now
            gc.collect()
            torch.cuda.empty_cache()

    def _fit(self, rows: int, planned: int) -> None:
        """Size the next passes by the budget from the pass just run: a full pass sizes them; a pass cut short by
        the end of its span only shrinks them, where it went over the budget."""
        if self.memory is None:
            return
        fitting, within = self.memory.rows_that_fit(rows)
        if rows == planned or not within:
            self.rows = min(self.ceiling, fitting, GROWTH * rows)
            self.measured = True


def quiet_worker(_worker: int) -> None:
    """A data-loader worker's start (``worker_init_fn``): Ctrl-C is left to the main process, which says the build
    resumes and shuts the workers down; a worker that took it too printed its own traceback first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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
