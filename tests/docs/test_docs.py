"""The documentation: it builds with ``mkdocs build --strict`` (the API reference from the docstrings, the CLI
reference from the typer app), every Python example in it runs (conventions: ``doc_examples``), and every
``semlens`` command its shell examples name exists."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from doc_examples import python_examples, run_examples

from semlens.cli import app

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
TUTORIAL = DOCS / "tutorial.md"
PAGES = sorted(DOCS.rglob("*.md"), key=lambda page: (page != TUTORIAL, page))  # the tutorial first, as a reader goes
MOST_NOT_RUN = 6  # examples shown but not run (a GPU, a download): keep them few


def commands() -> set[str]:
    return set(typer.main.get_command(app).commands)


def test_docs_build_strictly(tmp_path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    cli = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    missing = [name for name in commands() if f"semlens {name}</code>" not in cli]
    assert not missing, f"the CLI reference lacks {missing}"
    api = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    assert "build_lens" in api and "concept_examples" in api


@pytest.mark.slow
@pytest.mark.parametrize("page", [page for page in PAGES if python_examples(page)], ids=lambda page: str(page.relative_to(DOCS)))
def test_docs_python_examples_run(page: Path, example_workdir: Path, monkeypatch) -> None:
    monkeypatch.chdir(example_workdir)
    monkeypatch.syspath_prepend(str(example_workdir))
    run_examples(python_examples(page), example_workdir)


def test_examples_not_run_are_few_and_say_why() -> None:
    not_run = [example for page in [README, *PAGES] for example in python_examples(page) if example.not_run]
    assert len(not_run) <= MOST_NOT_RUN, [f"{example.page.name}:{example.line}" for example in not_run]
    assert all(example.not_run.strip() for example in not_run)


def test_the_tutorial_builds_the_readme_tour_lens() -> None:
    """The pages reuse ``tour.lens``, built once from the README's first example: the tutorial builds the same."""
    assert python_examples(README)[0].code in TUTORIAL.read_text(encoding="utf-8")


def test_shell_examples_name_real_commands() -> None:
    blocks = [block for page in [README, *PAGES] for block in re.findall(r"```(?:bash|console)\n(.*?)```", page.read_text(encoding="utf-8"), re.DOTALL)]
    named = {name for block in blocks for name in re.findall(r"(?:^|[\s/])semlens ([a-z][a-z-]*)", block)}
    unknown = sorted(named - commands())
    assert not unknown, f"the docs name commands that do not exist: {unknown}"
