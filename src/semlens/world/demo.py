"""``semlens demo``: the whole job, offline, in the concept world where the truth is known.

It renders the world, trains (or loads) the classifier under study, a second classifier trained
without the planted artefact and the world's image-text foundation model, then builds Lenses with
relevance crops. On them it runs search, labelling, dissection, measures, the audit of the artefact
class with its test and pruning, and the comparison of the two classifiers, and writes the HTML
report. The summary checks every answer against the ground truth from the exact concept masks.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from rich.console import Console

from .._util.errors import SemlensError
from ..lens.concepts import forget
from ..lens.lens import Lens
from ..model.units import LayerSpec
from ..pipeline.builder import BuildConfig, LensBuilder
from ..store.files import atomic_write
from .captions import HELD_OUT
from .classifier import ARCHITECTURES, architecture_of
from .random_world import planted_artifact
from .render import WorldConfig, WorldData, artifact_overlay, concept_scene
from .truth import (
    AREA_FAMILIES,
    INSERTION_AUC,
    SCENE_IMAGES,
    area_truth,
    concept_responses,
    concept_thresholds,
    dissect_layer,
    dissected_concepts,
    faithfulness,
    faithfulness_of_true_units,
    layer_shift,
    response_auc,
    response_truth,
    shift_images,
    where_truths_part,
)
from .vocabulary import world_vocabulary

if TYPE_CHECKING:
    from ..interventions.effects import Artifact, ConceptImages

PROBE_IMAGES = 1200
TEST_IMAGES = 300
K = 20  # concept examples per unit
CROP = "auto"  # relevance crops where LRP supports the model (it does the world CNN)
INSERTION_IMAGES = 400  # probe images the artefact is pasted into for the causal truth (those without it)
# the audit's concept test pastes the world's artefact as drawn in 4 images of the world, in turn: with 1, a coarse
# layer's units fire where the artefact is or not by where one copy falls. Measured on the quality benchmark's 8
# stored runs whose class relies on its artefact (docs/quality.md: "Placements"): 1, 4, 8 and 16 placements give precision
# 0.58, 0.70, 0.68 and 0.65 at recall 0.44, 0.64, 0.60 and 0.60
PLACEMENTS = 4
TRUTH_VERSION = 7  # 6: maps placed where their cells sit (model.receptive); 7: that place measured on the trained model; bump when unit_truth stores other things: stored truths are then computed again


def world_layers(model: str) -> list[str]:
    """The layers a world model's Lens studies (``zoo:world-cnn[:CONFIG]`` and its kin): the architecture's two
    spatial layers (``classifier.ARCHITECTURES``) and the class logits."""
    return [*ARCHITECTURES[architecture_of(model.split(":")[1])][1], "head"]


def spatial_layers(lens: Lens) -> list[str]:
    """The Lens's layers with spatial maps: those that dissection, the truth and the audit read."""
    return [layer for layer in lens.layers if lens.manifest["layers"][layer]["output"] == "spatial"]


