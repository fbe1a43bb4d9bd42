"""MkDocs hook: the command-line reference is generated from the typer app at build time (typer's own
markdown, as ``typer semlens.cli utils docs`` prints it), so it cannot drift from the commands."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))  # document this checkout's commands

MARKER = "<!-- semlens-cli-reference -->"


def cli_reference() -> str:
    """Every ``semlens`` command's usage, arguments and options as markdown, one section per command."""
    import typer
    from typer.cli import get_docs_for_click

    from semlens.cli import app

    command = typer.main.get_command(app)
    markdown = get_docs_for_click(obj=command, ctx=typer.models.Context(command), name="semlens")
    return markdown.split("\n", 1)[1]  # the page has its own title


def on_page_markdown(markdown: str, page, **_) -> str:
    return markdown.replace(MARKER, cli_reference()) if MARKER in markdown else markdown
