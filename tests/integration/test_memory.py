"""The collection pass keeps its memory flat: 10x the images, about the same peak RSS.

Runs ``benchmarks/memory.py`` (each size in its own process) at small sizes; the 1 000 000-image
run is the benchmark, with its figures in docs/explanation/performance.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).parents[2] / "benchmarks" / "memory.py"
#: a leak of 2 KB per image would add 36 MB over the 18 000 extra images
MAX_GROWTH_MB = 30


def test_peak_rss_does_not_grow_with_the_number_of_images() -> None:
    command = [sys.executable, str(BENCHMARK), "--images", "2000", "20000", "--json"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-4000:]
    small, large = (json.loads(line) for line in finished.stdout.splitlines())
    assert (small["images"], large["images"]) == (2000, 20000)
    assert large["peak_rss_mb"] - small["peak_rss_mb"] < MAX_GROWTH_MB, (small, large)
