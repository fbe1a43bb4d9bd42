"""Results that draw themselves in a notebook (``_repr_html_``, the hook Jupyter and IPython call).

The result types live in low layers (``analysis``, ``lens``) while their pictures are drawn from a Lens's
concept examples by ``report``, which imports them: so ``report.notebook`` registers one renderer per type
(``renders_html``) and a result's ``_repr_html_`` looks it up, with no import upwards. The Lens that made a
result is remembered beside it (``made_by``, not a dataclass field: neither in ``to_dict`` nor in equality)
so that the picture can show its units' concept examples.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

Result = TypeVar("Result")
_RENDERERS: dict[type, Callable[[Any], str]] = {}


def renders_html(kind: type) -> Callable[[Callable[[Any], str]], Callable[[Any], str]]:
    """Register the decorated function as the HTML picture of ``kind`` (and its subclasses)."""

    def register(function: Callable[[Any], str]) -> Callable[[Any], str]:
        _RENDERERS[kind] = function
        return function

    return register


def made_by(result: Result, lens: Any) -> Result:
    """``result``, remembering the Lens that made it (for its units' concept examples in its picture)."""
    object.__setattr__(result, "_lens", lens)  # a frozen dataclass's too
    return result


def lens_of(result: Any) -> Any | None:
    """The Lens that made ``result`` (``made_by``), None where it was made elsewhere (e.g. from a dict)."""
    return getattr(result, "_lens", None)


class HtmlResult:
    """A result that draws itself in a notebook by the renderer registered for its type."""

    def _repr_html_(self) -> str | None:
        """The registered picture; None (the notebook shows the plain repr) where none is registered."""
        draw = next((_RENDERERS[kind] for kind in type(self).__mro__ if kind in _RENDERERS), None)
        return None if draw is None else draw(self)
