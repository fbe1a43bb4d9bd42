"""Freed memory kept in glibc's heap during a build stage: known answers read from glibc's own counters, each in a
fresh process (what an earlier test freed into this process's heap would serve a large block without mapping)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from semlens._util import allocator
from semlens._util.allocator import ENVIRONMENT_SWITCH, freed_memory_kept

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
#: before, inside, inside once a block nested in it has ended, and after ``freed_memory_kept``: how many more blocks
#: glibc maps (``mallinfo2().hblks``) while a block of 96 MiB, above glibc's largest mmap threshold (32 MiB), is held
PROBE = """
import ctypes, json
from semlens._util.allocator import freed_memory_kept

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p

def mapped_while_holding(size=96 * 2**20):
    before = libc.mallinfo2().hblks
    block = libc.malloc(ctypes.c_size_t(size))
    assert block
    mapped = libc.mallinfo2().hblks - before
    libc.free(ctypes.c_void_p(block))
    return mapped

counts = {"before": mapped_while_holding()}
with freed_memory_kept() as applied:
    counts.update(applied=applied, inside=mapped_while_holding())
    with freed_memory_kept():
        pass
    counts["inside_after_a_nested_block"] = mapped_while_holding()
counts["after"] = mapped_while_holding()
print(json.dumps(counts))
"""


def probe(switch: str | None) -> dict:
    environment = {key: value for key, value in os.environ.items() if key != ENVIRONMENT_SWITCH}
    if switch is not None:
        environment[ENVIRONMENT_SWITCH] = switch
    finished = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=environment, timeout=120)
    assert finished.returncode == 0, finished.stderr[-2000:]
    return json.loads(finished.stdout)


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_a_large_block_comes_from_the_heap_inside_and_is_mapped_after() -> None:
    assert probe(None) == {"before": 1, "applied": True, "inside": 0, "inside_after_a_nested_block": 0, "after": 1}


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_the_environment_switch_leaves_glibc_as_it_is() -> None:
    assert probe("0") == {"before": 1, "applied": False, "inside": 1, "inside_after_a_nested_block": 1, "after": 1}


def test_other_c_libraries_are_left_alone(monkeypatch) -> None:
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    with freed_memory_kept() as applied:
        assert not applied
