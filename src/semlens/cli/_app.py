"""What every command shares: the typer app, the consoles, the options that open a Lens, one-line errors,
tables and JSON output (commands print ``result.to_dict()``; they assemble no JSON of their own)."""

from __future__ import annotations

import json
import math
import sys
import unicodedata
import warnings
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .._util.errors import AskedInEachFace, SemlensError


def one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None) -> str:
    """A warning as the commands print it: one line that says what, in the command line's words, without the source
    line that raised it."""
    text = message.on_the_command_line() if isinstance(message, AskedInEachFace) else str(message)
    return f"warning: {printable(text)}\n"


warnings.formatwarning = one_line_warning


class Commands(typer.core.TyperGroup):
    """The commands, their help written as the command line reads: typer 0.29 shows a flag's Python type
    (``--json <bool>``, where a flag takes no value), a repeatable option's or argument's (``<list[str]>``, where each
    value is one ``<str>``) and a bounded number's as ``<int range>`` (its bounds follow in brackets)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for command in (self, *self.commands.values()):
            for param in command.params:
                written_as_the_command_line_reads(param)
            command.get_help_option = help_option_of(command.get_help_option)


def help_option_of(made: Callable) -> Callable:
    """A command's ``get_help_option`` whose ``--help`` (made when help is asked) is a flag in help too."""

    def get_help_option(ctx: Any) -> Any:
        option = made(ctx)
        return option if option is None else written_as_the_command_line_reads(option)

    return get_help_option


def written_as_the_command_line_reads(param: Any) -> Any:
    """``param`` with its value named as the command line takes it (typer before 0.29 names it so itself)."""
    if param.metavar is not None or not hasattr(param, "display_type"):
        return param
    shown = command_line_type(param)
    if isinstance(param, typer.core.TyperArgument):  # typer shows an argument's type apart from its metavar (its name)
        if shown is not None:
            param.display_type_rich = lambda ctx: shown
    else:
        param.metavar = shown
    return param


def command_line_type(param: Any) -> str | None:
    """What a value of ``param`` is called in help: nothing for a flag, one element's type where it takes several
    values, a bounded number's type (``<int>``: the bounds are shown beside it); None where typer's name stands."""
    if getattr(param, "is_flag", False):
        return ""
    shown = param.display_type(None)
    if getattr(param, "multiple", False) or param.nargs != 1:
        return f"<{shown[len('<list['):-len(']>')].lower()}>" if shown.startswith("<list[") else shown
    if param.type_descriptor.is_ranged:
        return f"<{param.type_descriptor.ranged_type_name}>"
    return None


app = typer.Typer(cls=Commands, add_completion=False, no_args_is_help=True, help="Understand and validate what a model's units encode.")


