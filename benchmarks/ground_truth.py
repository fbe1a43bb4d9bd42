"""How right are semlens's answers in the concept world? One record per (world, seed), against the truth
from the exact concept masks, over worlds written by hand (``--worlds``) or drawn at random (``--random``).

Per (world, seed) the classifier is trained (cached), its Lens built on the world's probe images with
relevance crops and labelled with the world's vocabulary; then, through the Lens's public API:

- truth per unit: by dissection (IoU of the unit's top-quantile map with a concept's masks, at least
  ``truth.IOU_THRESHOLD`` and at least the best IoU any unit of its layer reaches with that concept by
  chance, with each image's maps paired with the next image's masks; the thresholds are recorded) and
  by response (AUC of its response to a concept's concept images against every other concept's, at
  least ``truth.RESPONSE_AUC``); of the concepts dissection names, a unit's true concept is the one
  whose scenes raise it most, and an artefact only where pasting it into the world's probe images also
  raises the unit (``truth.INSERTION_AUC``, ``demo.true_concepts``): labels, search and audit are scored
  against that truth, search and audit also against dissection alone (``by_dissection_alone``: the
  highest IoU, no insertion test) and against insertion alone (``by_insertion_alone``: every unit that
  pasting the artefact into probe images raises, AUC >= ``truth.INSERTION_AUC``, whatever its IoU; the
  audit's concept test is an insertion test too, on test images, so this truth is near what it measures,
  not an independent check: it shows where the two truths part); where the world's classes are area concepts
  (backgrounds: ``demo.area_concepts``), which dissection cannot name, a unit dissection names nothing for has
  the area concept whose scenes it tells from the other area concepts' scenes (AUC at least ``truth.AREA_AUC``,
  ``truth.area_truth``); ``truth_by`` records which definition named each unit's truth (``dissection``,
  ``area-response``), ``units_with_area_truth`` how many the second named;
- labels: what users see (``label_coverage``: the share of valid units that show a concept; ``top1_shown``: top-1
  of the labels shown, a unit showing no concept counting as a miss) and each unit's best candidate, shown or
  not: top-1 / top-3 against dissection with chance, top-1 against the response truth, phi (over
  labelled units, and over units with a true concept: ``phi_true_units``; on each concept's images in
  scenes of the world, and with ``_alone`` on the concept alone on gray; ``phi_of_truth``: the phi were
  every unit's top-1 its true concept, the most the judge allows), and a
  CoSy-style AUC (a unit's response to its label's concept images against the others', 0.5 = chance);
  top-1 over the units whose two truths agree (``top1_truths_agree``: the true concept is also the one whose
  scenes raise the unit most; ``units_truths_agree`` of them) and, where they part, the labels that follow the
  scenes (``top1_scene_where_truths_part``);
  the share of labels that are distractors (words the world never shows), and top-1 with the world's
  concepts as the only candidates;
- search: true artefact units in the top 5 for the artefact's name and for a paraphrase never used in
  training (``captions.HELD_OUT``), ranked as ``Lens.search`` ranks by default (``named``) and by its other
  rankings (``_both``, ``_alignment``); and for every concept with true units, the true units in its top 5 over
  min(5, their number), for its name and for 4 scenes of the world that show it (``concept_search``: sums over
  the concepts, both rankings, so that runs pool exactly);
- audit of the artefact's class (valid: the class name; spurious: the artefact): units flagged
  spurious, precision and recall against the true artefact units (recall over the true artefact units
  the audit examined, i.e. relevant to the class; also counting the units judged "both", which
  ``Audit.flagged`` holds too: ``audit_precision_with_both``, ``audit_recall_with_both``; and
  ``audit_precision_judged``: precision over the flagged units the truth names any concept for, as
  dissection names none for most units of an early layer, which the precision counts as wrong), the flagged units'
  share of the class's relevance (``flagged_share``); and the audit's concept test (``demo.concept_images``: the world's test
  images without the artefact and the same images with it pasted in, as drawn in 4 images of the world, in
  turn, images no Lens was built on): the
  class's reliance on the artefact (log odds ratio, verdict) and the flagged units it confirms, with
  their precision and recall as above (a flag the test finds not raised by the artefact or firing away from
  where it is pasted is taken back first: ``audit_not_raised``, ``audit_unlocated``; a unit named valid by its crop responses but aligned with the artefact that the
  test finds raised by it where it is pasted is judged "both": ``audit_both_by_location``; ``Audit.revise_by_test``), and the spurious share as tested (``spurious_share``: the confirmed
  findings' share of the class's relevance, ``Audit.spurious_share``); the test runs on every unit the audit examined (``test_all``), so
  the record also scores the units it finds that were not flagged (``audit_carriers``) and flagged or
  not together (``tested_precision``, ``tested_recall``); ``unit_tests`` holds every test, for
  ``confirm_rules.py``;
- reliance, measured: the class probability with each artefact pasted into test images minus without,
  on the class's own images and on the others'; and pruning the flagged units (artefact images
  predicted as the class, clean accuracy, before and after).

A control world (``random_world``) shows its artefact at one rate for every class: the audit should flag
little there and reliance should be near zero. Every run uses one foundation model, the default
world's (``--foundation``), as one domain CLIP serves many data sets; random worlds keep its concepts.
``--model world-resnet`` studies a residual network instead of the world CNN (``classifier.ARCHITECTURES``):
every threshold of semlens and of this benchmark was chosen on the CNN, so its runs show what holds for a model
nobody tuned on.

    python benchmarks/ground_truth.py [--seeds 0 1] [--worlds default benchmarks/worlds/patch-on-cross.toml]
    python benchmarks/ground_truth.py --random 6 --seed 0 [--controls 1] [--seeds 0 1] --json records.json
    python benchmarks/ground_truth.py --crop-rule share --crop-share 0.8 ...   # other crop views, in Lenses of their own
    python benchmarks/ground_truth.py --views peak share quantile masked --worlds default --seeds 0 --json views.json
    python benchmarks/ground_truth.py --model world-resnet --random 12 --seed 0 --seeds 0   # another architecture

``--label-methods`` labels each Lens by every method given (``semlens.analysis.labelling_methods.METHODS``,
and ``clip-dissect-examples``: clip-dissect with its prior from the units' own example sets instead of
random sets of probe images) and scores each against the same truth: one
entry per method in each record's ``label_methods`` and a table of each method's mean and worst.

    python benchmarks/ground_truth.py --label-methods alignment clip-dissect contrastive --random 8 --seed 0 --seeds 0

``--views`` compares crop views on the same worlds and seeds: one Lens per view (``RULE``, ``masked`` or
``RULE+masked``), all sharing the first view's CRP heatmaps (``heatmaps_from``) and the truth; one
record per (world, seed, view) and a table of each view's means.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from importlib import resources
from pathlib import Path
from statistics import mean
from typing import Any

from label_methods import EXAMPLE_PRIOR, method_scores, print_methods
from PIL import Image
from rich.console import Console
from rich.table import Table

from semlens._util.errors import SemlensError
from semlens._util.tomlfiles import parse_toml
from semlens.analysis.vocabulary import Vocabulary
from semlens.interventions.drawn import named_concept
from semlens.lens.concepts import forget
from semlens.lens.lens import Lens
from semlens.lens.search import RANKINGS
from semlens.pipeline.crops import CROP_VIEWS, DEFAULT_CROP_RULE, RULE_SETTINGS
from semlens.store.slots import CROP_RULES
from semlens.world.captions import HELD_OUT
from semlens.world.demo import (
    PROBE_IMAGES,
    TEST_IMAGES,
    area_concepts,
    build_world_lens,
    concept_images,
    ground_truth_labels,
    identity,
    iou_thresholds,
    memo,
    spatial_layers,
    test_finding,
    true_concepts,
    unit_truths,
)
from semlens.world.random_world import planted_artifact, random_worlds
from semlens.world.render import WorldConfig, artifact_overlay, concept_scene
from semlens.world.specs import WORLD_MODELS
from semlens.world.truth import INSERTION_AUC, artifact_reliance
from semlens.world.vocabulary import world_vocabulary

#: per column of the summary rows: +1 higher is better, -1 lower is better; control worlds flip the audit
#: and reliance columns (there the artefact tells nothing about the class)
BETTER = {
    "top1_shown": 1, "label_coverage": 1, "top1": 1, "top3": 1, "top1_world_concepts": 1, "distractor_label_share": -1, "top1_response": 1, "phi": 1, "phi_true_units": 1, "phi_true_units_alone": 1, "phi_of_truth": 1, "phi_of_truth_alone": 1, "cosy_auc": 1, "search_hits_at5": 1, "search_hits_at5_paraphrase": 1,
    "audit_precision": 1, "audit_recall": 1, "spurious_share": 1, "flagged_share": 1, "reliance": 1, "units_with_truth": 1,
    "audit_confirmed": 1, "confirmed_precision": 1, "confirmed_recall": 1, "audit_log_odds": 1, "tested_precision": 1, "tested_recall": 1,
    "detected_precision": 1, "detected_recall": 1,
}  # fmt: skip
CONTROL_LOWER = ("spurious_share", "flagged_share", "reliance", "audit_flagged", "audit_confirmed", "audit_log_odds", "tested_found")


def seeded_world(text: str, seed: int, path: Path) -> str:
    """Write a world config's TOML with ``seed = SEED`` to ``path`` (the demo and the zoo read files); a folder
    left by an earlier run of another world under this name (an edited file) is cleared first: its Lens and
    truth are of that world."""
    body = re.sub(r"(?m)^seed\s*=.*$\n?", "", text)
    seeded = f"seed = {seed}\n{body}"
    if path.is_file() and path.read_text(encoding="utf-8") != seeded:
        shutil.rmtree(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(seeded, encoding="utf-8")
    return str(path)


def world_texts(worlds: list[str]) -> list[tuple[str, str]]:
    """(name, TOML text) of each world given by file (or ``default``), every one checked before any is run (a bad
    file stops the benchmark at once, naming the file and what is wrong); names are the files' stems, made unique."""
    texts: list[tuple[str, str]] = []
    for world in worlds:
        if world == "default":
            texts.append(("default", resources.files("semlens.assets").joinpath("world.toml").read_text(encoding="utf-8")))
            continue
        try:
            text = Path(world).read_text(encoding="utf-8")
            planted_artifact(WorldConfig.from_dict(parse_toml(text, f"world config {world}"), world))
        except (OSError, SemlensError) as error:
            raise SystemExit(f"--worlds: {error}") from None
        name, taken = Path(world).stem, {name for name, _ in texts}
        texts.append((next(f"{name}-{copy}" for copy in range(2, len(texts) + 2) if f"{name}-{copy}" not in taken) if name in taken else name, text))
    return texts


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def distractor_labels(lens: Lens, config: WorldConfig, truth: dict[str, str]) -> dict[str, float | None]:
    """The share of labelled units whose best label is a distractor (a concept the world never shows),
    and top-1 against dissection when only the world's concepts are candidates (labels kept in this
    process only): a foundation model that puts unrelated words near the units' crops costs labels
    here, not semlens's ranking of the world's concepts."""
    full = world_vocabulary(config)
    names = set(config.concept_names())
    spatial = spatial_layers(lens)
    labelled = [row[0] for layer in spatial for row, ok in zip(lens.labels.of(layer).concepts.tolist(), lens.labels.of(layer).labelled.tolist()) if ok]
    distractors = sum(full.concepts[index] not in names for index in labelled)
    categories = tuple(category for category, concept in zip(full.categories, full.concepts) if concept in names)
    world_only = Vocabulary("world-only", tuple(config.concept_names()), categories)
    labelling = lens.label(world_only, save=False)
    top = {f"{layer}/{unit}": world_only.concepts[int(row[0])] for layer in spatial for unit, row in enumerate(labelling[layer].concepts.tolist())}
    hits = [top[unit] == concept for unit, concept in truth.items()]
    return {"distractor_label_share": _share(distractors, len(labelled)), "top1_world_concepts": _share(sum(hits), len(hits))}


