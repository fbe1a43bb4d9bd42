"""Errors and warnings that tell the user what was wrong and what would be right.

The CLI prints a :class:`SemlensError` as a one-line message (no traceback): every message should
name the bad input and list or describe the valid choices.
"""

import re
import sys
import warnings

#: what a message asks the user to pass, in both faces' words (``asked``)
ASKED = re.compile("\x02([^\x02\x03\x04]*)\x03([^\x02\x03\x04]*)\x04")


def asked(python: str, command_line: str) -> str:
    """What a message asks the user to pass, in each face's words: Python reads ``python`` (``overwrite=True``), the
    command line prints ``command_line`` (``--overwrite``); neither is shown the other's syntax."""
    return f"\x02{python}\x03{command_line}\x04"


def in_python(text: str) -> str:
    """``text`` with what it asks for in Python's words."""
    return ASKED.sub(r"\1", text)


def on_the_command_line(text: str) -> str:
    """``text`` with what it asks for in the command line's words."""
    return ASKED.sub(r"\2", text)


def quoted(error: BaseException) -> str:
    """``error``'s message to quote inside another: what it asks for kept in both faces' words (``str`` of a semlens
    error is Python's words already, and a warning quoting it then told the command line ``trust=True``)."""
    return Exception.__str__(error)


class AskedInEachFace:
    """A message whose ``asked`` parts read as Python's where Python shows it (``str``), and as the command line's in
    ``on_the_command_line()``: semlens's errors and warnings."""

    def __str__(self) -> str:
        return in_python(super().__str__())

    def on_the_command_line(self) -> str:
        return on_the_command_line(super().__str__())


class SemlensWarning(AskedInEachFace, UserWarning):
    """A warning of semlens (``warn_caller``)."""


def warn_caller(message: str) -> None:
    """A warning shown at the first caller outside semlens (the user's line in a notebook or script), however deep
    in semlens it is raised: a fixed ``stacklevel`` pointed into semlens's own config.py where a build made the model."""
    frame, level = sys._getframe(1), 2  # stacklevel 2: the function that called warn_caller
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] == "semlens":  # a dataclass's __init__ too
        frame, level = frame.f_back, level + 1
    warnings.warn(SemlensWarning(message), stacklevel=level)


class SemlensError(AskedInEachFace, Exception):
    """Base of every error caused by the user's input or environment, not by a bug (what it asks for: ``AskedInEachFace``)."""


class SpecError(SemlensError, ValueError):
    """A spec string (model, data, foundation model, layer) that cannot be resolved."""


class LayerError(SemlensError, ValueError):
    """A layer name or layer output that semlens cannot turn into units."""


class DataError(SemlensError):
    """Probe data that is missing, empty or unreadable."""


class StaleLensError(SemlensError):
    """A Lens directory whose recorded inputs differ from the ones given now."""


class TextNotSupportedError(SemlensError):
    """A text probe sent to an image-only foundation model (e.g. DINOv2)."""


def one_line(error: BaseException) -> str:
    """A library's error message without line breaks or closing full stop, to embed in ours."""
    return " ".join(str(error).split()).rstrip(".")