def run_demo(
    out: Path, world: str | None = None, progress: bool = True, console: Console | None = None, foundation: str | None = None
) -> dict:
    """Run everything, print the summary, write it as ``summary.json``; returns the summary.

    ``foundation`` defaults to the world's own foundation model (``world:CONFIG``); worlds of the same
    concepts can share one, as a domain CLIP serves many data sets."""
    console = console or Console(emoji=False)
    out.mkdir(parents=True, exist_ok=True)
    config = WorldConfig.load(world)
    source = "" if world is None else f":{world}"
    artifact, target, _ = planted_artifact(config)
    lenses = {
        name: build_world_lens(out / f"{name}.lens", f"{zoo}{source}", world, foundation, progress, console)
        for name, zoo in (("world", "zoo:world-cnn"), ("world-clean", "zoo:world-cnn-clean"))
    }
    lens, clean = lenses["world"], lenses["world-clean"]

    summary = {"world": config.source, "artifact": artifact, "artifact_class": target, "paraphrase": HELD_OUT[artifact]}
    queries = (artifact, HELD_OUT[artifact], "stripes", "grass")
    forget(lens, artifact)  # what an earlier run's audit pasted: the first search is a new user's
    summary["search"] = {query: [hit.unit for hit in lens.search(query, top=5)] for query in queries}
    summary["labels"], truth = ground_truth_labels(lens, config, out)
    true_units = {unit for unit, concept in truth.items() if concept == artifact}
    audit = lens.audit(target, [target], [artifact], layers=spatial_layers(lens))
    spurious = [unit.unit for unit in audit.units if unit.verdict == "spurious"]
    summary["audit"] = {"shares": audit.shares, "spurious_units": spurious, "units": len(audit.units), "drawn_test": audit.reliance, "detectors": audit.detectors}
    summary["artifact_units"] = {
        "true": sorted(true_units),
        "search_found": [unit for unit in summary["search"][artifact] if unit in true_units],
        "audit_flagged": [unit for unit in spurious if unit in true_units],
    }
    key = {**identity(lens, config, TEST_IMAGES), "spurious": spurious}
    summary["test"] = memo(out / "test.json", key, lambda: test_finding(lens, config, artifact, target, spurious))
    # the audit's concept test, as `semlens audit --test-data ... --artifact ...` runs it; it keeps the pasted artefact,
    # so that searching its name again ranks units by the model's response to it (semlens.lens.concepts)
    tested = lens.audit(target, [target], [artifact], layers=spatial_layers(lens), concept=concept_images(config, artifact))
    summary["search_after_audit"] = [hit.unit for hit in lens.search(artifact, top=5)]
    summary["artifact_units"]["search_after_audit_found"] = [unit for unit in summary["search_after_audit"] if unit in true_units]
    comparison = lens.compare(clean)
    summary["compare"] = {
        "s_world_to_clean": comparison.a_to_b, "typical": comparison.typical, "shared": comparison.shared_concepts,
        "only_world": comparison.only_a, "only_clean": comparison.only_b,
    }  # fmt: skip
    report = out / "report.html"
    if not report.is_file() or report.stat().st_mtime < lens.store.path("manifest.json").stat().st_mtime:
        from ..report.html import write_report

        write_report(lens, report, audits=[tested])
    summary["report"] = str(report)
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    print_summary(summary, console)
    return summary


def build_world_lens(
    path: Path,
    model: str,
    world: str | None,
    foundation: str | None,
    progress: bool,
    console: Console,
    build: dict[str, Any] | None = None,
) -> Lens:
    """The Lens of a world model (``zoo:world-cnn[:CONFIG]``) on the world's probe images, with relevance
    crops (``build``: other BuildConfig settings, e.g. the crop rule), labelled with the world's vocabulary
    (built once: a re-run opens it)."""
    source = "" if world is None else f":{world}"
    console.print(f"[bold]{path.stem}[/]: building the Lens of {model}")
    settings = BuildConfig(
        **{
            "model": model, "layers": world_layers(model), "data": f"world{source or ':'}:{PROBE_IMAGES}:probe",
            "foundation": foundation or f"world{source}", "k": K, "crop": CROP, **(build or {}),
        }
    )  # fmt: skip
    LensBuilder(settings, path, progress=progress).run()
    lens = Lens.open(path)
    if lens.labels.vocabulary is None or lens.labels.vocabulary.name != "world" or lens.labels.method != lens.labels.default_method:
        lens.label(world_vocabulary(WorldConfig.load(world)))
    return lens


def memo(path: Path, key: dict, compute: Callable[[], Any]) -> Any:
    """The JSON result stored at ``path`` if it was computed for ``key``, else computed now and stored:
    a re-run of the demo skips the passes over the probe and test images."""
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("key") == key:
            return stored["value"]
    value = compute()
    atomic_write(path, lambda temporary: temporary.write_text(json.dumps({"key": key, "value": value}), encoding="utf-8"))
    return value


def identity(lens: Lens, config: WorldConfig, images: int) -> dict:
    """What a pass of the Lens's model over ``images`` images of the world depends on."""
    return {"model": lens.manifest["identity"]["model"]["fingerprint"], "world": config.fingerprint(), "images": images}


