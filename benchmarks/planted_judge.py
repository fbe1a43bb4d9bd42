"""A second judge of semlens: natural photos, ImageNet-style models, an artefact planted on one class.

``ground_truth.py`` judges semlens in the rendered concept world (64 px, models made for it). This judge
asks the same questions of real photos and real architectures. Per (architecture, seed) it makes data from
the photos that ship in packages (``planted_photos``: one class per photo, seeded crops, flips and colour
jitter at ``--size`` px; train, probe and test splits), plants each of three artefacts (a "(c) stock"
watermark, a small logo, a cyan frame; ``--artefacts`` also offers an orange colour cast) on a class of its own, drawn by the seed, at ``--rate`` of that
class's train and probe images and ``--other-rate`` of the other classes', trains the model on it (cached by
a fingerprint of everything it depends on) and builds a Lens with semlens's defaults (relevance crops;
``--k`` examples per unit) on the probe split, over the model's last stage, in ``--foundation`` (default
``conse``, the offline image-text space). One model carries the three artefacts, one record per artefact:
three classes, three separate correlations, one training and one Lens (``--separate``: a model per
artefact, three times the time). A control model (``--controls``) shows each artefact at ``--control-rate``
of every class's images: no artefact tells anything about a class. ``--twins``: each artefact's class shows the
photo of a class without an artefact, so that only the artefact tells the two apart (a model then has a use for it).

Models, passed to semlens as a user would (``py:planted_photos:planted_model`` and a safetensors file):

- ``lite0``: the bundled ImageNet EfficientNet-Lite0, its last block (``_blocks.15``), head convolution and
  a new classifier fine-tuned (the rest keeps ImageNet's weights); studied at ``_blocks.15``;
- ``resnet``: timm's ResNet-18 at a quarter of its width (``RESNET_CHANNELS``), trained here from scratch;
  studied at its last two blocks (``layer3.1``, ``layer4.1``).

Truth and scores, per (model, seed, artefact), shaped like ``ground_truth.py``'s records (its
``artefact_scores``, ``unit_tests`` and pooling are used as they are):

- true artefact units, by insertion: a unit's pooled activation on the probe images that do not show the
  artefact against the same images with it pasted (4 placements in turn), AUC >= ``truth.INSERTION_AUC``
  (no dissection: photos have no concept masks; this is ``ground_truth``'s ``by_insertion_alone``, near what
  the audit's concept test measures, on other images); for the colour cast, an area concept with no mask to
  dissect at all, this response is its truth, and the concept test does not ask where a unit fires;
- reliance, measured: the class's probability with the artefact pasted into the clean test images minus
  without, on the other classes' images (``reliance``) and on its own (``reliance_own``);
- audit of the artefact's class (``Lens.audit(class, [class], [artefact], concept=test images without and
  with the artefact, test_all=True)``): precision, recall, confirmed findings, spurious share;
- search for the artefact's name and a paraphrase: true artefact units in the top 5, on a Lens that was shown
  nothing, and for the name again after the audit pasted the artefact (``search_hits_at5_after_audit``);
- labels (the default vocabulary): the share of true artefact units whose top-1 label is one of the
  artefact's words, where the vocabulary has any (``label_words``; else None).

    python benchmarks/planted_judge.py --json planted.json                      # 2 models x 2 seeds + controls
    python benchmarks/planted_judge.py --models resnet --seeds 0 --classes 6 --per-class 12 12 8 --k 5

Run from the repository root; ``benchmarks/`` goes on ``PYTHONPATH`` for the model spec (done here).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ground_truth import OVERLAYS, _number, _share, artefact_scores, drawn_audit_scores, overlay_search, print_pooled_audit, summary_rows, unit_tests
from planted_photos import ARCHITECTURES, ARTEFACTS, DEFAULT_ARTEFACTS, STUDIED_LAYERS, WEIGHTS_ENV, Planting, photo_classes, placements, save_model, train_model, write_split
from rich.console import Console
from rich.table import Table

from semlens import BuildConfig, Lens, build_lens
from semlens._util.fingerprint import hash_json
from semlens.interventions.effects import ConceptImages, activation_aucs, predict
from semlens.data.folder import FolderData
from semlens.data.sequence import SequenceData
from semlens.lens.concepts import forget
from semlens.model.units import LayerSpec
from semlens.world.demo import PLACEMENTS
from semlens.world.truth import INSERTION_AUC

SPLITS = ("train", "probe", "test")
TRUTH_SEED, TEST_SEED = 1, 2  # the placements pasted for the truth and for the audit's test: none is one the data drew (seed 0)
DATA_VERSION = 1  # bump when the images or the training change: cached data and weights are made again

#: the issue's done-when targets (issue 61), checked per record
TARGETS = {"audit precision": 0.8, "audit recall": 0.6, "control spurious share": 0.10, "search hits": 3}


def plantings(classes: list[str], seed: int, control: bool, args: argparse.Namespace) -> list[Planting]:
    """Each artefact on a class of its own, drawn by ``seed``; a control shows each at one rate for every class
    (its record audits the class the seed draws, as the planted run does)."""
    targets = np.random.default_rng(seed).choice(classes, len(args.artefacts), replace=False)
    if control:
        return [Planting(artefact, None, args.control_rate, args.control_rate, args.scale) for artefact in args.artefacts]
    return [Planting(artefact, str(target), args.rate, args.other_rate, args.scale) for artefact, target in zip(args.artefacts, targets)]


def audited_class(classes: list[str], seed: int, artefact: str, args: argparse.Namespace) -> str:
    return str(np.random.default_rng(seed).choice(classes, len(args.artefacts), replace=False)[args.artefacts.index(artefact)])


def twin_content(classes: list[str], seed: int, args: argparse.Namespace) -> dict[str, str]:
    """With ``--twins``, the photo each artefact's class shows: the one of a class that carries no artefact (its
    twin; the i-th artefact's class gets the i-th such class), so that the two classes differ only where the
    artefact is and the model has a use for it; without, none (each class shows its own photo)."""
    if not args.twins:
        return {}
    targets = [audited_class(classes, seed, artefact, args) for artefact in args.artefacts]
    return dict(zip(targets, [cls for cls in classes if cls not in targets]))


def make_data(out: Path, classes: list[str], seed: int, planted: list[Planting], args: argparse.Namespace) -> Path:
    """The three splits, written once per fingerprint of what they depend on (the test split is clean: the
    audit and the reliance paste the artefacts into it)."""
    plantings = [{key: value for key, value in p.__dict__.items() if (key, value) != ("scale", 1.0)} for p in planted]  # the usual size: keys as before
    content = twin_content(classes, seed, args)
    key = {"version": DATA_VERSION, "classes": classes, "seed": seed, "plantings": plantings, "per_class": args.per_class, "size": args.size}
    root = out / "data" / hash_json({**key, "content": content} if content else key)[:16]
    if not (root / "test" / "artefacts.json").is_file():
        for split, per_class, offset in zip(SPLITS, args.per_class, (0, 1000, 2000)):
            write_split(root / split, classes, per_class, args.size, planted if split != "test" else [], seed + offset, content)
    return root


def trained_weights(out: Path, arch: str, data: Path, classes: list[str], seed: int, args: argparse.Namespace) -> Path:
    key = {"version": DATA_VERSION, "arch": arch, "data": data.name, "epochs": args.epochs[ARCHITECTURES.index(arch)], "seed": seed}
    path = out / "weights" / f"{arch}-{hash_json(key)[:16]}.safetensors"
    if not path.is_file():
        module = train_model(arch, data / "train", classes, args.size, key["epochs"], seed)
        save_model(module, path, arch, classes, args.size)
    return path


def folder_items(root: Path, without: str | None = None) -> SequenceData:
    """The images of a split (those that do not show ``without``), labelled by their folders."""
    shown = json.loads((root / "artefacts.json").read_text(encoding="utf-8"))
    folder = FolderData(root)
    items = [(folder.load(index), folder.label(index)) for index, name in enumerate(folder.files) if without not in shown.get(name, [])]
    return SequenceData(items, f"folder:{root} without {without}", folder.classes)


def accuracy(lens: Lens, test: Path) -> float:
    data = folder_items(test)
    model = lens.sources.model()
    views = [model.preprocessing.view(image) for image, _ in data.items]
    return float((predict(model, views).argmax(dim=1) == torch.tensor([label for _, label in data.items])).float().mean())


def evaluate_artefact(
    lens: Lens, data: Path, artefact: str, target: str, control: bool, size: int, scale: float = 1.0, content: str | None = None
) -> dict[str, Any]:  # fmt: skip
    """Truth, semlens's answers and their scores for one artefact and its class in one Lens (``content``: what the
    class's images show, the audit's valid concept: its own photo's name, or its twin's)."""
    start = time.perf_counter()
    model, layers = lens.sources.model(), lens.layers
    specs = [LayerSpec(**lens.manifest["layers"][layer]["spec"]) for layer in layers]
    truth_images = ConceptImages(folder_items(data / "probe", artefact), artifact=placements(artefact, size, PLACEMENTS, TRUTH_SEED, scale))
    aucs = activation_aucs(model, *truth_images.views(model), specs)
    insertion = {f"{layer}/{name}": float(auc) for layer in layers for name, auc in zip(lens.units(layer), aucs[layer].tolist())}
    true_units = {unit for unit, auc in insertion.items() if auc >= INSERTION_AUC}

    concept = ConceptImages(folder_items(data / "test"), artifact=placements(artefact, size, PLACEMENTS, TEST_SEED, scale))
    without, with_artefact, classes = concept.views_and_classes(model)
    change = predict(model, with_artefact).softmax(dim=1) - predict(model, without).softmax(dim=1)
    index = lens.units.class_index(target)
    own = classes == index

    paraphrase = ARTEFACTS[artefact]["paraphrase"]
    forget(lens, artefact)  # what an earlier run's audit pasted (semlens.lens.concepts): search first as a new user does
    hits = {query: [hit.unit for hit in lens.search(query, top=5)] for query in (artefact, paraphrase)}
    aligned = {query: [hit.unit for hit in lens.search(query, top=5, rank="alignment")] for query in (artefact, paraphrase)}
    named = {query: [hit.unit for hit in lens.search(query, top=5, rank="named")] for query in (artefact, paraphrase)}  # the foundation model's view
    coloured = [hit.unit for hit in lens.search(f"{ARTEFACTS[artefact]['colour']} {artefact}", top=5)]  # as a user who knows its colour asks
    drawn = [hit.unit for hit in lens.search(artefact, top=5, rank="model")]  # the model's response to semlens's drawings alone
    overlays = [placement.overlay(size, size) for placement in placements(artefact, size, OVERLAYS, TEST_SEED, scale)]
    by_image = overlay_search(lens, overlays, true_units)  # per ranking: the artefact's image as the probe
    drawn_audit = drawn_audit_scores(lens, target, content or target, artefact, layers, true_units)  # as a user without images audits
    forget(lens, artefact)  # the drawn audit may have kept its drawing: the audit below pastes the planted artefact
    audit = lens.audit(target, [content or target], [artefact], layers=layers, concept=concept, test_all=True).to_dict()  # fields may grow: read by key
    after_audit = lens.search(artefact, top=5)  # the audit kept the artefact it pasted: its name now ranks by it in the model
    examined = {unit["unit"] for unit in audit["units"]}
    flagged = [unit["unit"] for unit in audit["units"] if unit["verdict"] == "spurious"]
    both = [unit["unit"] for unit in audit["units"] if unit["verdict"] == "both"]
    confirmed, found = audit["confirmed"], audit["confirmed"] + audit["carriers"]
    return {
        "artifact": artefact, "artifact_class": target, "class_content": content or target, "paraphrase": paraphrase, "control": control,
        "artefact_unit_names": sorted(true_units), **artefact_scores(true_units, hits, artefact, paraphrase, flagged, both, confirmed, found, examined, audit["detectors"]),
        "search_hits_at5_alignment": sum(unit in true_units for unit in aligned[artefact]),
        "search_hits_at5_paraphrase_alignment": sum(unit in true_units for unit in aligned[paraphrase]),
        "search_hits_at5_named": sum(unit in true_units for unit in named[artefact]), "search_hits_at5_coloured": sum(unit in true_units for unit in coloured),
        "search_hits_at5_drawn": sum(unit in true_units for unit in drawn), "search_hits_at5_paraphrase_named": sum(unit in true_units for unit in named[paraphrase]),
        "search_top5": hits, "search_hits_at5_after_audit": sum(hit.unit in true_units for hit in after_audit), "search_after_audit_rank": after_audit.rank,
        "search_hits_at5_overlay": by_image, "search_hits_at5_image_model": by_image["model"], "insertion_auc_max": max(insertion.values()),
        **label_scores(lens, artefact, true_units),
        "audit_units": len(examined), "audit_cut": audit["cut"], "audit_rule": audit["rule"],
        "class_share_max": max(float(lens.arrays.class_relevance(layer)["max_share"][:, index].max()) for layer in layers),  # under the cut: none examined
        "audit_flagged": len(flagged), "audit_flagged_units": flagged,
        "spurious_share": audit["spurious_share"], "flagged_share": audit["shares"]["spurious"], "confirmed_share": audit["confirmed_share"],
        "audit_both_units": both, "audit_unlocated": audit["unlocated"], "audit_not_raised": audit["not_raised"], "audit_both_by_location": audit["both_by_location"],
        "audit_both": len(both), "audit_confirmed": len(confirmed), "audit_confirmed_units": confirmed, "audit_unconfirmed_units": audit["unconfirmed"],
        "audit_relies": audit["reliance"]["relies"], "audit_log_odds": audit["reliance"]["log_odds"], "audit_effect": audit["reliance"]["effect"],
        "audit_carriers": audit["carriers"], "audit_detectors": audit["detectors"], "tested_found": len(found), "audit_reliance": audit["reliance"], "unit_tests": unit_tests(true_units, audit),
        "reliance": float(change[~own, index].mean()), "reliance_own": float(change[own, index].mean()),
        "reliance_max_other_class": max(float(change[~own, other].mean()) for other in range(change.shape[1]) if other != index),
        "test_images": len(without), **drawn_audit, "artefact_seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip



def label_scores(lens: Lens, artefact: str, true_units: set[str]) -> dict[str, Any]:
    """The share of true artefact units whose top-1 label (shown or not) is one of the artefact's words, and
    of those shown; None where the vocabulary has none of its words (it cannot name the artefact)."""
    words = [word for word in ARTEFACTS[artefact]["words"] if word in lens.labels.vocabulary.concepts]
    top1, shown = {}, {}
    for layer in lens.layers:
        labels = lens.labels.of(layer)
        for name, row, ok in zip(lens.units(layer), labels.concepts.tolist(), labels.labelled.tolist()):
            top1[f"{layer}/{name}"] = lens.labels.vocabulary.concepts[int(row[0])]
            shown[f"{layer}/{name}"] = ok
    named = [unit for unit in true_units if top1[unit] in words]
    return {
        "label_words": words, "vocabulary": lens.labels.vocabulary.name,
        "label_top1": _share(len(named), len(true_units)) if words else None,
        "label_top1_shown": _share(sum(shown[unit] for unit in named), len(true_units)) if words else None,
        "artefact_unit_labels": {unit: top1[unit] for unit in sorted(true_units)},
    }


def evaluate(arch: str, seed: int, control: bool, args: argparse.Namespace, console: Console) -> list[dict[str, Any]]:
    """One model: its data, training and Lens, then one record per artefact."""
    start = time.perf_counter()
    classes = photo_classes(args.classes)
    planted = plantings(classes, seed, control, args)
    data, content = make_data(args.out, classes, seed, planted, args), twin_content(classes, seed, args)
    groups = [planted] if not args.separate else [[planting] for planting in planted]
    records = []
    for group in groups:
        group_data = data if not args.separate else make_data(args.out, classes, seed, group, args)
        weights = trained_weights(args.out, arch, group_data, classes, seed, args)
        os.environ[WEIGHTS_ENV] = str(weights.resolve())
        trained = time.perf_counter()
        settings = BuildConfig(model="py:planted_photos:planted_model", layers=STUDIED_LAYERS[arch], data=f"folder:{group_data / 'probe'}", foundation=args.foundation, k=args.k, workers=0)
        lens = build_lens(settings, args.out / "lenses" / f"{weights.stem}-{hash_json({'k': args.k, 'foundation': args.foundation})[:8]}.lens", progress=False)
        if lens.labels.vocabulary is None:
            lens.label()
        built = time.perf_counter()
        test_accuracy = accuracy(lens, group_data / "test")
        for planting in group:
            target = planting.cls or audited_class(classes, seed, planting.artefact, args)
            record = evaluate_artefact(lens, group_data, planting.artefact, target, control, args.size, args.scale, content.get(target))
            records.append({
                "data": "photos", "model": arch, "seed": seed, "classes": classes, "size": args.size, "per_class": dict(zip(SPLITS, args.per_class)),
                "plantings": [p.__dict__ for p in group], "rate": planting.rate, "other_rate": planting.other_rate, "foundation": args.foundation,
                "layers": lens.layers, "k": args.k, "crops": {layer: lens.manifest["layers"][layer].get("crop", {}).get("mode") for layer in lens.layers},
                "units": sum(len(lens.units(layer)) for layer in lens.layers), "test_accuracy": test_accuracy,
                **record, "train_seconds": round(trained - start, 1), "build_seconds": round(built - trained, 1),
                "seconds": round(time.perf_counter() - start, 1),
            })  # fmt: skip
            console.print(f"{arch} seed {seed}{' control' if control else ''} {planting.artefact} on {target}: {records[-1]['seconds']:.0f} s")
    return records


COLUMNS = {  # header: record key
    "acc.": "test_accuracy", "artefact units": "artefact_units", "examined": "artefact_units_examined", "search@5": "search_hits_at5",
    "paraphrase@5": "search_hits_at5_paraphrase", "search@5 (align.)": "search_hits_at5_alignment", "search@5 (named)": "search_hits_at5_named", "search@5 (its colour)": "search_hits_at5_coloured", "search@5 (drawn alone)": "search_hits_at5_drawn",
    "image search@5 (model)": "search_hits_at5_image_model", "search@5 after audit": "search_hits_at5_after_audit", "label top-1": "label_top1",
    "flagged": "audit_flagged", "precision": "audit_precision", "recall": "audit_recall", "confirmed": "audit_confirmed",
    "conf. precision": "confirmed_precision", "conf. recall": "confirmed_recall", "test precision": "tested_precision", "test recall": "tested_recall",
    "detected precision": "detected_precision", "detected recall": "detected_recall",
    "spurious share": "spurious_share", "flagged share": "flagged_share", "reliance": "reliance", "reliance (own)": "reliance_own",
    "log-odds (test)": "audit_log_odds",
}  # fmt: skip


def target_checks(records: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """How many records meet each done-when target (of those it applies to): audit precision and recall over
    the planted runs with flags / with examined true artefact units (and of the audit's detectors: those with any
    / with examined true units), spurious share on controls, search hits (3, or
    all true artefact units where fewer; before and after the audit pasted the artefact) where a run has any."""
    planted = [record for record in records if not record["control"]]
    checks = {
        "audit precision": [record["audit_precision"] >= TARGETS["audit precision"] for record in planted if record["audit_precision"] is not None],
        "audit recall": [record["audit_recall"] >= TARGETS["audit recall"] for record in planted if record["audit_recall"] is not None],
        "detectors precision": [record["detected_precision"] >= TARGETS["audit precision"] for record in planted if record.get("detected_precision") is not None],
        "detectors recall": [record["detected_recall"] >= TARGETS["audit recall"] for record in planted if record.get("detected_recall") is not None],
        "control spurious share": [record["spurious_share"] <= TARGETS["control spurious share"] for record in records if record["control"]],
        "control spurious share, drawn test": [
            record["drawn_audit_spurious_share"] <= TARGETS["control spurious share"] for record in records if record["control"] and "drawn_audit_spurious_share" in record
        ],
        "relies by the drawn test, where by the planted artefact": [
            bool(record["drawn_audit_relies"]) for record in planted if record["audit_relies"] and "drawn_audit_relies" in record
        ],
        "relies by the drawn test, controls": [bool(record["drawn_audit_relies"]) for record in records if record["control"] and "drawn_audit_relies" in record],
        "search hits": [record["search_hits_at5"] >= min(TARGETS["search hits"], record["artefact_units"]) for record in planted if record["artefact_units"]],
        "search hits after the drawn audit": [
            record["search_hits_at5_after_drawn_audit"] >= min(TARGETS["search hits"], record["artefact_units"])
            for record in planted if record["artefact_units"] and "search_hits_at5_after_drawn_audit" in record
        ],
        "search hits after the audit": [
            record["search_hits_at5_after_audit"] >= min(TARGETS["search hits"], record["artefact_units"])
            for record in planted if record["artefact_units"] and "search_hits_at5_after_audit" in record
        ],
    }
    return {name: {"met": sum(values), "of": len(values)} for name, values in checks.items()}


def print_table(records: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="semlens on natural photos with a planted artefact (one row per model, seed and artefact)")
    for column in ("model", "seed", "artefact on class", *COLUMNS):
        table.add_column(column)
    for record in records:
        table.add_row(
            record["model"], str(record["seed"]), f"{record['artifact']} on {record['artifact_class']}" + (" (control)" if record["control"] else ""),
            *(_number(record[key]) for key in COLUMNS.values()),
        )  # fmt: skip
    for control in (False, True):
        for title, values in summary_rows(records, control, COLUMNS):
            table.add_row(title, "", "", *(_number(values.get(key)) for key in COLUMNS.values()))
    console.print(table)
    print_pooled_audit(records, console)
    checks = target_checks(records)
    console.print("targets met: " + "; ".join(f"{name} {check['met']} of {check['of']}" for name, check in checks.items()))


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of the data (crops, which classes carry the artefacts) and training")
    parser.add_argument("--controls", type=int, nargs="*", default=[0], metavar="SEED", help="seeds of the control runs (each artefact on every class)")
    parser.add_argument("--artefacts", nargs="+", default=list(DEFAULT_ARTEFACTS), choices=list(ARTEFACTS), help="what to plant, each on a class of its own ('colour cast': an orange tint over the whole image, an area concept)")
    parser.add_argument("--classes", type=int, default=10, help="classes: the first N bundled photos by name")
    parser.add_argument("--per-class", type=int, nargs=3, default=[40, 16, 12], metavar=("TRAIN", "PROBE", "TEST"), help="images per class of each split")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (the models' input side)")
    parser.add_argument("--rate", type=float, default=0.8, help="share of its class's train and probe images an artefact is on")
    parser.add_argument("--other-rate", type=float, default=0.03, help="share of every other class's images it is on")
    parser.add_argument("--scale", type=float, default=1.0, help="every artefact this many times its usual size (watermark text height, logo side, frame width)")
    parser.add_argument("--control-rate", type=float, default=0.3, help="share of every class's images each artefact is on in a control")
    parser.add_argument("--epochs", type=int, nargs=2, default=[15, 30], metavar=("LITE0", "RESNET"))
    parser.add_argument("--k", type=int, default=8, help="concept examples per unit (semlens's default is 30; fewer to fit 2 cores)")
    parser.add_argument("--foundation", default="conse")
    parser.add_argument("--separate", action="store_true", help="one model per artefact instead of one carrying all three")
    parser.add_argument("--twins", action="store_true", help="each artefact's class shows the photo of a class without one (its twin), so that only the artefact tells the two apart")
    parser.add_argument("--out", type=Path, default=Path("planted-runs"))
    parser.add_argument("--json", type=Path, default=None, help="write the records to this file (after every model)")
    args = parser.parse_args(argv)
    if len(args.artefacts) * (2 if args.twins else 1) > args.classes:
        raise SystemExit(f"--classes {args.classes}: each of the {len(args.artefacts)} artefacts needs a class of its own{' and a twin' if args.twins else ''}")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")])  # the model spec's module
    console = Console(width=320)
    records, start = [], time.perf_counter()
    first, *rest = [[(arch, seed, False) for arch in args.models] for seed in args.seeds]  # the controls after the first seed: a cut run has both
    runs = first + [(arch, seed, True) for seed in args.controls for arch in args.models] + [run for runs in rest for run in runs]
    for arch, seed, control in runs:
        records += evaluate(arch, seed, control, args, console)
        if args.json:  # after every model: a long benchmark leaves what it has
            args.json.write_text(json.dumps(records, indent=1), encoding="utf-8")
    print_table(records, console)
    console.print(f"{len(records)} records from {len(runs)} runs in {(time.perf_counter() - start) / 60:.1f} min")
    return records


if __name__ == "__main__":
    main()
