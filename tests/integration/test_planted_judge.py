"""``benchmarks/planted_judge.py``: the judge on natural photos with a planted artefact, in a tiny configuration
(3 classes of 48 px photos, the narrow ResNet trained for 2 epochs, a tiny random CLIP): the data, the training,
the Lens and every score run, and the records have ``ground_truth.py``'s shape. What the scores are is measured
by the benchmark itself (docs/explanation/planted-judge.md)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def judge(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # the judge adds benchmarks/ for the model spec
    monkeypatch.setenv("SEMLENS_PLANTED_WEIGHTS", "")  # and names each model's weights: both are put back after the test
    import planted_judge

    return planted_judge


def test_a_planted_artefact_changes_only_the_pixels_of_its_region(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from planted_photos import ARTEFACTS, placements

    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    for name in set(ARTEFACTS) - {"colour cast"}:
        for artefact in placements(name, 64, 3, 0):
            changed = np.any(np.asarray(artefact.apply(photo)) != np.asarray(photo), axis=2)
            assert changed.any() and not (changed & ~artefact.region(64, 64).numpy()).any(), name


def test_a_colour_cast_tints_the_whole_image_orange_and_more_at_a_larger_scale(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from planted_photos import placements

    grey = Image.new("RGB", (32, 32), (128, 128, 128))
    for usual, strong in zip(placements("colour cast", 32, 4, 0), placements("colour cast", 32, 4, 0, scale=2.0)):
        assert usual.region(32, 32) is None  # an area concept: nowhere in particular
        shift = np.asarray(usual.apply(grey), dtype=float) - 128
        assert (shift[..., 0] > 0).all() and (shift[..., 2] < 0).all()  # every pixel warmer: more red, less blue
        assert (np.asarray(strong.apply(grey), dtype=float)[..., 0] - 128 > 1.5 * shift[..., 0]).all()


def test_the_judge_scores_a_tiny_configuration_end_to_end(judge, tiny_clip_dir, tmp_path) -> None:
    out = tmp_path / "records.json"
    arguments = [
        "--models", "resnet", "--seeds", "0", "--controls", "--classes", "3", "--per-class", "6", "3", "3",
        "--size", "48", "--k", "2", "--epochs", "1", "1", "--foundation", f"hf:{tiny_clip_dir}", "--out", str(tmp_path / "runs"), "--json", str(out),
    ]  # fmt: skip
    records = judge.main(arguments)
    assert json.loads(out.read_text(encoding="utf-8")) == records
    assert [record["artifact"] for record in records] == ["watermark", "logo", "frame"]
    assert len({record["artifact_class"] for record in records}) == 3  # each artefact on a class of its own
    for record in records:
        for key in ("artefact_unit_names", "audit_precision", "audit_recall", "spurious_share", "search_hits_at5", "search_hits_at5_paraphrase",
                    "search_hits_at5_after_audit", "reliance", "unit_tests", "label_top1", "class_share_max",
                    "drawn_audit_detected_precision", "search_hits_at5_after_drawn_audit"):  # fmt: skip
            assert key in record, key
        assert record["layers"] == ["layer3.1", "layer4.1"] and record["foundation"].startswith("hf:") and not record["control"]
        assert record["search_after_audit_rank"] == "model" and record["class_content"] == record["artifact_class"]  # the audit pasted it
        assert record["drawn_audit_tested"] and record["drawn_audit_drawn"].startswith(f"{record['artifact']}s semlens drew (")  # with no images: its drawings
    assert set(judge.target_checks(records)) == {
        "audit precision", "audit recall", "detectors precision", "detectors recall", "control spurious share", "control spurious share, drawn test",
        "relies by the drawn test, where by the planted artefact", "relies by the drawn test, controls", "search hits", "search hits after the drawn audit",
        "search hits after the audit",
    }  # fmt: skip


def test_twins_give_each_artefacts_class_the_photo_of_a_class_without_one(judge, tmp_path, monkeypatch) -> None:
    import planted_photos

    args = argparse.Namespace(artefacts=["watermark", "logo", "frame"], rate=0.8, other_rate=0.03, control_rate=0.3, scale=1.0, twins=True, per_class=[1, 1, 1], size=32)
    classes = ["astronaut", "brick", "cameraman", "cat", "clock", "coffee"]
    colours = {cls: (40 * index, 0, 0) for index, cls in enumerate(classes)}  # each photo a colour of its own, shown as it is
    monkeypatch.setattr(planted_photos, "source_photos", lambda: {cls: Image.new("RGB", (8, 8), colour) for cls, colour in colours.items()})
    monkeypatch.setattr(planted_photos, "photo_view", lambda photo, size, rng: photo.resize((size, size)))
    planted = judge.plantings(classes, 3, False, args)
    content = judge.twin_content(classes, 3, args)
    assert sorted(content) == sorted(p.cls for p in planted) and len(set(content.values())) == 3
    assert not set(content.values()) & set(content)  # a twin carries no artefact
    root = judge.make_data(tmp_path, classes, 3, planted, args)
    shown = {cls: Image.open(root / "test" / cls / "000.png").getpixel((16, 16)) for cls in classes}  # the test split is clean
    assert shown == {cls: colours[content.get(cls, cls)] for cls in classes}
    assert judge.twin_content(classes, 3, argparse.Namespace(**{**vars(args), "twins": False})) == {}


def test_a_control_shows_each_artefact_at_one_rate_on_every_class_and_audits_the_planted_class(judge) -> None:
    args = argparse.Namespace(artefacts=["watermark", "logo", "frame"], rate=0.8, other_rate=0.03, control_rate=0.3, scale=1.0)
    classes = ["a", "b", "c", "d"]
    planted, control = judge.plantings(classes, 5, False, args), judge.plantings(classes, 5, True, args)
    assert [(p.rate_of("a"), p.rate_of("b"), p.rate_of("c"), p.rate_of("d")) for p in control] == [(0.3,) * 4] * 3
    assert [judge.audited_class(classes, 5, p.artefact, args) for p in control] == [p.cls for p in planted]
    assert sorted(p.rate_of(cls) for p in planted for cls in classes) == [0.03] * 9 + [0.8] * 3


def test_an_artefact_drawn_at_twice_its_size_covers_more_of_the_view_in_the_same_places() -> None:
    import planted_photos

    for name in set(planted_photos.ARTEFACTS) - {"colour cast"}:  # the cast covers the whole view at any strength
        usual, large = planted_photos.placements(name, 96, 4, 0), planted_photos.placements(name, 96, 4, 0, scale=2.0)
        assert all(int(big.region(96, 96).sum()) > 1.5 * int(small.region(96, 96).sum()) for small, big in zip(usual, large)), name