def unit_truth(lens: Lens, config: WorldConfig) -> dict[str, dict]:
    """Per spatial layer, each unit's IoU with every concept (dissection), each concept's best IoU with
    any unit when maps meet the next image's masks (chance; ``truth.concept_thresholds`` on reading), each
    unit's responses ``[U, C, n]`` to each concept's images alone and in scenes, and per
    artefact its insertion AUC (``truth.INSERTION_AUC``) on probe images without the artefact."""
    from ..interventions.effects import activation_aucs

    model = lens.sources.model()
    data = WorldData(config, PROBE_IMAGES, "probe")
    spatial = spatial_layers(lens)
    specs = [LayerSpec(**lens.manifest["layers"][layer]["spec"]) for layer in spatial]
    insertion = {}
    for name in config.concepts["artifact"]:
        try:
            concept = concept_images(config, name, INSERTION_IMAGES, "probe", placements=1)  # the judge as measured since TRUTH_VERSION 5
        except SemlensError:  # every probe image shows it: no insertion test, dissection alone decides
            continue
        insertion[name] = activation_aucs(model, *concept.views(model), specs)
    plain = [LayerSpec(layer) for layer in spatial]
    alone = concept_responses(model.module, model.preprocessing, plain, config)
    scenes = concept_responses(model.module, model.preprocessing, plain, config, concept_scene, SCENE_IMAGES)
    truths, placing = {}, shift_images(model.preprocessing, data)
    for layer in spatial:
        shift = layer_shift(model.module, layer, placing)  # once for the dissection and its chance
        dissected = dissect_layer(model.module, model.preprocessing, layer, data, shift=shift)
        truths[layer] = {
            "concepts": dissected.concepts,
            "iou": dissected.iou.tolist(),
            "chance_iou": dissect_layer(model.module, model.preprocessing, layer, data, null=True, shift=shift).iou.max(dim=0).values.tolist(),
            "responses": alone[layer].tolist(),
            "scene_responses": scenes[layer].tolist(),
            "insertion": {name: aucs[layer].tolist() for name, aucs in insertion.items()},
        }
    return truths


def unit_truths(lens: Lens, config: WorldConfig, out: Path) -> dict[str, dict]:
    """``unit_truth``, stored in ``out`` for this model, world and truth version."""
    key = {**identity(lens, config, PROBE_IMAGES), "truth": TRUTH_VERSION}
    return memo(out / "truth.json", key, lambda: unit_truth(lens, config))


PHI_VIEWS = (("scene_responses", ""), ("responses", "_alone"))  # phi's concept images: in scenes (the measure), alone


def _mean(values: list[float], empty: float | None = None) -> float | None:
    return sum(values) / len(values) if values else empty


