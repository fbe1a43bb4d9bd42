"""One build at a time in a Lens folder: a second build into a folder that a build is writing (another notebook cell,
a `semlens run` in a terminal) would interleave the two builds' files. The builder holds an advisory lock on the folder
while it builds; the system releases it when the process ends however it ends, so a crash leaves no stale lock. Where
the system has no ``fcntl`` (Windows) builds are not locked."""

from __future__ import annotations

import os
from pathlib import Path

from .._util.errors import SemlensError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


class BuildLock:
    """The lock of one Lens folder, taken by ``acquire`` (refused at once, saying why, where another build holds it)
    and given back by ``release`` or when the holder is collected."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._descriptor: int | None = None

    def acquire(self) -> None:
        if fcntl is None or self._descriptor is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.root, os.O_RDONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(descriptor)
            raise SemlensError(
                f"another build is writing {self.root} right now (a notebook cell or a `semlens run` still running): wait "
                "for it to end (an interrupted build resumes where it stopped), or build into another folder"
            ) from None
        self._descriptor = descriptor

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing the folder's descriptor drops its lock
            self._descriptor = None

    def __del__(self) -> None:
        self.release()