def view_settings(view: str, share: float | None, quantile: float | None) -> dict[str, Any]:
    """Build settings of a crop view named by its crop rules and view joined by ``+`` (``share``, ``masked``,
    ``peak+share``, ``quantile+masked``; rules: CROP_RULES), only those that differ from the defaults, so
    that ``peak+share`` (``DEFAULT_CROP_RULE``) is the plain Lens."""
    rules: list[str] = []
    settings: dict[str, Any] = {}
    for part in view.split("+"):
        if part in CROP_RULES and part not in rules:
            rules.append(part)
        elif part in CROP_VIEWS and "crop_view" not in settings:
            settings["crop_view"] = part
        else:
            raise SystemExit(f"view {view!r}: {part!r} is not a crop rule ({', '.join(CROP_RULES)}) or view ({', '.join(CROP_VIEWS)}), or is given twice")
    default_rule = "peak" if settings.get("crop_view") == "masked" else DEFAULT_CROP_RULE  # as BuildConfig resolves it
    if rules and "+".join(rules) != default_rule:
        settings["crop_rule"] = "+".join(rules)
    asked = {"crop_share": share, "crop_quantile": quantile}
    for rule in rules:
        if rule in RULE_SETTINGS and asked[RULE_SETTINGS[rule]] is not None:
            settings[RULE_SETTINGS[rule]] = asked[RULE_SETTINGS[rule]]
    return {key: value for key, value in settings.items() if value != "box"}


