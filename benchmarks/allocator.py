"""What keeping freed memory in glibc's heap (``semlens._util.allocator``) does to a whole build.

Builds the same Lens with ``semlens run`` in fresh processes, glibc as it is (``SEMLENS_KEEP_FREED_MEMORY=0``)
and freed memory kept (the default), alternating ``--repeats`` times, and prints each build's wall, user and
system time, page faults and peak resident memory (the process and its loader workers, from ``wait4``) with the
stages' seconds from the manifest; then the medians' ratio. The images are the bundled photos
(``write_photo_folder``); crops by relevance where LRP supports the model, as the build's default.

    python benchmarks/allocator.py [--model zoo:efficientnet-lite0] [--layers _blocks.10 _blocks.15]
        [--images 64 | --data SPEC] [--k 5] [--repeats 2] [--foundation conse] [--crop auto|activation]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from semlens._util.allocator import ENVIRONMENT_SWITCH
from semlens.data.photos import write_photo_folder


def build(command: list[str], out: Path, keep: bool) -> dict:
    """One build in a fresh process: its times, faults and peak memory, and the manifest's stage seconds."""
    shutil.rmtree(out, ignore_errors=True)
    environment = {**os.environ, ENVIRONMENT_SWITCH: "1" if keep else "0"}
    start = time.perf_counter()
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen([*command, "--out", str(out)], env=environment, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, for its resource usage
        if process.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"the build failed: {' '.join(command)}\n{errors.read().decode(errors='replace')}")
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    return {
        "wall": wall,
        "user": usage.ru_utime,
        "system": usage.ru_stime,
        "faults": usage.ru_minflt,
        "peak_gib": usage.ru_maxrss / 2**20,
        "stages": {name: stage["seconds"] for name, stage in stages.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="zoo:efficientnet-lite0")
    parser.add_argument("--layers", nargs="+", default=["_blocks.10", "_blocks.15"])
    parser.add_argument("--images", type=int, default=64, help="the bundled photos, this many views in all")
    parser.add_argument("--data", help="a data spec instead of the bundled photos (e.g. world::600:probe)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--foundation", default="conse")
    parser.add_argument("--crop", default="auto", help="the build's crop mode (auto: relevance crops where LRP supports the model)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data = args.data or f"folder:{write_photo_folder(Path(folder) / 'photos', per_photo=max(1, args.images // 16))}"
        semlens = [sys.executable, "-m", "semlens.cli", "run", "--model", args.model, "--data", data]
        semlens += [part for layer in args.layers for part in ("--layer", layer)]
        semlens += ["--foundation", args.foundation, "-k", str(args.k), "--crop", args.crop, "--no-progress"]
        print(f"regime: {platform.machine()}, {os.cpu_count()} cores, {platform.libc_ver()}; {args.model} {' '.join(args.layers)}, "
              f"{data}, k = {args.k}, {args.foundation}, crop {args.crop}; load average {os.getloadavg()[0]:.1f} before")
        runs: dict[bool, list[dict]] = {False: [], True: []}
        for round_ in range(args.repeats):
            for keep in (False, True):
                run = build(semlens, Path(folder) / "lens", keep)
                runs[keep].append(run)
                stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in run["stages"].items())
                print(f"round {round_ + 1}, {'kept' if keep else 'glibc as it is'}: wall {run['wall']:.1f} s, user {run['user']:.1f} s, "
                      f"system {run['system']:.1f} s, {run['faults'] / 1e6:.1f} M page faults, peak {run['peak_gib']:.2f} GiB; {stages}")
        for key in ("wall", "system", "peak_gib"):
            before, after = (statistics.median(run[key] for run in runs[keep]) for keep in (False, True))
            print(f"median {key}: {before:.2f} as it is, {after:.2f} kept: {after / before:.2f}x")
        print(f"load average {os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
    main()
