"""Command options made from a config dataclass's fields, so each setting is declared once (with its help text
in the field's metadata) and a new field is a new option without touching the command."""

from __future__ import annotations

import inspect
from dataclasses import MISSING, Field, fields
from pathlib import Path
from types import UnionType
from typing import Any, Callable, Optional, Union, get_args, get_origin, get_type_hints

import typer

from .._util.errors import SemlensError

PLAIN = (str, int, float, bool, Path)  # the types an option's text can be parsed into


def option_fields(config: type) -> list[Field]:
    """The fields that are options of their own: not config-only ("cli": False), not another option's "rest"."""
    rests = {item.metadata.get("rest") for item in fields(config)}
    return [item for item in fields(config) if item.metadata.get("cli", True) and item.name not in rests]


def option_type(name: str, annotation: Any, repeated: bool) -> Any:
    """What typer parses field ``name``'s option as: the plain type among a union's (a field that also takes
    objects in Python keeps its text form on the command line), a list where the field is one or ``repeated``."""
    if get_origin(annotation) is list:
        return list[option_type(name, get_args(annotation)[0], False)]
    options = get_args(annotation) if isinstance(annotation, UnionType) or get_origin(annotation) is Union else (annotation,)
    plain = next((option for option in options if option in PLAIN), None)
    if plain is None:
        raise TypeError(f"field {name} ({annotation}) has no command-line form; give it the metadata {{'cli': False}}")
    return list[plain] if repeated else plain


def config_options(config: type, after: str, placed: dict[str, str] | None = None) -> Callable[[Callable], Callable]:
    """Give a command one option per field of ``config`` (default None: the field's own default applies), right
    after its parameter ``after``; ``placed`` moves a parameter of the command behind a field's option (its
    ``--help`` order). The command gets the fields' values in its ``**`` parameter; ``config_from_options``
    makes the config of them."""
    hints, placed = get_type_hints(config), placed or {}

    def decorate(command: Callable) -> Callable:
        own = [parameter for parameter in inspect.signature(command, eval_str=True).parameters.values() if parameter.kind != parameter.VAR_KEYWORD]
        moved = {parameter.name: parameter for parameter in own if parameter.name in placed}
        made = []
        for item in option_fields(config):
            kind = Optional[option_type(item.name, hints[item.name], "rest" in item.metadata)]
            option = typer.Option(None, *item.metadata.get("flags", ()), help=item.metadata.get("help"))
            made.append(inspect.Parameter(item.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind))
            made.extend(moved[name] for name, behind in placed.items() if behind == item.name)
        kept = [parameter for parameter in own if parameter.name not in moved]
        position = [parameter.name for parameter in kept].index(after) + 1
        parameters = [parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY) for parameter in [*kept[:position], *made, *kept[position:]]]
        command.__signature__ = inspect.Signature(parameters)  # what typer reads the options from
        command.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
        return command

    return decorate


def config_from_options(config: type, settings: dict[str, Any], file: Path | None = None) -> Any:
    """The config of a command's option values (None: not given) over the TOML ``file``'s settings, if any: an
    option repeated for a field with a "rest" gives its first value to the field, the others to the rest."""
    values = {}
    for item in option_fields(config):
        value = settings.get(item.name)
        value = None if value == [] else value  # a repeatable option not given
        if value is not None and "rest" in item.metadata:
            value, values[item.metadata["rest"]] = value[0], value[1:] or None
        values[item.name] = value
    if file is not None:
        return config.from_toml(file, **values)
    required = [item for item in fields(config) if item.default is MISSING and item.default_factory is MISSING]
    missing = [item.metadata.get("flags", (f"--{item.name.replace('_', '-')}",))[0] for item in required if values.get(item.name) is None]
    if missing:
        raise SemlensError(f"missing {', '.join(missing)} (or give --config FILE.toml)")
    return config(**{name: value for name, value in values.items() if value is not None})