def _version(asked: bool) -> None:
    """``semlens --version``: the installed package's version, then exit (what a bug report needs first)."""
    if asked:
        from .. import __version__

        console.print(f"semlens {__version__}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Understand and validate what a model's units encode."""


console = Console(emoji=False)  # text is shown as written: ":thumbs_up:" in a query or a path stays text
errors = Console(stderr=True, emoji=False)

AsJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
Trust = Annotated[
    bool,
    typer.Option(
        "--trust",
        help="Follow the specs this Lens records even where they run code or read local files (only for Lenses you trust; "
        "Lenses built on this machine are trusted already).",
    ),
]
ProbeData = Annotated[
    Optional[str],
    typer.Option("--probe-data", help="The probe data the Lens was built from (folder or data spec), instead of its recorded spec."),
]
Foundation = Annotated[
    Optional[str], typer.Option("--foundation", "-f", help="The Lens's foundation model (spec), instead of its recorded spec.")
]
Model = Annotated[Optional[str], typer.Option("--model", "-m", help="The Lens's model (spec), instead of its recorded spec.")]
Space = Annotated[
    Optional[str], typer.Option("--space", help="The embedding space to answer in (see `semlens spaces LENS`; default: the Lens's own).")
]


def parent_made(path: Path | None) -> Path | None:
    """An output file's folder, made when the command starts (``--out`` callback), and said so (a mistyped path
    shows): a missing folder must not fail a long command at its last step."""
    if path is not None and not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        errors.print(f"note: made the folder {printable(str(path.parent))} for {printable(str(path.name))}", markup=False, highlight=False, soft_wrap=True)
    return path


def open_lens(
    path: Path, trust: bool = False, data: str | None = None, foundation: str | None = None, model: str | None = None, space: str | None = None
):
    """``Lens.open`` with what the user named on the command line, seen in embedding space ``space``."""
    from ..lens.lens import Lens

    return Lens.open(path, trust=trust, data=data, foundation=foundation, model=model).in_space(space)


def user_data(text: str):
    """The images a user names on the command line: a folder (``./images``), or a data spec (``folder:``, ``py:``, ...)."""
    from ..data import load_data

    return load_data(text)


def printable(text: str) -> str:
    """``text`` with control and format characters written as escapes: a Lens's strings (specs, unit names,
    labels) reach the terminal, and an escape sequence in one must not clear the screen or fake a line."""
    return "".join(
        char if char in "\n\t" or unicodedata.category(char) not in ("Cc", "Cf") else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


def friendly(command: Callable) -> Callable:
    """Print a SemlensError as one clear line (exit code 2) instead of a traceback."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except SemlensError as error:
            errors.print(f"[bold red]error:[/] {escape(printable(error.on_the_command_line()))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            errors.print("interrupted; what was finished is kept: a build (run, embed, merge) run again resumes where it stopped", highlight=False)
            raise typer.Exit(130) from None
        except RuntimeError as error:  # torch's words for a loader worker the system killed (out of memory, most often)
            if "DataLoader worker (pid" not in str(error):  # not "Caught ... in DataLoader worker process N": a bug's own error
                raise
            errors.print(
                f"[bold red]error:[/] a data-loader worker stopped ({escape(printable(str(error)))}); what was finished is kept: "
                "run the same command again to resume, with fewer --workers or a smaller --batch-size if memory ran short",
                highlight=False, soft_wrap=True,
            )  # fmt: skip
            raise typer.Exit(2) from None

    return wrapper


def table(title: str | None, columns: tuple[str, ...], rows: list[tuple], optional: tuple[str, ...] = ()) -> Table:
    """A rich table; numbers are right-aligned; cell text is shown as written (no markup). Where the terminal is too
    narrow for every column's longest word (a number folded over lines reads as two), the ``optional`` columns are left
    out in their order until the rest fit, and the caption names them."""
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) and bool(rows) for i in range(len(columns))]
    cells = [[printable(str(value)) for value in row] for row in rows]
    texts = [[column, *(row[i] for row in cells)] for i, column in enumerate(columns)]
    words = [longest_word(column) for column in texts]
    kept = list(range(len(columns)))
    for name in optional:
        if sum(words[i] for i in kept) <= console.width - 3 * len(kept) - 1:
            break
        kept.remove(columns.index(name))
    left_out = [column for i, column in enumerate(columns) if i not in kept]
    caption = f"left out at this width: {', '.join(left_out)} (a wider terminal or --json shows them)" if left_out else None
    result = Table(title=None if title is None else escape(printable(title)), caption=caption and escape(caption))
    widths = column_widths([texts[i] for i in kept], console.width - 3 * len(kept) - 1)
    for i, width in zip(kept, widths):  # a narrow terminal wraps names, never cuts them
        result.add_column(escape(columns[i]), justify="right" if numeric[i] else "left", overflow="fold", width=width)
    for row in cells:
        result.add_row(*(escape(row[i]) for i in kept))
    return result


def column_widths(columns: list[list[str]], room: int) -> list[int | None]:
    """Each column's width where the table is wider than the terminal's ``room`` (None: it fits as it is): the
    widest columns give way first, down to their longest word, so that headers and cells wrap between words
    ("inactive", not "inactiv|e"); where even the words do not fit, the cells' longest words are folded first,
    then the headers'."""
    natural = [max((len(text) for text in texts), default=1) for texts in columns]
    if sum(natural) <= room:
        return [None] * len(columns)
    longest = [longest_word(texts[:1]) for texts in columns]
    heads = [min(width, fitted_cap(longest, room)) for width in longest]
    words = [longest_word(texts) for texts in columns]
    least = [max(head, min(width, fitted_cap(words, room, heads))) for width, head in zip(words, heads)]
    cap = fitted_cap(natural, room, least)
    return [max(low, min(width, cap)) for width, low in zip(natural, least)]


def longest_word(texts: list[str]) -> int:
    """The length of the longest word in ``texts`` (1 where there is none): the narrowest a column can wrap to."""
    return max((len(word) for text in texts for word in text.split()), default=1)


def fitted_cap(widths: list[int], room: int, least: list[int] | None = None) -> int:
    """The largest cap on ``widths`` (each kept at least its ``least``) whose total fits ``room``; 1 where none does."""
    least = least or [1] * len(widths)
    cap = max(widths, default=1)
    while cap > 1 and sum(max(low, min(width, cap)) for width, low in zip(widths, least)) > room:
        cap -= 1
    return cap


def say(text: str) -> None:
    """Print a line whose values may hold brackets (paths, labels): no markup, no control characters."""
    console.print(printable(text), markup=False, highlight=False)


def labelled_to_show(opened: Any) -> Any:
    """The Lens labelled with the default vocabulary where it has no labels yet (as the explorer, the report and
    graphs label it), so that units show their concepts, not "no concept"; where it cannot be, a note says why."""
    try:
        if not opened.labels.ensure():
            errors.print("note: no labels: this Lens's foundation model embeds images only", markup=False)
    except SemlensError as error:  # on stderr: a --json answer stays JSON
        errors.print(f"note: no labels shown: {printable(error.on_the_command_line())}", markup=False)
    return opened


def rounded(value: float | None) -> float | str:
    """A measure as a table shows it: three decimals, "-" where there is none."""
    return "-" if value is None else round(value, 3)


def say_if_left_out(opened: Any, unit: str) -> None:
    """A note where ``unit`` is inactive or tied: its examples say nothing of its own (and the analyses leave it out)."""
    layer, row = opened.units.index(unit)
    if opened.arrays.inactive(layer)[row]:
        say(f"note: {unit} never fired or was constant on the probe data: its examples are arbitrary (left out of search, labels and audits)")
    elif opened.arrays.tied(layer)[row]:
        say(f"note: {unit} has the same concept examples as an earlier unit of {layer} (tied: left out of labels and search by alignment; an audit judges it by them)")


def emit_json(value: Any) -> None:
    """Standard JSON: a NaN (a measure a unit has none of) is written as null, which every parser reads."""
    sys.stdout.write(json.dumps(finite(value), indent=1, default=str, allow_nan=False) + "\n")


def finite(value: Any) -> Any:
    """``value`` with every non-finite float inside it replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value
