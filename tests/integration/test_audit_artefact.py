"""Acceptance: a model trained where the "red" class always carries a watermark relies on it; the audit
marks the watermark units spurious against their layer's null, with a large share of relevance, and its
concept test confirms them (the watermark raises them, zeroing them takes reliance away); inserting the
watermark raises the class probability; pruning those units lowers the effect. Numbers are printed into
the test output."""

from __future__ import annotations

import json

import artefact_world as world
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from semlens import BuildConfig, Lens, build_lens
from semlens.cli import app
from semlens.interventions.effects import CONFIRM_AUC, CONFIRM_SHARE, LOCATE_IOU
from semlens.lens.concepts import recall

runner = CliRunner()


def ask(*args):
    result = runner.invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("artefact")
    model = world.train(world.dataset(240, seed=1))
    save_file(model.state_dict(), str(root / "weights.safetensors"))
    world.write_folder(root / "probe", world.dataset(120, seed=4))
    # clean test images of the other classes, true colours, no watermark: where the artefact could fool the model
    others = [item for item in world.dataset(90, seed=5, watermark_class=None, colour_reliability=1.0) if item[1] != 0]
    world.write_folder(root / "others", others)
    Image.fromarray(np.full((6, 6, 4), 255, dtype=np.uint8)).save(root / "watermark.png")
    rng = np.random.default_rng(6)
    real_red = [item for item in world.dataset(60, seed=7, watermark_class=None, colour_reliability=1.0) if item[1] == 0]
    world.write_folder(root / "real", real_red)
    for index in range(20):  # only the spurious feature: noise and the watermark, no blob
        pixels = rng.integers(40, 110, (32, 32, 3)).astype(np.uint8)
        pixels[1:7, 1:7] = 255
        (root / "watermark-only").mkdir(exist_ok=True)
        Image.fromarray(pixels).save(root / "watermark-only" / f"{index:03d}.png")
    return root


