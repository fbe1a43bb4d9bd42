"""Progress bars for the long stages (rich), silenced for library use and tests."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True, completed: int = 0) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; draws a bar on stderr when ``enabled``."""
    if not enabled:
        yield lambda _steps: None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True, emoji=False)) as progress:
        task = progress.add_task(description, total=total, completed=completed)
        yield lambda steps: progress.advance(task, steps)


@contextmanager
def step_bar(steps: list[str], enabled: bool = True) -> Iterator[Callable[[], None]]:
    """A bar over the named steps of one command (a map, a report), showing the step under way and the time
    spent; yield ``done()``, called as each step ends. For work made of a few long steps of unknown length."""
    if not enabled or not steps:
        yield lambda: None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True, emoji=False)) as progress:
        task = progress.add_task(steps[0], total=len(steps))
        finished = 0

        def done() -> None:
            nonlocal finished
            finished += 1
            progress.update(task, advance=1, description=steps[min(finished, len(steps) - 1)])

        yield done