def ground_truth_labels(lens: Lens, config: WorldConfig, out: Path) -> tuple[dict, dict[str, str]]:
    """semlens labels against the truth: top-1/top-3 accuracy against ``true_concepts``, with the random
    baseline; top-1 against the concept-image response truth; faithfulness phi; and a CoSy-style AUC
    (the unit's response to its label's concept images against all other concepts', 0.5 = chance).
    phi is taken over the units semlens labels, and over the units with a true concept (their top-1
    concept, labelled or not: ``truth.faithfulness_of_true_units``), on the concepts' images in scenes
    and (``_alone``) alone; ``phi_of_truth``: the latter were each top-1 the unit's true concept (what the
    judge itself allows); ``top1_misses_as_faithful``: the top-1 misses whose label's scenes raise the unit at
    least as much as its true concept's do (misses where only dissection's overlap test, not the unit's
    response, tells the label from the truth); ``top1_truths_agree``: top-1 over the units whose true concept is also
    the one whose scenes raise them most (``units_truths_agree``), and ``top1_scene_where_truths_part``: of the
    other units, the labels that name the concept whose scenes raise them most. Also each unit's true concept (``true_concepts``: named by
    dissection, ranked by its scenes, artefacts confirmed by insertion; by response where the world's classes
    are area concepts, ``area_concepts``)."""
    truths = unit_truths(lens, config, out)
    truth = true_concepts(truths, area=area_concepts(config))
    concepts, world_concepts = list(lens.labels.vocabulary.concepts), config.concept_names()
    hits1 = hits3 = shown_hits = total = response_hits = response_total = as_faithful = 0
    parting: Counter = Counter()
    aucs: list[float] = []
    phis: dict[str, dict[str, list[float]]] = {views: {"labelled": [], "true": [], "truth": []} for views, _ in PHI_VIEWS}
    for layer in truths:
        best = [truth.get(f"{layer}/{unit}") for unit in range(len(truths[layer]["iou"]))]
        responses = {views: torch.tensor(truths[layer][views]) for views in phis}  # [U, C, n] per set of concept images
        auc = response_auc(responses["responses"])
        by_response = response_truth(auc, world_concepts)
        labels = lens.labels.of(layer)
        top = [[concepts[int(index)] for index in row] for row in labels.concepts.tolist()]
        labelled = labels.labelled.tolist()  # phi and AUC judge the labels semlens gives, nothing below the threshold
        assigned = [world_concepts.index(row[0]) if ok and row[0] in world_concepts else None for row, ok in zip(top, labelled)]
        aucs += [float(auc[unit, concept]) for unit, concept in enumerate(assigned) if concept is not None]
        mean_responses = {views: responses[views].mean(dim=2) for views in phis}  # [U, C]: each unit's mean response to each concept
        scenes = mean_responses["scene_responses"]
        for unit, true_concept in enumerate(best):
            if true_concept is not None:
                total += 1
                hits1 += top[unit][0] == true_concept
                shown_hits += labelled[unit] and top[unit][0] == true_concept
                hits3 += true_concept in top[unit]
                label = top[unit][0]
                if label != true_concept and label in world_concepts:
                    as_faithful += bool(scenes[unit, world_concepts.index(label)] >= scenes[unit, world_concepts.index(true_concept)])
            if by_response[unit] is not None:
                response_total += 1
                response_hits += top[unit][0] == by_response[unit]
        parting.update(where_truths_part(scenes, [row[0] for row in top], best, world_concepts))
        for views, kept in phis.items():
            kept["labelled"] += faithfulness(mean_responses[views], assigned)
            kept["true"] += faithfulness_of_true_units(mean_responses[views], [row[0] for row in top], best, world_concepts)
            kept["truth"] += faithfulness_of_true_units(mean_responses[views], [name or "" for name in best], best, world_concepts)
    coverage = lens.labels.coverage()["all"]
    scores = {
        "units_with_true_concept": total,
        "top1_shown": shown_hits / max(total, 1),  # the labels users see: a unit showing no concept is a miss
        "top1": hits1 / max(total, 1),  # each unit's best candidate, shown or not
        "top3": hits3 / max(total, 1),
        "top1_misses_as_faithful": as_faithful,
        "units_truths_agree": parting["agree"],  # units whose true concept is also the concept whose scenes raise them most
        "top1_truths_agree": parting["agree_hits"] / parting["agree"] if parting["agree"] else None,
        "top1_scene_where_truths_part": parting["part_scene_hits"],  # of the others: labels naming the concept whose scenes raise the unit most
        "random_top1": 1 / len(concepts),
        "random_top3": 3 / len(concepts),
        "labelled_units": len(phis["responses"]["labelled"]),
        "coverage": coverage["coverage"],  # the share of valid units that show a concept
        "median_confidence": coverage["median_confidence"],
        **{f"faithfulness_phi{suffix}": _mean(phis[views]["labelled"], float("nan")) for views, suffix in PHI_VIEWS},  # over labelled units, pooled
        **{f"faithfulness_phi_true_units{suffix}": _mean(phis[views]["true"]) for views, suffix in PHI_VIEWS},
        **{f"faithfulness_phi_of_truth{suffix}": _mean(phis[views]["truth"]) for views, suffix in PHI_VIEWS},
        "units_with_response_truth": response_total,
        "top1_response": response_hits / max(response_total, 1),
        "cosy_auc": sum(aucs) / max(len(aucs), 1),
    }
    return scores, truth


