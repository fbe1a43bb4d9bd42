"""Importing code named by ``py:`` specs and optional extras, with errors that say what to do."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Any, Callable

from .errors import SemlensError, SpecError


NOT_FOUND = "is it on PYTHONPATH or in the working directory?"


def import_object(path: str, kind: str) -> Any:
    """Import ``package.module:attribute`` (the ``py:`` spec form) with a clear error."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise SpecError(f"py:{path} is not of the form py:package.module:factory (the {kind} factory)")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name.partition(".")[0] or os.getcwd() in sys.path:
            raise SpecError(f"py:{path}: cannot import module {module_name!r} ({error}); {NOT_FOUND}") from error
        module = _import_from_working_directory(module_name, path)
    except ImportError as error:
        raise SpecError(f"py:{path}: cannot import module {module_name!r} ({error}); {NOT_FOUND}") from error
    try:
        return getattr(module, attribute)
    except AttributeError as error:
        public = sorted(name for name in vars(module) if not name.startswith("_"))
        raise SpecError(f"py:{path}: module {module_name!r} has no {attribute!r}; it has: {', '.join(public)}") from error


def _import_from_working_directory(module_name: str, path: str) -> Any:
    """``module_name`` from the working directory, as ``python -m`` would find it (the ``semlens`` command's
    own path holds only its bin folder): last on the path, so that nothing installed is shadowed."""
    sys.path.append(os.getcwd())
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        sys.path.remove(os.getcwd())
        raise SpecError(f"py:{path}: cannot import module {module_name!r} ({error}); {NOT_FOUND}") from error


def call_factory(factory: Callable[..., Any], path: str, kind: str, **options: Any) -> Any:
    """Call the factory a ``py:`` spec names. An exception inside it is the user's code failing, not semlens:
    it becomes a SpecError naming the spec, the error and the line it came from (the traceback stays chained)."""
    try:
        return factory(**options)
    except SemlensError:
        raise
    except Exception as error:
        where = traceback.extract_tb(error.__traceback__)[-1]
        raise SpecError(f"py:{path}: the {kind} factory raised {type(error).__name__}: {error} (at {where.filename}:{where.lineno})") from error


def import_optional(module_name: str, extra: str, needed_for: str) -> Any:
    """Import a module of an optional extra, or fail saying which extra to install."""
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise SpecError(f"{needed_for} needs {module_name}: pip install 'semlens[{extra}]' ({error})") from error
