"""The Python examples of the README and the docs pages, as the tests run them.

Conventions (docs/development.md, "Examples in the docs"):
- every ```` ```python ```` block runs, in page order, in one namespace per page, in a working directory shared by
  all pages, where the tour's Lens ``tour.lens`` has been built;
- a block whose fence has ``title="NAME.py"`` is the file NAME.py: it is written there (importable) instead of run;
- a block right after a line ``<!-- not run: REASON -->`` is shown but not run (it needs a GPU, a download,
  or minutes of CPU).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^(\s*)```python(.*)$")
NOT_RUN = re.compile(r"^<!-- not run: (.+?) -->$")
TITLE = re.compile(r'title="([^"]+)"')


@dataclass(frozen=True)
class Example:
    page: Path
    line: int
    code: str
    file: str | None = None  # the file it is written to (a ``title="NAME.py"`` block), instead of run
    not_run: str | None = None  # why it is shown but not run


def python_examples(page: Path) -> list[Example]:
    """The page's ```` ```python ```` blocks, dedented, with their titles and not-run reasons."""
    lines = page.read_text(encoding="utf-8").split("\n")
    examples, index = [], 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if not fence:
            index += 1
            continue
        indent, attributes = fence.group(1), fence.group(2)
        end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == "```")
        code = "\n".join(line[len(indent) :] for line in lines[index + 1 : end]) + "\n"
        previous = next((lines[i].strip() for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        reason = NOT_RUN.match(previous)
        title = TITLE.search(attributes)
        examples.append(Example(page, index + 2, code, title.group(1) if title else None, reason.group(1) if reason else None))
        index = end + 1
    return examples


def run_examples(examples: list[Example], workdir: Path) -> None:
    """Run the examples in one namespace, in ``workdir`` (the caller makes it the working directory and puts it
    on ``sys.path``): titled blocks become files there, not-run blocks are left out."""
    namespace = {"__name__": "__docs_example__"}
    for example in examples:
        if example.not_run:
            continue
        if example.file:
            (workdir / example.file).write_text(example.code, encoding="utf-8")
            continue
        # compiled with blank lines in front, so a traceback names the page's own line
        exec(compile("\n" * (example.line - 1) + example.code, str(example.page), "exec"), namespace)