def lens_path(out: Path, build: dict[str, Any]) -> Path:
    """The Lens of these build settings (none: the default one, ``world.lens``)."""
    return out / ("world" + "".join(f"-{key}={value}" for key, value in sorted(build.items())) + ".lens")


def evaluate(
    name: str,
    seed: int,
    config_path: str,
    out: Path,
    foundation: str,
    console: Console,
    build: dict[str, Any] | None = None,
    heatmaps_from: Path | None = None,
    label_methods: list[str] | None = None,
    model: str = "world-cnn",
) -> dict[str, Any]:
    """One (world, seed): build or open the Lens (``build``: other build settings, in a Lens of their own
    beside the default one, with the CRP heatmaps of the Lens ``heatmaps_from`` where they fit; the truth
    is shared), compute the truth, ask semlens, score its answers."""
    start = time.perf_counter()
    config = WorldConfig.load(config_path)
    artifact, target, control = planted_artifact(config)
    settings = {**(build or {}), **({"heatmaps_from": str(heatmaps_from)} if heatmaps_from else {})}
    lens = build_world_lens(lens_path(out, build or {}), f"zoo:{model}:{config_path}", config_path, foundation, False, console, settings)
    spatial = spatial_layers(lens)
    labels, truth = ground_truth_labels(lens, config, out)
    truths = unit_truths(lens, config, out)
    by_dissection = true_concepts(truths)
    truth_by = {unit: "dissection" if unit in by_dissection else "area-response" for unit in sorted(truth)}
    true_units = {unit for unit, concept in truth.items() if concept == artifact}
    dissected = {unit for unit, concept in true_concepts(truths, causal=False).items() if concept == artifact}
    inserted = {f"{layer}/{unit}" for layer in spatial for unit, auc in enumerate(truths[layer]["insertion"].get(artifact, [])) if auc >= INSERTION_AUC}
    paraphrase = HELD_OUT[artifact]
    forget(lens, artifact)  # what an earlier run's audit pasted (semlens.lens.concepts): search first as a new user does
    hits = {query: [hit.unit for hit in lens.search(query, top=5)] for query in (artifact, paraphrase)}
    other_hits = {rank: {query: [hit.unit for hit in lens.search(query, top=5, rank=rank)] for query in (artifact, paraphrase)} for rank in TEXT_RANKINGS}
    if named_concept(artifact):  # semlens draws it: by the model's response to its drawings alone (a paraphrase it does not draw: by default)
        other_hits["drawn"] = {query: [hit.unit for hit in lens.search(query, top=5, rank="model" if named_concept(query) else None)] for query in (artifact, paraphrase)}
    overlays = [artifact_overlay(config, artifact, index) for index in range(OVERLAYS)]

    drawn_audit = drawn_audit_scores(lens, target, target, artifact, spatial, true_units) if named_concept(artifact) else {}
    forget(lens, artifact)  # the drawn audit may have kept its drawing: the audit below pastes the world's artefact
    concept = concept_images(config, artifact)  # test images: the Lens is built on the probe split
    audit = lens.audit(target, [target], [artifact], layers=spatial, concept=concept, test_all=True).to_dict()  # fields may grow: read by key
    after_audit = lens.search(artifact, top=5)  # the audit kept the artefact it pasted: its name now ranks by it in the model
    examined = {unit["unit"] for unit in audit["units"]}
    flagged = [unit["unit"] for unit in audit["units"] if unit["verdict"] == "spurious"]
    judged = [unit for unit in flagged if unit in truth]  # flagged units the truth names a concept for, artefact or not
    both = [unit["unit"] for unit in audit["units"] if unit["verdict"] == "both"]
    confirmed = audit["confirmed"]
    found = confirmed + audit["carriers"]
    tests = unit_tests(true_units, audit)

    model_key = identity(lens, config, TEST_IMAGES)
    reliance = memo(out / "reliance.json", model_key, lambda: artifact_reliance(lens.sources.model(), config, TEST_IMAGES))
    test = memo(out / "test.json", {**model_key, "spurious": flagged}, lambda: test_finding(lens, config, artifact, target, flagged))
    index = list(config.classes).index(target)
    pruning = test.get("pruning")
    distractors = distractor_labels(lens, config, truth)  # it replaces the Lens's labels in this process
    methods = method_scores(lens, config, out, label_methods or [])  # so does this
    return {
        "world": name, "seed": seed, "model": model, "control": control, "build": build or {}, "class_family": config.class_family, "classes": list(config.classes),
        "artifact": artifact, "artifact_class": target, "paraphrase": paraphrase,
        "units_with_truth": labels["units_with_true_concept"], "units": sum(len(truths[layer]["iou"]) for layer in spatial),
        "area_concepts": area_concepts(config), "units_with_area_truth": sum(by == "area-response" for by in truth_by.values()), "truth_by": truth_by,
        "top1_shown": labels["top1_shown"], "label_coverage": labels["coverage"], "label_median_confidence": labels["median_confidence"],
        "top1": labels["top1"], "top3": labels["top3"], "top1_misses_as_faithful": labels["top1_misses_as_faithful"],
        "units_truths_agree": labels["units_truths_agree"], "top1_truths_agree": labels["top1_truths_agree"], "top1_scene_where_truths_part": labels["top1_scene_where_truths_part"], "random_top1": labels["random_top1"], "random_top3": labels["random_top3"],
        "units_with_response_truth": labels["units_with_response_truth"], "top1_response": labels["top1_response"],
        **{key.replace("faithfulness_", ""): value for key, value in labels.items() if key.startswith("faithfulness_phi")},
        "cosy_auc": labels["cosy_auc"], **distractors,
        "iou_thresholds": iou_thresholds(truths),
        "artefact_unit_names": sorted(true_units), **artefact_scores(true_units, hits, artifact, paraphrase, flagged, both, confirmed, found, examined, audit["detectors"]),
        **{f"search_hits_at5_{rank}": sum(unit in true_units for unit in hits_of[artifact]) for rank, hits_of in other_hits.items()},
        **{f"search_hits_at5_paraphrase_{rank}": sum(unit in true_units for unit in hits_of[paraphrase]) for rank, hits_of in other_hits.items()},
        "search_hits_at5_overlay": overlay_search(lens, overlays, true_units),
        "search_hits_at5_after_audit": sum(hit.unit in true_units for hit in after_audit), "search_after_audit_rank": after_audit.rank, **drawn_audit,
        "concept_search": concept_search(lens, config, truth),
        "by_dissection_alone": {"artefact_unit_names": sorted(dissected), **artefact_scores(dissected, hits, artifact, paraphrase, flagged, both, confirmed, found, examined, audit["detectors"])},
        "by_insertion_alone": {"artefact_unit_names": sorted(inserted), **artefact_scores(inserted, hits, artifact, paraphrase, flagged, both, confirmed, found, examined, audit["detectors"])},
        "audit_units": len(examined), "audit_rule": audit["rule"], "audit_flagged": len(flagged), "audit_flagged_units": flagged,
        "audit_flagged_judged": len(judged), "audit_precision_judged": _share(len(true_units & set(judged)), len(judged)), "spurious_share": audit["spurious_share"], "flagged_share": audit["shares"]["spurious"], "confirmed_share": audit["confirmed_share"],
        "audit_both_units": both, "audit_unlocated": audit["unlocated"], "audit_not_raised": audit["not_raised"], "audit_both_by_location": audit["both_by_location"], "audit_both": len(both), "audit_confirmed": len(confirmed), "audit_confirmed_units": confirmed, "audit_unconfirmed_units": audit["unconfirmed"],
        "audit_relies": audit["reliance"]["relies"], "audit_log_odds": audit["reliance"]["log_odds"], "audit_effect": audit["reliance"]["effect"],
        "audit_carriers": audit["carriers"], "audit_detectors": audit["detectors"], "tested_found": len(found),
        "audit_reliance": audit["reliance"], "unit_tests": tests,
        "reliance": reliance[artifact]["others"][index], "reliance_own": reliance[artifact]["own"][index],
        "reliance_max_other_class": max(reliance[artifact]["others"][:index] + reliance[artifact]["others"][index + 1 :]),
        "reliance_all": reliance,
        "pruned_predicted_as_class": [pruning["artifact"]["before"]["predicted_as_class"], pruning["artifact"]["after"]["predicted_as_class"]] if pruning else None,
        "pruned_clean_accuracy": [pruning["clean"]["before"]["accuracy"], pruning["clean"]["after"]["accuracy"]] if pruning else None,
        "label_methods": methods, "probe_images": PROBE_IMAGES, "test_images": TEST_IMAGES, "seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip


def drawn_audit_scores(lens: Lens, target: str, content: str, artefact: str, layers: list[str], true_units: set[str]) -> dict[str, Any]:
    """The audit a user without images of the artefact runs, at its defaults (no ``concept``: semlens tests its own
    drawings of the artefact's name, ``audits._drawn_test``, and their control, ``drawn.control``; every
    examined unit measured, the flagged ones switched off); its detectors scored against the truth, and the search
    for the name after it (which names them first)."""
    audit = lens.audit(target, [content], [artefact], layers=layers)
    examined = {unit.unit for unit in audit.units}
    relevant = len(true_units & examined)
    right = len(true_units & set(audit.detectors))
    after = lens.search(artefact, top=5)
    reliance = audit.reliance or {}
    return {
        "drawn_audit_tested": audit.reliance is not None, "drawn_audit_drawn": reliance.get("drawn"), "drawn_audit_relies": reliance.get("relies"),
        "drawn_audit_log_odds": reliance.get("log_odds"), "drawn_audit_log_odds_control": reliance.get("log_odds_control"), "drawn_audit_detectors": audit.detectors, "drawn_audit_spurious_share": audit.spurious_share,
        "drawn_audit_detected_precision": _share(right, len(audit.detectors)), "drawn_audit_detected_recall": _share(right, relevant),
        "drawn_audit_confirmed": audit.confirmed + audit.carriers,
        "search_hits_at5_after_drawn_audit": sum(hit.unit in true_units for hit in after),
    }  # fmt: skip


def artefact_scores(
    true_units: set[str], hits: dict[str, list[str]], artifact: str, paraphrase: str,
    flagged: list[str], both: list[str], confirmed: list[str], found: list[str], examined: set[str], detectors: list[str],
) -> dict[str, Any]:
    """Search hits and audit precision / recall against one truth of the artefact units (recall over the
    true units the audit examined, i.e. relevant to the class): of the flagged units (also with those
    judged "both"), the confirmed ones, those the concept test found among all (``found``) and those it finds
    detect the artefact (``detectors``)."""
    relevant = len(true_units & examined)

    def right(units: list[str]) -> int:
        return len(true_units & set(units))

    return {
        "artefact_units": len(true_units), "artefact_units_examined": relevant,
        "search_hits_at5": sum(unit in true_units for unit in hits[artifact]),
        "search_hits_at5_paraphrase": sum(unit in true_units for unit in hits[paraphrase]),
        "audit_precision": _share(right(flagged), len(flagged)), "audit_recall": _share(right(flagged), relevant),
        "audit_precision_with_both": _share(right(flagged + both), len(flagged + both)), "audit_recall_with_both": _share(right(flagged + both), relevant),
        "confirmed_precision": _share(right(confirmed), len(confirmed)), "confirmed_recall": _share(right(confirmed), relevant),
        "tested_precision": _share(right(found), len(found)), "tested_recall": _share(right(found), relevant),
        "detected_precision": _share(right(detectors), len(detectors)), "detected_recall": _share(right(detectors), relevant),
    }  # fmt: skip


#: the rankings a text probe takes ("model" ranks by the model's response to images only)
TEXT_RANKINGS = tuple(rank for rank in RANKINGS if rank != "model")
#: the artefact's overlays (its placements, ``artifact_overlay``) an image probe of it shows, one search each
OVERLAYS = 3


def overlay_search(lens: Lens, overlays: list[Image.Image], true_units: set[str]) -> dict[str, float]:
    """Per ranking, the true artefact units among the top 5 units of an image search by one of the artefact's
    ``overlays`` (RGBA, transparent where it is not), the mean over the overlays."""
    found = {rank: [[hit.unit for hit in lens.search(images=[overlay], top=5, rank=rank)] for overlay in overlays] for rank in RANKINGS}
    return {rank: sum(sum(unit in true_units for unit in hits) for hits in lists) / len(lists) for rank, lists in found.items()}


#: the scenes a concept's image probe averages: indices past the phi images' (``truth.SCENE_IMAGES``), so no Lens
#: and no truth has seen them
PROBE_SCENES = range(100, 104)


def concept_search(lens: Lens, config: WorldConfig, truth: dict[str, str]) -> dict[str, Any]:
    """Search for every concept with true units, by its name and by 4 scenes that show it, each ranked both ways
    (``search.RANKINGS``): per ranking the sum over the concepts of the true units in the top 5 over min(5, their
    number); ``pairs``: how many concepts, so that a mean pools exactly over runs."""
    units_of: dict[str, set[str]] = {}
    for unit, concept in truth.items():
        units_of.setdefault(concept, set()).add(unit)
    sums = {f"{probe}_{rank}": 0.0 for probe, rankings in (("text", TEXT_RANKINGS), ("images", RANKINGS)) for rank in rankings}
    for concept, units in units_of.items():
        scenes = [concept_scene(config, concept, index).image for index in PROBE_SCENES]
        for rank in RANKINGS:
            probes = ((("text", concept),) if rank in TEXT_RANKINGS else ()) + (("images", scenes),)
            for probe, query in probes:
                hits = lens.search(query, top=5, rank=rank) if probe == "text" else lens.search(images=query, top=5, rank=rank)
                sums[f"{probe}_{rank}"] += sum(hit.unit in units for hit in hits) / min(5, len(units))
    return {"pairs": len(units_of), **sums}


def unit_tests(true_units: set[str], audit: dict[str, Any]) -> list[dict[str, Any]]:
    """The concept test of every unit the audit examined, with its verdict and truth: the material to judge a
    confirmation rule against (``confirm_rules.py``)."""
    return [
        {"unit": unit["unit"], "verdict": unit["verdict"], "artefact_unit": unit["unit"] in true_units, "relevance": unit["mean_relevance"],
         "z_spur": unit["z_spur"], "tight_shift": unit["tight_shift"], "responses_label": unit["responses_label"],
         "verdict_before_test": unit["verdict_before_test"], "contested": unit["contested"], **unit["test"]}
        for unit in audit["units"] if unit["test"] is not None
    ]  # fmt: skip


def _number(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


COLUMNS = {  # header: record key
    "units w/ truth": "units_with_truth", "coverage": "label_coverage", "top-1 shown": "top1_shown", "top-1": "top1", "top-1 truths agree": "top1_truths_agree", "top-3": "top3", "top-1 world": "top1_world_concepts",
    "distractor labels": "distractor_label_share", "top-1 resp.": "top1_response", "phi": "phi",
    "phi (true units)": "phi_true_units", "phi of truth": "phi_of_truth",
    "phi alone (true units)": "phi_true_units_alone", "phi alone of truth": "phi_of_truth_alone",
    "CoSy AUC": "cosy_auc", "artefact units": "artefact_units", "search@5": "search_hits_at5",
    "paraphrase@5": "search_hits_at5_paraphrase", "search@5 after audit": "search_hits_at5_after_audit", "flagged": "audit_flagged", "precision": "audit_precision",
    "recall": "audit_recall", "precision, judged units": "audit_precision_judged", "confirmed": "audit_confirmed", "conf. precision": "confirmed_precision",
    "conf. recall": "confirmed_recall", "found by test": "tested_found", "test precision": "tested_precision",
    "test recall": "tested_recall", "detected precision": "detected_precision", "detected recall": "detected_recall", "spurious share (tested)": "spurious_share", "flagged share": "flagged_share", "reliance": "reliance",
    "log-odds (test)": "audit_log_odds",
}  # fmt: skip


def summary_rows(records: list[dict[str, Any]], control: bool, columns: dict[str, str] = COLUMNS) -> list[tuple[str, dict[str, Any]]]:
    """Mean and worst of each column (``columns``: header -> record key) over the planted (or control) runs; None
    values are left out."""
    chosen = [record for record in records if record["control"] == control]
    if not chosen:
        return []
    means, worst = {}, {}
    for key in columns.values():
        values = [record[key] for record in chosen if record.get(key) is not None]
        if not values:
            continue
        means[key] = mean(values)
        direction = -1 if control and key in CONTROL_LOWER else BETTER.get(key, 1)
        worst[key] = min(values) if direction > 0 else max(values)
    label = "control" if control else "planted"
    return [(f"mean ({label}, {len(chosen)})", means), (f"worst ({label})", worst)]


def pooled_audit(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The audit's flags, confirmed findings, everything its concept test found (confirmed flags and the
    carriers among the units it did not flag) and the units it finds detect the artefact (``Audit.detectors``) over the runs whose class relies on its artefact (the concept
    test's verdict), pooled by count: precision over every flag, recall over every true artefact unit the audit
    examined (a mean of per-run ratios would weigh a run with one flag as much as one with twenty)."""
    relying = [record for record in records if record["audit_relies"]]
    examined = sum(record["artefact_units_examined"] for record in relying)
    pooled: dict[str, Any] = {"runs": len(relying), "examined": examined}
    findings = {
        "flagged": lambda record: record["audit_flagged_units"],
        "flagged or both": lambda record: record["audit_flagged_units"] + record["audit_both_units"],
        "confirmed": lambda record: record["audit_confirmed_units"],
        "found by test": lambda record: record["audit_confirmed_units"] + record["audit_carriers"],  # every unit tested
        "detectors": lambda record: record.get("audit_detectors", []),  # records before them have none
        # the audit without images of the artefact: semlens's drawings of its name (records before it have none)
        "drawn test's detectors": lambda record: record.get("drawn_audit_detectors", []),
        "drawn test's findings": lambda record: record.get("drawn_audit_confirmed", []),
    }
    for name, units_of in findings.items():
        units = sum(len(units_of(record)) for record in relying)
        right = sum(len(set(units_of(record)) & set(record["artefact_unit_names"])) for record in relying)
        pooled[name] = {"units": units, "true": right, "precision": _share(right, units), "recall": _share(right, examined)}
    return pooled


def print_pooled_audit(records: list[dict[str, Any]], console: Console) -> None:
    unfounded = [record for record in records if not record["audit_relies"] and "drawn_audit_relies" in record]
    if unfounded:  # the test of semlens's drawings where the test of the artefact itself finds no reliance
        claimed = sum(bool(record["drawn_audit_relies"]) for record in unfounded)
        console.print(f"the drawn test finds a reliance in {claimed} of the {len(unfounded)} runs whose artefact's own test finds none")
    pooled = pooled_audit(records)
    if not pooled["runs"]:
        return
    parts = [
        f"{name} {values['units']} ({values['true']} true: precision {_number(values['precision'])}, recall {_number(values['recall'])})"
        for name, values in ((name, pooled[name]) for name in ("flagged", "flagged or both", "confirmed", "found by test", "detectors", "drawn test's detectors", "drawn test's findings"))
    ]
    console.print(f"audit pooled over the {pooled['runs']} runs whose class relies on its artefact ({pooled['examined']} true artefact units examined): " + "; ".join(parts))


def pooled_search(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Search pooled over the runs, by each of ``Lens.search``'s rankings (the default first): the true
    artefact units in the artefact's top 5 (where a world has any), the worlds meeting the goal (3, or all where
    fewer), and every concept's search (``concept_search``) as one mean over its (run, concept) pairs."""
    with_units = [record for record in records if record["artefact_units"]]
    pooled: dict[str, Any] = {"worlds": len(with_units), "pairs": sum(record["concept_search"]["pairs"] for record in records)}
    for rank, suffix in (("default", ""), *((rank, f"_{rank}") for rank in (*TEXT_RANKINGS, "drawn"))):
        if any(f"search_hits_at5{suffix}" not in record for record in with_units):
            continue  # records from before "named" was recorded apart from the default (it was the default)
        hits = [record[f"search_hits_at5{suffix}"] for record in with_units]
        pooled[rank] = {
            "artefact_hits": sum(hits), "goal_met": sum(hit >= min(3, record["artefact_units"]) for hit, record in zip(hits, with_units)),
            "paraphrase_hits": sum(record[f"search_hits_at5_paraphrase{suffix}"] for record in with_units),
        }  # fmt: skip
    for rank in TEXT_RANKINGS:
        pooled.setdefault(rank, {})["text"] = _share(sum(record["concept_search"][f"text_{rank}"] for record in records), pooled["pairs"])
    for rank in RANKINGS:  # the artefact's overlays (records before them have none), and every concept's scenes
        overlaid = [record["search_hits_at5_overlay"][rank] for record in with_units if "search_hits_at5_overlay" in record]
        pooled.setdefault(rank, {}).update(overlay_hits=sum(overlaid) if overlaid else None)
        pooled[rank]["images"] = _share(sum(record["concept_search"].get(f"images_{rank}", 0.0) for record in records), pooled["pairs"])
    after = [record for record in with_units if "search_hits_at5_after_audit" in record]  # records before it have none
    pooled["after_audit"] = {
        "artefact_hits": sum(record["search_hits_at5_after_audit"] for record in after), "worlds": len(after),
        "goal_met": sum(record["search_hits_at5_after_audit"] >= min(3, record["artefact_units"]) for record in after),
    }
    return pooled


def print_pooled_search(records: list[dict[str, Any]], console: Console) -> None:
    pooled = pooled_search(records)
    parts = [
        f"{rank}: artefact hits {values['artefact_hits']} (goal met in {values['goal_met']}), paraphrase {values['paraphrase_hits']}"
        for rank, values in ((rank, pooled.get(rank, {})) for rank in ("default", *TEXT_RANKINGS, "drawn")) if "artefact_hits" in values
    ] + [f"{rank}: concepts by name {_number(pooled[rank]['text'])}" for rank in TEXT_RANKINGS]
    parts += [f"{rank}: concepts by images {_number(pooled[rank]['images'])}" for rank in RANKINGS]
    parts.append("artefact overlay hits (mean of its placements, summed over worlds): " + ", ".join(f"{rank} {_number(pooled[rank]['overlay_hits'])}" for rank in RANKINGS))
    after = pooled["after_audit"]
    parts.append(f"the artefact's name after the audit pasted it (default ranking): artefact hits {after['artefact_hits']} (goal met in {after['goal_met']} of {after['worlds']})")
    console.print(f"search pooled over {pooled['worlds']} worlds with true artefact units and {pooled['pairs']} (run, concept) pairs; " + "; ".join(parts))


def print_table(records: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="semlens against the concept world's ground truth (one row per world and seed)")
    for column in ("world", "seed", "view", "artefact on class", *COLUMNS, "pruning: predicted as class", "clean acc."):
        table.add_column(column)
    for record in records:
        pruned, clean = record["pruned_predicted_as_class"], record["pruned_clean_accuracy"]
        table.add_row(
            record["world"], str(record["seed"]), record["view"], f"{record['artifact']} on {record['artifact_class']}" + (" (control)" if record["control"] else ""),
            *(_number(record.get(key)) for key in COLUMNS.values()),  # stored records may predate a column
            f"{pruned[0]:.2f} -> {pruned[1]:.2f}" if pruned else "-", f"{clean[0]:.2f} -> {clean[1]:.2f}" if clean else "-",
        )  # fmt: skip
    for control in (False, True):
        if len({record["view"] for record in records}) > 1:
            break  # means over several views would mix them: print_views has each view's
        for title, values in summary_rows(records, control):
            table.add_row(title, "", "", "", *(_number(values.get(key)) for key in COLUMNS.values()), "", "")
    console.print(table)
    console.print(f"chance: top-1 {records[0]['random_top1']:.2f}, top-3 {records[0]['random_top3']:.2f}, CoSy AUC 0.50")


VIEW_COLUMNS = {  # header: record key, for the comparison of crop views
    "coverage": "label_coverage", "top-1 shown": "top1_shown", "top-1": "top1", "top-3": "top3", "top-1 world": "top1_world_concepts",
    "top-1 resp.": "top1_response", "phi": "phi", "phi (true units)": "phi_true_units", "CoSy AUC": "cosy_auc", "artefact units": "artefact_units", "search@5": "search_hits_at5", "paraphrase@5": "search_hits_at5_paraphrase",
}  # fmt: skip


def print_views(records: list[dict[str, Any]], console: Console) -> None:
    """One row per crop view: the mean of each column over its runs (every world and seed); top-1 and top-3
    over the runs with units whose concept dissection knows (a world without any scores 0 there)."""
    table = Table(title="crop views on the same worlds and seeds (mean over runs)")
    for column in ("view", "runs", *VIEW_COLUMNS):
        table.add_column(column)
    for view in dict.fromkeys(record["view"] for record in records):
        chosen = [record for record in records if record["view"] == view]
        means = []
        for key in VIEW_COLUMNS.values():
            values = [r[key] for r in chosen if r[key] is not None and (r["units_with_truth"] or key not in ("top1", "top3", "top1_shown"))]
            means.append(mean(values) if values else None)
        table.add_row(view, str(len(chosen)), *(_number(value) for value in means))
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of every world (images, classifier)")
    parser.add_argument("--worlds", nargs="+", default=None, help="world configs (default: default and patch-on-cross unless --random)")
    parser.add_argument("--random", type=int, default=0, metavar="N", help="also draw N random worlds (random_world)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random worlds drawn")
    parser.add_argument("--controls", type=int, default=None, metavar="M", help="control worlds among the N (default 1 when N >= 2)")
    parser.add_argument("--out", type=Path, default=Path("ground-truth-runs"))
    parser.add_argument("--json", type=Path, default=None, help="write one record per (world, seed) to this file")
    parser.add_argument(
        "--model", default="world-cnn", choices=[name for name in WORLD_MODELS if not name.endswith("-clean")],
        help="the world's model under study (world-resnet: an architecture no threshold was chosen on; its runs get folders of their own)",
    )  # fmt: skip
    parser.add_argument("--foundation", default="world", help="foundation model spec of every run (default: the default world's)")
    parser.add_argument("--crop", default=None, help="crop mode of the Lenses (default: the demo's, relevance)")
    parser.add_argument("--crop-rule", default=None, help=f"crop rule(s): peak (the paper's), share, quantile or joined by + (default {DEFAULT_CROP_RULE})")
    parser.add_argument("--crop-share", type=float, default=None, help="with --crop-rule share: the share of positive mass kept")
    parser.add_argument("--crop-quantile", type=float, default=None, help="with the quantile rule: the quantile of a unit's map values")
    parser.add_argument("--lrp-rule", default=None, help="the convolutions' LRP rule of the Lenses: zplus (default) or gamma (BuildConfig.lrp_rule)")
    parser.add_argument("--crp-focus", default=None, help="where the Lenses' CRP heatmaps start: unit (default) or peak (BuildConfig.crp_focus)")
    parser.add_argument("--crop-grid", type=int, default=None, help="the Lenses' crop boxes snapped to this many cells a side (BuildConfig.crop_grid; default 0: to the pixel)")
    parser.add_argument(
        "--views", nargs="+", default=None, metavar="VIEW",
        help="compare crop views (RULE, masked or RULE+masked, e.g. peak share quantile masked): one Lens each, sharing the first's heatmaps",
    )  # fmt: skip
    parser.add_argument(
        "--label-methods", nargs="+", default=None, metavar="METHOD",
        help=f"label each Lens by these methods too and score each (alignment, clip-dissect, contrastive, {EXAMPLE_PRIOR})",
    )  # fmt: skip
    args = parser.parse_args()
    asked = {"crop": args.crop, "crop_rule": args.crop_rule, "crop_share": args.crop_share, "crop_quantile": args.crop_quantile, "lrp_rule": args.lrp_rule, "crp_focus": args.crp_focus, "crop_grid": args.crop_grid}
    build = {key: value for key, value in asked.items() if value is not None}
    views = {"as built": build}
    if args.views:
        views = {view: {**build, **view_settings(view, args.crop_share, args.crop_quantile)} for view in args.views}
    worlds = world_texts(args.worlds if args.worlds is not None else ([] if args.random else ["default", "benchmarks/worlds/patch-on-cross.toml"]))
    worlds += [(world.name, world.toml) for world in (random_worlds(args.random, args.controls, args.seed) if args.random else [])]
    console = Console(width=320)  # the table is wide; do not cut it to the terminal
    records, start = [], time.perf_counter()
    for name, text in worlds:
        for seed in args.seeds:
            folder = args.out / (f"{name}-seed{seed}" + ("" if args.model == "world-cnn" else f"-{args.model}"))
            config = seeded_world(text, seed, folder / "world.toml")
            first = None  # the first view's Lens computes the CRP heatmaps, the others reuse them
            for view, settings in views.items():
                records.append({**evaluate(name, seed, config, folder, args.foundation, Console(quiet=True), settings, first, args.label_methods, args.model), "view": view})
                first = first or lens_path(folder, settings)
                console.print(f"{name} seed {seed} {view}: {records[-1]['seconds']:.0f} s")
                if args.json:  # after every run: a long benchmark leaves what it has
                    args.json.write_text(json.dumps(records, indent=1), encoding="utf-8")
    print_table(records, console)
    print_pooled_audit(records, console)
    print_pooled_search(records, console)
    if args.views:
        print_views(records, console)
    if args.label_methods:
        print_methods(records, console)
    console.print(f"{len(records)} runs in {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
