"""The world pipeline end to end on small sizes: a config with another artefact planted on another class
(the patch on "cross") runs through truth, audit, test and pruning without code changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semlens.world import classifier as world_cnn
from semlens.world import demo

WORLD = Path(__file__).resolve().parents[2] / "benchmarks" / "worlds" / "patch-on-cross.toml"


@pytest.mark.slow
def test_demo_on_another_world(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEMLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SEMLENS_WORLD_STEPS", "2")
    monkeypatch.setitem(world_cnn.TRAINING, "images", 300)
    monkeypatch.setitem(world_cnn.TRAINING, "epochs", 1)
    monkeypatch.setattr(demo, "PROBE_IMAGES", 90)
    monkeypatch.setattr(demo, "TEST_IMAGES", 60)
    monkeypatch.setattr(demo, "K", 5)
    monkeypatch.setattr(demo, "CROP", "activation")  # CRP crops are tested on their own; here they would take most of the time
    summary = demo.run_demo(tmp_path / "out", str(WORLD), progress=False)
    assert summary["artifact"] == "patch" and summary["artifact_class"] == "cross"
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["artifact"] == "patch"
    assert summary["labels"]["units_with_true_concept"] > 0
    assert 0 <= summary["labels"]["top1"] <= 1 and summary["labels"]["faithfulness_phi"] == summary["labels"]["faithfulness_phi"]
    assert summary["test"]["insertion"]["samples"] == 60
    assert summary["audit"]["units"] > 0
    assert (tmp_path / "out" / "report.html").is_file() and (tmp_path / "out" / "world.lens" / "manifest.json").is_file()
    assert "reliance on the concept</b>: class probability" in (tmp_path / "out" / "report.html").read_text()  # its audit, tested
    assert "semlens demo: the concept world" in capsys.readouterr().out
