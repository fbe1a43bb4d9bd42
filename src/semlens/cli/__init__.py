"""The ``semlens`` command line: each command parses its options, calls the Python API and prints the
result (a rich table, or ``--json``: the result's ``to_dict()``). Commands live by what they do:
``build`` (make Lenses), ``explore`` (ask them), ``validate`` (test their findings)."""

from __future__ import annotations

from . import build, clusters, correct, explain, explore, spaces, validate  # noqa: F401 (registers the commands)
from ._app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