def test_audit_flags_the_watermark_unit_and_pruning_lowers_its_effect(setting, monkeypatch, capsys):
    monkeypatch.setenv("SEMLENS_TEST_WEIGHTS", str(setting / "weights.safetensors"))
    config = BuildConfig(
        model="py:artefact_world:trained_model", layers=["features.3", "head"], data=f"folder:{setting / 'probe'}",
        foundation="py:artefact_world:oracle", k=8, workers=0,
    )  # fmt: skip
    lens = build_lens(config, setting / "world.lens", progress=False)
    assert lens.manifest["layers"]["features.3"]["crop"]["mode"] == "relevance"

    audit = ask("audit", lens.path, "--class", "red", "--valid", "red", "--spurious", "watermark", "--layer", "features.3",
                "--cut", "0.05", "--out", setting / "audit.html", "--test-data", f"folder:{setting / 'others'}",
                "--artifact", setting / "watermark.png", "--at", "1,1", "--json")  # fmt: skip
    spurious = [unit for unit in audit["units"] if unit["verdict"] == "spurious"]
    assert spurious, audit
    assert audit["shares"]["spurious"] > 0.3 and audit["rule"]["by_label"]
    # the alignment rule flags the units whose examples stand out with the watermark in their layer; the crop
    # responses name these and others the watermark, and every unit named so is flagged (and confirmed below)
    aligned = [unit for unit in spurious if unit["z_spur"] > 3 and unit["z_spur"] - unit["z_valid"] > 1]
    top = spurious[0]
    assert aligned
    alone = ask("audit", lens.path, "--class", "red", "--valid", "red", "--spurious", "watermark", "--layer", "features.3",
                "--cut", "0.05", "--alignment-only", "--json")  # fmt: skip
    assert not alone["rule"]["by_label"] and [u["unit"] for u in alone["units"] if u["verdict"] == "spurious"] == [u["unit"] for u in aligned]
    (setting / "audit.toml").write_text('class = "red"\nvalid = ["red"]\nspurious = ["watermark"]\ncut = 0.05\nby_label = false\nby_location = false\nby_rise = false\n')
    from_config = ask("audit", lens.path, "--config", setting / "audit.toml", "--layer", "features.3", "--json")
    assert from_config["rule"] == alone["rule"] and [u["verdict"] for u in from_config["units"]] == [u["verdict"] for u in alone["units"]]
    (setting / "share.toml").write_text('class = "red"\nvalid = ["red"]\nspurious = ["watermark"]\nlocate_share = 2\n')
    refused = runner.invoke(app, ["audit", str(lens.path), "--config", str(setting / "share.toml")])
    assert refused.exit_code != 0 and "locate_share is a share of the layer's best located IoU, from 0 to 1 (got 2)" in " ".join(refused.output.split())
    named, tied = [unit for unit in audit["units"] if unit["responses_label"] == "watermark"], lens.arrays.tied("features.3")
    assert named and all(unit in spurious for unit in named)  # a tied unit (its twin's crops) is judged by their alignment alone
    assert all(unit in named or tied[int(unit["unit"].split("/")[1])] for unit in spurious)
    # search and audit agree: searching the artefact's name ranks the units the audit flags first (with one more
    # unit the crop responses name the watermark, features.3/2, which the class "red" does not rely on)
    flagged = {unit["unit"] for unit in spurious}
    found = {hit["unit"] for hit in ask("search", lens.path, "watermark", "--layer", "features.3", "--top", len(flagged) + 1, "--json")}
    assert flagged <= found
    # the audit kept the watermark it pasted: the search for "watermark" ranks by it in the model, as the test did
    shown = Lens.open(lens.path).search("watermark", layers=["features.3"], top=len(flagged) + 1)
    assert shown.rank == "model" and shown.concept == "watermark" and {hit.unit for hit in shown} == found
    first = Lens.open(lens.path).search("watermark", layers=["features.3"], top=len(audit["detectors"]))
    assert audit["detectors"] and {hit.unit for hit in first} == set(audit["detectors"])  # the units it found detect it first
    # every examined unit is measured, the unflagged ones without being switched off: detectors among them too
    assert set(audit["detectors"]) > flagged and all(unit["test"] is not None for unit in audit["units"])
    assert all(unit["test"]["zeroed"] == (unit["verdict"] in ("spurious", "both") or unit["contested"]) for unit in audit["units"])
    assert all(unit["tight_shift"] >= -1 for unit in spurious)  # the default Lens's share boxes hold the watermark too
    # the concept test: the class relies on the watermark, and every spurious unit carries part of it
    assert audit["reliance"]["relies"] and audit["reliance"]["effect"] > 0.5
    assert audit["confirmed"] == [unit["unit"] for unit in spurious] and not audit["unconfirmed"]
    # every flagged unit confirmed: the confirmed share is the spurious share (both over the audited units)
    assert audit["confirmed_share"] == pytest.approx(audit["shares"]["spurious"] + audit["shares"]["both"])
    assert audit["spurious_share"] == audit["confirmed_share"]  # the share as tested
    assert all(unit["test"]["activation_auc"] > 0.9 for unit in spurious)
    # each fires where the watermark is pasted (NetDissect's IoU with it, at (1, 1)): no flag is taken back
    assert all(unit["test"]["located"] and unit["test"]["located_iou"] >= unit["test"]["located_bar"] >= LOCATE_IOU for unit in spurious)
    assert audit["rule"]["by_location"] and audit["unlocated"] == [] and audit["both_by_location"] == []
    half = runner.invoke(app, ["audit", str(lens.path), "--class", "red", "--valid", "red", "--spurious", "watermark",
                               "--test-data", f"folder:{setting / 'others'}"])  # fmt: skip
    assert half.exit_code != 0 and "exactly one of --artifact/--tint" in half.output
    asked = ["audit", str(lens.path), "--class", "red", "--valid", "red", "--spurious", "watermark", "--layer", "features.3", "--cut", "0.05"]
    printed = runner.invoke(app, [*asked, "--test-data", str(setting / "others"), "--artifact", str(setting / "watermark.png"), "--at", "1,1"])  # a folder as typed
    assert printed.exit_code == 0 and f"spurious share, as tested: {audit['spurious_share']:.1%}" in " ".join(printed.output.split())
    assert "class rise not measured" in " ".join(printed.output.split())  # the test images are green and blue only
    assert "spurious share, untested:" in " ".join(runner.invoke(app, [*asked, "--no-draw"]).output.split())
    drawn_output = " ".join(runner.invoke(app, asked).output.split())  # without images: semlens's drawings of a watermark
    assert "concept test: watermarks semlens drew (" in drawn_output and "probe images of other classes" in drawn_output
    assert "class rise not measured" not in drawn_output  # the class's own probe images measure it
    with monkeypatch.context() as patched:  # as where the probe data holds 3 images of the class
        patched.setattr("semlens.lens.audits.DRAWN_CLASS_IMAGES", 3)
        few = " ".join(runner.invoke(app, asked).output.split())
    assert "class rise not measured (the probe data holds fewer than 5 images of the class)" in few and "--test-data holds" not in few
    own = runner.invoke(app, [*asked, "--test-data", str(setting / "others"), "--spurious-data", str(setting / "real")])  # the class's own images
    assert own.exit_code == 0 and "--spurious-data images are labelled red: the class's own content" in " ".join(own.output.split())
    # two placements, the test images getting them in turn: the watermark units fire wherever it is pasted
    placed = ask(*asked, "--test-data", f"folder:{setting / 'others'}", "--artifact", setting / "watermark.png", "--at", "1,1;20,18", "--json")
    assert [u["unit"] for u in placed["units"] if u["verdict"] == "spurious"] == [u["unit"] for u in spurious]
    assert all(unit["test"]["located"] for unit in placed["units"] if unit["verdict"] == "spurious") and placed["reliance"]["relies"]
    refused = runner.invoke(app, ["test-artifact", str(lens.path), "--class", "red", "--data", f"folder:{setting / 'others'}",
                                  "--artifact", str(setting / "watermark.png"), "--at", "1,1;20,18"])  # fmt: skip
    assert refused.exit_code == 2 and "several placements" in refused.output
    # asked about the wrong concept ("green"), the audit flags no watermark unit; testing every relevant unit
    # finds the reliance running through the units the right audit confirmed (and others it did not flag)
    wrong = ("audit", lens.path, "--class", "red", "--valid", "red", "--spurious", "green", "--layer", "features.3", "--cut", "0.05")
    carried = ask(*wrong, "--test-data", f"folder:{setting / 'others'}", "--artifact", setting / "watermark.png", "--at", "1,1", "--test-all", "--json")
    assert not carried["confirmed"] and set(audit["confirmed"]) <= set(carried["carriers"])
    # the share as tested counts them: the class's relevance the reliance on the pasted concept runs through
    relevance = {u["unit"]: max(u["mean_relevance"], 0.0) for u in carried["units"]}
    assert carried["spurious_share"] == pytest.approx(sum(relevance[u] for u in carried["carriers"]) / sum(relevance.values()), abs=1e-4)
    assert carried["spurious_share"] >= audit["spurious_share"] > 0
    for unit in carried["units"]:
        test = unit["test"]
        passes = test["activation_auc"] >= CONFIRM_AUC and test["reliance_removed"] >= CONFIRM_SHARE * carried["reliance"]["log_odds"] and test["located"]
        assert (unit["unit"] in carried["carriers"]) == (passes and unit["verdict"] not in ("spurious", "both"))
    assert all(unit["test"] is not None for unit in carried["units"]) and carried["reliance"] == audit["reliance"]
    # the detectors: every tested unit the watermark raises where it is, whether or not zeroing it removes reliance
    detecting = [u["unit"] for u in carried["units"] if u["test"]["activation_auc"] >= CONFIRM_AUC and u["test"]["located"]]
    assert carried["detectors"] == detecting and set(carried["carriers"]) <= set(detecting)
    shown = runner.invoke(app, [str(arg) for arg in wrong] + ["--test-data", f"folder:{setting / 'others'}", "--artifact", str(setting / "watermark.png"), "--at", "1,1", "--test-all"])
    assert f"detect the concept (raised by it more than by the class, where it is; flagged or not): {', '.join(detecting)}" in " ".join(shown.output.split())
    hinted = runner.invoke(app, [str(arg) for arg in wrong] + ["--test-data", f"folder:{setting / 'others'}", "--artifact", str(setting / "watermark.png"), "--at", "1,1"])
    assert "no flagged unit is confirmed: test every relevant unit (--test-all)" in " ".join(hinted.output.split())  # without --test-all, the hint
    # the location bar is set by every examined unit, tested or not: testing the flagged ones only gives them the same bar
    bars = {unit["unit"]: unit["test"]["located_bar"] for unit in carried["units"]}
    assert all(unit["test"]["located_bar"] == bars[unit["unit"]] for unit in spurious)
    # the test images hold no red one: the class's own rise is not measured, so it takes no part in the rule
    assert all(unit["test"]["class_rise"] is None for unit in carried["units"])
    untested = runner.invoke(app, [str(arg) for arg in (*wrong, "--test-all")])
    assert untested.exit_code != 0 and "--test-all runs the concept test" in untested.output
    # without images of the concept, one semlens draws is tested on its drawings pasted into probe images of other
    # classes (none of the class's own: they show the watermark already); no verdict falls by a drawing
    opened = Lens.open(lens.path)
    drawn = opened.audit("red", ["red"], ["watermark"], layers=["features.3"], cut=0.05, test_all=True)
    by_alignment = opened.audit("red", ["red"], ["watermark"], layers=["features.3"], cut=0.05, draw=False)
    assert by_alignment.reliance is None and drawn.reliance["drawn"].startswith("watermarks semlens drew (")
    assert 0 < drawn.reliance["samples"][0] <= 48 and drawn.reliance["classes_from"] == "labels"
    # its control: the same views with the watermark's colour blurred where it is (no letters), said with the drawing
    blurred = drawn.reliance["log_odds_control"]
    assert drawn.reliance["log_odds"] == pytest.approx(blurred + drawn.reliance["log_odds_over_control"])
    assert "its control (its colour blurred where it is, without its letters)" in drawn.reliance["drawn"] and f"{blurred:+.2f}" in drawn.reliance["drawn"]
    # no red image among them: the class's own images (its top samples by relevance) measure its rise of each unit alone
    assert all(unit.test["class_rise"] is not None for unit in drawn.units)
    assert [unit.verdict for unit in drawn.units] == [unit.verdict for unit in by_alignment.units] and not drawn.rule.by_rise
    assert drawn.spurious_share == (drawn.confirmed_share if drawn.confirmed or drawn.carriers else by_alignment.spurious_share)
    assert recall(opened, ["watermark"]).drawn is None  # the watermark the user's audit pasted stays what a search pastes
    # an image probe of the watermark ranks the units the text's alignment flags first (with the oracle's four dimensions and 8 units
    # in the null it stays under z 3); a generic image (noise, no watermark) flags none
    plain = setting / "plain.png"
    Image.fromarray(np.random.default_rng(8).integers(40, 110, (32, 32, 3)).astype(np.uint8)).save(plain)
    by_image = ask("audit", lens.path, "--class", "red", "--valid", "red", "--spurious-image", setting / "watermark.png",
                   "--layer", "features.3", "--cut", "0.05", "--json")  # fmt: skip
    ranked = sorted(by_image["units"], key=lambda unit: -unit["z_spur"])
    assert {unit["unit"] for unit in ranked[: len(aligned)]} == {unit["unit"] for unit in aligned}
    generic = ask("audit", lens.path, "--class", "red", "--valid", "red", "--spurious-image", plain,
                  "--layer", "features.3", "--cut", "0.05", "--json")  # fmt: skip
    assert not [u for u in generic["units"] if u["verdict"] in ("spurious", "both")], generic
    # it really is the watermark unit: it fires far more on the watermark alone than on a plain image
    layer, channel = top["unit"].split("/")
    model = Lens.open(lens.path).sources.model()
    plain = Image.fromarray(np.full((32, 32, 3), 75, dtype=np.uint8))
    marked = world.render(1, True, np.random.default_rng(0))
    activations = {}
    handle = model.module.features[3].register_forward_hook(lambda m, i, o: activations.setdefault("x", o))
    with torch.no_grad():
        model.module(torch.stack([model.preprocessing(plain), model.preprocessing(marked)]))
    handle.remove()
    responses = activations["x"][:, int(channel)].mean(dim=(1, 2))
    assert responses[1] > 2 * responses[0] + 1e-3

    inserted = ask("test-artifact", lens.path, "--class", "red", "--data", f"folder:{setting / 'others'}",
                   "--artifact", setting / "watermark.png", "--at", "1,1", "--json")["insertion"]  # fmt: skip
    assert inserted["change"]["class_probability"] > 0.1
    auc = ask("test-artifact", lens.path, "--class", "red", "--data", f"folder:{setting / 'real'}",
              "--spurious-only", f"folder:{setting / 'watermark-only'}", "--json")["separation_auc"]  # fmt: skip
    assert auc < 0.5  # the watermark alone scores higher than real red images without it: strong reliance

    pruned = ask("prune", lens.path, *(arg for unit in spurious for arg in ("--unit", unit["unit"])), "--data",
                 f"folder:{setting / 'others'}", "--class", "red", "--artifact", setting / "watermark.png", "--at", "1,1",
                 "--json")  # fmt: skip
    before, after = pruned["artifact"]["before"], pruned["artifact"]["after"]
    assert after["predicted_as_class"] < before["predicted_as_class"]
    assert after["class_probability"] < before["class_probability"]

    graph = ask("graph", lens.path, "--class", "red", "--layer", "features.3", "--layer", "head", "--cut", "0.05",
                "--out", setting / "graph.html", "--json")  # fmt: skip
    assert any(node["layer"] == "features.3" for node in graph["nodes"]) and graph["edges"]
    with capsys.disabled():
        print(
            f"\n[artefact audit] spurious units {[unit['unit'] for unit in spurious]}; top {top['unit']}: relevance share "
            f"{top['relevance']:.3f}, z_spur {top['z_spur']:.2f}, z_valid {top['z_valid']:.2f}; class relevance by verdict "
            f"{audit['shares']}; reliance {audit['reliance']}; confirmed {audit['confirmed']}\n"
            f"[artefact insertion] red probability on green/blue images {inserted['clean']['class_probability']:.3f} -> "
            f"{inserted['artifact']['class_probability']:.3f}; separation AUC real red vs watermark-only {auc:.3f}\n"
            f"[pruning the spurious units] with watermark: predicted red {before['predicted_as_class']:.3f} -> "
            f"{after['predicted_as_class']:.3f}, red probability {before['class_probability']:.3f} -> "
            f"{after['class_probability']:.3f}; clean accuracy {pruned['clean']['before']['accuracy']:.3f} -> "
            f"{pruned['clean']['after']['accuracy']:.3f}"
        )
