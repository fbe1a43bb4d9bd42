"""The README's tour runs as written (in the working directory the docs' examples share: see doc_examples)."""

from __future__ import annotations

from pathlib import Path

import pytest
from doc_examples import python_examples, run_examples

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.slow
def test_readme_python_examples_run(example_workdir, monkeypatch, capsys) -> None:
    examples = python_examples(README)
    assert examples, "the README has no Python example"
    assert not any(example.not_run for example in examples), "the README's tour must run as written"
    monkeypatch.chdir(example_workdir)
    monkeypatch.syspath_prepend(str(example_workdir))
    run_examples(examples, example_workdir)
    printed = capsys.readouterr().out
    assert "torch.Size([64, 384])" in printed
    assert "features.14/" in printed  # search hits and flagged units
    assert "ring [" in printed  # probe sample 5 is a ring, and the model says so