def iou_thresholds(truths: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Per spatial layer and concept, the IoU a unit must reach to detect it (``truth.concept_thresholds``)."""
    return {layer: dict(zip(truths[layer]["concepts"], concept_thresholds(torch.tensor(truths[layer]["chance_iou"])).tolist())) for layer in truths}


def area_concepts(config: WorldConfig) -> list[str]:
    """The area concepts the truth names by response (``truth.area_truth``): the world's classes where they are
    area concepts (backgrounds), else none. Elsewhere backgrounds vary beside the class and 1 to 3 units of
    features.10 per world separate one at ``truth.AREA_AUC`` (5 stored CNN runs): they keep no truth, so that
    the figures of every world with located classes stay those dissection gives."""
    return list(config.classes) if config.class_family in AREA_FAMILIES else []


def true_concepts(truths: dict[str, dict], causal: bool = True, area: list[str] | None = None) -> dict[str, str]:
    """Each unit's true concept (``unit_truth``): one that dissection names, each concept above its own chance
    threshold (``truth.concept_thresholds``). With ``causal`` (else: dissection alone, the highest IoU), an
    artefact only where pasting it into probe images raises the unit (``truth.INSERTION_AUC``), and of the
    concepts dissection names, the one whose scenes raise the unit most: IoU is reached through correlation
    too (a square unit weaker on patterned squares matches the "plain" mask better than the "square" one,
    though square scenes raise it 2.5 times more than plain ones; docs/explanation/concept-world.md "How answers are scored").
    A unit dissection names nothing for gets its concept of ``area`` by response (``truth.area_truth``) if any."""
    found = {}
    for layer in truths:
        concepts = truths[layer]["concepts"]
        iou = torch.tensor(truths[layer]["iou"])
        allowed, rank = torch.ones_like(iou, dtype=torch.bool), None
        if causal:
            for name, aucs in truths[layer]["insertion"].items():
                allowed[:, concepts.index(name)] = torch.tensor(aucs) >= INSERTION_AUC
            rank = torch.tensor(truths[layer]["scene_responses"]).mean(dim=2)
        dissected = dissected_concepts(iou, concept_thresholds(torch.tensor(truths[layer]["chance_iou"])), allowed, rank)
        found.update({f"{layer}/{unit}": concepts[concept] for unit, concept in enumerate(dissected) if concept is not None})
        if area:
            by_area = area_truth(torch.tensor(truths[layer]["scene_responses"]), concepts, area)
            found.update({f"{layer}/{unit}": name for unit, name in enumerate(by_area) if name is not None and dissected[unit] is None})
    return found


def overlay(config: WorldConfig, artifact: str, index: int = 0) -> Artifact:
    """The world's artefact as an ``Artifact`` to paste into images (D' = D * (1 - M) + A * M); ``index`` draws
    another of its placements."""
    from ..interventions.effects import Artifact

    return Artifact(image=artifact_overlay(config, artifact, index))


def concept_images(config: WorldConfig, artifact: str, images: int = TEST_IMAGES, split: str = "test", placements: int = PLACEMENTS) -> ConceptImages:
    """The audit's concept images for ``artifact``: the world's first ``images`` test images that do not show
    it (every class) and the same images with it pasted in, as drawn in ``placements`` images of the world (its
    position and look vary), each image getting the next in turn. Test images, not probe images: no Lens of the
    world is built on them, so the concept test does not reuse the images a finding was made on (the
    truth's insertion test takes the ``probe`` split, so it shares no image with the audit's test)."""
    from ..data.sequence import SequenceData
    from ..interventions.effects import ConceptImages

    test = WorldData(config, images, split)
    samples = [test.sample(index) for index in range(images)]
    clean = [(sample.image, sample.label) for sample in samples if artifact not in sample.concepts["artifacts"]]
    if not clean:
        raise SemlensError(f"all {images} test images of world {config.source} show the {artifact}: no images to paste it into")
    control = SequenceData(clean, f"{test.spec} without {artifact}", list(config.classes))
    return ConceptImages(control, artifact=tuple(overlay(config, artifact, index) for index in range(placements)))


def test_finding(lens: Lens, config: WorldConfig, artifact: str, target: str, spurious: list[str]) -> dict:
    """Insert the artefact into the test images (every class); prune the spurious units; measure."""
    from ..interventions.effects import artifact_effect, pruning_effect

    model = lens.sources.model()
    others = WorldData(config, TEST_IMAGES, "test")
    index = lens.units.class_index(target)
    artifact_image = overlay(config, artifact)
    result = {"insertion": artifact_effect(model, others, index, artifact_image)}
    if spurious:
        channels = lens.units.channels(spurious)
        result["pruning"] = pruning_effect(model, others, channels, index, artifact_image, lens.sources.sae_files(list(channels)))
    return result


def print_summary(summary: dict, console: Console) -> None:
    labels = summary["labels"]
    console.rule("semlens demo: the concept world")
    found = summary["artifact_units"]
    console.print(
        f"search '{summary['artifact']}': {', '.join(summary['search'][summary['artifact']])} "
        f"({len(found['search_found'])} of them truly detect it; true {summary['artifact']} units: {', '.join(found['true']) or 'none'})"
    )
    console.print(f"search '{summary['paraphrase']}' (never a training caption): {', '.join(summary['search'][summary['paraphrase']])}")
    console.print(
        f"labels: {100 * labels['coverage']:.0f} % of valid units show a concept (median confidence z {labels['median_confidence']:.1f}); "
        f"against the ground truth ({labels['units_with_true_concept']} units with a true concept) top-1 {labels['top1_shown']:.2f} "
        f"of the labels shown (best candidates {labels['top1']:.2f}, random {labels['random_top1']:.2f}), top-3 {labels['top3']:.2f} "
        f"(random {labels['random_top3']:.2f}), "
        f"faithfulness phi {labels['faithfulness_phi']:.2f} (concept images in scenes; alone on gray {labels['faithfulness_phi_alone']:.2f})"
    )
    audit = summary["audit"]
    console.print(
        f"audit of class {summary['artifact_class']}: {audit['units']} relevant units, spurious share {audit['shares']['spurious']:.2f}, "
        f"spurious units: {', '.join(audit['spurious_units']) or 'none'} ({len(found['audit_flagged'])} truly detect the {summary['artifact']})"
    )
    drawn = audit.get("drawn_test")
    if drawn:  # a concept semlens draws: the audit tested it on its drawings, with no images given
        console.print(
            f"the audit's test on {drawn['drawn']}: {summary['artifact_class']} {'relies' if drawn['relies'] else 'does not rely'} on them "
            f"(log-odds {drawn['log_odds']:+.2f}); units they raise where they are, more than the class does: {', '.join(audit['detectors']) or 'none'}"
        )
    console.print(
        f"search '{summary['artifact']}' again, now that the audit's test pasted it (ranked by how much it raises each unit): "
        f"{', '.join(summary['search_after_audit'])} ({len(found['search_after_audit_found'])} of them truly detect it)"
    )
    insertion = summary["test"]["insertion"]
    console.print(
        f"inserting the {summary['artifact']} into test images: {summary['artifact_class']} probability "
        f"{insertion['clean']['class_probability']:.3f} -> {insertion['artifact']['class_probability']:.3f}"
    )
    if "pruning" in summary["test"]:
        pruning = summary["test"]["pruning"]["artifact"]
        console.print(
            f"after pruning the spurious units, with the {summary['artifact']}: predicted {summary['artifact_class']} "
            f"{pruning['before']['predicted_as_class']:.3f} -> {pruning['after']['predicted_as_class']:.3f}; clean accuracy "
            f"{summary['test']['pruning']['clean']['before']['accuracy']:.3f} -> {summary['test']['pruning']['clean']['after']['accuracy']:.3f}"
        )
    s = torch.tensor(summary["compare"]["s_world_to_clean"])
    console.print(f"compare with the model trained without the artefact: S_world->clean per layer {', '.join(f'{value:.2f}' for value in s.diag().tolist())}")
    both = summary["artifact"] in summary["compare"].get("shared", [])
    console.print(
        f"concepts only the artefact-trained model's units show as labels: {', '.join(summary['compare']['only_world']) or 'none'}"
        + (f" (both models' units show {summary['artifact']}: the probe images show it to the clean model too)" if both else "")
    )
    console.print(f"report: {summary['report']}  (explore further: semlens search/show/audit on the Lens)")
    console.print(f"open the explorer: semlens serve {Path(summary['report']).parent / 'world.lens'} {Path(summary['report']).parent / 'world-clean.lens'}")
