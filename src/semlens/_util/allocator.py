"""Keep freed memory in the process's heap while a build stage runs (glibc's malloc, Linux).

glibc hands a freed block above its mmap threshold (128 KiB, raised as large blocks are freed, up to 32 MiB)
straight back to the kernel, and the next block of that size is mapped and zero-filled again page by page.
Relevance passes on the CPU allocate and free activations of tens of megabytes many times a second (ResNet-18's
stem at 224 px, 16 pairs a pass: 51 MB), so a build spent almost as much time in the kernel as in torch. Within
``freed_memory_kept`` glibc maps nothing itself and keeps what is freed for reuse; tensors are reused, not
changed, so every number stays the same. Measured in ``benchmarks/allocator.py`` (docs/explanation/performance.md, "Performance and
scale"). Other C libraries and allocators (musl, macOS, Windows, a preloaded jemalloc) are left as they are, and
``SEMLENS_KEEP_FREED_MEMORY=0`` leaves glibc as it is too. The setting is the process's: blocks nested in one
another or run at once in several threads (the explorer's requests) hold it until the last of them ends.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: mallopt's parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
#: what glibc does by default: up to 65536 mapped blocks; the thresholds below are where its adjustment ends
#: (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit, the trim threshold twice that), set again after each stage
GLIBC_MMAP_MAX = 65536
GLIBC_MMAP_THRESHOLD = 32 * 1024 * 1024
GLIBC_TRIM_THRESHOLD = 2 * GLIBC_MMAP_THRESHOLD
#: the heap's top is given back to the kernel only above this while a stage runs (mallopt takes an int)
KEPT_TOP = 2**31 - 1
ENVIRONMENT_SWITCH = "SEMLENS_KEEP_FREED_MEMORY"


def _glibc() -> ctypes.CDLL | None:
    if os.environ.get(ENVIRONMENT_SWITCH, "1") == "0":
        return None
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


#: blocks inside ``freed_memory_kept`` now, in every thread; the setting is applied by the first, restored by the last
_holders = 0
_holders_lock = threading.Lock()


@contextmanager
def freed_memory_kept() -> Iterator[bool]:
    """Within the block glibc serves every allocation from its heap and keeps freed memory there for reuse;
    after it, glibc maps large blocks again (above 32 MiB, where its own adjustment ends) and gives the kept
    memory back (``malloc_trim``). Yields whether the setting applies here (glibc, and not switched off).
    Usable as a decorator too."""
    global _holders
    libc = _glibc()
    with _holders_lock:
        _holders += 1
        applied = libc is not None and bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEPT_TOP))
    try:
        yield applied
    finally:
        with _holders_lock:
            _holders -= 1
            if libc is not None and _holders == 0:
                libc.mallopt(M_MMAP_MAX, GLIBC_MMAP_MAX)
                libc.mallopt(M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD)
                libc.mallopt(M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD)
                libc.malloc_trim(0)
