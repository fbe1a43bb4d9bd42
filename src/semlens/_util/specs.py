"""Spec strings such as ``zoo:efficientnet-lite0`` or ``hf:openai/clip-vit-base-patch32``.

Each kind of object (model, data, foundation model) has one :class:`SpecRegistry`: a prefix before
the first ``:`` picks a factory, which receives the rest of the string. A bad spec fails with the list
of valid forms, so the error message doubles as documentation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

from .errors import SpecError

T = TypeVar("T")


@dataclass(frozen=True)
class SpecForm(Generic[T]):
    """One registered form: ``prefix`` selects it, ``usage`` shows how to write it."""

    prefix: str
    usage: str
    summary: str
    factory: Callable[..., T]


def split_spec(spec: str, kind: str = "", forms: str = "") -> tuple[str, str]:
    """A spec's prefix and the rest, as every reader of specs must take them (the loaders and the trust
    check alike: a spec read two ways could pass the check as one form and load as another); ``forms``, the
    valid ones, end the error for an empty or malformed spec."""
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"empty or malformed {kind + ' ' if kind else ''}spec {spec!r}" + (f"; valid forms: {forms}" if forms else ""))
    prefix, _, rest = spec.strip().partition(":")
    return prefix, rest


def folder_or_spec(text: str) -> str:
    """Data as a user types it: a data spec, or a folder as ``folder:PATH`` (text without a prefix, or a path that
    exists, such as ``C:\\images``). For what the user gives (BuildConfig, the command line, ``data=`` when opening
    a Lens), never to read a spec a Lens records when it is opened; a recorded spec has its prefix already."""
    return text if ":" in text and not Path(text).exists() else f"folder:{text}"


class SpecRegistry(Generic[T]):
    """Maps spec prefixes to factories; ``resolve`` turns a spec string into an object."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._forms: dict[str, SpecForm[T]] = {}

    def register(self, prefix: str, usage: str, summary: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering ``factory(rest, **options)`` under ``prefix``."""

        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            self._forms[prefix] = SpecForm(prefix, usage, summary, factory)
            return factory

        return decorate

    def forms(self) -> list[SpecForm[T]]:
        return list(self._forms.values())

    def help(self) -> str:
        return "; ".join(f"{form.usage} ({form.summary})" for form in self._forms.values())

    def split(self, spec: str) -> tuple[SpecForm[T], str]:
        """Return the form a spec selects and the part after its prefix."""
        prefix, rest = split_spec(spec, self.kind, self.help())
        form = self._forms.get(prefix)
        if form is None:
            raise SpecError(f"unknown {self.kind} spec {spec!r}; valid forms: {self.help()}")
        return form, rest

    def knows(self, spec: str) -> bool:
        """Whether ``spec`` is of a registered form (whether it could be loaded again)."""
        try:
            self.split(spec)
        except SpecError:
            return False
        return True

    def resolve(self, spec: str, **options: Any) -> T:
        form, rest = self.split(spec)
        return form.factory(rest, **options)


#: the spec form a Lens records for a model, data or foundation model handed over as an object (a notebook's):
#: it names the object's class, and loading it again is refused (``register_in_memory``): nothing is run or read
IN_MEMORY = "memory"


def in_memory_spec(value: object) -> str:
    """What a Lens records as the spec of ``value``, an object handed over in memory: ``memory:CLASS``."""
    return f"{IN_MEMORY}:{type(value).__name__}"


def register_in_memory(registry: SpecRegistry[Any], option: str) -> None:
    """Register ``memory:CLASS`` with ``registry``: a Lens built from an object records it, and cannot load that
    object again, so loading it is refused, naming ``option`` (how to pass the object again)."""

    @registry.register(IN_MEMORY, f"{IN_MEMORY}:CLASS", f"recorded for the {registry.kind} passed as an object; never loaded")
    def _refuse(rest: str, **options: Any) -> Any:
        raise SpecError(
            f"this Lens was built from the {registry.kind} passed in memory ({rest or 'an object'}), which it cannot load "
            f"again: pass the same {registry.kind} yourself ({option})"
        )


def described(value: object) -> str:
    """A spec or setting as written, an object by its class (never its repr: a module's is its whole architecture)."""
    return repr(value) if isinstance(value, (str, int, float, bool, list, type(None))) else f"a {type(value).__name__}"
